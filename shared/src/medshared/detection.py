"""Detection metrics: box IoU, VOC all-point AP with greedy matching (mAP@0.5), and DeepACC's Acc/AER matching.

Input per image: a mapping with ``boxes`` (``[N, 4]`` pixels, ``x1, y1, x2, y2``), ``labels`` (``[N]``) and, for
detections, ``scores`` (``[N]``), as NumPy arrays, sequences or torch tensors. COCO-style AP@[.5:.95] is in
:mod:`medshared.coco`, which shares the input checks here. Also importable from :mod:`medshared.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medshared.arrays import to_numpy as _to_numpy

__all__ = [
    "accuracy_aer",
    "box_iou",
    "check_images",
    "detection_map",
    "image_arrays",
    "match_detections",
    "voc_ap",
]


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


def image_arrays(d: Mapping[str, Any], with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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


def check_images(detections: Sequence[Any], ground_truths: Sequence[Any]) -> None:
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
        gb, gl, _ = image_arrays(gt, False)
        g = gb[gl == cls]
        gts.append(g)
        n_gt += len(g)
        db, dl, ds = image_arrays(det, True)
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
    check_images(detections, ground_truths)
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
    check_images(detections, ground_truths)
    tp = fp = fn = n_pred = n_gt = all_ok = 0
    for det, gt in zip(detections, ground_truths):
        db, dl, ds = image_arrays(det, True)
        gb, gl, _ = image_arrays(gt, False)
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
