"""Training (paper IV-B/C): Adam, class-balanced CE, mixup, model selection on the validation ICBHI Score.

Validation is a patient-disjoint part of the official training split (the code's validation reused training
cycles, brief section 4). Training resumes from ``OUT/last_state.pt`` after an interruption.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lungcvt import __version__
from lungcvt.config import CLASSES, FeatureConfig, LungCVTConfig, TrainConfig
from lungcvt.data import Recording, check_cycles_within, load_audio, load_dataset, validation_split
from lungcvt.features import FeatureCache, check_cqt, compute_features, to_image
from lungcvt.losses import ClassBalancedCE, mixup_batch
from lungcvt.model import LungCVT

__all__ = ["CycleSet", "extract_cycles", "CycleDataset", "predict_logits", "train", "TrainResult"]

log = logging.getLogger(__name__)


@dataclass
class CycleSet:
    """Cycles with their pre-resize features [3, 96, T_i] and metadata."""

    feats: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    patients: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int = 4) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=int), minlength=n_classes).tolist()


def extract_cycles(
    recordings: Sequence[Recording],
    cfg: FeatureConfig,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CycleSet:
    """Load each recording at ``cfg.sample_rate``, cut its cycles and compute (or fetch cached) features.

    Raises:
        DataError: unreadable audio, a cycle beyond the end of its audio; FeatureError: CQT above Nyquist.
    """
    from tqdm.auto import tqdm

    check_cqt(cfg)
    cache = FeatureCache(cache_dir, cfg) if cache_dir is not None else None
    out = CycleSet()
    for rec in tqdm(recordings, desc="recordings", disable=not progress, leave=False):
        spans = np.array([[c.start, c.end] for c in rec.cycles], dtype=np.float64)
        feats = cache.get(rec.stem, rec.wav, spans) if cache else None
        if feats is None:
            audio, sr = load_audio(rec.wav, cfg.sample_rate)
            cycles = check_cycles_within(rec, len(audio) / sr)
            pieces = [
                audio[int(round(c.start * sr)) : max(int(round(c.end * sr)), int(round(c.start * sr)) + 1)]
                for c in cycles
            ]
            feats = compute_features(pieces, cfg, device=device)
            if cache:
                cache.put(rec.stem, rec.wav, spans, feats)
        for c, f in zip(rec.cycles, feats):
            out.feats.append(f.astype(np.float32))
            out.labels.append(c.label)
            out.stems.append(rec.stem)
            out.starts.append(c.start)
            out.ends.append(c.end)
            out.patients.append(rec.info.patient)
            out.devices.append(rec.info.device)
    return out


class CycleDataset(Dataset):
    """Resized, normalised feature images: item -> (float32 [3, S, S], int label)."""

    def __init__(
        self, cycles: CycleSet, cfg: FeatureConfig, time_roll: bool = False, generator: torch.Generator | None = None
    ) -> None:
        self.cycles, self.cfg, self.time_roll, self.generator = cycles, cfg, time_roll, generator

    def __len__(self) -> int:
        return len(self.cycles)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = to_image(self.cycles.feats[i], self.cfg)  # [3, S, S] (frequency, time)
        if self.time_roll:  # training augmentation: the cycle rotated in time, events keep their shape and pitch
            shift = int(torch.randint(img.shape[-1], (1,), generator=self.generator))
            img = torch.roll(img, shift, dims=-1)
        return img, int(self.cycles.labels[i])


@torch.no_grad()
def predict_logits(
    model: LungCVT,
    cycles: CycleSet,
    cfg: FeatureConfig,
    device: torch.device,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Logits [N, C] for every cycle, in order."""
    from medshared.runtime import autocast_context
    from tqdm.auto import tqdm

    model.eval()
    dl = DataLoader(CycleDataset(cycles, cfg), batch_size=batch_size, shuffle=False)
    out = []
    for x, _ in tqdm(dl, desc="predict", disable=not progress, leave=False):
        with autocast_context(device, bf16):
            out.append(model(x.to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.num_classes), dtype=np.float32)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    best_checkpoint: Path
    best_epoch: int
    best_val: dict
    history: list[dict]
    train_counts: list[int]
    n_val: int


def _scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    from medshared.metrics import icbhi_scores

    return {
        v: icbhi_scores(list(y_true), list(y_pred), variant=v, labels=CLASSES)
        for v in ("icbhi", "macro_ovr", "two_class")
    }


