"""COCO-style box AP (AP@[.5:.95], AP50, AP75) computed as pycocotools' ``COCOeval`` does, without its dependency.

Protocol (pycocotools ``cocoeval.py``, ``iouType="bbox"``, area range "all", ``maxDets=100``):
- per image and class, detections sorted by score (stable) and cut to ``max_dets``;
- at each IoU threshold ``t`` in 0.50:0.05:0.95, each detection in score order takes the still-unmatched ground truth
  of its class with the highest IoU >= ``t`` (a later box wins a tie, as in pycocotools);
- per class, all images' detections sorted by score; precision made monotone from the right and read at 101 recall
  points 0:0.01:1 (0 beyond the highest recall reached); AP is the mean of those 101 values;
- classes without ground truth are left out of the mean; a class with ground truth and no detection scores 0.

Boxes are ``[x1, y1, x2, y2]`` in pixels (IoU without pycocotools' legacy ``+1``, which it no longer uses either).
The test suite checks these numbers against pycocotools itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medshared.detection import box_iou, check_images, image_arrays

__all__ = ["COCO_IOU_THRESHOLDS", "coco_map"]

#: 0.50, 0.55, ..., 0.95 (pycocotools ``np.linspace(.5, 0.95, 10)``).
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())
_REC_THRS = np.linspace(0.0, 1.0, 101)


def _match_image(ious: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``[T, D]`` bool: detection d (already in score order) is a true positive at threshold t."""
    n_det, n_gt = ious.shape
    tp = np.zeros((len(thresholds), n_det), dtype=bool)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(n_gt, dtype=bool)
        for d in range(n_det):
            best, m = min(t, 1 - 1e-10), -1
            for g in range(n_gt):
                if taken[g] or ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m >= 0:
                taken[m] = True
                tp[ti, d] = True
    return tp


def coco_map(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_ids: Iterable[int] | None = None,
    iou_thresholds: Sequence[float] | None = None,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box AP over IoU thresholds.

    Args:
        detections: per image ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}`` (as
            :func:`medshared.metrics.detection_map`).
        ground_truths: per image ``{"boxes": [M, 4] xyxy, "labels": [M]}``.
        class_ids: classes to evaluate (default: every label that occurs in the ground truth).
        iou_thresholds: default :data:`COCO_IOU_THRESHOLDS`; AP50 / AP75 are reported when 0.5 / 0.75 are among them.
        max_dets: detections kept per image and class, highest scores first.

    Returns:
        ``{"map": AP@[thresholds], "map50", "map75", "ap_per_class": {class: AP@[thresholds]},
        "ap_per_threshold": {t: AP}}``; values are ``nan`` when no class has ground truth.
    """
    check_images(detections, ground_truths)
    thr = list(COCO_IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds)
    if not thr or any(not 0.0 < t <= 1.0 for t in thr):
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {thr}")
    dets = [image_arrays(d, True) for d in detections]
    gts = [image_arrays(g, False) for g in ground_truths]
    if class_ids is None:
        class_ids = sorted({int(c) for _, gl, _ in gts for c in gl})
    classes = [int(c) for c in class_ids]
    # precision[t, class, recall point]; nan for classes without ground truth
    prec = np.full((len(thr), len(classes), len(_REC_THRS)), np.nan)
    for ci, c in enumerate(classes):
        scores: list[np.ndarray] = []
        tps: list[np.ndarray] = []
        n_gt = 0
        for (db, dl, ds), (gb, gl, _) in zip(dets, gts):
            g = gb[gl == c]
            n_gt += len(g)
            sel = dl == c
            d, s = db[sel], ds[sel]  # type: ignore[index]
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            d, s = d[order], s[order]
            scores.append(s)
            tps.append(_match_image(box_iou(d, g), thr) if len(d) else np.zeros((len(thr), 0), dtype=bool))
        if n_gt == 0:
            continue
        all_s = np.concatenate(scores)
        all_tp = np.concatenate(tps, axis=1)  # [T, D]
        order = np.argsort(-all_s, kind="mergesort")
        all_tp = all_tp[:, order]
        for ti in range(len(thr)):
            tp_cum = np.cumsum(all_tp[ti]).astype(np.float64)
            fp_cum = np.cumsum(~all_tp[ti]).astype(np.float64)
            q = np.zeros(len(_REC_THRS))
            if len(tp_cum):
                rc = tp_cum / n_gt
                pr = tp_cum / np.maximum(tp_cum + fp_cum, np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone envelope from the right
                inds = np.searchsorted(rc, _REC_THRS, side="left")
                ok = inds < len(pr)
                q[ok] = pr[inds[ok]]
            prec[ti, ci] = q
    ap_tc = prec.mean(axis=2)  # [T, C]; nan for classes without ground truth

    def _mean(x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else float("nan")

    per_thr = {round(t, 2): _mean(ap_tc[ti]) for ti, t in enumerate(thr)}
    per_class = {c: _mean(ap_tc[:, ci]) for ci, c in enumerate(classes)}
    valid = [v for v in per_class.values() if not math.isnan(v)]
    return {
        "map": float(np.mean(valid)) if valid else float("nan"),
        "map50": per_thr.get(0.5, float("nan")),
        "map75": per_thr.get(0.75, float("nan")),
        "ap_per_class": per_class,
        "ap_per_threshold": per_thr,
    }
