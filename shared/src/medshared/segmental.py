"""Frame-wise per-class scores and the segmental metrics of action segmentation / surgical phase recognition.

- :func:`per_class_scores`: per-class precision, recall, F1 and Jaccard (IoU) from frame labels, with their macro
  averages (unweighted mean over the class list). ``Jaccard_c = TP / (TP + FP + FN)``.
- :func:`segments`: a frame-label sequence as runs ``(label, start, end)`` with ``end`` exclusive.
- :func:`edit_score`: segmental edit score of MS-TCN (Farha & Gall, CVPR 2019; after Lea et al. 2016):
  ``1 - Levenshtein(segment labels of pred, of truth) / max(#pred segments, #true segments)``.
- :func:`f1_counts` / :func:`segmental_f1`: F1@k of MS-TCN: each predicted segment, in order, is matched to the
  true segment of the same label with the highest IoU; it is a true positive when that IoU is ``>= k`` and the true
  segment was not matched before, else a false positive; unmatched true segments are false negatives.
- :func:`segmental_metrics`: Edit averaged over sequences and F1@{10,25,50} from TP/FP/FN pooled over sequences,
  as MS-TCN's ``eval.py`` does.

Everything is in [0, 1] (MS-TCN prints x100). ``background`` labels (MS-TCN's ``bg_class``) are runs dropped from
both sequences before the segmental metrics. Undefined frame ratios (a class never predicted or never true) are 0,
as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "per_class_scores",
    "segments",
    "edit_score",
    "f1_counts",
    "segmental_f1",
    "segmental_metrics",
]


def _labels_1d(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-d sequence of frame labels, got shape {a.shape}")
    return a


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size} frames")
    if t.size == 0:
        raise ValueError("y_true is empty: need at least one frame")
    return t, p


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def per_class_scores(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> dict[str, Any]:
    """Per-class precision, recall, F1 and Jaccard of frame labels, and their macro averages.

    Args:
        y_true: ``(N,)`` true frame labels.
        y_pred: ``(N,)`` predicted frame labels.
        labels: the classes to score, in order; default the sorted union of the labels present. A predicted label
            outside ``labels`` still counts as a false negative of the true class.

    Returns:
        ``{"per_class": {label: {"precision", "recall", "f1", "jaccard", "support"}}, "macro": {"precision",
        "recall", "f1", "jaccard"}}``; macro = unweighted mean over ``labels``.
    """
    t, p = _pair(y_true, y_pred)
    labels = sorted(set(t.tolist()) | set(p.tolist()), key=str) if labels is None else list(labels)
    if not labels:
        raise ValueError("labels is empty: nothing to score")
    per: dict[Any, dict[str, float]] = {}
    for c in labels:
        tp = float(np.sum((t == c) & (p == c)))
        fp = float(np.sum((t != c) & (p == c)))
        fn = float(np.sum((t == c) & (p != c)))
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per[c] = {
            "precision": prec,
            "recall": rec,
            "f1": _ratio(2 * prec * rec, prec + rec),
            "jaccard": _ratio(tp, tp + fp + fn),
            "support": int(tp + fn),
        }
    macro = {k: float(np.mean([per[c][k] for c in labels])) for k in ("precision", "recall", "f1", "jaccard")}
    return {"per_class": per, "macro": macro}


def segments(labels: Any, background: Iterable[Any] = ()) -> list[tuple[Any, int, int]]:
    """Runs of equal labels ``[(label, start, end), ...]`` (``end`` exclusive), background runs dropped.

    Example: ``segments([0, 0, 1, 1, 1, 0]) == [(0, 0, 2), (1, 2, 5), (0, 5, 6)]``.
    """
    a = _labels_1d(labels, "labels")
    if a.size == 0:
        return []
    bg = set(background)
    cut = np.flatnonzero(a[1:] != a[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [a.size]])
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        lab = a[s].item()
        if lab not in bg:
            out.append((lab, s, e))
    return out


def _levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def edit_score(y_true: Any, y_pred: Any, background: Iterable[Any] = ()) -> float:
    """MS-TCN's segmental edit score of one sequence, in [0, 1] (1 when both have no segment)."""
    t, p = _pair(y_true, y_pred)
    bg = list(background)
    st, sp = [s[0] for s in segments(t, bg)], [s[0] for s in segments(p, bg)]
    n = max(len(st), len(sp))
    return 1.0 - _levenshtein(sp, st) / n if n else 1.0


def f1_counts(y_true: Any, y_pred: Any, overlap: float, background: Iterable[Any] = ()) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of MS-TCN's F1@``overlap`` for one sequence (see the module docstring)."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    t, p = _pair(y_true, y_pred)
    bg = list(background)
    true_segs, pred_segs = segments(t, bg), segments(p, bg)
    hit = [False] * len(true_segs)
    tp = fp = 0
    for lab, ps, pe in pred_segs:
        best, best_iou = -1, -1.0
        for j, (tl, ts, te) in enumerate(true_segs):
            if tl != lab:
                continue
            inter = min(pe, te) - max(ps, ts)
            iou = max(inter, 0) / (max(pe, te) - min(ps, ts))
            if iou > best_iou:
                best, best_iou = j, iou
        if best >= 0 and best_iou >= overlap and not hit[best]:
            tp += 1
            hit[best] = True
        else:
            fp += 1
    return tp, fp, len(true_segs) - sum(hit)


def _f1(tp: int, fp: int, fn: int) -> float:
    prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return _ratio(2 * prec * rec, prec + rec)


def segmental_f1(y_true: Any, y_pred: Any, overlap: float, background: Iterable[Any] = ()) -> float:
    """F1@``overlap`` of one sequence, in [0, 1]."""
    return _f1(*f1_counts(y_true, y_pred, overlap, background))


def segmental_metrics(
    pairs: Iterable[tuple[Any, Any]], overlaps: Sequence[float] = (0.10, 0.25, 0.50), background: Iterable[Any] = ()
) -> dict[str, float]:
    """Edit (mean over sequences) and F1@k (counts pooled over sequences), as MS-TCN's evaluation.

    Args:
        pairs: ``(y_true, y_pred)`` per sequence (video / operation).
        overlaps: IoU thresholds; keys are ``f1@10`` etc. (``round(100 * k)``).

    Returns:
        ``{"edit": ..., "f1@10": ..., "f1@25": ..., "f1@50": ..., "sequences": n}``.
    """
    bg = list(background)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("segmental_metrics needs at least one (y_true, y_pred) sequence")
    out: dict[str, float] = {"edit": float(np.mean([edit_score(t, p, bg) for t, p in pairs]))}
    for k in overlaps:
        counts = np.sum([f1_counts(t, p, k, bg) for t, p in pairs], axis=0)
        out[f"f1@{round(100 * k)}"] = _f1(*(int(c) for c in counts))
    out["sequences"] = len(pairs)
    return out
