"""Stage 2 training: the classifier (L = L_cls + L_motion), grouped stratified k-fold cross-validation, resume.

Schedule [P §3]: Adam lr 1e-3, weight decay 1e-8, batch 16, ``epochs`` (20) epochs then ``epochs2`` (20) at 1e-4.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kfgnet.config import LABELS, ClassifierConfig, ClassifierTrainConfig, ClipConfig, MotionConfig, config_to_dict
from kfgnet.data import ClipDataset, VideoRecord
from kfgnet.losses import kfgnet_loss
from kfgnet.model import build_classifier

__all__ = ["train_classifier", "predict_clips", "cross_validate", "save_classifier", "load_classifier",
           "majority_chance"]


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def train_classifier(train_ds: ClipDataset, cfg: ClassifierConfig, tcfg: ClassifierTrainConfig,
                     device: torch.device, motion: MotionConfig | None = None, state_path: Path | None = None,
                     progress: bool = True, log: list[dict[str, Any]] | None = None) -> torch.nn.Module:
    """Train one classifier on ``train_ds``.

    Args:
        state_path: if given, model + optimizer + epoch are saved there (``torch.save`` via an atomic rename) after
            every epoch and training resumes from it when it exists.
        log: list receiving one dict per epoch (loss, cls, motion, seconds).

    Returns:
        the trained model (eval mode).
    """
    from medshared.runtime import atomic_path, autocast_context, seed_everything

    seed_everything(tcfg.seed)
    motion = motion or MotionConfig()
    model = build_classifier(cfg).to(device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs + tcfg.epochs2
    start = 0
    if state_path is not None and Path(state_path).is_file():
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start = int(st["epoch"])
    gen = torch.Generator().manual_seed(tcfg.seed)
    loader = DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=True, generator=gen, drop_last=False,
                        num_workers=tcfg.num_workers)
    it = range(start, total)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train classifier", unit="epoch", initial=start, total=total, leave=False)
    for epoch in it:
        lr = tcfg.lr if epoch < tcfg.epochs else tcfg.lr2
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        t0, sums, n = time.perf_counter(), {"loss": 0.0, "cls": 0.0, "motion": 0.0}, 0
        for x, y, vm in loader:
            if len(y) < 2 and any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) and n > 0:
                continue  # BatchNorm cannot train on a last batch of one clip
            x, y, vm = _to_device(x, device, tcfg.channels_last), y.to(device), vm.to(device)
            with autocast_context(device, tcfg.bf16):
                logits, v_temp = model(x)
            loss, parts = kfgnet_loss(logits, y, v_temp, vm, tcfg.lambda_motion, motion.centred)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = len(y)
            sums["loss"] += float(loss.detach()) * b
            sums["cls"] += parts["cls"] * b
            sums["motion"] += parts["motion"] * b
            n += b
        rec = {"epoch": epoch + 1, "lr": lr, **{k: v / max(n, 1) for k, v in sums.items()},
               "seconds": time.perf_counter() - t0}
        if log is not None:
            log.append(rec)
        if progress:
            it.set_postfix(loss=f"{rec['loss']:.3f}")
        if state_path is not None:
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}, tmp)
    return model.eval()


@torch.no_grad()
def predict_clips(model: torch.nn.Module, ds: ClipDataset, device: torch.device, batch_size: int = 8,
                  bf16: bool = False) -> np.ndarray:
    """P(malignant) per clip, ``(N,)`` float."""
    from medshared.runtime import autocast_context

    model.eval()
    out = []
    for x, _, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
        with autocast_context(device, bf16):
            logits, _ = model(x.to(device))
        out.append(torch.softmax(logits.float(), 1)[:, 1].cpu())
    return torch.cat(out).numpy()


def save_classifier(path: Path, model: torch.nn.Module, cfg: ClassifierConfig, clip: ClipConfig,
                    motion: MotionConfig, extra: dict[str, Any] | None = None) -> None:
    """Safetensors checkpoint with the model, clip and motion configs in its metadata."""
    from medshared.checkpoint import save_checkpoint

    save_checkpoint(path, model.state_dict(), {"model": config_to_dict(cfg), "clip": config_to_dict(clip),
                                               "motion": config_to_dict(motion)}, extra)


def load_classifier(path: Path, device: torch.device) -> tuple[torch.nn.Module, ClassifierConfig, ClipConfig,
                                                               MotionConfig]:
    """Rebuild a classifier from its checkpoint alone."""
    from medshared.checkpoint import load_checkpoint

    from kfgnet.config import config_from_dict

    sd, conf, _ = load_checkpoint(path)
    if "model" not in conf or "clip" not in conf:
        raise ValueError(f"{path} is not a kfgnet classifier checkpoint (no model/clip config in its metadata)")
    cfg = config_from_dict(ClassifierConfig, conf["model"])
    clip = config_from_dict(ClipConfig, conf["clip"])
    motion = config_from_dict(MotionConfig, conf.get("motion", {}))
    model = build_classifier(cfg)
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg, clip, motion


def majority_chance(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on ``test_labels`` of always predicting the training set's majority class (ties -> benign)."""
    maj = int(np.bincount(train_labels, minlength=2).argmax())
    return float(np.mean(test_labels == maj))


