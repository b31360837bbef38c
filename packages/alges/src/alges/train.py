"""Training (paper section 4.1): Adam (lr 5e-5, betas 0.9/0.999), batch 32 shuffled, pixel CE, a fixed number of
epochs, the last epoch's weights kept (no validation, as the official code). DEAL models add the difficulty loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alges.config import IGNORE_INDEX, AlgesConfig
from alges.losses import deal_difficulty_loss, segmentation_loss
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
) -> list[float]:
    """Train ``model`` in place on uint8 ``images`` [M, 3, S, S] / ``masks`` [M, S, S] and return per-epoch mean losses.

    The shuffling order of epoch e is drawn from ``seed`` and e only, so a run resumed at ``start_epoch`` (with the
    saved optimizer) repeats the uninterrupted one. ``on_epoch_end(epoch, optimizer, info)`` is called after every
    epoch (checkpointing). Length: :func:`epoch_plan`.
    """
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


def save_resume_state(
    path: str | Path, epoch: int, optimizer: torch.optim.Optimizer, model: torch.nn.Module, extra: dict[str, Any]
) -> None:
    """Atomically save model + optimizer state after ``epoch`` (for ``alges train --resume``)."""
    from medshared.runtime import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra}, tmp)
