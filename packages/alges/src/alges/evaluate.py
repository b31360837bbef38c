"""Batched pool inference (predictions, uncertainty scores, gradient embeddings, pooled features, DEAL scores in one
pass) and the test metrics: dataset-level macro Dice and the official per-image smoothed Dice (both from medshared).

Inference runs under ``eval()`` + ``inference_mode``, with bf16 autocast and channels-last when ``cfg.amp`` /
``cfg.channels_last`` and the device supports them; the head and the closed-form embeddings run in fp32 on the
autocast features.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from medshared.metrics import DiceAccumulator, dice_per_image_smoothed
from medshared.runtime import autocast_context
from tqdm.auto import tqdm

from alges.config import IGNORE_INDEX, AlgesConfig
from alges.embeddings import alges_img, alges_sem, channel_argmax
from alges.model import AlgesUnet
from alges.selection import deal_scores
from alges.train import to_batch

__all__ = ["OUTPUTS", "infer", "dice_scores", "evaluate_model", "majority_chance"]

OUTPUTS = ("pred", "entropy", "margin", "least_confidence", "alges_img", "alges_sem", "pooled", "deal")


def infer(
    model: AlgesUnet,
    images: np.ndarray,
    cfg: AlgesConfig,
    device: torch.device,
    outputs: Iterable[str] = ("pred",),
    *,
    batch_size: int | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Run the model over uint8 images [M, 3, S, S] and return the requested per-image outputs.

    Outputs: "pred" uint8 [M, S, S]; "entropy"/"margin"/"least_confidence" float64 [M] (pixel sums);
    "alges_img" float32 [M, D] (Eq. 4, ``cfg.img_variant``); "alges_sem" float32 [M, K] (Eq. 6, ``cfg.sem_variant``);
    "pooled" float32 [M, d * g * g] (decoder output average-pooled to ``cfg.coreset_grid``); "deal" float64 [M].
    """
    outputs = tuple(outputs)
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; valid: {OUTPUTS}")
    if "deal" in outputs and model.deal is None:
        raise ValueError("the 'deal' score needs a model trained with the DEAL head (strategy deal)")
    bs = batch_size or cfg.eval_batch_size
    amp = cfg.amp if amp is None else amp
    cl = (cfg.channels_last if channels_last is None else channels_last) and device.type in ("cpu", "cuda")
    model.to(device).eval()
    if cl:  # outside inference mode: parameters converted inside it would become inference tensors
        model.to(memory_format=torch.channels_last)
    try:
        return _infer(model, images, cfg, device, outputs, bs, amp, cl, progress)
    finally:
        if cl:
            model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def _infer(
    model: AlgesUnet,
    images: np.ndarray,
    cfg: AlgesConfig,
    device: torch.device,
    outputs: tuple[str, ...],
    bs: int,
    amp: bool,
    cl: bool,
    progress: bool,
) -> dict[str, np.ndarray]:
    res: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
    ks = cfg.head_kernel_size
    for s in tqdm(range(0, len(images), bs), desc="infer", disable=not progress, leave=False):
        x, _ = to_batch(images[s : s + bs], None, device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            z = model.forward_features(x)
        z = z.float().contiguous()  # [B, d, H, W] fp32 for the head and the closed forms
        logits = model.forward_head(z)  # [B, K, H, W]
        p = logits.softmax(dim=1)
        if "pred" in outputs:
            res["pred"].append(channel_argmax(logits).to(torch.uint8).cpu().numpy())
        if "entropy" in outputs:
            res["entropy"].append((-torch.special.xlogy(p, p)).sum(dim=(1, 2, 3)).double().cpu().numpy())
        if "margin" in outputs or "least_confidence" in outputs:
            top2 = p.topk(2, dim=1).values  # [B, 2, H, W]
            if "margin" in outputs:
                res["margin"].append((top2[:, 0] - top2[:, 1]).sum(dim=(1, 2)).double().cpu().numpy())
            if "least_confidence" in outputs:
                res["least_confidence"].append(top2[:, 0].sum(dim=(1, 2)).double().cpu().numpy())
        if "alges_img" in outputs:
            e = alges_img(logits, z, kernel_size=ks, include_bias=cfg.include_bias, variant=cfg.img_variant)
            res["alges_img"].append(e.cpu().numpy())
        if "alges_sem" in outputs:
            e = alges_sem(logits, z, kernel_size=ks, include_bias=cfg.include_bias, variant=cfg.sem_variant)
            res["alges_sem"].append(e.cpu().numpy())
        if "pooled" in outputs:
            g = F.adaptive_avg_pool2d(z, cfg.coreset_grid)  # [B, d, g, g]
            res["pooled"].append(g.flatten(1).cpu().numpy())  # [B, d*g*g]
        if "deal" in outputs:
            diff = model.deal(logits)  # [B, 1, H, W]
            res["deal"].append(deal_scores(diff.float().cpu().numpy(), cfg.deal_hard_levels))
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in res.items()}


def dice_scores(pred: np.ndarray, target: np.ndarray, cfg: AlgesConfig) -> dict[str, object]:
    """Dataset-level Dice (ignore 255; macro over classes present) and the official per-image smoothed Dice
    (mean over images and ``cfg.dice_classes``). pred, target uint8 [M, S, S]."""
    acc = DiceAccumulator(cfg.num_classes, ignore_index=IGNORE_INDEX)
    acc.update(pred, target)
    res = acc.compute()
    official = np.stack([dice_per_image_smoothed(p, t, cfg.dice_classes) for p, t in zip(pred, target)])  # [M, C]
    return {
        "dice_macro": float(res["macro"]),
        "dice_official": float(official.mean()),
        "dice_per_class": [None if np.isnan(v) else float(v) for v in res["per_class"]],
    }


def evaluate_model(
    model: AlgesUnet,
    images: np.ndarray,
    masks: np.ndarray,
    cfg: AlgesConfig,
    device: torch.device,
    progress: bool = False,
) -> dict[str, object]:
    """Predict ``images`` and score against ``masks`` (see :func:`dice_scores`)."""
    pred = infer(model, images, cfg, device, ("pred",), progress=progress)["pred"]
    return dice_scores(pred, masks, cfg)


def majority_chance(train_masks: np.ndarray, test_masks: np.ndarray, cfg: AlgesConfig) -> dict[str, object]:
    """Scores of a model that ignores its input: every pixel predicted as the training set's majority class."""
    counts = np.bincount(train_masks[train_masks != IGNORE_INDEX].ravel(), minlength=cfg.num_classes)
    maj = int(np.argmax(counts))
    out = dice_scores(np.full_like(test_masks, maj), test_masks, cfg)
    out["majority_class"] = maj
    return out
