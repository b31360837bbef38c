"""Evaluation metrics shared by the medrepro packages.

Classification metrics wrap scikit-learn; the definitions that scikit-learn does not have (ICBHI 2017 scores, the
ALGES per-image smoothed Dice, key-frame tolerance accuracy) are written out here against their published definitions
and tested on worked examples. The detection metrics (VOC all-point AP with greedy matching, DeepACC's Acc/AER) live
in :mod:`medshared.detection` and are re-exported here.

All functions accept Python sequences, NumPy arrays or CPU/GPU torch tensors (converted with ``np.asarray`` after
``.detach().cpu()``). Bad input raises ``ValueError`` naming the value and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medshared.arrays import to_numpy as _to_numpy
from medshared.detection import accuracy_aer, box_iou, detection_map, match_detections, voc_ap

__all__ = [
    "ICBHI_CLASSES",
    "DiceAccumulator",
    "accuracy",
    "accuracy_aer",
    "aggregate",
    "binary_metrics",
    "box_iou",
    "classification_metrics",
    "confusion_matrix",
    "detection_map",
    "dice_per_image_smoothed",
    "icbhi_scores",
    "keyframe_tolerance_accuracy",
    "match_detections",
    "mean_std",
    "voc_ap",
]

ICBHI_CLASSES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _to_numpy(y_true).ravel(), _to_numpy(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}; pass one label per sample")
    if t.size == 0:
        raise ValueError("y_true is empty: need at least one sample to compute a metric")
    return t, p


def _check_labels(values: np.ndarray, labels: Sequence[Any], what: str) -> None:
    allowed = set(np.asarray(labels).tolist())
    unknown = sorted({v for v in values.tolist() if v not in allowed}, key=str)
    if unknown:
        raise ValueError(f"{what} contains labels {unknown[:10]} outside the class list {list(labels)}")


# --------------------------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------------------------
def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any]) -> np.ndarray:
    """Confusion matrix with rows = true label, columns = predicted label, in the order of ``labels``.

    Raises:
        ValueError: when a true or predicted label is not in ``labels``.
    """
    from sklearn.metrics import confusion_matrix as _cm

    t, p = _pair(y_true, y_pred)
    _check_labels(t, labels, "y_true")
    _check_labels(p, labels, "y_pred")
    return _cm(t, p, labels=list(labels))


def classification_metrics(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> dict[str, float]:
    """Accuracy plus macro- and support-weighted precision, recall and F1 (scikit-learn, ``zero_division=0``).

    Args:
        y_true: true labels, shape ``[N]``.
        y_pred: predicted labels, shape ``[N]``.
        labels: the class list; classes absent from both still count in the macro average when given.
    """
    from sklearn.metrics import precision_recall_fscore_support

    t, p = _pair(y_true, y_pred)
    if labels is not None:
        _check_labels(t, labels, "y_true")
        _check_labels(p, labels, "y_pred")
        labels = list(labels)
    out: dict[str, float] = {"accuracy": float(np.mean(t == p))}
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = precision_recall_fscore_support(t, p, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(pr), float(rc), float(f1)
    return out


def binary_metrics(y_true: Any, y_pred: Any, positive: Any) -> dict[str, float]:
    """Binary accuracy, sensitivity (recall of ``positive``), specificity, precision and F1.

    Every label other than ``positive`` counts as negative. Undefined ratios (no positives, no predictions) are 0.
    """
    t, p = _pair(y_true, y_pred)
    tp = int(np.sum((t == positive) & (p == positive)))
    tn = int(np.sum((t != positive) & (p != positive)))
    fp = int(np.sum((t != positive) & (p == positive)))
    fn = int(np.sum((t == positive) & (p != positive)))
    sens = tp / (tp + fn) if tp + fn else 0.0
    spec = tn / (tn + fp) if tn + fp else 0.0
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
    return {
        "accuracy": (tp + tn) / t.size,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def icbhi_scores(
    y_true: Any,
    y_pred: Any,
    variant: str = "icbhi",
    labels: Sequence[str] = ICBHI_CLASSES,
    normal: str = "normal",
) -> dict[str, float]:
    """ICBHI 2017 sensitivity, specificity and Score, in [0, 1].

    Labels may be class names from ``labels`` or integer indices into it.

    Variants:
        ``icbhi`` (official): Sp = correctly classified normal / normal; Se = exactly-correct abnormal (crackle,
            wheeze, both) / abnormal; Score = (Se + Sp) / 2.
        ``macro_ovr`` (the LungCVT code): Se = mean over classes of one-vs-rest recall, Sp = mean over classes of
            one-vs-rest true-negative rate; Score = (Se + Sp) / 2.
        ``two_class``: normal vs any abnormal; Se = abnormal predicted abnormal / abnormal, Sp = normal predicted
            normal / normal.
    """
    t, p = _pair(y_true, y_pred)
    labels = list(labels)
    if normal not in labels:
        raise ValueError(f"normal class {normal!r} is not in labels {labels}")
    if t.dtype.kind in "iu" and p.dtype.kind in "iu":
        for name, arr in (("y_true", t), ("y_pred", p)):
            bad = sorted(set(arr[(arr < 0) | (arr >= len(labels))].tolist()))
            if bad:
                raise ValueError(f"{name} has class indices {bad} outside 0..{len(labels) - 1} ({labels})")
        t = np.asarray(labels, dtype=object)[t]
        p = np.asarray(labels, dtype=object)[p]
    else:
        t, p = t.astype(object), p.astype(object)
        _check_labels(t, labels, "y_true")
        _check_labels(p, labels, "y_pred")
    cm = confusion_matrix(t, p, labels=labels).astype(float)
    n = labels.index(normal)
    abn = [i for i in range(len(labels)) if i != n]
    acc = float(np.trace(cm) / cm.sum())
    if variant == "icbhi":
        sp = cm[n, n] / cm[n].sum() if cm[n].sum() else 0.0
        n_abn = cm[abn].sum()
        se = sum(cm[i, i] for i in abn) / n_abn if n_abn else 0.0
    elif variant == "macro_ovr":
        total = cm.sum()
        tprs, tnrs = [], []
        for i in range(len(labels)):
            tp = cm[i, i]
            fn = cm[i].sum() - tp
            fp = cm[:, i].sum() - tp
            tn = total - tp - fn - fp
            tprs.append(tp / (tp + fn) if tp + fn else 0.0)
            tnrs.append(tn / (tn + fp) if tn + fp else 0.0)
        se, sp = float(np.mean(tprs)), float(np.mean(tnrs))
    elif variant == "two_class":
        sp = cm[n, n] / cm[n].sum() if cm[n].sum() else 0.0
        n_abn = cm[abn].sum()
        se = cm[np.ix_(abn, abn)].sum() / n_abn if n_abn else 0.0
    else:
        raise ValueError(f"unknown ICBHI variant {variant!r}; expected 'icbhi', 'macro_ovr' or 'two_class'")
    return {"se": float(se), "sp": float(sp), "score": float((se + sp) / 2), "accuracy": acc}


# --------------------------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------------------------
class DiceAccumulator:
    """Dataset-level Dice per class, accumulated over batches: Dice_c = 2 |P_c ∩ G_c| / (|P_c| + |G_c|).

    Pixels whose target equals ``ignore_index`` are excluded. Classes absent from both prediction and ground truth
    over the whole dataset get ``nan`` and are left out of the macro mean.

    Example:
        >>> acc = DiceAccumulator(3)
        >>> acc.update([[0, 1], [2, 2]], [[0, 1], [2, 1]])
        >>> round(acc.compute()["macro"], 4)
        0.7778
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.pred_sum = np.zeros(self.num_classes, dtype=np.int64)
        self.target_sum = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of integer label maps of identical shape (any shape, e.g. ``[B, H, W]``)."""
        p, t = _to_numpy(pred).astype(np.int64).ravel(), _to_numpy(target).astype(np.int64).ravel()
        if p.shape != t.shape:
            raise ValueError(f"prediction and target differ in size: {p.shape[0]} vs {t.shape[0]} pixels")
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        k = self.num_classes
        for name, arr in (("prediction", p), ("target", t)):
            if arr.size and (arr.min() < 0 or arr.max() >= k):
                bad = sorted(set(arr[(arr < 0) | (arr >= k)].tolist()))[:10]
                raise ValueError(f"{name} has labels {bad} outside 0..{k - 1} (set ignore_index for void pixels)")
        self.intersection += np.bincount(t[p == t], minlength=k)
        self.pred_sum += np.bincount(p, minlength=k)
        self.target_sum += np.bincount(t, minlength=k)

    def compute(self) -> dict[str, Any]:
        """Return ``{"per_class": np.ndarray [K] (nan where absent), "macro": float}``."""
        denom = self.pred_sum + self.target_sum
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(denom > 0, 2.0 * self.intersection / np.maximum(denom, 1), np.nan)
        macro = float(np.nanmean(per)) if np.any(~np.isnan(per)) else float("nan")
        return {"per_class": per, "macro": macro}


def dice_per_image_smoothed(pred: Any, target: Any, classes: Sequence[int], smooth: float = 1.0) -> np.ndarray:
    """The ALGES official Dice of one image: per class (2 |P ∩ G| + smooth) / (|P| + |G| + smooth).

    A class absent from both prediction and ground truth scores 1.0 (because of the smoothing). The official code
    averages this over images and over ``classes = [0, 1, 2, 3, 4, 5, 9, 10]``.

    Args:
        pred: predicted label map of one image, e.g. ``[H, W]``.
        target: ground-truth label map of the same shape.
        classes: the class ids to score.

    Returns:
        ``[len(classes)]`` Dice values.
    """
    p, t = _to_numpy(pred).ravel(), _to_numpy(target).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in size: {p.shape[0]} vs {t.shape[0]} pixels")
    out = np.empty(len(classes), dtype=np.float64)
    for i, c in enumerate(classes):
        pc, tc = p == c, t == c
        out[i] = (2.0 * np.sum(pc & tc) + smooth) / (np.sum(pc) + np.sum(tc) + smooth)
    return out


# --------------------------------------------------------------------------------------------------------------------
# key frames and aggregation
# --------------------------------------------------------------------------------------------------------------------
def keyframe_tolerance_accuracy(pred_idx: Any, true_idx: Any, max_distance: int = 32) -> np.ndarray:
    """For D = 0..max_distance the fraction of videos with ``|predicted - true| <= D`` frames.

    Returns:
        ``[max_distance + 1]`` non-decreasing fractions in [0, 1].
    """
    p, t = _pair(pred_idx, true_idx)
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    err = np.abs(p.astype(np.int64) - t.astype(np.int64))
    d = np.arange(max_distance + 1)
    return (err[None, :] <= d[:, None]).mean(axis=1)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of finite values; ``nan`` entries are ignored."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError("mean_std needs at least one non-nan value")
    return float(v.mean()), float(v.std())


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std over folds, seeds or operations for every numeric key present in all results."""
    if not results:
        raise ValueError("aggregate needs at least one result")
    keys = [k for k in results[0] if all(k in r for r in results)]
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = [r[k] for r in results]
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
            try:
                m, s = mean_std(float(v) for v in vals)
            except ValueError:
                continue
            out[k] = {"mean": m, "std": s}
    return out
