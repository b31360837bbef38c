"""Training of PoCaPNet on extracted features (paper §3.2; code: ``fit()``).

Batches are consecutive seconds of one operation (batch = time), operations in sorted order every epoch, Adam
(lr 9e-6, weight decay 1e-6), early stopping on the validation loss (patience 5), the best model saved at each
improvement. Training resumes from ``last.pt`` after an interruption.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocapnet.config import PocapConfig
from pocapnet.features import FeatureOperation, load_feature_operation
from pocapnet.losses import build_criterion, class_counts, stage_loss
from pocapnet.model import DelayedMemory, PoCaPNet

#: The official code's split (Random(1881), double shuffle of the "mid" list; brief "Split"): 16/6/5 operations.
OFFICIAL_SPLIT: dict[str, list[str]] = {
    "train": [f"OP_{i:03d}" for i in (1, 4, 5, 7, 10, 14, 15, 16, 17, 26, 27, 31, 35, 36, 39, 40)],
    "val": [f"OP_{i:03d}" for i in (6, 12, 19, 25, 29, 38)],
    "test": [f"OP_{i:03d}" for i in (28, 30, 32, 33, 34)],
}

__all__ = ["OFFICIAL_SPLIT", "split_operations", "run_operation", "model_config_for_features", "fit", "load_model"]


def split_operations(ops: list[str], cfg: PocapConfig, split_file: str | Path | None = None) -> dict[str, list[str]]:
    """60/20/20 random split by operation (medshared, seeded), an explicit manifest (``medshared.splits``), or
    ``"official"`` for the official code's 16/6/5 lists (:data:`OFFICIAL_SPLIT`)."""
    from medshared.splits import load_split, ratio_split

    if split_file is not None:
        split = OFFICIAL_SPLIT if str(split_file) == "official" else load_split(split_file)
        unknown = sorted(set(sum(split.values(), [])) - set(ops))
        if unknown:
            raise ValueError(f"split file {split_file} names operations without features: {unknown[:5]}")
        return {k: sorted(split.get(k, [])) for k in ("train", "val", "test")}
    split = ratio_split(sorted(ops), cfg.train.split_ratios, seed=cfg.train.seed)
    return {k: sorted(v) for k, v in split.items()}


def model_config_for_features(cfg: PocapConfig, fop: FeatureOperation) -> PocapConfig:
    """Set the model's input dims from the stored features (image/audio dims, frames per window)."""
    m = fop.meta
    model = dataclasses.replace(cfg.model, image_dim=int(m["image_dim"]), audio_dim=int(m["audio_dim"]),
                                audio_frames=int(m["audio_frames"]))
    return dataclasses.replace(cfg, model=model)


