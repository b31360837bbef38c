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

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alges.config import IGNORE_INDEX, AlgesConfig
from alges.losses import deal_difficulty_loss, segmentation_loss, soft_dice_loss
from alges.model import AlgesUnet

__all__ = [
    "train_model",
    "make_optimizer",
    "to_batch",
    "to_device",
    "epoch_plan",
    "save_resume_state",
    "load_resume_state",
]


def to_device(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array/tensor on ``device``, unchanged dtype. On CUDA the batch is staged in pinned memory and copied
    with ``non_blocking=True`` (a copy from pageable memory is synchronous); elsewhere a plain ``.to``."""
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_batch(
    images: np.ndarray, masks: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images [B, 3, S, S] -> float [0, 255] tensor; uint8 masks [B, S, S] -> int64 tensor, on ``device``.

    The uint8 arrays are copied (4x fewer bytes than float) and converted on the device."""
    x = to_device(images, device).float()
    y = to_device(masks, device).long() if masks is not None else None
    return x, y


def _host_float(t: torch.Tensor) -> float:
    """One device -> host read (the only per-epoch sync of training); NaN on the ``meta`` stand-in device."""
    return float("nan") if t.device.type == "meta" else float(t)


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
    precision: Any = None,
) -> list[float]:
    """Train ``model`` in place on uint8 ``images`` [M, 3, S, S] / ``masks`` [M, S, S] and return per-epoch mean losses.

    The shuffling order of epoch e is drawn from ``seed`` and e only, so a run resumed at ``start_epoch`` (with the
    saved optimizer) repeats the uninterrupted one. ``on_epoch_end(epoch, optimizer, info)`` is called after every
    epoch (checkpointing). Length: :func:`epoch_plan`. ``ctx``: a ``medshared.distributed.DistContext`` (DDP, see the
    module docstring); ``model`` stays the plain module (the DDP wrapper lives only inside this call).
    ``precision``: a ``medshared.precision.Precision``; bf16 runs the network under autocast, the loss in fp32.

    Host syncs: none per step (the loss is summed on the device); one read per epoch for the history.
    """
    if ctx is not None and ctx.enabled:
        return _train_ddp(
            model, images, masks, cfg, device, seed, epochs, start_epoch, optimizer, on_epoch_end, progress, ctx,
            precision,
        )  # fmt: skip
    if len(images) == 0:
        raise ValueError("no labeled images to train on")
    if masks.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
    m = len(images)
    epochs, step_limit = epoch_plan(m, cfg, epochs)
    model.to(device).train()
    opt = optimizer or make_optimizer(model, cfg)
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    sums: list[tuple[torch.Tensor, int]] = []  # per epoch: (loss sum on the device, image count); read once
    steps = start_epoch * -(-m // cfg.batch_size)
    for epoch in tqdm(range(start_epoch, epochs), desc="train", disable=not progress, leave=False):
        order = np.random.default_rng([seed, epoch]).permutation(m)
        total, count = torch.zeros((), device=device), 0
        for s in range(0, m, cfg.batch_size):
            if step_limit is not None and steps >= step_limit:
                break
            idx = np.sort(order[s : s + cfg.batch_size])
            x, y = to_batch(images[idx], masks[idx], device)
            with autocast():
                out = model(x)
            logits = out.logits.float()  # the loss in fp32 (bf16 autocast covers the network only)
            loss = segmentation_loss(logits, y, IGNORE_INDEX, cfg.dice_loss_weight)
            if out.difficulty is not None:
                loss = loss + cfg.deal_loss_weight * deal_difficulty_loss(out.difficulty.float(), logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total = total + loss.detach() * len(idx)  # stays on the device: no host sync per step
            count += len(idx)
        sums.append((total, count))
        if on_epoch_end is not None:
            on_epoch_end(epoch, opt, {"loss": _host_float(total) / max(count, 1)})
    return [_host_float(t) / max(c, 1) for t, c in sums]


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
    precision: Any = None,
) -> list[float]:
    """DDP: the only collective per step is DDP's gradient all-reduce. The global count of valid pixels of a batch
    is computed on the host from the masks every rank holds (no all-reduce, no device tensor); the logged loss is
    all-reduced once per epoch."""
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
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    history: list[float] = []
    steps = start_epoch * -(-m // cfg.batch_size)
    for epoch in tqdm(range(start_epoch, epochs), desc="train", disable=not progress or not ctx.is_main, leave=False):
        order = np.random.default_rng([seed, epoch]).permutation(m)  # the same order on every rank
        total, count = torch.zeros((), device=device), 0
        for s in range(0, m, cfg.batch_size):
            if step_limit is not None and steps >= step_limit:
                break
            idx = np.sort(order[s : s + cfg.batch_size])
            if len(idx) < w:
                continue
            local = idx[rank::w]
            # the global batch's valid-pixel count from the host masks (every rank holds them all): no collective
            n_valid = max(float(np.count_nonzero(masks[idx] != IGNORE_INDEX)), 1.0)
            n_local = max(float(np.count_nonzero(masks[local] != IGNORE_INDEX)), 1.0)
            x, y = to_batch(images[local], masks[local], device)
            with autocast():
                out = net(x)
            logits = out.logits.float()
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum") * (w / n_valid)
            if cfg.dice_loss_weight:  # soft Dice does not split over ranks: each rank's part (averaged by DDP)
                loss = loss + cfg.dice_loss_weight * soft_dice_loss(logits, y, IGNORE_INDEX)
            if out.difficulty is not None:
                d = deal_difficulty_loss(out.difficulty.float(), logits, y) * n_local
                loss = loss + cfg.deal_loss_weight * d * (w / n_valid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total = total + loss.detach() / w * len(idx)  # on the device; summed over ranks once per epoch
            count += len(idx)
        history.append(_host_float(all_reduce_sum(total, ctx)) / max(count, 1))
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


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` on the CPU, whatever device trained it.

    ``load_state_dict`` then copies the model weights to the model's device and the optimiser moments to their
    parameters' devices, while Adam's ``step`` counters stay CPU tensors as PyTorch keeps them (loaded with
    ``map_location=<cuda>`` they would land on the GPU, and non-capturable Adam reads each one back with ``.item()``
    every step: a host sync per parameter per step)."""
    return torch.load(path, map_location="cpu", weights_only=False)
