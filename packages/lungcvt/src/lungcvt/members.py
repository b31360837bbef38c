"""An ensemble trained member by member (``model.ensemble`` M > 1 with ``train.ensemble_training="independent"``).

Member k is trained by :func:`lungcvt.train._train` as a single model into ``OUT/member{k}/``, with seed
``train.seed + 1000 k`` (its own random init, batch order and augmentation) on the run's training and validation
cycles (split with ``train.seed``, read from the feature cache once for all members and the ensemble), selecting its
own best epoch on the validation cycles. The members'
best weights are then put together as one :class:`lungcvt.model.LungCVTEnsemble` (log of the mean probability), the
normal-class bias is tuned on the ensemble's validation logits (``train.tune_normal_bias``, ``bias_views``,
``min_normal_bias`` as for one model), and ``OUT/best.safetensors`` holds the ensemble: ``evaluate`` and ``predict``
load it like any checkpoint.

Resuming: each member resumes from its own ``last_state.pt`` (and refuses a different config); a member that has
finished is not trained again. Unlike ``"joint"`` training (one loss over the members on the same batches, one epoch
selected for all), the members here differ in data order and in epoch, as in a deep ensemble of separate runs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from lungcvt import __version__
from lungcvt.config import CLASSES, LungCVTConfig
from lungcvt.splits import DataOptions

__all__ = ["member_config", "train_members", "MEMBER_SEED_STRIDE"]

log = logging.getLogger("lungcvt.train")

MEMBER_SEED_STRIDE = 1000  # member k trains with seed + 1000 k: the members of runs with nearby seeds do not coincide


def member_config(cfg: LungCVTConfig, k: int) -> LungCVTConfig:
    """The single-model config member ``k`` of ``cfg``'s ensemble is trained with."""
    model = dataclasses.replace(cfg.model, ensemble=1)
    train = dataclasses.replace(cfg.train, seed=cfg.train.seed + MEMBER_SEED_STRIDE * k, ensemble_training="joint")
    return dataclasses.replace(cfg, model=model, train=train)


def train_members(
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
):
    """Train ``cfg.model.ensemble`` members one after the other, then write the ensemble's ``best.safetensors``,
    ``history.csv`` (every member's epochs, with a ``member`` column) and ``train.json``. Returns a
    :class:`lungcvt.train.TrainResult` whose ``best_epoch`` is the list of the members' best epochs.

    Raises:
        ValueError: ``init`` given (start an ensemble from a checkpoint with ``ensemble_training: joint``).
    """
    from medshared.checkpoint import load_checkpoint, save_checkpoint
    from medshared.distributed import barrier
    from medshared.runtime import atomic_write_csv, atomic_write_json

    from lungcvt.model import LungCVTEnsemble
    from lungcvt.precision import resolve
    from lungcvt.train import TrainResult, _train
    from lungcvt.validation import selection_cycles, training_cycles, validate_logits, validation_scores

    if init is not None:
        raise ValueError(
            "--init with model.ensemble > 1 and train.ensemble_training: independent is not supported: every member "
            "would start from the same weights. Use train.ensemble_training: joint to fine-tune an ensemble."
        )
    tc = cfg.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    dev = torch.device(ctx.device)
    cycles = training_cycles(cfg, data_dir, data, cache_dir, dev, ctx, progress and ctx.is_main)
    tr, va, split_info, _ = cycles
    results = []
    for k in range(cfg.model.ensemble):
        if progress and ctx.is_main:
            print(f"ensemble member {k + 1}/{cfg.model.ensemble} -> {out / f'member{k}'}", flush=True)
        args = (data, weights, None, cache_dir, num_workers, resume, progress, ctx, precision)
        results.append(_train(member_config(cfg, k), data_dir, out / f"member{k}", *args, cycles=cycles))

    prec = resolve(precision, dev, bf16_alias=tc.bf16)
    ens = LungCVTEnsemble(dataclasses.replace(cfg.model, pretrained=False))
    for member, res in zip(ens.members, results, strict=True):
        member.load_state_dict(load_checkpoint(res.best_checkpoint)[0])
    ens = ens.to(dev).eval()
    va_sel = selection_cycles(va, cfg)
    logits = validate_logits(ens, va_sel, cfg, dev, ctx, bf16=prec.name == "bf16")
    sc = validation_scores(va_sel.labels, logits, len(va), tc.tune_normal_bias, tc.min_normal_bias)
    best_epochs = [res.best_epoch for res in results]
    counts = tr.counts(cfg.model.num_classes)
    history = [{"member": k, **row} for k, res in enumerate(results) for row in res.history]
    best_path = out / "best.safetensors"
    if ctx.is_main:
        save_checkpoint(
            best_path,
            ens.state_dict(),
            cfg.to_dict(),
            extra={
                "epoch": best_epochs,
                "val": sc,
                "train_counts": counts,
                "classes": list(CLASSES),
                "lungcvt_version": __version__,
                "protocol": data.protocol,
                "normal_bias": sc["normal_bias"],
                "members": [str(res.best_checkpoint) for res in results],
            },
        )
        atomic_write_csv(out / "history.csv", history)
        member_json = [
            {"member": k, "seed": member_config(cfg, k).train.seed, "best_epoch": res.best_epoch,
             "val_icbhi_score": res.best_val.get("icbhi", {}).get("score"),
             "val_auroc_abnormal": res.best_val.get("auroc_abnormal"), "normal_bias": res.best_val.get("normal_bias")}
            for k, res in enumerate(results)
        ]  # fmt: skip
        atomic_write_json(
            out / "train.json",
            {
                "best_epoch": best_epochs,
                "best_val": sc,
                "members": member_json,
                "train_counts": counts,
                "n_train": len(tr),
                "n_val": len(va),
                "split": results[0].split,
                "val_patients": split_info["val_patients"],
                "precision": prec.as_dict(),
                "config": cfg.to_dict(),
                "lungcvt_version": __version__,
            },
        )
    barrier(ctx)
    if progress and ctx.is_main:
        s = sc["icbhi"]
        print(
            f"ensemble of {len(results)}: val ICBHI score {s['score']:.4f} (Se {s['se']:.3f} Sp {s['sp']:.3f})"
            f"  normal bias {sc['normal_bias']:+.1f}  members' best epochs {best_epochs}",
            flush=True,
        )
    return TrainResult(best_path, best_epochs, sc, history, counts, len(va), results[0].split)