def run_operation(model: PoCaPNet, fop: FeatureOperation, batch_size: int, device: torch.device | str,
                  criterion: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                  grad_clip: float = 0.0) -> dict[str, Any]:
    """Run one operation chunk by chunk, with the delayed-estimation memory reset at its start.

    Returns a dict with ``loss`` (mean over chunks, nan without criterion), ``pred`` ``(T,)`` last-stage argmax and
    ``prob`` ``(T, C)`` softmax of the last stage.
    """
    device = torch.device(device)
    memory = DelayedMemory(model.cfg.hidden_dim, device)  # reset per operation (code: y_prev zeroed)
    losses, preds, probs = [], [], []
    T = len(fop)
    for start in range(0, T, batch_size):
        stop = min(start + batch_size, T)
        imgs, aud = fop.chunk(start, stop, model.cfg.num_images)
        imgs, aud = imgs.to(device), aud.to(device)
        pos = torch.arange(start, stop, device=device)
        with torch.set_grad_enabled(optimizer is not None):
            out = model(imgs, aud, pos, memory.vector if model.cfg.delayed_estimation else None)
            if criterion is not None and fop.labels is not None:
                target = torch.as_tensor(np.asarray(fop.labels[start:stop]), device=device)
                loss = stage_loss(criterion, out.logits.double(), target)  # code: float64 logits
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                losses.append(float(loss.detach()))
        last = out.logits[-1].detach()  # (B, C)
        pred = last.argmax(dim=1)
        memory.update(pred)
        preds.append(pred.cpu().numpy())
        probs.append(torch.softmax(last.float(), dim=1).cpu().numpy())
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "pred": np.concatenate(preds),
            "prob": np.concatenate(probs)}


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[PoCaPNet, PocapConfig, dict]:
    """Rebuild a model from a checkpoint alone (weights + config in the safetensors metadata)."""
    from medshared.checkpoint import load_checkpoint

    state, config, extra = load_checkpoint(checkpoint)
    cfg = PocapConfig.from_dict(config)
    model = PoCaPNet(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg, extra


def fit(feat_root: str | Path, out_dir: str | Path, cfg: PocapConfig, split: dict[str, list[str]],
        device: str | torch.device = "cpu", resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train with early stopping; writes ``best.safetensors``, ``last.pt`` (resume state) and ``history.{json,csv}``.

    Returns:
        ``{"history": [...], "best_epoch": int, "best_val_loss": float, "checkpoint": path, "config": cfg}``.
    """
    from medshared.checkpoint import save_checkpoint
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, seed_everything
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    if not split.get("train") or not split.get("val"):
        sizes = {k: len(v) for k, v in split.items()}
        raise ValueError(f"need at least one train and one validation operation, got {sizes}")
    train_ops = [load_feature_operation(feat_root, o) for o in split["train"]]
    val_ops = [load_feature_operation(feat_root, o) for o in split["val"]]
    for f in train_ops + val_ops:
        if f.labels is None:
            raise ValueError(f"operation {f.name} has features but no labels; add annotations and re-extract")
    cfg = model_config_for_features(cfg, train_ops[0])
    tc = cfg.train
    seed_everything(tc.seed)
    counts = class_counts([f.labels for f in train_ops])
    criterion = build_criterion(tc, counts).to(device)
    model = PoCaPNet(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, best, bad, best_epoch = 0, float("inf"), 0, -1
    last_path, best_path = out_dir / "last.pt", out_dir / "best.safetensors"
    if resume and last_path.is_file():
        st = torch.load(last_path, map_location=device, weights_only=False)
        if _resume_key(st.get("config") or {}) == _resume_key(cfg.to_dict()):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            start_epoch, best, bad, best_epoch = st["epoch"] + 1, st["best"], st["bad"], st["best_epoch"]
            history = st["history"]
            torch.set_rng_state(st["rng"])
            if progress:
                print(f"resuming from {last_path} at epoch {start_epoch}")
        elif progress:
            print(f"{last_path} was written with another config; starting afresh")
    meta = {"counts": counts.tolist(), "split": split, "feature_meta": train_ops[0].meta}
    bar = tqdm(range(start_epoch, tc.max_epochs), desc="train", unit="epoch", disable=not progress,
               initial=start_epoch, total=tc.max_epochs)
    for epoch in bar:
        if bad >= tc.patience:
            break
        t0 = time.perf_counter()
        model.train()
        tr = [run_operation(model, f, tc.batch_size, device, criterion, opt, tc.grad_clip)["loss"] for f in train_ops]
        model.eval()
        with torch.no_grad():
            vr = [run_operation(model, f, tc.batch_size, device, criterion) for f in val_ops]
        val_loss = float(np.mean([r["loss"] for r in vr]))
        val_acc = float(np.mean([_acc(f.labels, r["pred"]) for f, r in zip(val_ops, vr, strict=True)]))
        row = {"epoch": epoch, "train_loss": float(np.mean(tr)), "val_loss": val_loss, "val_accuracy": val_acc,
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        if val_loss < best:
            best, bad, best_epoch = val_loss, 0, epoch
            save_checkpoint(best_path, model.state_dict(), cfg.to_dict(),
                            extra={**meta, "epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc})
        else:
            bad += 1
        with atomic_path(last_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
                        "bad": bad, "best_epoch": best_epoch, "history": history, "rng": torch.get_rng_state(),
                        "config": cfg.to_dict()}, tmp)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{val_loss:.3f}", acc=f"{val_acc:.3f}")
    atomic_write_json(out_dir / "history.json", history)
    if history:
        atomic_write_csv(out_dir / "history.csv", history)
    atomic_write_json(out_dir / "config.json", cfg.to_dict())
    return {"history": history, "best_epoch": best_epoch, "best_val_loss": best, "checkpoint": str(best_path),
            "config": cfg}


def _resume_key(d: dict[str, Any]) -> dict[str, Any]:
    """Config fields that must match to resume (max_epochs/patience may change between runs)."""
    train = {k: v for k, v in d.get("train", {}).items() if k not in ("max_epochs", "patience")}
    return {"model": d.get("model"), "features": d.get("features"), "train": train}


def _acc(y: np.ndarray, p: np.ndarray) -> float:
    from pocapnet.config import TRANSITION

    keep = np.asarray(y) != TRANSITION
    return float(np.mean(np.asarray(y)[keep] == p[keep])) if keep.any() else float("nan")

