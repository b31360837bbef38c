"""Training loop of DeepACC (Sec. 3.1): SGD momentum 0.9, weight decay 1e-4, lr 0.02 (linearly scaled to the batch by
default), linear warm-up, x0.1 steps at epochs 16 and 22 of 24, batch 1, random horizontal flip.

Checkpoints: ``model.safetensors`` (weights + config, via :mod:`medshared.checkpoint`) and ``train_state.pt``
(optimizer, epoch, history, RNG) are rewritten atomically after every epoch; ``train(..., resume=True)`` continues
from them after an interruption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepacc import __version__
from deepacc.config import DeepACCConfig, TrainConfig, config_from_dict, config_to_dict
from deepacc.data import DetectionDataset, Sample, collate, validate_samples
from deepacc.model import build_model

__all__ = ["effective_lr", "load_model", "lr_factor", "save_model", "train"]


def effective_lr(tcfg: TrainConfig) -> float:
    """lr actually used: ``lr * batch / base_batch`` (linear scaling rule) or the literal ``lr``."""
    if tcfg.lr_scaling == "literal":
        return tcfg.lr
    return tcfg.lr * tcfg.batch_size / tcfg.base_batch_size


def lr_factor(iteration: int, epoch: int, tcfg: TrainConfig) -> float:
    """Multiplier of the base lr: linear warm-up over ``warmup_iters`` from ``warmup_factor``, then x``gamma`` at
    each milestone epoch (``epoch`` is 0-based; milestone 16 means epochs 17.. run at 0.1x)."""
    f = tcfg.gamma ** sum(epoch >= m for m in tcfg.milestones)
    if iteration < tcfg.warmup_iters:
        alpha = iteration / max(tcfg.warmup_iters, 1)
        f *= tcfg.warmup_factor * (1 - alpha) + alpha
    return f


def save_model(
    path: str | Path, model: torch.nn.Module, cfg: DeepACCConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write weights + config (safetensors, atomic)."""
    from medshared.checkpoint import save_checkpoint

    state = {k: v for k, v in model.state_dict().items()}
    return save_checkpoint(path, state, {"deepacc": config_to_dict(cfg)}, {"version": __version__, **(extra or {})})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, DeepACCConfig, dict]:
    """Rebuild a model from a checkpoint alone. Raises FileNotFoundError / ValueError with clear messages."""
    from medshared.checkpoint import load_checkpoint

    state, config, extra = load_checkpoint(path)
    if "deepacc" not in config:
        raise ValueError(f"{path} is not a deepacc checkpoint (its config has keys {sorted(config)})")
    cfg = config_from_dict(config["deepacc"], base=DeepACCConfig())
    model = build_model(cfg, pretrained=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), cfg, extra


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train(
    cfg: DeepACCConfig,
    train_samples: list[Sample],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    pretrained: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    amp: bool = False,
    progress: bool = True,
    epoch_callback: Callable[[int, torch.nn.Module], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train ``cfg`` on ``train_samples``; returns the model (eval mode) and the per-epoch history.

    Args:
        out_dir: receives ``model.safetensors``, ``train_state.pt``, ``history.csv``, ``config.json``.
        pretrained: backbone ImageNet weights (path / "imagenet" / None); see
            :func:`deepacc.model.resolve_backbone_weights`.
        resume: continue from ``out_dir/train_state.pt`` when present.
        amp: bf16 autocast (the margin branch stays fp32).
        epoch_callback: called after each epoch with (epoch, model); its dict is merged into the history row.
        stop_after_epochs: stop early after this many epochs of this call (tests of resume).
    """
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, autocast_context, seed_everything
    from tqdm.auto import tqdm

    tcfg = cfg.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    validate_samples(train_samples, tcfg.empty_images, "training")
    seed_everything(seed)
    model = build_model(cfg, pretrained=pretrained).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = effective_lr(tcfg)
    opt = torch.optim.SGD(params, lr=base_lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch, iteration = 0, 0
    state_path = out_dir / "train_state.pt"
    ckpt_path = out_dir / "model.safetensors"
    if resume and state_path.is_file() and ckpt_path.is_file():
        from medshared.checkpoint import load_checkpoint

        weights, _, _ = load_checkpoint(ckpt_path)
        model.load_state_dict(weights)
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        start_epoch, iteration, history = st["epoch"] + 1, st["iteration"], st["history"]
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["numpy_rng"])
        log(f"resuming from {state_path} at epoch {start_epoch + 1}/{tcfg.epochs}")
    atomic_write_json(out_dir / "config.json", config_to_dict(cfg))
    ds = DetectionDataset(train_samples, train=True, hflip_prob=tcfg.hflip_prob, seed=seed + start_epoch)
    gen = torch.Generator().manual_seed(seed + start_epoch)
    loader = DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=tcfg.num_workers, generator=gen)  # fmt: skip
    done_here = 0
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress, leave=False)
        for images, targets in bar:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            _set_lr(opt, base_lr * lr_factor(iteration, epoch, tcfg))
            with autocast_context(device, amp):
                losses = model(images, targets)
            loss = sum(v.float() for v in losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, iteration {iteration}: "
                    f"{ {k: float(v.detach()) for k, v in losses.items()} }; lower train.lr or use pretrained weights"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            opt.step()
            iteration += 1
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        row: dict[str, float] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        row.update({k: v / max(n, 1) for k, v in sums.items()})
        if epoch_callback is not None:
            model.eval()
            row.update(epoch_callback(epoch, model))
        history.append(row)
        log("epoch {epoch}/{total}  loss {loss:.4f}  ({sec:.1f}s)".format(
            epoch=epoch + 1, total=tcfg.epochs, loss=row.get("loss", math.nan), sec=row["seconds"]))  # fmt: skip
        save_model(ckpt_path, model, cfg, {"epoch": epoch + 1})
        with atomic_path(state_path) as tmp:
            torch.save({"optimizer": opt.state_dict(), "epoch": epoch, "iteration": iteration, "history": history,
                        "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}, tmp)  # fmt: skip
        atomic_write_csv(out_dir / "history.csv", history)
        done_here += 1
        if stop_after_epochs is not None and done_here >= stop_after_epochs:
            break
    return model.eval(), history
