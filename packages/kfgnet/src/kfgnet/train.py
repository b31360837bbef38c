"""Stage 2 training: the classifier (L = L_cls + L_motion), grouped stratified k-fold cross-validation, resume.

Schedule [P §3]: Adam lr 1e-3, weight decay 1e-8, batch 16, ``epochs`` (20) epochs then ``epochs2`` (20) at 1e-4.

Resume: every epoch's state and every finished fold carries the hash of the config (model, clip, motion, training,
videos and key frames) that made it; a re-run under another config is refused (``StaleRunError``) unless
``restart``. Under torchrun the model is wrapped in DDP (``medshared.distributed``): ``train.batch_size`` is the
effective batch, split evenly over the ranks (lr unchanged); BatchNorm3d normalises over each rank's own clips
(SyncBatchNorm needs CUDA: ``train.sync_bn`` turns it on there); rank 0 writes states, checkpoints and results.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kfgnet.classifier_io import load_classifier, predict_clips, save_classifier
from kfgnet.clips import ClipDataset, KeyFrame, record_keyframe
from kfgnet.config import LABELS, ClassifierConfig, ClassifierTrainConfig, ClipConfig, MotionConfig, config_to_dict
from kfgnet.data import VideoRecord
from kfgnet.losses import kfgnet_loss
from kfgnet.model import build_classifier
from kfgnet.runstate import check_resumable, config_hash

__all__ = [
    "train_classifier",
    "predict_clips",
    "cross_validate",
    "save_classifier",
    "load_classifier",
    "majority_chance",
    "classifier_run_hash",
]


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def _context(device: Any) -> Any:
    from medshared.distributed import DistContext

    return device if isinstance(device, DistContext) else DistContext(device=torch.device(device))


def classifier_run_hash(
    cfg: ClassifierConfig,
    tcfg: ClassifierTrainConfig,
    clip: ClipConfig,
    motion: MotionConfig,
    records: list[VideoRecord],
    keys: list[KeyFrame],
) -> str:
    """Hash of everything that determines a trained classifier (configs, videos, labels, key frames and boxes)."""
    return config_hash(
        {
            "model": config_to_dict(cfg),
            "train": config_to_dict(tcfg),
            "clip": config_to_dict(clip),
            "motion": config_to_dict(motion),
            "videos": [[str(r.path), r.label, k.frame, k.box, k.source] for r, k in zip(records, keys)],
        }
    )


def train_classifier(
    train_ds: ClipDataset,
    cfg: ClassifierConfig,
    tcfg: ClassifierTrainConfig,
    device: Any,
    motion: MotionConfig | None = None,
    state_path: Path | None = None,
    progress: bool = True,
    log: list[dict[str, Any]] | None = None,
    run_hash: str = "",
    restart: bool = False,
) -> torch.nn.Module:
    """Train one classifier on ``train_ds``.

    Args:
        device: a ``torch.device`` / name, or a ``medshared.distributed.DistContext`` (DDP under torchrun).
        state_path: if given, model + optimizer + epoch (+ ``run_hash``) are saved there (``torch.save`` via an atomic
            rename) after every epoch, and training resumes from it when it exists and its hash matches.
        log: list receiving one dict per epoch (loss, cls, motion, seconds).
        run_hash: config hash stored with the state (see :func:`classifier_run_hash`).
        restart: ignore a state of another config instead of refusing it.

    Returns:
        the trained model (eval mode; the plain module, not the DDP wrapper).
    """
    from medshared.distributed import (
        barrier,
        make_sampler,
        rank_seed,
        set_sampler_epoch,
        unwrap_model,
        wrap_model,
    )
    from medshared.runtime import atomic_path, autocast_context, seed_everything

    from kfgnet.devices import loader_kwargs

    ctx = _context(device)
    dev = torch.device(ctx.device)
    if tcfg.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size {tcfg.batch_size} does not split over {ctx.world_size} processes; use a "
            f"multiple of {ctx.world_size} (it is the effective batch)"
        )
    seed_everything(tcfg.seed)  # the same initial weights on every rank
    motion = motion or MotionConfig()
    model = build_classifier(cfg).to(dev)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs + tcfg.epochs2
    start = 0
    if state_path is not None and Path(state_path).is_file():
        # on the CPU: Adam's "step" counters must stay CPU tensors (load_state_dict moves the moments to the
        # parameters' device); loaded onto a GPU they cost one host sync per parameter per step
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if check_resumable(Path(state_path), st.get("config_hash"), run_hash, restart):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            start = int(st["epoch"])
            if log is not None:
                log.extend(st.get("log", []))
    barrier(ctx)  # every rank read the state before rank 0 overwrites it
    ddp = wrap_model(model, ctx, sync_batchnorm=tcfg.sync_bn and dev.type == "cuda")
    sampler = make_sampler(train_ds, ctx, shuffle=True, seed=tcfg.seed)
    gen = torch.Generator().manual_seed(rank_seed(tcfg.seed, ctx))
    loader = DataLoader(
        train_ds,
        batch_size=tcfg.batch_size // ctx.world_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen,
        drop_last=False,
        **{**loader_kwargs(dev, tcfg.num_workers), "persistent_workers": False},  # workers re-seeded per epoch (resume)
    )
    bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    it: Any = range(start, total)
    if progress and ctx.is_main:
        from tqdm import tqdm

        it = tqdm(it, desc="train classifier", unit="epoch", initial=start, total=total, leave=False)
    history = log if log is not None else []
    for epoch in it:
        torch.manual_seed(rank_seed(tcfg.seed, ctx) * 1000 + epoch)  # augmentation of epoch k, also after a resume
        gen.manual_seed(rank_seed(tcfg.seed, ctx) * 1000 + epoch)
        set_sampler_epoch(sampler, epoch)
        lr = tcfg.lr if epoch < tcfg.epochs else tcfg.lr2
        for g in opt.param_groups:
            g["lr"] = lr
        ddp.train()
        t0, n = time.perf_counter(), 0
        sums = torch.zeros(3, device=dev)  # loss, cls, motion summed over clips, on the device: no per-step sync
        for x, y, vm in loader:
            if len(y) < 2 and bn and n > 0 and not ctx.enabled:
                continue  # BatchNorm cannot train on a last batch of one clip
            x = _to_device(x, dev, tcfg.channels_last)
            y, vm = y.to(dev, non_blocking=True), vm.to(dev, non_blocking=True)
            with autocast_context(dev, tcfg.bf16):
                logits, v_temp = ddp(x)
            loss, parts = kfgnet_loss(logits, y, v_temp, vm, tcfg.lambda_motion, motion.centred)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = len(y)
            sums += torch.stack([loss.detach(), parts["cls"], parts["motion"]]).float() * b
            n += b
        mean = (sums / max(n, 1)).tolist()  # the epoch's one host sync
        rec = {
            "epoch": epoch + 1,
            "lr": lr,
            **dict(zip(("loss", "cls", "motion"), mean)),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        if progress and ctx.is_main:
            it.set_postfix(loss=f"{rec['loss']:.3f}")
        if state_path is not None and ctx.is_main:
            with atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": unwrap_model(ddp).state_dict(),
                        "optimizer": opt.state_dict(),
                        "epoch": epoch + 1,
                        "config_hash": run_hash,
                        "log": history,
                    },
                    tmp,
                )
        barrier(ctx)
    return unwrap_model(ddp).eval()


def majority_chance(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on ``test_labels`` of always predicting the training set's majority class (ties -> benign)."""
    maj = int(np.bincount(train_labels, minlength=2).argmax())
    return float(np.mean(test_labels == maj))


