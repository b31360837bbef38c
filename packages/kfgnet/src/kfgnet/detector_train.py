"""Detector training: SGD with warm-up + cosine decay, horizontal flips, COCO AP50 on a held-out set every epoch with
the best checkpoint kept, a resumable state after every epoch (refused under another config), and DDP under
torchrun (``medshared.distributed``).

Outputs in ``out_dir``: ``detector_best.safetensors`` (highest validation AP50; the last epoch without a validation
set), ``detector_last.safetensors``, ``detector.state.pt`` (resume), ``train.json`` (log, effective batch, lr rule,
config hash), ``detector_log.csv``.

BatchNorm under DDP: FrozenBatchNorm2d (the pretrained recipe) has no batch statistics, so ranks agree exactly; the
trainable BatchNorm of the from-scratch ``small`` / ``tiny`` backbones normalises over each rank's own images (plain
``BatchNorm2d``, not SyncBatchNorm: its statistics then come from ``batch_size / world`` images; ``--sync-bn``
switches to SyncBatchNorm).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kfgnet.config import DetectorConfig, config_to_dict
from kfgnet.detection_data import DetectionDataset, DetectionItem, median_box
from kfgnet.detector import build_detector, save_detector
from kfgnet.detector_eval import coco_summary, collate_detection, ground_truths, predict_items
from kfgnet.runstate import check_resumable, config_hash

__all__ = ["train_detector", "lr_at", "items_digest"]


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps (from lr / 1000), then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        f = step / warmup
        return lr * (0.001 + 0.999 * f)
    if total <= warmup:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def items_digest(items: list[DetectionItem]) -> str:
    """Hash of the images and boxes of ``items`` (part of a run's config hash)."""
    return config_hash([[str(it.path), np.round(it.boxes, 2).tolist()] for it in items])


def train_detector(
    train_items: list[DetectionItem],
    val_items: list[DetectionItem] | None,
    cfg: DetectorConfig,
    out_dir: Path,
    ctx: Any = None,
    seed: int = 0,
    restart: bool = False,
    progress: bool = True,
    offline: bool = False,
    num_workers: int = 0,
    sync_bn: bool = False,
    meta: dict[str, Any] | None = None,
    precision: Any = None,
) -> dict[str, Any]:
    """Train the detector and write the outputs listed in the module docstring.

    Args:
        train_items, val_items: training images; held-out images scored (AP50) after every epoch (None: no
            validation, the last epoch is kept as best).
        cfg: model + optimisation settings; ``cfg.batch_size`` is the effective batch, split evenly over ranks.
        ctx: ``medshared.distributed.DistContext`` (None: one process on CPU).
        restart: ignore a saved state made under another config instead of refusing it.
        meta: extra JSON saved in the checkpoints and ``train.json`` (e.g. the data split).
        sync_bn: SyncBatchNorm for trainable BatchNorm under torchrun (``wrap_model``; CUDA).
        precision: a ``medshared.precision.Precision`` (None: fp32). bf16 runs the backbone under autocast
            (:func:`kfgnet.precision.backbone_autocast`); RPN, RoI heads and the losses stay fp32. Its TF32 switches
            are the caller's (``precision.apply()``). bf16 is part of the config hash (a state made in fp32 is not
            resumed in bf16).

    Returns:
        the ``train.json`` content.
    """
    from medshared.distributed import (
        DistContext,
        barrier,
        broadcast_object,
        effective_batch,
        make_sampler,
        rank_seed,
        set_sampler_epoch,
        unwrap_model,
        wrap_model,
    )
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, seed_everything

    from kfgnet.devices import loader_kwargs
    from kfgnet.precision import backbone_autocast

    ctx = ctx or DistContext()
    device = torch.device(ctx.device)
    out_dir = Path(out_dir)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"batch size {cfg.batch_size} does not split over {ctx.world_size} processes; use a "
            f"multiple of {ctx.world_size} (detector.batch_size is the effective batch)"
        )
    per_rank = cfg.batch_size // ctx.world_size
    fixed = median_box(train_items)
    run_hash = config_hash(
        {
            "detector": config_to_dict(cfg),
            "seed": seed,
            "train": items_digest(train_items),
            "val": items_digest(val_items or []),
            # only bf16 enters the hash, so fp32 states of earlier versions still resume
            **({"precision": "bf16"} if getattr(precision, "name", "fp32") == "bf16" else {}),
        }
    )
    seed_everything(seed)  # the same initial weights on every rank
    model = build_detector(cfg, offline=offline).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    state_path = out_dir / "detector.state.pt"
    start, best, log = 0, (-1.0, -1.0), []
    if state_path.is_file():
        # on the CPU: SGD's buffers move to the parameters' device in load_state_dict; the log and best stay Python
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if check_resumable(state_path, st.get("config_hash"), run_hash, restart):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            start, best, log = int(st["epoch"]), tuple(st["best"]), list(st["log"])
    barrier(ctx)  # every rank has read the state before rank 0 may overwrite it
    model = wrap_model(model, ctx, sync_batchnorm=sync_bn)
    ds = DetectionDataset(train_items, hflip=cfg.hflip)
    sampler = make_sampler(ds, ctx, shuffle=True, seed=seed)
    gen = torch.Generator().manual_seed(rank_seed(seed, ctx))
    loader = DataLoader(
        ds,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen,
        collate_fn=collate_detection,
        drop_last=False,
        **{**loader_kwargs(device, num_workers), "persistent_workers": False},  # workers re-seeded per epoch (resume)
    )
    steps_per_epoch = len(loader)
    total, warm = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    eff = effective_batch(per_rank, ctx)
    info = {
        "config": config_to_dict(cfg),
        "config_hash": run_hash,
        "seed": seed,
        "world_size": ctx.world_size,
        "per_rank_batch": per_rank,
        "effective_batch": eff,
        "lr_rule": "none: detector.batch_size is the effective batch, split over ranks, so the recipe's lr holds",
        "lr": cfg.lr,
        "batchnorm": (
            "FrozenBatchNorm2d"
            if cfg.frozen_bn and cfg.backbone in ("resnet50_fpn", "mobilenet_v3_fpn")
            else "SyncBatchNorm"
            if sync_bn and ctx.enabled
            else "BatchNorm2d per rank"
        ),
        "precision": precision.as_dict() if precision is not None else {"name": "fp32", "reason": "default"},
        "n_train_images": len(train_items),
        "n_val_images": len(val_items or []),
        "median_box": fixed.tolist(),
        **(meta or {}),
    }
    extra = {"median_box": fixed.tolist(), "config_hash": run_hash, **(meta or {})}
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(rank_seed(seed, ctx) * 1000 + epoch)  # flips: fresh per epoch and rank, same on resume
        gen.manual_seed(rank_seed(seed, ctx) * 1000 + epoch)
        set_sampler_epoch(sampler, epoch)
        model.train()
        t0, nb = time.perf_counter(), 0
        tot = torch.zeros((), device=device)  # summed on the device: no host sync per step
        it: Any = loader
        if progress and ctx.is_main:
            from tqdm import tqdm

            it = tqdm(loader, desc=f"detector epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for b, (imgs, tgts) in enumerate(it):
            lr = lr_at(epoch * steps_per_epoch + b, total, warm, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            imgs = [im.to(device, non_blocking=True) for im in imgs]
            tgts = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in tgts]
            with backbone_autocast(model, precision):
                losses = model(imgs, tgts)
            loss = sum(v.float() for v in losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.detach().float()
            nb += 1
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(tot) / max(nb, 1),  # the epoch's one host sync
            "lr_end": lr,
            "seconds": time.perf_counter() - t0,
        }
        if ctx.is_main:
            inner = unwrap_model(model)
            if val_items:
                t1 = time.perf_counter()
                rec.update(
                    {
                        f"val_{k}": v
                        for k, v in coco_summary(
                            predict_items(inner, val_items, device, precision=precision), ground_truths(val_items)
                        ).items()
                    }
                )
                rec["val_seconds"] = time.perf_counter() - t1
                inner.train()
            score = (rec["val_ap50"], rec["val_ap"]) if val_items else (float(epoch), 0.0)
            if score > best or not val_items:  # AP50 first, COCO AP breaks ties (AP50 saturates on DDTI)
                best = score
                rec["best"] = True
                save_detector(
                    out_dir / "detector_best.safetensors", inner, cfg, {**extra, "epoch": epoch + 1, "val": rec}
                )
            log.append(rec)
            save_detector(out_dir / "detector_last.safetensors", inner, cfg, {**extra, "epoch": epoch + 1})
            with atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": inner.state_dict(),
                        "optimizer": opt.state_dict(),
                        "epoch": epoch + 1,
                        "best": best,
                        "log": log,
                        "config_hash": run_hash,
                    },
                    tmp,
                )
            atomic_write_csv(out_dir / "detector_log.csv", log)
            atomic_write_json(
                out_dir / "train.json",
                {
                    **info,
                    "log": log,
                    "best_val_ap50": best[0] if val_items else None,
                    "best_val_ap": best[1] if val_items else None,
                    "epochs_done": epoch + 1,
                },
            )
        log = broadcast_object(log, ctx)
        barrier(ctx)
    best = broadcast_object(best, ctx)
    return {
        **info,
        "log": log,
        "best_val_ap50": best[0] if val_items else None,
        "best_val_ap": best[1] if val_items else None,
    }


def detector_config_for_batch(cfg: DetectorConfig, batch_size: int | None, epochs: int | None) -> DetectorConfig:
    """``cfg`` with the CLI's ``--batch-size`` / ``--epochs`` applied (None keeps the preset's)."""
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    return cfg
