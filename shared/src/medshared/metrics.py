"""Evaluation metrics shared by the medrepro packages.

Classification metrics wrap scikit-learn; the definitions that scikit-learn does not have (ICBHI 2017 scores, the
ALGES per-image smoothed Dice, VOC all-point AP with greedy matching, DeepACC's Acc/AER, key-frame tolerance accuracy)
are written out here against their published definitions and tested on worked examples.

All functions accept Python sequences, NumPy arrays or CPU/GPU torch tensors (converted with ``np.asarray`` after
``.detach().cpu()``). Bad input raises ``ValueError`` naming the value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

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
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


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
# detection
# --------------------------------------------------------------------------------------------------------------------
def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU between two sets of ``[x1, y1, x2, y2]`` boxes (pixels): ``[N, 4] x [M, 4] -> [N, M]``."""
    a = _to_numpy(a).astype(np.float64).reshape(-1, 4)
    b = _to_numpy(b).astype(np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def voc_ap(recall: Any, precision: Any) -> float:
    """VOC all-point ("area") average precision: the area under the monotone precision envelope."""
    r = np.concatenate([[0.0], _to_numpy(recall).astype(np.float64), [1.0]])
    p = np.concatenate([[0.0], _to_numpy(precision).astype(np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: max precision at recall >= r
    idx = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def _image_arrays(d: Mapping[str, Any], with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if "boxes" not in d or "labels" not in d:
        raise ValueError(f"each image needs 'boxes' and 'labels' keys, got {sorted(d)}")
    boxes = _to_numpy(d["boxes"]).astype(np.float64).reshape(-1, 4)
    labels = _to_numpy(d["labels"]).astype(np.int64).ravel()
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels in one image")
    scores = None
    if with_scores:
        if "scores" not in d:
            raise ValueError("detections need a 'scores' entry per image")
        scores = _to_numpy(d["scores"]).astype(np.float64).ravel()
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores in one image")
    return boxes, labels, scores


def _check_images(detections: Sequence[Any], ground_truths: Sequence[Any]) -> None:
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"detections cover {len(detections)} images but ground truths {len(ground_truths)}; "
            "pass one entry per image"
        )


def _class_ap(
    detections: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]], cls: int, iou_threshold: float
) -> float:
    """AP of one class: detections sorted by descending score, each matched to the best-IoU unmatched GT box."""
    recs: list[tuple[float, int, np.ndarray]] = []
    gts: list[np.ndarray] = []
    n_gt = 0
    for img, (det, gt) in enumerate(zip(detections, ground_truths)):
        gb, gl, _ = _image_arrays(gt, False)
        g = gb[gl == cls]
        gts.append(g)
        n_gt += len(g)
        db, dl, ds = _image_arrays(det, True)
        assert ds is not None
        for box, s in zip(db[dl == cls], ds[dl == cls]):
            recs.append((float(s), img, box))
    if n_gt == 0:
        return float("nan")
    if not recs:
        return 0.0
    recs.sort(key=lambda r: -r[0])
    used = [np.zeros(len(g), dtype=bool) for g in gts]
    tp = np.zeros(len(recs))
    for k, (_, img, box) in enumerate(recs):
        g = gts[img]
        if len(g):
            ious = box_iou(box[None], g)[0]
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold and not used[img][j]:
                used[img][j] = True
                tp[k] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(recs) + 1)
    return voc_ap(recall, precision)


def detection_map(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    num_classes: int | None = None,
    iou_threshold: float = 0.5,
    class_ids: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Per-class AP at an IoU threshold with VOC all-point interpolation, and their mean (MMDetection ``eval_map``).

    Each detection is matched to the ground-truth box of its class with the highest IoU in its image; it is a true
    positive when that IoU >= ``iou_threshold`` and the box is not yet taken (VOC protocol).

    Args:
        detections: per image ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``.
        ground_truths: per image ``{"boxes": [M, 4] xyxy, "labels": [M]}``.
        num_classes: classes are ``1..num_classes`` (torchvision style, 0 = background) unless ``class_ids`` given.
        iou_threshold: IoU for a match.
        class_ids: explicit class ids to evaluate.

    Returns:
        ``{"map": float, "ap_per_class": {class_id: ap}}``; classes without ground truth get ``nan`` and are left out
        of the mean.
    """
    _check_images(detections, ground_truths)
    if class_ids is None:
        if num_classes is None:
            raise ValueError("pass num_classes or class_ids")
        class_ids = range(1, num_classes + 1)
    aps = {int(c): _class_ap(detections, ground_truths, int(c), iou_threshold) for c in class_ids}
    valid = [v for v in aps.values() if not math.isnan(v)]
    return {"map": float(np.mean(valid)) if valid else float("nan"), "ap_per_class": aps}


def match_detections(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    class_agnostic: bool = False,
) -> dict[str, int]:
    """Greedy one-to-one matching per image, in descending score order.

    A prediction is a true positive when an unmatched ground-truth box of the same class (any class when
    ``class_agnostic``) overlaps it with IoU >= ``iou_threshold`` (the highest such IoU is taken). Unmatched
    predictions are false positives, unmatched ground truths false negatives.

    Returns:
        ``{"tp", "fp", "fn", "n_pred", "n_gt", "images_all_correct"}`` summed over images; an image is all-correct
        when it has no FP and no FN.
    """
    _check_images(detections, ground_truths)
    tp = fp = fn = n_pred = n_gt = all_ok = 0
    for det, gt in zip(detections, ground_truths):
        db, dl, ds = _image_arrays(det, True)
        gb, gl, _ = _image_arrays(gt, False)
        assert ds is not None
        order = np.argsort(-ds, kind="stable")
        ious = box_iou(db, gb)  # [N, M]
        taken = np.zeros(len(gb), dtype=bool)
        img_tp = 0
        for i in order:
            ok = (~taken) & (ious[i] >= iou_threshold)
            if not class_agnostic:
                ok &= gl == dl[i]
            if ok.any():
                j = int(np.argmax(np.where(ok, ious[i], -1.0)))
                taken[j] = True
                img_tp += 1
        tp += img_tp
        fp += len(db) - img_tp
        fn += len(gb) - img_tp
        n_pred += len(db)
        n_gt += len(gb)
        all_ok += int(len(db) == img_tp and len(gb) == img_tp)
    return {"tp": tp, "fp": fp, "fn": fn, "n_pred": n_pred, "n_gt": n_gt, "images_all_correct": all_ok}


def accuracy_aer(counts: Mapping[str, int]) -> dict[str, float]:
    """DeepACC's Acc = TP / #predictions and AER = (FP + FN) / #ground truths from :func:`match_detections`."""
    acc = counts["tp"] / counts["n_pred"] if counts["n_pred"] else 0.0
    if counts["n_gt"] == 0:
        raise ValueError("AER is undefined without ground-truth boxes")
    return {"acc": float(acc), "aer": float((counts["fp"] + counts["fn"]) / counts["n_gt"])}


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