def cross_validate(
    records: list[VideoRecord],
    cfg: ClassifierConfig,
    tcfg: ClassifierTrainConfig,
    clip: ClipConfig,
    device: Any,
    motion: MotionConfig | None = None,
    out_dir: Path | None = None,
    keys: list[KeyFrame] | None = None,
    progress: bool = True,
    allow_pad: bool = True,
    restart: bool = False,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Stratified k-fold cross-validation grouped by patient (``medshared.splits.stratified_group_kfold``).

    Clips and V_motion are decoded/computed once for all folds. Per fold: train, predict the held-out videos,
    binary metrics with malignant positive (+ AUROC). The pooled out-of-fold predictions get accuracy,
    sensitivity, specificity and AUROC with percentile-bootstrap 95 % CIs resampling patients
    (``medshared.bootstrap``). With ``out_dir``, fold checkpoints (``fold{k}.safetensors``), results
    (``fold{k}.json``) and resumable states are written there; a finished fold is reused only when its config hash
    matches (else refused, or redone with ``restart``).

    Args:
        keys: key frame + box per video (e.g. stage-1 predictions); default: the annotation.
        device: a device, or a ``DistContext`` (DDP; rank 0 writes).

    Returns:
        dict with ``folds`` (per-fold metrics), ``summary`` (mean/std per metric), ``pooled`` (bootstrap CIs),
        ``predictions`` (per video), ``chance`` (mean majority-class accuracy over folds), ``config_hash``.
    """
    import json

    from medshared.bootstrap import auroc, binary_metrics_ci
    from medshared.metrics import aggregate, binary_metrics
    from medshared.runtime import atomic_write_json
    from medshared.splits import check_no_leak, stratified_group_kfold

    ctx = _context(device)
    dev = torch.device(ctx.device)
    motion = motion or MotionConfig()
    cfg = replace(cfg, num_frames=clip.num_frames, size=clip.size)
    steps = cfg.attention_steps
    keys = keys if keys is not None else [record_keyframe(r, clip) for r in records]
    labels = np.array([r.label for r in records])
    groups = [r.patient_id for r in records]
    folds = stratified_group_kfold(labels.tolist(), groups, n_splits=tcfg.folds, seed=tcfg.seed)
    cache: dict[str, Any] = {}
    full = ClipDataset(
        records,
        clip,
        steps,
        motion,
        augment=False,
        keys=keys,
        allow_pad=allow_pad,
        cache=cache,
        progress=progress and ctx.is_main,
    )
    fold_metrics, preds = [], []
    for k, (tr, te) in enumerate(folds):
        check_no_leak(
            {"train": [records[i].patient_id for i in tr], "test": [records[i].patient_id for i in te]},
            {r.patient_id: r.patient_id for r in records},
        )
        tk = replace(tcfg, seed=tcfg.seed + k)
        run_hash = classifier_run_hash(cfg, tk, clip, motion, [records[i] for i in tr], [keys[i] for i in tr])
        done = out_dir / f"fold{k}.json" if out_dir else None
        res = None
        if done is not None and done.is_file():
            old = json.loads(done.read_text())
            if check_resumable(done, old.get("config_hash"), run_hash, restart):
                res = old
        if res is None:
            train_ds = ClipDataset(
                [records[i] for i in tr],
                clip,
                steps,
                motion,
                augment=True,
                flip_prob=tcfg.flip_prob,
                intensity_prob=tcfg.intensity_prob,
                keys=[keys[i] for i in tr],
                allow_pad=allow_pad,
                cache=cache,
            )
            log: list[dict[str, Any]] = []
            state = out_dir / f"fold{k}.state.pt" if out_dir else None
            model = train_classifier(train_ds, cfg, tk, ctx, motion, state, progress, log, run_hash, restart)
            p = predict_clips(model, torch.utils.data.Subset(full, te.tolist()), dev, bf16=tcfg.bf16)
            y_pred = (p >= 0.5).astype(int)
            m = binary_metrics(labels[te], y_pred, positive=1)
            m["auroc"] = auroc(labels[te], p, positive=1)
            m["chance"] = majority_chance(labels[tr], labels[te])
            res = {
                "fold": k,
                "metrics": m,
                "log": log,
                "config_hash": run_hash,
                "predictions": [
                    {
                        "video": str(records[i].path),
                        "patient_id": records[i].patient_id,
                        "label": LABELS[labels[i]],
                        "p_malignant": float(pi),
                        "pred": LABELS[yi],
                        "fold": k,
                        "key_frame": keys[i].frame,
                        "key_source": keys[i].source,
                    }
                    for i, pi, yi in zip(te, p, y_pred)
                ],
            }
            if out_dir is not None and ctx.is_main:
                save_classifier(
                    out_dir / f"fold{k}.safetensors", model, cfg, clip, motion, {"fold": k, "config_hash": run_hash}
                )
                atomic_write_json(done, res)
                if state is not None and state.is_file():
                    state.unlink()
        fold_metrics.append(res["metrics"])
        preds.extend(res["predictions"])
    summary = aggregate(fold_metrics)
    y = np.array([LABELS.index(p["label"]) for p in preds])
    s = np.array([p["p_malignant"] for p in preds])
    pooled = binary_metrics_ci(
        y, s, positive=1, threshold=0.5, n_boot=n_boot, seed=tcfg.seed, groups=[p["patient_id"] for p in preds]
    )
    return {
        "folds": fold_metrics,
        "summary": summary,
        "pooled": pooled,
        "predictions": preds,
        "chance": float(np.mean([m["chance"] for m in fold_metrics])),
    }