def cross_validate(records: list[VideoRecord], cfg: ClassifierConfig, tcfg: ClassifierTrainConfig,
                   clip: ClipConfig, device: torch.device, motion: MotionConfig | None = None,
                   out_dir: Path | None = None, key_frames: list[int] | None = None,
                   progress: bool = True, allow_pad: bool = True) -> dict[str, Any]:
    """Stratified k-fold cross-validation grouped by patient (``medshared.splits.stratified_group_kfold``).

    Clips and V_motion are decoded/computed once for all folds. Per fold: train, predict the held-out videos,
    binary metrics with malignant positive. With ``out_dir``, fold checkpoints (``fold{k}.safetensors``) and
    resumable training states are written there, and finished folds are skipped on a re-run.

    Returns:
        dict with ``folds`` (per-fold metrics), ``summary`` (mean/std per metric), ``predictions`` (per video),
        ``chance`` (mean majority-class accuracy over folds).
    """
    from medshared.metrics import aggregate, binary_metrics
    from medshared.runtime import atomic_write_json
    from medshared.splits import check_no_leak, stratified_group_kfold

    motion = motion or MotionConfig()
    cfg = replace(cfg, num_frames=clip.num_frames, size=clip.size)
    steps = cfg.attention_steps
    labels = np.array([r.label for r in records])
    groups = [r.patient_id for r in records]
    folds = stratified_group_kfold(labels.tolist(), groups, n_splits=tcfg.folds, seed=tcfg.seed)
    cache: dict[str, Any] = {}
    full = ClipDataset(records, clip, steps, motion, augment=False, key_frames=key_frames, allow_pad=allow_pad,
                       cache=cache, progress=progress)
    fold_metrics, preds = [], []
    for k, (tr, te) in enumerate(folds):
        check_no_leak({"train": [records[i].patient_id for i in tr], "test": [records[i].patient_id for i in te]},
                      {r.patient_id: r.patient_id for r in records})
        done = out_dir / f"fold{k}.json" if out_dir else None
        if done is not None and done.is_file():
            import json

            res = json.loads(done.read_text())
        else:
            sub = [records[i] for i in tr]
            kf = [key_frames[i] for i in tr] if key_frames is not None else None
            train_ds = ClipDataset(sub, clip, steps, motion, augment=True, flip_prob=tcfg.flip_prob,
                                   intensity_prob=tcfg.intensity_prob, key_frames=kf, allow_pad=allow_pad,
                                   seed=tcfg.seed + k, cache=cache)
            log: list[dict[str, Any]] = []
            state = out_dir / f"fold{k}.state.pt" if out_dir else None
            model = train_classifier(train_ds, cfg, replace(tcfg, seed=tcfg.seed + k), device, motion, state,
                                     progress, log)
            test_ds = torch.utils.data.Subset(full, te.tolist())
            test_ds.records = [records[i] for i in te]  # type: ignore[attr-defined]
            p = predict_clips(model, test_ds, device, bf16=tcfg.bf16)  # type: ignore[arg-type]
            y_pred = (p >= 0.5).astype(int)
            m = binary_metrics(labels[te], y_pred, positive=1)
            m["chance"] = majority_chance(labels[tr], labels[te])
            res = {"fold": k, "metrics": m, "log": log,
                   "predictions": [{"video": str(records[i].path), "label": LABELS[labels[i]],
                                    "p_malignant": float(pi), "pred": LABELS[yi], "fold": k}
                                   for i, pi, yi in zip(te, p, y_pred)]}
            if out_dir is not None:
                save_classifier(out_dir / f"fold{k}.safetensors", model, cfg, clip, motion, {"fold": k})
                atomic_write_json(done, res)
                if state is not None and state.is_file():
                    state.unlink()
        fold_metrics.append(res["metrics"])
        preds.extend(res["predictions"])
    summary = aggregate(fold_metrics)
    return {"folds": fold_metrics, "summary": summary, "predictions": preds,
            "chance": float(np.mean([m["chance"] for m in fold_metrics]))}
