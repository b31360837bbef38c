"""Training (paper IV-B/C): Adam, class-balanced CE, mixup, model selection on the validation ICBHI Score.

Validation is a stratified, patient-grouped part of the training recordings (:func:`lungcvt.splits.validation_split`;
the code's validation reused training cycles, brief section 4). Training resumes from ``OUT/last_state.pt`` (model
weights, Adam moments, RNG states of every rank) and refuses to resume under a different config.

Under ``torchrun`` (``medshared.distributed``) every rank trains on its part of each epoch (``DistributedSampler``)
with ``train.batch_size`` per rank, gradients are averaged by DDP, the spatial gate's BatchNorm takes its statistics
over the global batch and the class-weighted loss is normalised by the global batch's weight sum, so N ranks with
batch B equal one process with batch N x B (``test_ddp_equivalence``). Rank 0 writes every file.

This module holds the loop: data, model, the epochs, validation and the outputs. The optimiser step and lr schedule
are in :mod:`lungcvt.step`, the DataLoader in :mod:`lungcvt.loaders`, the start state (``--init`` weights,
``last_state.pt``) in :mod:`lungcvt.resume`, the training/validation cycles and the per-epoch validation scores
(decision bias, best-epoch metric) in :mod:`lungcvt.validation`; their public names stay importable from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lungcvt import __version__
from lungcvt.config import CLASSES, LungCVTConfig, with_overrides
from lungcvt.data import find_recordings
from lungcvt.dataset import CycleSet, extract_cycles, predict_logits
from lungcvt.features import check_cqt
from lungcvt.loaders import build_train_loader, resize_where, stratified_subset
from lungcvt.losses import ClassBalancedCE
from lungcvt.model import build_lungcvt
from lungcvt.resume import load_init, resume_from, rng_state, run_key, save_state
from lungcvt.splits import DataOptions, check_classes
from lungcvt.step import global_weight_denominator, lr_at, train_step
from lungcvt.validation import selection_cycles, training_cycles, validate_logits, validation_scores

__all__ = [
    "CycleSet",
    "extract_cycles",
    "predict_logits",
    "train",
    "TrainResult",
    "train_step",
    "lr_at",
    "stratified_subset",
    "global_weight_denominator",
    "build_train_loader",
    "resize_where",
    "load_init",
    "with_overrides",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    best_checkpoint: Path
    best_epoch: int
    best_val: dict
    history: list[dict]
    train_counts: list[int]
    n_val: int
    split: dict = field(default_factory=dict)


def train(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    data: DataOptions | None = None,
    device: str = "auto",
    weights: str | Path | None = None,
    init: str | Path | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    resume: bool = True,
    progress: bool = True,
    ctx: Any = None,
    offline: bool = False,
    precision: str = "auto",
) -> TrainResult:
    """Train LungCVT on an ICBHI-layout folder; writes ``best.safetensors``, ``last_state.pt``, ``history.csv``,
    ``train.json`` (rank 0 only under torchrun).

    Args:
        cfg: full configuration (paper defaults in :mod:`lungcvt.config`).
        data_dir: ICBHI folder (``*.wav`` + ``*.txt``; split / fold files inside or given in ``data``).
        out_dir: output folder.
        data: protocol, split and fold files, device filter, partial / missing-class permissions.
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK`` under torchrun).
        weights: DeiT ImageNet weights file when ``cfg.model.pretrained`` (see :func:`lungcvt.model.resolve_weights`).
        init: start from this lungcvt checkpoint's weights (per-device fine-tuning; overrides ``weights``).
        cache_dir: feature cache (default ``out_dir/feature_cache``; shared by all ranks).
        num_workers: DataLoader worker processes (seeded per worker and epoch).
        resume: continue from ``out_dir/last_state.pt`` when it exists; a different config is an error.
        progress: tqdm bars and one line per epoch (rank 0).
        ctx: a ``medshared.distributed.DistContext``; by default :func:`init_distributed` (a no-op outside torchrun).
        offline: never download the DeiT weights (also ``HF_HUB_OFFLINE=1``); see :func:`lungcvt.model.resolve_weights`.
        precision: ``auto | fp32 | tf32 | bf16`` (:func:`lungcvt.precision.resolve`; ``train.bf16`` is the old alias),
            for the training steps and validation; recorded in ``train.json``.

    Raises:
        DataError: bad data, a class missing from training (unless ``data.allow_missing_class``).
        ValueError: ``last_state.pt`` written under another config, a mismatched ``init`` checkpoint.
    """
    from medshared.distributed import init_distributed

    own_ctx = ctx is None
    if own_ctx:
        ctx = init_distributed(device)
    try:
        find_recordings(data_dir)  # a wrong --data fails here: before any download and before OUT is created
        if cfg.model.pretrained and init is None:  # rank 0 downloads (if needed), then every rank reads the cache
            from medshared.distributed import barrier

            from lungcvt.model import resolve_weights

            if ctx.is_main:
                weights = resolve_weights(cfg.model.backbone, weights, offline=offline)
            barrier(ctx)
            weights = resolve_weights(cfg.model.backbone, weights, offline=True)
        args = (data or DataOptions(), weights, init, cache_dir, num_workers, resume, progress, ctx, precision)
        if cfg.model.ensemble > 1 and cfg.train.ensemble_training == "independent":
            from lungcvt.members import train_members

            return train_members(cfg, data_dir, out_dir, *args)
        return _train(cfg, data_dir, out_dir, *args)
    finally:
        if own_ctx:
            ctx.close()


def _build_model(
    cfg: LungCVTConfig, weights: str | Path | None, init_sd: dict | None, dev: torch.device
) -> torch.nn.Module:
    """LungCVT on ``dev`` (channels-last on CUDA), from ``init_sd`` when given, else ``weights`` / random init."""
    model = build_lungcvt(cfg.model, weights=weights if init_sd is None else None)
    if init_sd is not None:
        model.load_state_dict(init_sd)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    crit: ClassBalancedCE,
    dl: torch.utils.data.DataLoader,
    sampler: Any,
    cfg: LungCVTConfig,
    dev: torch.device,
    ctx: Any,
    g: torch.Generator,
    epoch: int,
    step: int,
    total: int,
    lr: float,
    show: bool,
    prec: Any = None,
) -> tuple[float, int]:
    """One pass over ``dl`` from optimiser step ``step`` of ``total``; returns (mean training loss over all ranks,
    the next step). The lr follows :func:`lr_at` when ``train.warmup_steps`` or ``train.lr_schedule`` ask for it."""
    from medshared.distributed import all_reduce_sum, set_sampler_epoch
    from tqdm.auto import tqdm

    tc = cfg.train
    schedule = tc.warmup_steps > 0 or tc.lr_schedule != "constant"
    set_sampler_epoch(sampler, epoch)
    model.train()
    tot, n = torch.zeros((), device=dev), 0  # summed on the device: one host sync per epoch, not per step
    for batch in tqdm(dl, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not show, leave=False):
        step_lr = lr_at(tc, step, total, lr) if schedule else None
        loss = train_step(model, opt, crit, batch, cfg, dev, ctx, step_lr, g, precision=prec)
        step += 1
        tot += loss.float() * len(batch[2])
        n += len(batch[2])
    tot, n = all_reduce_sum(float(tot), ctx), all_reduce_sum(float(n), ctx)
    return tot / max(n, 1), step


def _train(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    data: DataOptions,
    weights: str | Path | None,
    init: str | Path | None,
    cache_dir: str | Path | None,
    num_workers: int,
    resume: bool,
    progress: bool,
    ctx: Any,
    precision: str = "auto",
    cycles: tuple[CycleSet, CycleSet, dict, list[int]] | None = None,
) -> TrainResult:
    """The body of :func:`train`, inside its process-group guard. ``cycles``: the result of :func:`training_cycles`
    when the caller has it already (the members of :mod:`lungcvt.members` share their run's cycles and split)."""
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import (
        all_gather_object,
        barrier,
        effective_batch,
        rank_seed,
        scale_lr,
        unwrap_model,
        wrap_model,
    )
    from medshared.runtime import atomic_write_csv, atomic_write_json, seed_everything

    from lungcvt.precision import resolve

    tc = cfg.train
    dev = torch.device(ctx.device)
    main = ctx.is_main
    prec = resolve(precision, dev, bf16_alias=tc.bf16)
    prec.apply()
    if progress and main:
        print(f"precision {prec.name} ({prec.reason})", flush=True)
    show = progress and main
    seed_everything(tc.seed)  # model init: the same seed on every rank
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    check_cqt(cfg.features)
    init_sd = load_init(init, cfg) if init is not None else None

    if cycles is None:
        cycles = training_cycles(cfg, data_dir, data, cache_dir, dev, ctx, show)
    tr, va, split_info, test_counts = cycles
    split_info = dict(split_info)  # popped below: the caller's copy stays whole
    counts = tr.counts(cfg.model.num_classes)
    check_classes(counts, "the training cycles", data.allow_missing_class)

    model = _build_model(cfg, weights, init_sd, dev)
    crit = ClassBalancedCE(counts, tc.cb_beta).to(dev)
    eff_batch = effective_batch(tc.batch_size, ctx)
    lr = scale_lr(tc.lr, tc.lr_base_batch, eff_batch, tc.lr_rule)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    ddp_model = wrap_model(model, ctx)
    g = torch.Generator().manual_seed(rank_seed(tc.seed, ctx))
    dl, sampler = build_train_loader(tr, cfg, ctx, g, num_workers, dev)

    state_path, best_path = out / "last_state.pt", out / "best.safetensors"
    history: list[dict] = []
    start_epoch, best_score, best_epoch, best_val = 0, -1.0, -1, {}
    cfg_dict = cfg.to_dict()
    key = run_key(cfg_dict, data, init)
    barrier(ctx)
    if resume and state_path.is_file():
        start_epoch, best_score, best_epoch, best_val, history = resume_from(
            state_path, key, ddp_model, opt, g, dev, ctx
        )

    va_sel = selection_cycles(va, cfg)  # the bias and the best epoch are chosen on these
    steps_per_epoch = len(dl)
    total = tc.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, tc.epochs):
        train_loss, step = _train_epoch(
            ddp_model, opt, crit, dl, sampler, cfg, dev, ctx, g, epoch, step, total, lr, show, prec
        )
        val_logits = validate_logits(ddp_model, va_sel, cfg, dev, ctx, bf16=prec.name == "bf16")
        sc = validation_scores(va_sel.labels, val_logits, len(va), tc.tune_normal_bias, tc.min_normal_bias)
        bias = sc["normal_bias"]
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_icbhi_score": sc["icbhi"]["score"],
            "val_se": sc["icbhi"]["se"],
            "val_sp": sc["icbhi"]["sp"],
            "val_macro_ovr_score": sc["macro_ovr"]["score"],
            "val_accuracy": sc["icbhi"]["accuracy"],
            "normal_bias": bias,
            "val_auroc_abnormal": sc["auroc_abnormal"],
        }
        if "val_at_bias" in sc:  # the stored bias differs from the validation-tuned one
            row["val_clean_bias"] = sc["clean_bias"]
            row["val_icbhi_score_at_bias"] = sc["val_at_bias"]["score"]
        history.append(row)
        if tc.select_on == "last":
            metric = float(epoch + 1)  # every epoch improves on the one before: the last one is kept
        else:
            metric = sc["icbhi"]["score"] if tc.select_on == "score" else (sc["auroc_abnormal"] or 0.0)
        improved = metric > best_score
        if improved:
            best_score, best_epoch, best_val = metric, epoch + 1, sc
        rngs = all_gather_object(rng_state(g, dev), ctx)
        if main:
            state_dict = unwrap_model(ddp_model).state_dict()
            if improved:
                save_checkpoint(
                    best_path,
                    state_dict,
                    cfg_dict,
                    extra={
                        "epoch": epoch + 1,
                        "val": sc,
                        "train_counts": counts,
                        "classes": list(CLASSES),
                        "lungcvt_version": __version__,
                        "protocol": data.protocol,
                        "normal_bias": bias,
                    },
                )
            save_state(
                state_path,
                model_state=state_dict,
                optimizer=opt,
                epoch=epoch,
                best_score=best_score,
                best_epoch=best_epoch,
                best_val=best_val,
                history=history,
                key=key,
                rngs=rngs,
            )
        barrier(ctx)
        if show:
            print(
                f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val ICBHI score {row['val_icbhi_score']:.4f}"
                f"  (Se {row['val_se']:.3f} Sp {row['val_sp']:.3f})"
                + (f"  normal bias {bias:+.1f}" if tc.tune_normal_bias else ""),
                flush=True,
            )
    split = {
        "device_notes": split_info.pop("device_notes", []),
        "audio_by_device": split_info.pop("audio_by_device", {}),
        "protocol": data.protocol,
        "devices": list(data.devices) if data.devices else None,
        "validation": split_info,
        "train_counts_used": counts,
        "test_counts": test_counts,
        "classes": list(CLASSES),
    }
    if main:
        atomic_write_csv(out / "history.csv", history)
        atomic_write_json(
            out / "train.json",
            {
                "best_epoch": best_epoch,
                "best_val": best_val,
                "train_counts": counts,
                "n_train": len(tr),
                "n_val": len(va),
                "split": split,
                "val_patients": split_info["val_patients"],
                "init": str(init) if init else None,
                "distributed": {
                    "world_size": ctx.world_size,
                    "backend": ctx.backend,
                    "per_rank_batch": tc.batch_size,
                    "effective_batch": eff_batch,
                    "lr_rule": tc.lr_rule,
                    "lr_base_batch": tc.lr_base_batch,
                    "lr_config": tc.lr,
                    "lr_used": lr,
                    "batchnorm": "spatial-gate BatchNorm statistics over the global batch (all-reduce) under DDP",
                },
                "data_loader": {"num_workers": num_workers, "resize": resize_where(dev, num_workers)},
                "precision": prec.as_dict(),
                "last_state_bytes": state_path.stat().st_size if state_path.is_file() else None,
                "config": cfg_dict,
                "lungcvt_version": __version__,
            },
        )
    barrier(ctx)
    return TrainResult(best_path, best_epoch, best_val, history, counts, len(va), split)
