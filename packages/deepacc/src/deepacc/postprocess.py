"""Post-processing of DeepACC detections (Sec. 3.1) that keeps the RoI index of every detection.

* ``standard``: every foreground class of every RoI is a candidate, score > 0.05, class-wise NMS 0.5, 100 per image
  (torchvision / mmdet defaults; the mAP of the paper);
* ``max``: only the arg-max foreground class of each RoI (the paper's mAP_max);
* :func:`agnostic_top1`: the Acc/AER protocol on top of ``max``: score >= 0.5, class-agnostic NMS 0.7.
torchvision's own ``postprocess_detections`` drops the RoI indices (pytorch/vision#4309), which the per-detection
class probabilities (karyotype prior) need.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms
from torchvision.ops import boxes as box_ops

__all__ = ["agnostic_top1", "class_agnostic_detections", "postprocess_detections"]


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    mode: str = "standard",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> dict[str, Tensor]:
    """Post-process one image's per-class boxes and scores, keeping the RoI index of every detection.

    Args:
        boxes: ``[R, K, 4]`` decoded, clipped xyxy boxes per class (class 0 = background).
        scores: ``[R, K]`` class probabilities.
        mode: ``standard`` (every foreground class of every RoI is a candidate; mAP) or ``max`` (only the arg-max
            foreground class of each RoI; mAP_max, Sec. 3.1).
        score_thresh, nms_thresh, detections_per_img: as torchvision (class-wise NMS).
        min_size: boxes with a side below this are removed.

    Returns:
        dict with ``boxes [N,4]``, ``scores [N]``, ``labels [N]`` (1..K-1), ``roi_indices [N]`` (into the R RoIs).
    """
    r, k = scores.shape
    device = scores.device
    if mode == "standard":
        b = boxes[:, 1:].reshape(-1, 4)  # [R*(K-1), 4]
        s = scores[:, 1:].reshape(-1)  # [R*(K-1)]
        lab = torch.arange(1, k, device=device).repeat(r)  # [R*(K-1)]
        roi = torch.arange(r, device=device).repeat_interleave(k - 1)  # [R*(K-1)]
    elif mode == "max":
        s, cls = scores[:, 1:].max(dim=1)  # [R], [R]
        lab = cls + 1
        roi = torch.arange(r, device=device)
        b = boxes[roi, lab]  # [R, 4]
    else:
        raise ValueError(f"mode must be 'standard' or 'max', got {mode!r}")
    keep = torch.where(s > score_thresh)[0]
    b, s, lab, roi = b[keep], s[keep], lab[keep], roi[keep]
    keep = box_ops.remove_small_boxes(b, min_size)
    b, s, lab, roi = b[keep], s[keep], lab[keep], roi[keep]
    keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]  # sorted by descending score
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep], "roi_indices": roi[keep]}


def agnostic_top1(det: dict[str, Tensor], score_thresh: float = 0.5, nms_thresh: float = 0.7) -> dict[str, Tensor]:
    """Acc/AER protocol after top-1 selection (Sec. 3.1): keep ``score >= score_thresh``, class-agnostic NMS."""
    keep = torch.where(det["scores"] >= score_thresh)[0]
    out = {k: v[keep] for k, v in det.items()}
    keep = nms(out["boxes"], out["scores"], nms_thresh)
    return {k: v[keep] for k, v in out.items()}


def class_agnostic_detections(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> dict[str, Tensor]:
    """ "Is there a chromosome here?" detections of one image, ignoring the class (class-agnostic AP).

    Each RoI is scored by ``1 - p(background)`` and takes the box of its arg-max foreground class; then score >
    ``score_thresh``, class-agnostic NMS at ``nms_thresh`` and the ``detections_per_img`` best. Labels are all 1.

    Args:
        boxes: ``[R, K, 4]`` decoded per-class boxes; scores: ``[R, K]`` class probabilities.
    """
    r = scores.shape[0]
    fg = 1.0 - scores[:, 0]  # [R]
    cls = scores[:, 1:].argmax(dim=1) + 1 if r else torch.zeros(0, dtype=torch.long, device=scores.device)
    b = boxes[torch.arange(r, device=scores.device), cls]  # [R, 4]
    keep = torch.where(fg > score_thresh)[0]
    b, s = b[keep], fg[keep]
    keep = nms(b, s, nms_thresh)[:detections_per_img]
    return {"boxes": b[keep], "scores": s[keep], "labels": torch.ones(len(keep), dtype=torch.long, device=b.device)}
