"""Training of PoCaPNet on extracted features (paper §3.2; code: ``fit()``), in one process or under torchrun.

Batches are consecutive seconds of one operation (batch = time), Adam (lr 9e-6, weight decay 1e-6), early stopping
on the validation loss (patience 5), the best model saved at each improvement. Training resumes from ``last.pt``.

Streams. The training operations (sorted) are dealt round-robin to ``world_size x accumulate`` streams; stream
``j`` runs its operations one after the other, chunk by chunk, with its own delayed-estimation memory (reset at
each operation). An optimizer step takes the next chunk of every stream and averages their losses. One process with
``accumulate = 1`` is the official code (one stream: all operations in sorted order, one chunk per step). Under
torchrun (DDP, gloo on CPU / nccl on CUDA) rank ``r`` runs streams ``r*A .. r*A + A-1``; the gradients are
averaged over ranks, so ``torchrun --nproc_per_node=2`` with ``accumulate = 1`` takes the same steps as one process
with ``accumulate = 2`` (test). BatchNorm statistics are per chunk, as in the paper's method (each forward sees one
chunk of one operation), not synchronised (no SyncBatchNorm): a chunk's normalisation must not depend on the other
streams. DDP broadcasts rank 0's BatchNorm running statistics at every forward, so the saved running statistics
follow rank 0's chunks only (the documented difference from one process, which updates them with every chunk).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocapnet.config import FeatureConfig, PocapConfig
from pocapnet.features import FeatureOperation, check_compatible, feature_signature, load_feature_operation
from pocapnet.loop import load_chunk, make_streams, prefetch, prefetch_map, run_operation, train_step
from pocapnet.losses import LDAMLoss, build_criterion, class_counts
from pocapnet.model import DelayedMemory, PoCaPNet
from pocapnet.resume import load_resume, restore_resume, resume_key, rng_state
from pocapnet.splits import OFFICIAL_SPLIT, split_operations

__all__ = [
    "OFFICIAL_SPLIT",
    "split_operations",
    "prefetch",
    "run_operation",
    "model_config_for_features",
    "check_same_features",
    "check_checkpoint_features",
    "make_streams",
    "train_step",
    "fit",
    "load_model",
]


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[PoCaPNet, PocapConfig, dict]:
    """Rebuild a model from a checkpoint alone (weights + config in the safetensors metadata)."""
    from medshared.checkpoint import load_checkpoint

    state, config, extra = load_checkpoint(checkpoint)
    cfg = PocapConfig.from_dict(config)
    model = PoCaPNet(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg, extra


def model_config_for_features(cfg: PocapConfig, fop: FeatureOperation) -> PocapConfig:
    """The model's input dims and microphones, and the feature settings, as the stored features were made."""
    m = fop.meta
    model = dataclasses.replace(
        cfg.model,
        image_dim=int(m["image_dim"]),
        audio_dim=int(m["audio_dim"]),
        audio_frames=int(m["audio_frames"]),
        num_mics=len(fop.channels),
    )
    feats = {**dataclasses.asdict(cfg.features), **(m.get("features") or {}), "channels": tuple(fop.channels)}
    feats = {k: tuple(v) if isinstance(v, list) else v for k, v in feats.items()}
    return dataclasses.replace(cfg, model=model, features=FeatureConfig(**feats))


def check_same_features(ops: Sequence[FeatureOperation]) -> None:
    """All operations must share feature settings, extractor weights, channels and dims (else ``ValueError``)."""
    ref = ops[0]
    keys = ("features", "weights", "image_dim", "audio_dim", "audio_frames")
    for f in ops[1:]:
        bad = [k for k in keys if f.meta.get(k) != ref.meta.get(k)] + (
            ["channels"] if f.channels != ref.channels else []
        )
        if bad:
            raise ValueError(
                f"operations {ref.name} and {f.name} were extracted differently ({', '.join(bad)}); "
                "re-extract them with one configuration"
            )


def _acc(y: np.ndarray, p: np.ndarray) -> float:
    from pocapnet.config import TRANSITION

    keep = np.asarray(y) != TRANSITION
    return float(np.mean(np.asarray(y)[keep] == p[keep])) if keep.any() else float("nan")


