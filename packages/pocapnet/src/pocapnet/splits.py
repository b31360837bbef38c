"""Splits by operation (paper §3.1: 60/20/20) that keep augmented copies (``OP_###A``) with their operation.

The corpus names an augmented copy of ``OP_012`` ``OP_012A`` (brief "Labels"). A copy never lands in another part
than its original: copies of training operations train, copies of held-out (validation / test) operations are held
out too and not scored (listed under ``held_out_augmented``), so that no test operation is seen in training in
another form and none is counted twice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pocapnet.config import PocapConfig

__all__ = ["OFFICIAL_SPLIT", "original_of", "is_augmented", "split_operations"]

log = logging.getLogger("pocapnet")

#: The official code's split (Random(1881), double shuffle of the "mid" list; brief "Split"): 16/6/5 operations.
OFFICIAL_SPLIT: dict[str, list[str]] = {
    "train": [f"OP_{i:03d}" for i in (1, 4, 5, 7, 10, 14, 15, 16, 17, 26, 27, 31, 35, 36, 39, 40)],
    "val": [f"OP_{i:03d}" for i in (6, 12, 19, 25, 29, 38)],
    "test": [f"OP_{i:03d}" for i in (28, 30, 32, 33, 34)],
}
_AUG = re.compile(r"^(.*\d)A\d*$")  # OP_012A, OP_012A2 -> OP_012


def original_of(op: str) -> str:
    """The operation an augmented copy was made from (``OP_012A`` -> ``OP_012``); the name itself otherwise."""
    m = _AUG.match(op)
    return m.group(1) if m else op


def is_augmented(op: str) -> bool:
    """True for an augmented copy's name (``OP_###A``, ``OP_###A2``)."""
    return original_of(op) != op


def _attach_copies(split: dict[str, list[str]], copies: list[str]) -> dict[str, list[str]]:
    part_of = {o: k for k, v in split.items() for o in v}
    out = {k: sorted(v) for k, v in split.items()}
    held: list[str] = []
    for c in sorted(copies):
        part = part_of.get(original_of(c))
        if part == "train":
            out["train"].append(c)
        elif part is not None:
            held.append(c)
    out["train"] = sorted(out["train"])
    out["held_out_augmented"] = held
    if held:
        log.info("augmented copies of held-out operations not used: %s", ", ".join(held))
    return out


def split_operations(ops: list[str], cfg: PocapConfig, split_file: str | Path | None = None) -> dict[str, list[str]]:
    """60/20/20 random split of the original operations (medshared, seeded), an explicit manifest
    (``medshared.splits``), or ``"official"`` (:data:`OFFICIAL_SPLIT`); augmented copies follow their operation.

    Returns:
        ``{"train", "val", "test", "held_out_augmented"}`` lists of operation names.

    Raises:
        ValueError: a manifest naming operations without features, or putting a copy in another part than its
            original (a leak).
    """
    from medshared.splits import load_split, ratio_split

    originals = sorted(o for o in ops if not is_augmented(o))
    copies = [o for o in ops if is_augmented(o)]
    if split_file is not None:
        split = OFFICIAL_SPLIT if str(split_file) == "official" else load_split(split_file)
        listed = sum((list(split.get(k, [])) for k in ("train", "val", "test")), [])
        unknown = sorted(set(listed) - set(ops))
        if unknown:
            raise ValueError(f"split file {split_file} names operations without features: {unknown[:5]}")
        part_of = {o: k for k in ("train", "val", "test") for o in split.get(k, [])}
        for c in listed:
            orig = original_of(c)
            if c != orig and orig in part_of and part_of[c] != part_of[orig]:
                raise ValueError(
                    f"split file {split_file} puts the augmented copy {c} in {part_of[c]} but {orig} in "
                    f"{part_of[orig]}; a copy must stay in its operation's part"
                )
        base = {k: [o for o in split.get(k, []) if not is_augmented(o)] for k in ("train", "val", "test")}
        extra = [c for c in copies if c not in part_of or part_of[c] == "train"]
        out = _attach_copies(base, extra)
        held_listed = sorted(c for c in listed if is_augmented(c) and part_of[c] != "train")
        out["held_out_augmented"] = sorted(set(out["held_out_augmented"]) | set(held_listed))
        return out
    split = ratio_split(originals, cfg.train.split_ratios, seed=cfg.train.seed)
    return _attach_copies({k: list(v) for k, v in split.items()}, copies)
