"""Health of the margin branch (Sec. 2.2-2.3): is the cosine classifier of Eq. 1 learning, or has it collapsed?

``margin_health`` holds three numbers:

* ``own_class_cos``: median cosine between a chromosome's RoI embedding (ground-truth boxes pooled as RoIs) and its own
  class centre (row of W_M). The ArcFace collapse (the network escapes the margin by pushing every centre away from
  the embeddings) drives it towards cos(pi - m) = -0.97; healthy training drives it towards 1.
* ``centre_pairwise_cos``: median cosine over the pairs of foreground class centres. The other collapse (every centre
  on one shared direction, seen with s * n(x) in the inference branch) drives it towards 1.
* ``template_local_fraction``: share of the foreground classes that used a local template (Eq. 2) per image.

Collapse: ``own_class_cos < 0`` or ``centre_pairwise_cos > 0.8`` (:func:`collapse_reason`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepacc.samples import Sample

__all__ = ["COLLAPSE_OWN_COS", "COLLAPSE_PAIRWISE_COS", "collapse_reason", "margin_health", "margin_heads"]

COLLAPSE_OWN_COS = 0.0  # own-class cosine below this: the AAM collapse towards theta = pi - m
COLLAPSE_PAIRWISE_COS = 0.8  # centre pairwise cosine above this: all centres on one direction


def margin_heads(model: torch.nn.Module) -> Any:
    """The :class:`deepacc.heads.DeepACCRoIHeads` of ``model`` when it has a margin branch, else None."""
    from deepacc.heads import DeepACCRoIHeads

    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    if isinstance(heads, DeepACCRoIHeads) and heads.use_margin_branch:
        return heads
    return None


def collapse_reason(health: dict[str, Any] | None) -> str | None:
    """A sentence naming the collapse in ``health``, or None when healthy (or not measured)."""
    if not health:
        return None
    own, pair = health.get("own_class_cos"), health.get("centre_pairwise_cos")
    if own is not None and own == own and own < COLLAPSE_OWN_COS:
        return (f"margin branch collapsed: median own-class cosine {own:.3f} < {COLLAPSE_OWN_COS} (class centres "
                "pushed away from the embeddings; the AAM loss escapes its margin)")  # fmt: skip
    if pair is not None and pair == pair and pair > COLLAPSE_PAIRWISE_COS:
        return (f"margin branch collapsed: median pairwise cosine of the class centres {pair:.3f} > "
                f"{COLLAPSE_PAIRWISE_COS} (all centres on one direction)")  # fmt: skip
    return None


def summarise(own_cos: torch.Tensor | None, heads: Any, local_fractions: list[float] | None = None) -> dict[str, Any]:
    """``margin_health`` dict from the own-class cosines ``[N]`` of N chromosomes and the heads' W_M."""
    own = None if own_cos is None or own_cos.numel() == 0 else float(own_cos.float().median())
    out: dict[str, Any] = {
        "own_class_cos": own,
        "centre_pairwise_cos": heads.centre_pairwise_cos(),
        "template_local_fraction": float(np.mean(local_fractions)) if local_fractions else None,
        "n_rois": 0 if own_cos is None else int(own_cos.numel()),
    }
    reason = collapse_reason(out)
    out["collapsed"] = reason is not None
    out["reason"] = reason
    return out


@torch.no_grad()
def margin_health(
    model: torch.nn.Module, samples: list[Sample], device: torch.device | str = "cpu", rescale_16bit: bool = False
) -> dict[str, Any] | None:
    """``margin_health`` of ``model`` on ``samples`` (one extra forward pass per image); None without a margin branch.

    ``own_class_cos`` pools the ground-truth boxes as RoIs (every chromosome counts once, whatever the detector
    proposes); ``template_local_fraction`` is read from the heads' normal inference on the image.
    """
    from deepacc.data import DetectionDataset
    from deepacc.losses import cosine

    heads = margin_heads(model)
    if heads is None:
        return None
    m = getattr(model, "module", model)
    was_training = m.training
    m.eval()
    device = torch.device(device)
    ds = DetectionDataset(samples, rescale_16bit=rescale_16bit)
    own, local = [], []
    try:
        for i in range(len(ds)):
            img, tgt = ds[i]
            tgt = {"boxes": tgt["boxes"].to(device), "labels": tgt["labels"].to(device)}
            images, targets = m.transform([img.to(device)], [tgt])
            feats = m.backbone(images.tensors)
            if heads.cfg.siamese:
                proposals, _ = m.rpn(images, feats)
                heads(feats, proposals, images.image_sizes)
                if heads._local_fraction is not None:
                    local.append(float(heads._local_fraction))
            boxes, labels = targets[0]["boxes"], targets[0]["labels"]
            if len(boxes):
                pooled = heads.box_roi_pool(feats, [boxes], images.image_sizes)  # [N, C, 7, 7]
                cos = cosine(heads.box_head(pooled), heads.margin_weight)  # [N, K]
                own.append(cos[torch.arange(len(labels), device=device), labels].cpu())
    finally:
        m.train(was_training)
    return summarise(torch.cat(own) if own else None, heads, local)