def fit(
    feat_root: str | Path,
    out_dir: str | Path,
    cfg: PocapConfig,
    split: dict[str, list[str]],
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    ctx: Any = None,
    precision: str = "auto",
    workers: int = 1,
) -> dict[str, Any]:
    """Train with early stopping; rank 0 writes ``best.safetensors``, ``last.pt`` (resume state),
    ``history.{json,csv}``, ``config.json`` and ``train.json`` (world size, streams, effective batch, lr rule).

    Args:
        ctx: a :class:`medshared.distributed.DistContext` (None: one process on ``device``).
        precision: ``auto | fp32 | tf32 | bf16`` (:mod:`pocapnet.precision`, key ``pocapnet.train``): bf16 runs the
            model's forward under bf16 autocast; the losses are computed outside it from float64 logits. Recorded
            in ``train.json``; resuming under another precision is allowed (it is not part of the config).
        workers: threads loading feature chunks ahead (0: in the training thread); ``train.prefetch`` chunks ahead.

    Returns:
        ``{"history": [...], "best_epoch": int, "best_val_loss": float, "checkpoint": path, "config": cfg}``.
    """
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import (
        DistContext,
        all_gather_object,
        barrier,
        rank_seed,
        scale_lr,
        shard_items,
        unwrap_model,
        wrap_model,
    )
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, seed_everything
    from tqdm import tqdm

    from pocapnet.precision import resolve as resolve_precision

    ctx = ctx or DistContext(device=torch.device(device))
    device = torch.device(ctx.device)
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers} (--workers)")
    out_dir = Path(out_dir)
    if not split.get("train") or not split.get("val"):
        sizes = {k: len(v) for k, v in split.items()}
        raise ValueError(f"need at least one train and one validation operation, got {sizes}")
    train_ops = [load_feature_operation(feat_root, o) for o in split["train"]]
    val_ops = [load_feature_operation(feat_root, o) for o in split["val"]]
    for f in train_ops + val_ops:
        if f.labels is None:
            raise ValueError(f"operation {f.name} has features but no labels; add annotations and re-extract")
    check_same_features(train_ops + val_ops)
    cfg = model_config_for_features(cfg, train_ops[0])
    tc = cfg.train
    if tc.accumulate < 1:
        raise ValueError(f"train.accumulate must be >= 1, got {tc.accumulate}")
    prec = resolve_precision(precision, device, "pocapnet.train", cfg.model)
    if progress and ctx.is_main:
        print(f"precision {prec.name}: {prec.reason}")
    seed_everything(tc.seed)  # the same model init on every rank
    counts = class_counts([f.labels for f in train_ops])
    criterion = build_criterion(tc, counts, cfg.model).to(device)
    net = PoCaPNet(cfg.model).to(device)
    if ctx.enabled:
        torch.manual_seed(rank_seed(tc.seed, ctx))  # each rank its own dropout masks (init above is shared)
    n_streams = ctx.world_size * tc.accumulate
    if len(train_ops) < n_streams:
        raise ValueError(
            f"{len(train_ops)} training operations for {n_streams} streams (world size "
            f"{ctx.world_size} x accumulate {tc.accumulate}); every stream needs at least one operation"
        )
    lr = scale_lr(tc.lr, 1, n_streams, tc.lr_rule)  # the recipe's lr is for one chunk per step
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=tc.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, best, bad, best_epoch = 0, float("inf"), 0, -1
    last_path, best_path = out_dir / "last.pt", out_dir / "best.safetensors"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    if resume and last_path.is_file():
        st = load_resume(last_path)  # on the CPU: the RNG states must stay CPU ByteTensors
        if resume_key(st.get("config") or {}, st.get("world_size", 1)) == resume_key(cfg.to_dict(), ctx.world_size):
            restore_resume(st, net, opt, ctx.rank, device)
            start_epoch, best, bad, best_epoch = st["epoch"] + 1, st["best"], st["bad"], st["best_epoch"]
            history = st["history"]
            if progress and ctx.is_main:
                print(f"resuming from {last_path} at epoch {start_epoch}")
        elif progress and ctx.is_main:
            print(f"{last_path} was written with another config or world size; starting afresh")
    model = wrap_model(net, ctx)
    meta = {
        "counts": counts.tolist(),
        "split": split,
        "feature_meta": train_ops[0].meta,
        "features": feature_signature(cfg.features),
        "weights": train_ops[0].meta.get("weights"),
    }
    run_info = {
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "streams": n_streams,
        "accumulate": tc.accumulate,
        "chunk_seconds": tc.batch_size,
        "effective_batch_chunks": n_streams,
        "effective_batch_seconds": n_streams * tc.batch_size,
        "lr_recipe": tc.lr,
        "lr_rule": tc.lr_rule,
        "lr": lr,
        "sync_batchnorm": False,
        "precision": prec.as_dict(),
        "workers": workers,
    }
    streams = make_streams(train_ops, n_streams, tc.batch_size)
    mine = list(range(ctx.rank * tc.accumulate, (ctx.rank + 1) * tc.accumulate))
    n_steps = max(len(s) for s in streams)
    val_mine = shard_items(val_ops, ctx.rank, ctx.world_size, key=lambda f: f.name)
    use_audio = "audio" in cfg.model.modalities
    pin = device.type == "cuda"  # chunks loaded into pinned host memory: non_blocking copies to the GPU

    def load_step(step: list) -> list:
        return [None if c is None else load_chunk(c, cfg.model.num_images, use_audio, pin) for c in step]

    bar = tqdm(
        range(start_epoch, tc.max_epochs),
        desc="train",
        unit="epoch",
        disable=not (progress and ctx.is_main),
        initial=start_epoch,
        total=tc.max_epochs,
    )
    for epoch in bar:
        if bad >= tc.patience:
            break
        if isinstance(criterion, LDAMLoss) and tc.ldam_drw_epoch > 0:
            criterion.set_reweight(epoch >= tc.ldam_drw_epoch)
            if epoch == tc.ldam_drw_epoch:  # the loss changed: early stopping starts over (LDAM-DRW)
                best, bad = float("inf"), 0
        t0 = time.perf_counter()
        model.train()
        memories = [DelayedMemory(cfg.model.hidden_dim, device) for _ in mine]
        plan = ([streams[j][s] if s < len(streams[j]) else None for j in mine] for s in range(n_steps))
        tr: list[torch.Tensor] = []  # losses stay on the device: one host sync per epoch
        dummy = None
        for chunks in prefetch_map(load_step, plan, workers if tc.prefetch > 0 else 0, tc.prefetch):
            for i, c in enumerate(chunks):
                if c is not None and c[1] == 0:
                    memories[i].reset()  # a new operation starts in this stream
                if c is not None:
                    dummy = c
            opt.zero_grad(set_to_none=True)
            tr += train_step(
                model,
                chunks,
                memories,
                criterion,
                n_streams,
                device,
                (tc.smooth_weight, tc.smooth_tau),
                dummy,
                autocast=prec.autocast,
            )
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            opt.step()
        model.eval()
        with torch.no_grad():
            vr = [
                (
                    f.name,
                    run_operation(
                        net,
                        f,
                        tc.batch_size,
                        device,
                        criterion,
                        prefetch_depth=tc.prefetch,
                        smooth_weight=tc.smooth_weight,
                        smooth_tau=tc.smooth_tau,
                        autocast=prec.autocast,
                        workers=workers,
                    ),
                    f.labels,
                )
                for f in val_mine
            ]
        tr_host = torch.stack(tr).cpu().tolist() if tr else []  # the epoch's one host sync of the train losses
        gathered = all_gather_object(([(n, r["loss"], _acc(y, r["pred"])) for n, r, y in vr], tr_host), ctx)
        vals = sorted((v for g in gathered for v in g[0]), key=lambda v: v[0])
        tr_all = [x for g in gathered for x in g[1]]
        val_loss = float(np.mean([v[1] for v in vals]))
        val_acc = float(np.mean([v[2] for v in vals]))
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(tr_all)),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        if val_loss < best:
            best, bad, best_epoch = val_loss, 0, epoch
            if ctx.is_main:
                save_checkpoint(
                    best_path,
                    net.state_dict(),
                    cfg.to_dict(),
                    extra={**meta, "epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc},
                )
        else:
            bad += 1
        rngs = all_gather_object(rng_state(device), ctx)
        if ctx.is_main:
            with atomic_path(last_path) as tmp:
                torch.save(
                    {
                        "model": unwrap_model(model).state_dict(),
                        "optimizer": opt.state_dict(),
                        "epoch": epoch,
                        "best": best,
                        "bad": bad,
                        "best_epoch": best_epoch,
                        "history": history,
                        "rng": rngs[0]["cpu"],
                        "rng_per_rank": rngs,
                        "config": cfg.to_dict(),
                        "world_size": ctx.world_size,
                    },
                    tmp,
                )
        barrier(ctx)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{val_loss:.3f}", acc=f"{val_acc:.3f}")
    if ctx.is_main:
        atomic_write_json(out_dir / "history.json", history)
        if history:
            atomic_write_csv(out_dir / "history.csv", history)
        atomic_write_json(out_dir / "config.json", cfg.to_dict())
        atomic_write_json(
            out_dir / "train.json",
            {**run_info, "epochs_run": len(history), "best_epoch": best_epoch, "best_val_loss": best},
        )
    barrier(ctx)
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_loss": best,
        "checkpoint": str(best_path),
        "config": cfg,
        "run": run_info,
    }


def check_checkpoint_features(extra: dict[str, Any], cfg: PocapConfig, fop: FeatureOperation) -> None:
    """``check_compatible`` of a feature folder against a checkpoint (its recorded settings and weights)."""
    check_compatible(
        fop.meta,
        extra.get("features") or feature_signature(cfg.features),
        extra.get("weights"),
        f"features of {fop.name}",
    )
