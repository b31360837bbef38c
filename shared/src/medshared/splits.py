"""Reproducible data splits: seeded ratio splits (optionally group-aware), k-fold, stratified group k-fold,
official split files, JSON manifests and a leak check.

A *group* is the unit that must never straddle two parts: a patient, a video, an operation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medshared.runtime import atomic_write_json

__all__ = [
    "check_no_leak",
    "kfold",
    "load_split",
    "ratio_split",
    "read_split_file",
    "save_split",
    "stratified_group_kfold",
]


def _check_groups(items: Sequence[Any], groups: Sequence[Hashable] | None) -> list[Hashable]:
    if groups is None:
        return list(range(len(items)))  # every item its own group
    if len(groups) != len(items):
        raise ValueError(f"groups has {len(groups)} entries but there are {len(items)} items; give one group per item")
    for i, g in enumerate(groups):
        if g is None or (isinstance(g, str) and not g.strip()):
            raise ValueError(f"item {items[i]!r} has an empty group id; every item needs its patient/video/operation")
    return list(groups)


def ratio_split(
    items: Sequence[Any],
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[Any]]:
    """Split ``items`` at random into parts of the given ratios, keeping each group whole.

    Groups (or items, when ``groups`` is None) are shuffled with ``seed`` and cut by cumulative ratio, rounding so
    that every part with a positive ratio gets at least one group when there are enough groups. Item order inside a
    part follows the input order.

    Raises:
        ValueError: ratios that do not sum to 1 or are negative, mismatched names, or fewer groups than parts.
    """
    if len(ratios) != len(names):
        raise ValueError(f"{len(ratios)} ratios but {len(names)} names {list(names)}")
    if any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(f"ratios {list(ratios)} must be non-negative and sum to 1 (they sum to {sum(ratios):.6g})")
    if len(items) == 0:
        raise ValueError("cannot split an empty list of items")
    gids = _check_groups(items, groups)
    uniq = list(dict.fromkeys(gids))  # first-seen order, deterministic
    n_parts = sum(1 for r in ratios if r > 0)
    if len(uniq) < n_parts:
        raise ValueError(f"{len(uniq)} groups cannot fill {n_parts} non-empty parts {list(names)}; add data or ratios")
    rng = np.random.default_rng(seed)
    perm = [uniq[i] for i in rng.permutation(len(uniq))]
    # largest-remainder allocation of groups to parts, at least one per positive ratio
    raw = np.array(ratios, dtype=float) * len(uniq)
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: len(uniq) - counts.sum()]:
        counts[i] += 1
    for i, r in enumerate(ratios):
        if r > 0 and counts[i] == 0:
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    assignment: dict[Hashable, str] = {}
    start = 0
    for name, c in zip(names, counts):
        for g in perm[start : start + c]:
            assignment[g] = name
        start += c
    out: dict[str, list[Any]] = {n: [] for n in names}
    for item, g in zip(items, gids):
        out[assignment[g]].append(item)
    return out


def kfold(
    items: Sequence[Any], n_splits: int = 5, seed: int = 0, groups: Sequence[Hashable] | None = None
) -> list[tuple[list[Any], list[Any]]]:
    """Seeded k-fold over items (or over groups, keeping each group in one test fold).

    Returns:
        ``n_splits`` pairs ``(train_items, test_items)``; every item is in exactly one test part.
    """
    gids = _check_groups(items, groups)
    uniq = list(dict.fromkeys(gids))
    if n_splits < 2 or n_splits > len(uniq):
        raise ValueError(f"n_splits must be in 2..{len(uniq)} (the number of groups), got {n_splits}")
    rng = np.random.default_rng(seed)
    perm = [uniq[i] for i in rng.permutation(len(uniq))]
    fold_of = {g: i % n_splits for i, g in enumerate(perm)}
    folds = []
    for k in range(n_splits):
        test = [it for it, g in zip(items, gids) if fold_of[g] == k]
        train = [it for it, g in zip(items, gids) if fold_of[g] != k]
        folds.append((train, test))
    return folds


def stratified_group_kfold(
    labels: Sequence[Hashable], groups: Sequence[Hashable], n_splits: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold that keeps groups whole (scikit-learn ``StratifiedGroupKFold``, shuffled with ``seed``).

    Returns:
        ``n_splits`` pairs of index arrays ``(train_idx, test_idx)``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels)
    g = np.asarray(_check_groups(list(range(len(y))), list(groups)))
    n_groups = len(set(g.tolist()))
    if n_splits < 2 or n_splits > n_groups:
        raise ValueError(f"n_splits must be in 2..{n_groups} (the number of groups), got {n_splits}")
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y, g)]


def read_split_file(path: str | Path) -> dict[str, str]:
    """Read an official split file of lines ``stem<whitespace>train|test`` (ICBHI 2017 format).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line (named by number) or a duplicated stem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    out: dict[str, str] = {}
    for ln, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1].lower() not in ("train", "test"):
            raise ValueError(f"{path}:{ln}: expected 'stem<TAB>train|test', got {line!r}")
        stem, part = parts[0], parts[1].lower()
        if stem in out:
            raise ValueError(f"{path}:{ln}: stem {stem!r} listed twice")
        out[stem] = part
    if not out:
        raise ValueError(f"split file {path} has no entries")
    return out


def save_split(split: Mapping[str, Sequence[Any]], path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """Save a split manifest ``{part: [items]}`` (plus optional metadata such as the seed) as JSON, atomically."""
    atomic_write_json(path, {"parts": {k: list(v) for k, v in split.items()}, "meta": dict(meta or {})})


def load_split(path: str | Path) -> dict[str, list[Any]]:
    """Load a manifest written by :func:`save_split`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
        parts = data["parts"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a split manifest written by medshared.splits.save_split ({e})") from e
    return {k: list(v) for k, v in parts.items()}


def check_no_leak(split: Mapping[str, Sequence[Hashable]], groups: Mapping[Hashable, Hashable]) -> None:
    """Raise when a group (patient, video, operation) has items in more than one part.

    Args:
        split: ``{part: [item, ...]}``.
        groups: item -> group id.
    """
    seen: dict[Hashable, str] = {}
    for part, items in split.items():
        for it in items:
            if it not in groups:
                raise ValueError(f"item {it!r} in part {part!r} has no group id")
            g = groups[it]
            if g in seen and seen[g] != part:
                raise ValueError(f"group {g!r} appears in both {seen[g]!r} and {part!r} (item {it!r}): split leaks")
            seen[g] = part