def lr_at(tc: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
    if tc.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lr


def _resumable(saved: dict | None, current: dict) -> bool:
    """Same config apart from ``train.epochs`` (so an interrupted or extended run continues)."""
    if saved is None:
        return False
    a, b = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    a["train"].pop("epochs", None)
    b["train"].pop("epochs", None)
    return a == b


def train(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    split_file: str | Path | None = None,
    device: str = "auto",
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_partial: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train LungCVT on an ICBHI-layout folder; writes ``best.safetensors``, ``history.csv``, ``train.json``.

    Args:
        cfg: full configuration (paper defaults in :mod:`lungcvt.config`).
        data_dir: ICBHI folder (``*.wav`` + ``*.txt``; split file inside or given).
        out_dir: output folder.
        split_file: official split file (default: found next to the data).
        device: ``auto``, ``cpu`` or ``cuda``.
        weights: DeiT ImageNet weights file when ``cfg.model.pretrained``.
        cache_dir: feature cache (default ``out_dir/feature_cache``).
        allow_partial: accept split entries without recordings.
        resume: continue from ``out_dir/last_state.pt`` when it exists and the config matches.
        progress: tqdm bars.
    """
    from medshared.checkpoint import save_checkpoint
    from medshared.runtime import (
        atomic_path,
        atomic_write_csv,
        atomic_write_json,
        autocast_context,
        resolve_device,
        seed_everything,
    )
    from tqdm.auto import tqdm

    tc = cfg.train
    dev = resolve_device(device)
    seed_everything(tc.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    check_cqt(cfg.features)
    if cfg.model.pretrained:  # fail before the (slow) feature extraction when the weights are missing
        from lungcvt.model import resolve_weights

        weights = resolve_weights(cfg.model.backbone, weights)
    recs, _ = load_dataset(data_dir, split_file, allow_partial=allow_partial)
    if not any(r.split == "train" for r in recs):
        raise ValueError(f"no recordings in the 'train' split under {data_dir}; check the split file")
    tr_recs, va_recs = validation_split(recs, tc.val_fraction, tc.seed)
    tr = extract_cycles(tr_recs, cfg.features, cache_dir, dev, progress)
    va = extract_cycles(va_recs, cfg.features, cache_dir, dev, progress)
    counts = tr.counts(cfg.model.num_classes)

    model = LungCVT(cfg.model, weights=weights).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    crit = ClassBalancedCE(counts, tc.cb_beta).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    g = torch.Generator().manual_seed(tc.seed)
    dl = DataLoader(
        CycleDataset(tr, cfg.features, time_roll=tc.time_roll, generator=g),
        batch_size=tc.batch_size,
        shuffle=True,
        generator=g,
        drop_last=len(tr) > tc.batch_size,
    )

    state_path = out / "last_state.pt"
    best_path = out / "best.safetensors"
    history: list[dict] = []
    start_epoch, best_score, best_epoch, best_val = 0, -1.0, -1, {}
    cfg_dict = cfg.to_dict()
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if _resumable(st.get("config"), cfg_dict):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            g.set_state(st["generator"])
            torch.set_rng_state(st["torch_rng"])
            start_epoch, best_score, best_epoch = st["epoch"] + 1, st["best_score"], st["best_epoch"]
            best_val, history = st["best_val"], st["history"]
            log.info("resumed from %s at epoch %d", state_path, start_epoch)
        else:
            log.warning("%s holds a different config; starting over", state_path)

    step = start_epoch * len(dl)
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        tot, n = 0.0, 0
        for x, y in tqdm(dl, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not progress, leave=False):
            x, y = x.to(dev), y.to(dev)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(dev, tc.bf16):
                if tc.mixup:
                    xm, ya, yb, lam = mixup_batch(x, y, tc.mixup_alpha, g)
                    loss = crit.mixed(model(xm), ya, yb, lam)
                else:
                    loss = crit(model(x), y)
            if tc.warmup_steps > 0 or tc.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr_at(tc, step, tc.epochs * len(dl))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += float(loss.detach()) * len(y)
            n += len(y)
        pred = predict_logits(model, va, cfg.features, dev, bf16=tc.bf16).argmax(1)
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
        if sc["icbhi"]["score"] > best_score:
            best_score, best_epoch, best_val = sc["icbhi"]["score"], epoch + 1, sc
            save_checkpoint(
                best_path,
                model.state_dict(),
                cfg_dict,
                extra={
                    "epoch": epoch + 1,
                    "val": sc,
                    "train_counts": counts,
                    "classes": list(CLASSES),
                    "lungcvt_version": __version__,
                },
            )
        with atomic_path(state_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_val": best_val,
                    "history": history,
                    "config": json.loads(json.dumps(cfg_dict)),
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )
        if progress:
            print(
                f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val ICBHI score {row['val_icbhi_score']:.4f}"
                f"  (Se {row['val_se']:.3f} Sp {row['val_sp']:.3f})",
                flush=True,
            )
    atomic_write_csv(out / "history.csv", history)
    atomic_write_json(
        out / "train.json",
        {
            "best_epoch": best_epoch,
            "best_val": best_val,
            "train_counts": counts,
            "n_train": len(tr),
            "n_val": len(va),
            "config": cfg_dict,
            "val_patients": sorted({r.info.patient for r in va_recs}),
        },
    )
    return TrainResult(best_path, best_epoch, best_val, history, counts, len(va))


def with_overrides(cfg: LungCVTConfig, overrides: dict) -> LungCVTConfig:
    """Apply nested overrides (``{"train": {"lr": 1e-3}}``) through ``medshared.config.override_dataclass``."""
    from medshared.config import override_dataclass

    new = override_dataclass(cfg, overrides)
    return dataclasses.replace(new)  # re-run __post_init__ checks
