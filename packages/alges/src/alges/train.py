"""Training (paper section 4.1): Adam (lr 5e-5, betas 0.9/0.999), batch 32 shuffled, pixel CE, a fixed number of
epochs, the last epoch's weights kept (no validation, as the official code). DEAL models add the difficulty loss.

Under torchrun (``ctx`` from ``medshared.distributed.init_distributed``) the model is wrapped in DDP and every rank
draws the same seeded order; each global batch of ``cfg.batch_size`` images is split over the ranks (rank r takes
images r, r + W, ...), so the effective batch and the learning rate stay the recipe's (lr rule "none"). The loss is
each rank's pixel sum divided by the global count of valid pixels (all-reduced) times W, so DDP's gradient average is
exactly the single-process mean over the whole batch. A global batch smaller than W is skipped (every rank needs an
image). BatchNorm: SyncBatchNorm on CUDA (a rank sees 1-4 images of a small labelled set, too few for batch
statistics); PyTorch has no SyncBatchNorm for CPU modules, so on CPU (gloo) each rank normalises with the statistics
of its own part of the batch, like ghost batches of size batch/W (the documented and tested difference).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alges.config import IGNORE_INDEX, AlgesConfig
from alges.losses import deal_difficulty_loss, segmentation_loss, soft_dice_loss
from alges.model import AlgesUnet

__all__ = ["train_model", "make_optimizer", "to_batch", "epoch_plan", "save_resume_state"]


def to_batch(
    images: np.ndarray, masks: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images [B, 3, S, S] -> float [0, 255] tensor; uint8 masks [B, S, S] -> int64 tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float()
    y = torch.from_numpy(np.ascontiguousarray(masks)).to(device).long() if masks is not None else None
    return x, y


def make_optimizer(model: torch.nn.Module, cfg: AlgesConfig) -> torch.optim.Optimizer:
    """Adam, lr ``cfg.lr``, betas (0.9, 0.999) (paper 4.1), weight decay ``cfg.weight_decay`` (official: 0)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def epoch_plan(n_images: int, cfg: AlgesConfig, epochs: int | None = None) -> tuple[int, int | None]:
    """``(epochs, step_limit)``: ``cfg.epochs`` full epochs (paper), or with ``cfg.train_steps`` > 0 as many epochs
    as that many optimiser steps need, the last one cut at the step limit."""
    if cfg.train_steps > 0 and epochs is None:
        per_epoch = -(-n_images // cfg.batch_size)
        return -(-cfg.train_steps // per_epoch), cfg.train_steps
    return (cfg.epochs if epochs is None else epochs), None


def train_model(
    model: AlgesUnet,
    images: np.ndarray,
    masks: np.ndarray,
    cfg: AlgesConfig,
    device: torch.device,
    *,
    seed: int = 0,
    epochs: int | None = None,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_end: Callable[[int, torch.optim.Optimizer, dict[str, Any]], None] | None = None,
    progress: bool = False,
    ctx: Any = None,
) -> list[float]:
    """Train ``model`` in place on uint8 ``images`` [M, 3, S, S] / ``masks`` [M, S, S] and return per-epoch mean losses.

    The shuffling order of epoch e is drawn from ``seed`` and e only, so a run resumed at ``start_epoch`` (with the
    saved optimizer) repeats the uninterrupted one. ``on_epoch_end(epoch, optimizer, info)`` is called after every
    epoch (checkpointing). Length: :func:`epoch_plan`. ``ctx``: a ``medshared.distributed.DistContext`` (DDP, see the
    module docstring); ``model`` stays the plain module (the DDP wrapper lives only inside this call).
    """
    if ctx is not None and ctx.enabled:
        return _train_ddp(
            model, images, masks, cfg, device, seed, epochs, start_epoch, optimizer, on_epoch_end, progress, ctx
        )
    if len(images) == 0:
        raise ValueError("no labeled images to train on")
    if masks.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
    m = len(images)
    epochs, step_limit = epoch_plan(m, cfg, epochs)
    model.to(device).train()
    opt = optimizer or make_optimizer(model, cfg)
    history: list[float] = []
    steps = start_epoch * -(-m // cfg.batch_size)
    for epoch in tqdm(range(start_epoch, epochs), desc="train", disable=not progress, leave=False):
        order = np.random.default_rng([seed, epoch]).permutation(m)
        total, count = 0.0, 0
        for s in range(0, m, cfg.batch_size):
            if step_limit is not None and steps >= step_limit:
                break
            idx = np.sort(order[s : s + cfg.batch_size])
            x, y = to_batch(images[idx], masks[idx], device)
            out = model(x)
            loss = segmentation_loss(out.logits, y, IGNORE_INDEX, cfg.dice_loss_weight)
            if out.difficulty is not None:
                loss = loss + cfg.deal_loss_weight * deal_difficulty_loss(out.difficulty, out.logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch, opt, {"loss": history[-1]})
    return history


def _train_ddp(
    model: AlgesUnet,
    images: np.ndarray,
    masks: np.ndarray,
    cfg: AlgesConfig,
    device: torch.device,
    seed: int,
    epochs: int | None,
    start_epoch: int,
    optimizer: torch.optim.Optimizer | None,
    on_epoch_end: Callable | None,
    progress: bool,
    ctx: Any,
) -> list[float]:
    import torch.nn.functional as F
    from medshared.distributed import all_reduce_sum, wrap_model

    if len(images) == 0:
        raise ValueError("no labeled images to train on")
    w, rank = ctx.world_size, ctx.rank
    if cfg.batch_size < w:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {w} ranks: every rank needs an image")
    m = len(images)
    epochs, step_limit = epoch_plan(m, cfg, epochs)
    model.to(device).train()
    net = wrap_model(model, ctx, sync_batchnorm=torch.device(device).type == "cuda")
    opt = optimizer or make_optimizer(model, cfg)
    history: list[float] = []
    steps = start_epoch * -(-m // cfg.batch_size)
    for epoch in tqdm(range(start_epoch, epochs), desc="train", disable=not progress or not ctx.is_main, leave=False):
        order = np.random.default_rng([seed, epoch]).permutation(m)  # the same order on every rank
        total, count = 0.0, 0
        for s in range(0, m, cfg.batch_size):
            if step_limit is not None and steps >= step_limit:
                break
            idx = np.sort(order[s : s + cfg.batch_size])
            if len(idx) < w:
                continue
            local = idx[rank::w]
            x, y = to_batch(images[local], masks[local], device)
            out = net(x)
            n_valid = all_reduce_sum(torch.tensor(float((y != IGNORE_INDEX).sum())), ctx).clamp_min(1.0)
            loss = F.cross_entropy(out.logits, y, ignore_index=IGNORE_INDEX, reduction="sum") * (w / n_valid)
            if cfg.dice_loss_weight:  # soft Dice does not split over ranks: each rank's part (averaged by DDP)
                loss = loss + cfg.dice_loss_weight * soft_dice_loss(out.logits, y, IGNORE_INDEX)
            if out.difficulty is not None:
                d = deal_difficulty_loss(out.difficulty, out.logits, y) * (y != IGNORE_INDEX).sum().clamp_min(1)
                loss = loss + cfg.deal_loss_weight * d * (w / n_valid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += float(all_reduce_sum(loss.detach() / w, ctx)) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch, opt, {"loss": history[-1]})
    return history


def save_resume_state(
    path: str | Path, epoch: int, optimizer: torch.optim.Optimizer, model: torch.nn.Module, extra: dict[str, Any]
) -> None:
    """Atomically save model + optimizer state after ``epoch`` (for ``alges train --resume``)."""
    from medshared.runtime import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra}, tmp)
