"""Binary classification metrics with percentile-bootstrap confidence intervals.

Any label can be the positive class (``positive="malignant"``). Point estimates: accuracy, sensitivity (recall of the
positive class), specificity (recall of the negative class) at a score threshold, and AUROC (the Mann-Whitney
probability that a random positive case scores higher than a random negative one, ties counting one half).

Confidence intervals: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13). Cases are resampled with
replacement ``n_boot`` times with a seeded generator; with ``groups`` (e.g. patient ids when a patient has several
videos) whole groups are resampled instead, so correlated cases move together. The interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the statistic over the resamples in which it is defined
(a resample without any positive case has no sensitivity and no AUROC; their number is reported).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["auroc", "binary_point_metrics", "bootstrap_ci", "binary_metrics_ci", "resample_indices"]


def _is_pos(y_true: Any, positive: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-d sequence, got shape {y.shape}")
    return y == positive


def auroc(y_true: Any, scores: Any, positive: Any = 1) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely ``positive``).

    Equals the fraction of (positive, negative) pairs in which the positive case scores higher, ties counting 1/2
    (computed from average ranks). ``nan`` when either class is absent.
    """
    pos = _is_pos(y_true, positive)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != pos.shape:
        raise ValueError(f"scores have shape {s.shape} but y_true has {pos.shape}")
    return _auroc_bool(pos, s)


def _auroc_bool(pos: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    edges = np.flatnonzero(np.diff(ss) != 0) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [s.size]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_point_metrics(y_true: Any, scores: Any, positive: Any = 1, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity at ``scores >= threshold`` and AUROC (``nan`` where undefined)."""
    pos = _is_pos(y_true, positive)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != pos.shape:
        raise ValueError(f"scores have shape {s.shape} but y_true has {pos.shape}")
    return _point(pos, s, threshold)


def _point(pos: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    pred = s >= threshold
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    return {
        "accuracy": float(np.mean(pred == pos)),
        "sensitivity": float((pred & pos).sum() / n_pos) if n_pos else float("nan"),
        "specificity": float((~pred & ~pos).sum() / n_neg) if n_neg else float("nan"),
        "auroc": _auroc_bool(pos, s),
    }


def resample_indices(n: int, n_boot: int, seed: int = 0, groups: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """``n_boot`` bootstrap resamples of ``range(n)``: cases with replacement, or whole groups with replacement
    (each resample then has as many groups as the data, and a varying number of cases)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 cases and n_boot >= 1, got {n}, {n_boot}")
    rng = np.random.default_rng(seed)
    if groups is None:
        return list(rng.integers(0, n, size=(n_boot, n)))
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} cases")
    keys = list(dict.fromkeys(groups))
    members = {k: [] for k in keys}
    for i, g in enumerate(groups):
        members[g].append(i)
    arrays = [np.asarray(members[k]) for k in keys]
    picks = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    return [np.concatenate([arrays[j] for j in row]) for row in picks]


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float, int]:
    """Percentile-bootstrap interval of ``stat(indices)`` over resamples of ``n`` cases.

    Returns:
        ``(low, high, n_valid)``: the quantiles over the ``n_valid`` resamples where ``stat`` is not nan
        (``nan, nan, 0`` when there are none).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    vals = np.array([stat(idx) for idx in resample_indices(n, n_boot, seed, groups)], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return float("nan"), float("nan"), 0
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi), int(vals.size)


def binary_metrics_ci(
    y_true: Any,
    scores: Any,
    positive: Any = 1,
    threshold: float = 0.5,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """Point estimates and percentile-bootstrap intervals of accuracy, sensitivity, specificity and AUROC.

    Args:
        y_true: labels (any hashable values); scores: score of the positive class per case.
        positive: the positive label (e.g. ``1`` or ``"malignant"``); threshold: ``scores >= threshold`` is positive.
        n_boot, level, seed: bootstrap resamples, interval level, generator seed (same seed, same intervals).
        groups: resample these groups (e.g. patients) whole instead of single cases.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high", "n_valid"}}`` for the four metrics, plus ``"n"``, ``"n_positive"``,
        ``"n_boot"``, ``"level"``, ``"seed"``, ``"resampled"`` (``"cases"`` or ``"groups"``).
    """
    pos = _is_pos(y_true, positive)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != pos.shape:
        raise ValueError(f"scores have shape {s.shape} but y_true has {pos.shape}")
    point = _point(pos, s, threshold)
    boots = [_point(pos[idx], s[idx], threshold) for idx in resample_indices(pos.size, n_boot, seed, groups)]
    a = (1 - level) / 2
    out: dict[str, Any] = {}
    for k, v in point.items():
        vals = np.array([b[k] for b in boots], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        lo, hi = np.quantile(vals, [a, 1 - a]) if vals.size else (float("nan"), float("nan"))
        out[k] = {"value": v, "ci_low": float(lo), "ci_high": float(hi), "n_valid": int(vals.size)}
    out.update(
        {
            "n": int(pos.size),
            "n_positive": int(pos.sum()),
            "n_boot": n_boot,
            "level": level,
            "seed": seed,
            "threshold": threshold,
            "resampled": "groups" if groups is not None else "cases",
        }
    )
    return out
