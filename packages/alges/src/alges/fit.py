"""``alges train`` as a library function: train on a dataset's labelled images, keep the best checkpoint on a
case-disjoint validation split (when ``cfg.val_fraction`` > 0 and ``cfg.case_pattern`` is set), store the prior-mask
baseline and the class map in the checkpoint, and resume after an interruption.

Outputs in ``out``: ``model.safetensors`` (last epoch), ``best.safetensors`` (best validation Dice; the last epoch
when there is no validation split), ``train.json`` (losses, validation curve, split sizes, effective batch and lr
rule), ``train_ids.txt`` / ``val_ids.txt``, ``train_state.pt`` (resume).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.checkpoint import save_checkpoint
from medshared.runtime import atomic_write_json, atomic_write_text, seed_everything

from alges.arrays import load_arrays
from alges.config import AlgesConfig
from alges.evaluate import encode_map, evaluate_model, prior_mask
from alges.index import DatasetIndex
from alges.model import build_model
from alges.splits import group_split
from alges.train import load_resume_state, make_optimizer, save_resume_state, train_model

__all__ = ["fit"]


def fit(
    index: DatasetIndex,
    ids: Sequence[str],
    cfg: AlgesConfig,
    device: torch.device,
    out: str | Path,
    *,
    seed: int = 0,
    deal_head: bool = False,
    resume: bool = False,
    progress: bool = True,
    ctx: Any = None,
    precision: Any = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Train ``cfg`` on ``ids`` of ``index`` into ``out``; returns the ``train.json`` dict.

    Under torchrun pass ``ctx`` (``medshared.distributed``): DDP over the ranks (see :mod:`alges.train`); rank 0
    alone validates and writes checkpoints, ``train.json`` and the resume state; every rank resumes from it.
    ``precision``: a ``medshared.precision.Precision`` for training and validation (None: fp32); a precision other
    than fp32 is part of the resume key. ``workers``: image-decoding threads.
    """
    from medshared.distributed import DistContext, barrier

    from alges.precision import phase

    ctx = ctx or DistContext()
    main = ctx.is_main
    out = Path(out)
    ids = list(ids)
    if not ids:
        raise ValueError(f"no labelled images to train on in {index.root}")
    split = {"train": ids, "val": []}
    if cfg.val_fraction > 0:
        if not cfg.case_pattern:
            raise ValueError("val_fraction > 0 needs case_pattern (a regex giving each image's case) for a case split")
        sp = group_split(ids, cfg.case_pattern, cfg.val_fraction, seed=seed)
        split = {"train": sp["train"], "val": sp["test"]}
    train = load_arrays(
        index, split["train"], cfg.image_size, empty_masks=cfg.empty_masks, progress=progress, workers=workers
    )
    val = (
        load_arrays(
            index, split["val"], cfg.image_size, empty_masks=cfg.empty_masks, progress=progress, workers=workers
        )  # fmt: skip
        if split["val"]
        else None
    )
    if len(train) == 0:
        raise ValueError(f"no training images left in {index.root} (empty_masks={cfg.empty_masks})")
    prior, prior_info = prior_mask(train.masks, cfg.num_classes)
    seed_everything(seed)
    model = build_model(cfg, deal_head=deal_head).to(device)
    opt = make_optimizer(model, cfg)
    resume_path = out / "train_state.pt"
    start, best, history = 0, {"epoch": -1, "score": -np.inf}, []
    # resuming may extend ``epochs``; any other config change, another image list or seed is refused
    key = {
        "config": {k: v for k, v in cfg.to_dict().items() if k != "epochs"},
        "ids": list(train.ids),
        "val": list(val.ids) if val else [],
        "seed": seed,
    }
    if precision is not None and precision.name != "fp32":  # fp32 runs keep their old keys
        key["precision"] = precision.name
    barrier(ctx)  # every rank sees the same resume state
    if resume and resume_path.is_file():
        st = load_resume_state(resume_path)
        if st.get("key") != key:
            raise ValueError(f"{resume_path} was written for another config, image list or seed; drop --resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start, best, history = st["epoch"] + 1, st["best"], st["history"]
        if main:
            print(f"resuming after epoch {start}")
    extra = {
        "deal_head": deal_head,
        "class_names": list(index.class_names),
        "class_map": index.class_map.to_dict(),
        "labeled": list(train.ids),
        "seed": seed,
        "prior_map": encode_map(prior),
        "prior": prior_info,
    }
    scored = cfg.scored_classes

    def on_epoch_end(epoch: int, optimizer: torch.optim.Optimizer, info: dict) -> None:
        rec = {"epoch": epoch, "loss": info["loss"]}
        if not main:  # rank 0 validates and writes; the others wait for it
            history.append(rec)
            barrier(ctx)
            return
        if val is not None and len(val):
            res = evaluate_model(model, val, cfg, device, boundary=False, precision=precision)
            rec["val_dice"] = res["dice_image"]
            model.train()
            if rec["val_dice"] > best["score"]:
                best.update(epoch=epoch, score=rec["val_dice"])
                save_checkpoint(out / "best.safetensors", model.state_dict(), cfg.to_dict(), {**extra, "epoch": epoch})
        history.append(rec)
        save_resume_state(
            resume_path, epoch, optimizer, model, {"key": key, "best": dict(best), "history": list(history)}
        )
        barrier(ctx)

    t0 = time.perf_counter()
    with phase(precision):
        train_model(
            model,
            train.images,
            train.masks,
            cfg,
            device,
            seed=seed,
            start_epoch=start,
            optimizer=opt,
            on_epoch_end=on_epoch_end,
            progress=progress and main,
            ctx=ctx,
            precision=precision,
        )
    if not main:
        return {"rank": ctx.rank}
    save_checkpoint(out / "model.safetensors", model.state_dict(), cfg.to_dict(), {**extra, "epoch": cfg.epochs - 1})
    if val is None or not len(val):
        save_checkpoint(out / "best.safetensors", model.state_dict(), cfg.to_dict(), {**extra, "epoch": cfg.epochs - 1})
        best = {"epoch": cfg.epochs - 1, "score": None}
    atomic_write_text(out / "train_ids.txt", "\n".join(train.ids) + "\n")
    atomic_write_text(out / "val_ids.txt", "\n".join(val.ids) + "\n" if val else "")
    log = {
        "losses": [h["loss"] for h in history],
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_dice": best["score"],
        "start_epoch": start,
        "seconds": time.perf_counter() - t0,
        "n_train": len(train),
        "n_val": len(val) if val else 0,
        "scored_classes": list(scored),
        "prior": prior_info,
        "world_size": ctx.world_size,
        "effective_batch": cfg.batch_size,
        "per_rank_batch": cfg.batch_size / ctx.world_size,
        "lr": cfg.lr,
        "lr_rule": "none: the recipe's global batch is split over the ranks, so batch and lr are unchanged",
        "batchnorm": "per process"
        if ctx.world_size == 1
        else (
            "SyncBatchNorm" if torch.device(device).type == "cuda" else "per-rank statistics (no SyncBatchNorm on CPU)"
        ),
        "precision": precision.as_dict() if precision is not None else "fp32 (library default)",
        "config": cfg.to_dict(),
    }
    atomic_write_json(out / "train.json", log)
    return log
