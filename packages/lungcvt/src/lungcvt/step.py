"""One optimiser step of :func:`lungcvt.train.train`: the learning-rate schedule (linear warm-up, constant or
cosine), the class-weighted loss's normaliser under DDP (the global batch's weight sum), and the step itself (resize on
the device, mixup, bf16 autocast, Adam)."""

from __future__ import annotations

import math
from typing import Any

import torch

from lungcvt.config import LungCVTConfig, TrainConfig
from lungcvt.images import batch_to_image
from lungcvt.losses import ClassBalancedCE, mixup_batch

__all__ = ["lr_at", "global_weight_denominator", "train_step"]


def lr_at(tc: TrainConfig, step: int, total_steps: int, base_lr: float | None = None) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    lr0 = tc.lr if base_lr is None else base_lr
    lr = lr0 * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else lr0
    if tc.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lr


def global_weight_denominator(crit: ClassBalancedCE, y: torch.Tensor, ctx: Any) -> torch.Tensor | None:
    """Under DDP: (sum of the class weights of the global batch's labels) / world size, for
    :meth:`ClassBalancedCE.forward`'s ``denom``; ``None`` (the plain weighted mean) in one process."""
    if ctx is None or not ctx.enabled:
        return None
    from medshared.distributed import all_reduce_sum

    return all_reduce_sum(crit.weight[y].sum().detach(), ctx) / ctx.world_size


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    crit: ClassBalancedCE,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: LungCVTConfig,
    device: torch.device,
    ctx: Any = None,
    lr: float | None = None,
    generator: torch.Generator | None = None,
    precision: Any = None,
) -> torch.Tensor:
    """One optimiser step on a collated batch (features [B, 3, F, T], lengths [B], labels [B]; or images
    [B, 3, S, S], None, labels); returns the loss as a detached 0-dim tensor on ``device`` (no host sync per step:
    the caller sums it on the device and reads it once per epoch).

    Features are resized on ``device`` (:func:`~lungcvt.images.batch_to_image`); mixup (``train.mixup``) draws its
    lambda from torch's global RNG and its permutation from ``generator``. ``precision`` (a
    :class:`medshared.precision.Precision`) gives the autocast; without it ``train.bf16`` does (older callers).
    """
    from medshared.runtime import autocast_context

    tc = cfg.train
    x, lens, y = batch
    x = x.to(device, non_blocking=True)
    if lens is not None:  # features: resize on the device; else the workers resized them already
        x = batch_to_image(x, lens, cfg.features)  # [B, 3, S, S]
    y = y.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast() if precision is not None else autocast_context(device, tc.bf16):
        if tc.mixup:
            xm, ya, yb, lam = mixup_batch(x, y, tc.mixup_alpha, generator)
            denoms = None
            if ctx is not None and ctx.enabled:
                denoms = (global_weight_denominator(crit, ya, ctx), global_weight_denominator(crit, yb, ctx))
            loss = crit.mixed(model(xm), ya, yb, lam, denoms)
        else:
            loss = crit(model(x), y, global_weight_denominator(crit, y, ctx))
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()
