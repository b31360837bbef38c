"""Training (paper IV-B/C): Adam, class-balanced CE, mixup, model selection on the validation ICBHI Score.

Validation is a stratified, patient-grouped part of the training recordings (:func:`lungcvt.splits.validation_split`;
the code's validation reused training cycles, brief section 4). Training resumes from ``OUT/last_state.pt`` (model
weights, Adam moments, RNG states of every rank) and refuses to resume under a different config.

Under ``torchrun`` (``medshared.distributed``) every rank trains on its part of each epoch (``DistributedSampler``)
with ``train.batch_size`` per rank, gradients are averaged by DDP, the spatial gate's BatchNorm takes its statistics
over the global batch and the class-weighted loss is normalised by the global batch's weight sum, so N ranks with
batch B equal one process with batch N x B (``test_ddp_equivalence``). Rank 0 writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungcvt import __version__
from lungcvt.config import CLASSES, LungCVTConfig, TrainConfig, config_from_dict
from lungcvt.dataset import CycleDataset, CycleSet, extract_cycles, make_loader, predict_logits
from lungcvt.features import check_cqt
from lungcvt.images import batch_to_image
from lungcvt.losses import ClassBalancedCE, mixup_batch
from lungcvt.model import LungCVT
from lungcvt.splits import DataOptions, check_classes, class_counts, select_recordings, validation_split

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


def _scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    from medshared.metrics import icbhi_scores

    return {
        v: icbhi_scores(list(y_true), list(y_pred), variant=v, labels=CLASSES)
        for v in ("icbhi", "macro_ovr", "two_class")
    }


def lr_at(tc: TrainConfig, step: int, total_steps: int, base_lr: float | None = None) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    lr0 = tc.lr if base_lr is None else base_lr
    lr = lr0 * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else lr0
    if tc.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lr


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Sorted indices of a class-stratified random ``fraction`` of the items (at least one per present class)."""
    if fraction >= 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    keep: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = max(1, int(round(fraction * len(idx))))
        keep += rng.choice(idx, size=n, replace=False).tolist()
    return sorted(keep)


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
) -> float:
    """One optimiser step on a collated batch (features [B, 3, F, T], lengths [B], labels [B]; or images
    [B, 3, S, S], None, labels); returns the loss.

    Features are resized on ``device`` (:func:`~lungcvt.images.batch_to_image`); mixup (``train.mixup``) draws its
    lambda from torch's global RNG and its permutation from ``generator``.
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
    with autocast_context(device, tc.bf16):
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
    return float(loss.detach())


def resize_where(device: torch.device, num_workers: int) -> str:
    """Where training resizes the feature maps: ``"device"`` (batched, :func:`~lungcvt.images.batch_to_image`) on a
    GPU or without workers, ``"workers"`` (per item in the DataLoader workers) on a CPU with workers, where the
    resize costs the same either way and the workers run it in parallel with the step (``bench/train_step.py``)."""
    return "workers" if device.type != "cuda" and num_workers > 0 else "device"


def build_train_loader(
    cycles: CycleSet,
    cfg: LungCVTConfig,
    ctx: Any,
    generator: torch.Generator,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.utils.data.DataLoader, Any]:
    """The training DataLoader and its ``DistributedSampler`` (``None`` in one process)."""
    from medshared.distributed import make_sampler

    tc = cfg.train
    dev = torch.device(device)
    image_cfg = cfg.features if resize_where(dev, num_workers) == "workers" else None
    ds = CycleDataset(cycles, time_roll=tc.time_roll, image_cfg=image_cfg)
    sampler = make_sampler(ds, ctx, shuffle=tc.shuffle, seed=tc.seed) if ctx is not None else None
    per_rank = len(ds) if sampler is None else len(sampler)
    dl = make_loader(
        ds,
        tc.batch_size,
        shuffle=tc.shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        drop_last=per_rank > tc.batch_size,
        pin_memory=dev.type == "cuda",
    )
    return dl, sampler


def load_init(init: str | Path, cfg: LungCVTConfig) -> dict[str, torch.Tensor]:
    """Weights of a lungcvt checkpoint to start from (``train --init``); its model config must match ``cfg.model``.

    Raises:
        ValueError: not a lungcvt checkpoint, or a model config that differs (naming the fields).
    """
    from medshared.checkpoint import load_checkpoint

    sd, cfg_d, _ = load_checkpoint(init)
    try:
        ck = config_from_dict(cfg_d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--init {init}: not a lungcvt checkpoint ({e})") from None
    a, b = dataclasses.asdict(ck.model), dataclasses.asdict(cfg.model)
    diff = sorted(k for k in a if k != "pretrained" and a[k] != b[k])
    if diff:
        raise ValueError(
            f"--init {init}: its model config differs in {diff} (checkpoint {[a[k] for k in diff]}, this run "
            f"{[b[k] for k in diff]}); train with the checkpoint's preset/config (the default when --preset is not "
            "given)"
        )
    return sd


def _rng_state(g: torch.Generator, device: torch.device) -> dict:
    st = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": g.get_state(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, g: torch.Generator, device: torch.device) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    g.set_state(st["generator"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _run_key(cfg_dict: dict, data: DataOptions, init: str | Path | None) -> dict:
    """What must match for a resume: the config without ``train.epochs``, the data options and the init weights."""
    key = json.loads(json.dumps({"config": cfg_dict, "data": data.to_dict(), "init": str(init) if init else None}))
    key["config"]["train"].pop("epochs", None)
    return key


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _validate(model: torch.nn.Module, va: CycleSet, cfg: LungCVTConfig, dev: torch.device, ctx: Any) -> np.ndarray:
    """Validation logits; under DDP each rank predicts every world_size-th cycle and the parts are gathered."""
    if ctx is None or not ctx.enabled:
        return predict_logits(model, va, cfg.features, dev, bf16=cfg.train.bf16)
    from medshared.distributed import all_gather_object, unwrap_model

    # the plain module: DDP's forward may broadcast buffers (a collective), and ranks can hold different numbers of
    # validation batches; the weights are the same on every rank
    idx = list(range(ctx.rank, len(va), ctx.world_size))
    plain = unwrap_model(model)
    part = predict_logits(plain, va.subset(idx), cfg.features, dev, bf16=cfg.train.bf16) if idx else None
    out = np.zeros((len(va), cfg.model.num_classes), dtype=np.float32)
    for r, p in enumerate(all_gather_object(part, ctx)):
        if p is not None:
            out[list(range(r, len(va), ctx.world_size))] = p
    return out


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

    Raises:
        DataError: bad data, a class missing from training (unless ``data.allow_missing_class``).
        ValueError: ``last_state.pt`` written under another config, a mismatched ``init`` checkpoint.
    """
    from medshared.distributed import init_distributed

    own_ctx = ctx is None
    if own_ctx:
        ctx = init_distributed(device)
    try:
        if cfg.model.pretrained and init is None:  # rank 0 downloads (if needed), then every rank reads the cache
            from medshared.distributed import barrier

            from lungcvt.model import resolve_weights

            if ctx.is_main:
                weights = resolve_weights(cfg.model.backbone, weights, offline=offline)
            barrier(ctx)
            weights = resolve_weights(cfg.model.backbone, weights, offline=True)
        return _train(
            cfg, data_dir, out_dir, data or DataOptions(), weights, init, cache_dir, num_workers, resume, progress, ctx
        )
    finally:
        if own_ctx:
            ctx.close()


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
) -> TrainResult:
    """The body of :func:`train`, inside its process-group guard."""
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import (
        all_gather_object,
        all_reduce_sum,
        barrier,
        effective_batch,
        rank_seed,
        scale_lr,
        set_sampler_epoch,
        shard_items,
        unwrap_model,
        wrap_model,
    )
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, seed_everything
    from tqdm.auto import tqdm

    tc = cfg.train
    dev = torch.device(ctx.device)
    main = ctx.is_main
    show = progress and main
    seed_everything(tc.seed)  # model init: the same seed on every rank
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    check_cqt(cfg.features)
    init_sd = load_init(init, cfg) if init is not None else None

    recs = select_recordings(data_dir, data, seed=tc.seed)
    test_counts = class_counts([r for r in recs if r.split == "test"])
    tr_recs, va_recs, split_info = validation_split(recs, tc.val_fraction, tc.seed, data.allow_missing_class)
    if ctx.enabled:  # fill the cache in parallel, each recording once, then everyone reads it
        for part in (tr_recs, va_recs):
            extract_cycles(shard_items(part, ctx.rank, ctx.world_size, key=lambda r: r.stem), cfg.features,
                           cache_dir, dev, progress=False)  # fmt: skip
        barrier(ctx)
    tr = extract_cycles(tr_recs, cfg.features, cache_dir, dev, show)
    va = extract_cycles(va_recs, cfg.features, cache_dir, dev, show)
    if tc.subset_fraction < 1.0:
        keep = stratified_subset(tr.labels, tc.subset_fraction, tc.seed)
        log.info("train.subset_fraction=%g: %d of %d training cycles (stratified)", tc.subset_fraction, len(keep),
                 len(tr))  # fmt: skip
        tr = tr.subset(keep)
    counts = tr.counts(cfg.model.num_classes)
    check_classes(counts, "the training cycles", data.allow_missing_class)

    model = LungCVT(cfg.model, weights=weights if init_sd is None else None)
    if init_sd is not None:
        model.load_state_dict(init_sd)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
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
    run_key = _run_key(cfg_dict, data, init)
    barrier(ctx)
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("run_key") != run_key:
            diff = _diff_keys(st.get("run_key") or {}, run_key)
            raise ValueError(
                f"{state_path} was written by a run with different settings ({', '.join(diff[:6]) or 'older format'});"
                " pass --no-resume to start over, or choose another --out"
            )
        unwrap_model(ddp_model).load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        rngs = st["rng"]
        if len(rngs) == ctx.world_size:
            _set_rng_state(rngs[ctx.rank], g, dev)
        else:
            log.warning("state saved by %d rank(s), resuming with %d: data order re-seeded", len(rngs), ctx.world_size)
        start_epoch, best_score, best_epoch = st["epoch"] + 1, st["best_score"], st["best_epoch"]
        best_val, history = st["best_val"], st["history"]
        if main:
            log.info("resumed from %s at epoch %d", state_path, start_epoch + 1)

    steps_per_epoch = len(dl)
    total = tc.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    schedule = tc.warmup_steps > 0 or tc.lr_schedule != "constant"
    for epoch in range(start_epoch, tc.epochs):
        set_sampler_epoch(sampler, epoch)
        ddp_model.train()
        tot, n = 0.0, 0
        for batch in tqdm(dl, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not show, leave=False):
            step_lr = lr_at(tc, step, total, lr) if schedule else None
            loss = train_step(ddp_model, opt, crit, batch, cfg, dev, ctx, step_lr, g)
            step += 1
            tot += loss * len(batch[2])
            n += len(batch[2])
        tot, n = all_reduce_sum(tot, ctx), all_reduce_sum(float(n), ctx)
        pred = _validate(ddp_model, va, cfg, dev, ctx).argmax(1)
        sc = _scores(va.labels, pred.tolist())
        row = {
            "epoch": epoch + 1,
            "train_loss": tot / max(n, 1),
            "val_icbhi_score": sc["icbhi"]["score"],
            "val_se": sc["icbhi"]["se"],
            "val_sp": sc["icbhi"]["sp"],
            "val_macro_ovr_score": sc["macro_ovr"]["score"],
            "val_accuracy": sc["icbhi"]["accuracy"],
        }
        history.append(row)
        improved = sc["icbhi"]["score"] > best_score
        if improved:
            best_score, best_epoch, best_val = sc["icbhi"]["score"], epoch + 1, sc
        rngs = all_gather_object(_rng_state(g, dev), ctx)
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
                    },
                )
            with atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": state_dict,
                        "optimizer": opt.state_dict(),
                        "epoch": epoch,
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "best_val": best_val,
                        "history": history,
                        "run_key": run_key,
                        "rng": rngs,
                    },
                    tmp,
                )
        barrier(ctx)
        if show:
            print(
                f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val ICBHI score {row['val_icbhi_score']:.4f}"
                f"  (Se {row['val_se']:.3f} Sp {row['val_sp']:.3f})",
                flush=True,
            )
    split = {
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
                "last_state_bytes": state_path.stat().st_size if state_path.is_file() else None,
                "config": cfg_dict,
                "lungcvt_version": __version__,
            },
        )
    barrier(ctx)
    return TrainResult(best_path, best_epoch, best_val, history, counts, len(va), split)


def with_overrides(cfg: LungCVTConfig, overrides: dict) -> LungCVTConfig:
    """Apply nested overrides (``{"train": {"lr": 1e-3}}``) through ``medshared.config.override_dataclass``."""
    from medshared.config import override_dataclass

    new = override_dataclass(cfg, overrides)
    return dataclasses.replace(new)  # re-run __post_init__ checks
