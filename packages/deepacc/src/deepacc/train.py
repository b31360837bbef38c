"""Training of DeepACC (Sec. 3.1): SGD momentum 0.9, weight decay 1e-4, lr 0.02 (linearly scaled to the effective
batch by default), linear warm-up, x0.1 steps at epochs 16 and 22 of 24, batch 1, random horizontal flip.

One loop for one process and for ``torchrun`` (DDP through :mod:`medshared.distributed`, gloo on CPU, nccl on CUDA):
every rank builds the model from the same seed, draws its share of each epoch's seeded permutation (the same
permutation a single process walks through, so 2 ranks x batch B equal 1 process x batch 2B), and rank 0 alone
validates and writes. Outputs in ``out_dir`` (all atomic, written only once a first checkpoint exists, so a run that
fails early leaves nothing behind):

* ``model.safetensors``: the last weights + config (enough for ``evaluate`` / ``predict``);
* ``best.safetensors``: the weights with the best validation mAP@0.5 (validation every ``train.val_every`` epochs);
* ``train_state.pt``: model, optimizer, position (epoch, batch, iteration), every rank's RNG state: rewritten at
  every epoch end and every ``train.checkpoint_every`` iterations, so an interrupted run resumes mid-epoch;
* ``history.csv``, ``config.json``, ``train.json`` (world size, per-rank and effective batch, lr rule, BatchNorm,
  ``rescale_16bit`` and how many images it rescaled; the checkpoints record ``rescale_16bit`` too).
A run resumes only under the same config (``train.epochs`` and bookkeeping keys may change) and world size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from deepacc import __version__
from deepacc.checkpoints import RESUMABLE_KEYS, check_resume, load_model, save_model
from deepacc.config import DeepACCConfig, config_to_dict
from deepacc.data import DetectionDataset, collate
from deepacc.images import scan_images
from deepacc.model import build_model
from deepacc.samples import Sample, validate_samples
from deepacc.schedule import effective_lr, lr_factor, margin_factor

__all__ = [
    "RESUMABLE_KEYS",
    "effective_lr",
    "load_model",
    "lr_factor",
    "margin_factor",
    "save_model",
    "train",
    "validate",
]

#: Steps between the non-finite-loss checks (a host sync and, under DDP, an all-reduce); also checked before every
#: checkpoint and at each epoch end, so no non-finite weights are ever saved.
FINITE_CHECK_EVERY = 25


class _Skip(torch.utils.data.Sampler):
    """The sampler's indices of this epoch without the first ``skip`` (a mid-epoch resume)."""

    def __init__(self, sampler: DistributedSampler, skip: int) -> None:
        self.indices = list(sampler)[skip:]

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _check_finite(nonfinite: torch.Tensor, last: dict[str, torch.Tensor], epoch: int, iteration: int, ctx: Any) -> None:
    """Raise when a loss since the last check was non-finite on any rank: one host sync (and all-reduce) per
    ``FINITE_CHECK_EVERY`` steps instead of one per step."""
    from medshared.distributed import all_reduce_sum

    if all_reduce_sum(float(nonfinite), ctx):
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch + 1}, within the {FINITE_CHECK_EVERY} iterations before {iteration}: "
            f"{ {k: float(v.detach()) for k, v in last.items()} }; lower train.lr or use pretrained weights"
        )


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])


def train(
    cfg: DeepACCConfig,
    train_samples: list[Sample],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    pretrained: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    amp: bool = False,
    progress: bool = True,
    val_samples: list[Sample] | None = None,
    log: Callable[[str], None] = print,
    stop_after_iters: int | None = None,
    ctx: Any = None,
    offline: bool = False,
    rescale_16bit: bool = False,
    precision: Any = None,
    workers: int | None = None,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train ``cfg`` on ``train_samples``; returns the (unwrapped) model in eval mode and the per-epoch history.

    Args:
        out_dir: run folder (see the module docstring); written by rank 0 only.
        pretrained: backbone ImageNet weights (path / "imagenet" / None); see
            :func:`deepacc.backbone.resolve_backbone_weights`.
        resume: continue from ``out_dir/train_state.pt`` when present (same config and world size required).
        amp: bf16 autocast (the margin branch stays fp32); the old name of ``precision`` "bf16".
        precision: a ``medshared.precision.Precision`` (:func:`deepacc.precision.resolve`); None: fp32 (bf16 with
            ``amp``). Recorded in ``train.json``.
        workers: DataLoader worker processes (default ``train.num_workers``); pinned memory on CUDA
            (``medshared.loader.loader_kwargs``) and ``non_blocking`` copies.
        val_samples: validated every ``train.val_every`` epochs (mAP@0.5, mAP_max, Acc); ``best.safetensors`` keeps
            the best mAP@0.5.
        stop_after_iters: stop (as if interrupted, without a final checkpoint) after this many iterations of this
            call; for tests of resume.
        ctx: a :class:`medshared.distributed.DistContext` (default: ``init_distributed(device)``: DDP under
            torchrun, one process otherwise).
        offline: never download backbone weights.
        rescale_16bit: images deeper than 8 bits are divided by their own maximum to 0-255
            (:func:`deepacc.images.read_image`; the scan logs which); without it they are an error. Recorded in
            ``train.json`` and the checkpoints; a resume must use the same setting.
    """
    from medshared.distributed import (
        all_gather_object,
        all_reduce_mean,
        barrier,
        broadcast_object,
        effective_batch,
        init_distributed,
        rank_seed,
        set_sampler_epoch,
        unwrap_model,
        wrap_model,
    )
    from medshared.loader import loader_kwargs
    from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json
    from medshared.runtime import seed_everything as seed_all
    from tqdm.auto import tqdm

    from deepacc.health import collapse_reason, margin_heads, summarise

    if ctx is None:
        ctx = init_distributed(str(device))
    device = torch.device(ctx.device)
    if precision is None:
        from medshared.precision import resolve_precision

        precision = resolve_precision("bf16" if amp else "fp32", device, key="deepacc.tiny_train")
    precision.apply()
    tcfg = cfg.train
    n_workers = tcfg.num_workers if workers is None else workers
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    validate_samples(train_samples, tcfg.empty_images, "training")
    if val_samples is not None:
        validate_samples(val_samples, "keep", "validation")
    n_rescaled: int | None = None  # unknown without the scan
    if tcfg.scan_images:
        n_rescaled = len(scan_images(train_samples + list(val_samples or []), progress=progress and ctx.is_main,
                                     rescale_16bit=rescale_16bit, log=log if ctx.is_main else None))  # fmt: skip
    elif rescale_16bit and ctx.is_main:
        log("--rescale-16bit: images deeper than 8 bits are rescaled to 0-255 by their own maximum as they are read "
            "(train.scan_images is off: not counted)")  # fmt: skip
    seed_all(seed)  # same initial weights on every rank
    model = build_model(cfg, pretrained=pretrained, offline=offline).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = effective_lr(tcfg, ctx.world_size)
    opt = torch.optim.SGD(params, lr=base_lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, start_batch, iteration, best = 0, 0, 0, -math.inf
    rng_states: list[Any] | None = None
    state_path, ckpt_path, best_path = (
        out_dir / "train_state.pt",
        out_dir / "model.safetensors",
        out_dir / "best.safetensors",
    )
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        check_resume(st, cfg, ctx.world_size, state_path, rescale_16bit)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start_epoch, start_batch, iteration = st["epoch"], st["batch"], st["iteration"]
        history, best, rng_states = st["history"], st.get("best", -math.inf), st["rng"]
        if ctx.is_main:
            log(f"resuming from {state_path} at epoch {start_epoch + 1}/{tcfg.epochs}, batch {start_batch}")
    seed_all(rank_seed(seed, ctx))  # RoI / anchor sampling and augmentation differ per rank
    if rng_states is not None:
        _set_rng_state(rng_states[ctx.rank])
    bn = "frozen (FrozenBatchNorm2d)" if cfg.model.norm == "frozen_bn" else "BatchNorm, statistics per process"
    sync_bn = ctx.enabled and cfg.model.norm == "bn" and device.type == "cuda"
    if sync_bn:
        bn = "SyncBatchNorm (statistics over the global batch)"
    ddp_model = wrap_model(model, ctx, sync_batchnorm=sync_bn)
    model = unwrap_model(ddp_model)
    heads = getattr(model, "roi_heads", None)
    margin = margin_heads(model)
    val_log: list[dict[str, Any]] = []
    if resume and out_dir.joinpath("val_metrics.json").is_file() and ctx.is_main:
        import json

        old_log = json.loads(out_dir.joinpath("val_metrics.json").read_text()).get("per_epoch", [])
        val_log = [r for r in old_log if r["epoch"] <= start_epoch]
    run_info = {"world_size": ctx.world_size, "backend": ctx.backend, "per_rank_batch": tcfg.batch_size,
                "effective_batch": effective_batch(tcfg.batch_size, ctx), "lr_rule": tcfg.lr_scaling,
                "lr_config": tcfg.lr, "base_batch": tcfg.base_batch_size, "lr": base_lr, "batchnorm": bn,
                "seed": seed, "version": __version__, "rescale_16bit": rescale_16bit,
                "rescaled_images": n_rescaled, "precision": precision.as_dict(), "workers": n_workers}  # fmt: skip
    ds = DetectionDataset(train_samples, train=True, hflip_prob=tcfg.hflip_prob, rescale_16bit=rescale_16bit)
    sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    n_batches = math.ceil(len(sampler) / tcfg.batch_size)
    show = progress and ctx.is_main

    def write_state(epoch: int, batch: int) -> None:
        rng = all_gather_object(_rng_state(), ctx)
        if ctx.is_main:
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "batch": batch, "iteration": iteration, "history": history, "best": best, "rng": rng,
                            "config": config_to_dict(cfg), "world_size": ctx.world_size,
                            "rescale_16bit": rescale_16bit}, tmp)  # fmt: skip
            atomic_write_json(out_dir / "config.json", config_to_dict(cfg))
            atomic_write_json(out_dir / "train.json", {**run_info, "iteration": iteration, "epoch": epoch})
        barrier(ctx)

    done_here = 0
    try:
        for epoch in range(start_epoch, tcfg.epochs):
            set_sampler_epoch(sampler, epoch)
            skip = start_batch * tcfg.batch_size if epoch == start_epoch else 0
            gen = torch.Generator().manual_seed(rank_seed(seed, ctx) * 1000 + epoch)  # worker seeds, not global RNG
            loader = DataLoader(ds, batch_size=tcfg.batch_size, sampler=_Skip(sampler, skip), collate_fn=collate,
                                generator=gen, **loader_kwargs(device, n_workers))  # fmt: skip
            model.train()
            t0 = time.time()
            sums: dict[str, float] = {}
            n = 0
            batch = start_batch if epoch == start_epoch else 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not show, leave=False)
            sums_t: dict[str, torch.Tensor] = {}  # on the device: no host sync per step
            nonfinite = torch.zeros((), dtype=torch.bool, device=device)
            if margin is not None:
                margin.own_cos_log = []

            losses: dict[str, torch.Tensor] = {}
            for images, targets in bar:
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                for g in opt.param_groups:
                    g["lr"] = base_lr * lr_factor(iteration, epoch, tcfg)
                if margin is not None:  # m warm-up: a function of the restored iteration, so resume is exact
                    margin.margin_factor = margin_factor(iteration, tcfg)
                with precision.autocast():
                    losses = ddp_model(images, targets)
                loss = sum(v.float() for v in losses.values())
                nonfinite |= ~torch.isfinite(loss.detach())
                if (iteration + 1) % FINITE_CHECK_EVERY == 0:
                    _check_finite(nonfinite, losses, epoch, iteration, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
                opt.step()
                iteration += 1
                batch += 1
                n += 1
                done_here += 1
                for k, v in losses.items():
                    sums_t[k] = sums_t.get(k, 0.0) + v.detach().float()
                sums_t["loss"] = sums_t.get("loss", 0.0) + loss.detach()
                if heads is not None and getattr(heads, "_local_fraction", None) is not None:
                    sums_t["template_local_fraction"] = sums_t.get("template_local_fraction", 0.0) + \
                        heads._local_fraction  # fmt: skip
                if show and iteration % FINITE_CHECK_EVERY == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if stop_after_iters is not None and done_here >= stop_after_iters:
                    return model.eval(), history
                if tcfg.checkpoint_every and iteration % tcfg.checkpoint_every == 0 and batch < n_batches:
                    _check_finite(nonfinite, losses, epoch, iteration, ctx)
                    write_state(epoch, batch)
            _check_finite(nonfinite, losses, epoch, iteration, ctx)
            sums.update({k: float(v) for k, v in sums_t.items()})
            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "lr": opt.param_groups[0]["lr"],
                                   "seconds": time.time() - t0}  # fmt: skip
            row.update({k: all_reduce_mean(v / max(n, 1), ctx) for k, v in sorted(sums.items())})
            if margin is not None:  # margin_health of this epoch's training RoIs (positives, own-class cosine)
                own = torch.cat(margin.own_cos_log) if margin.own_cos_log else None
                margin.own_cos_log = None
                health = summarise(own, margin)
                row["own_class_cos"] = all_reduce_mean(health["own_class_cos"] or 0.0, ctx)
                row["centre_pairwise_cos"] = health["centre_pairwise_cos"]
                reason = collapse_reason({"own_class_cos": row["own_class_cos"],
                                          "centre_pairwise_cos": row["centre_pairwise_cos"]})  # fmt: skip
                if reason and ctx.is_main and iteration >= tcfg.margin_warmup_iters:  # judged after the s/m warm-up
                    log(f"WARNING epoch {epoch + 1}: {reason}")
            if val_samples is not None and ((epoch + 1) % tcfg.val_every == 0 or epoch + 1 == tcfg.epochs):
                if ctx.is_main:
                    val = validate(model, val_samples, cfg, device, rescale_16bit)
                    vh = val.pop("val_margin_health", None)
                    row.update(val)
                    if vh:
                        row.update({f"val_{k}": vh[k] for k in ("own_class_cos", "centre_pairwise_cos",
                                                                 "template_local_fraction")})  # fmt: skip
                        if vh["reason"] and iteration >= tcfg.margin_warmup_iters:
                            log(f"WARNING epoch {epoch + 1} (validation): {vh['reason']}")
                    val_log.append({"epoch": epoch + 1, **val, "margin_health": vh})
                    atomic_write_json(out_dir / "val_metrics.json", {"per_epoch": val_log})
                row = broadcast_object(row, ctx)
                if row["val_map50"] > best:
                    best = row["val_map50"]
                    if ctx.is_main:
                        save_model(best_path, model, cfg, {"epoch": epoch + 1, "val_map50": best,
                                                           "rescale_16bit": rescale_16bit})  # fmt: skip
                model.train()
            history.append(row)
            if ctx.is_main:
                log("epoch {epoch}/{total}  loss {loss:.4f}{val}  ({sec:.1f}s)".format(
                    epoch=epoch + 1, total=tcfg.epochs, loss=row.get("loss", math.nan), sec=row["seconds"],
                    val=f"  val mAP@0.5 {row['val_map50']:.4f}" if "val_map50" in row else ""))  # fmt: skip
                save_model(ckpt_path, model, cfg, {"epoch": epoch + 1, "rescale_16bit": rescale_16bit})
                atomic_write_csv(out_dir / "history.csv", history)
            write_state(epoch + 1, 0)
    except BaseException:
        if ctx.is_main and created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no empty run folder behind
        raise
    return model.eval(), history


@torch.no_grad()
def validate(
    model: torch.nn.Module, samples: list[Sample], cfg: DeepACCConfig, device: Any, rescale_16bit: bool = False
) -> dict[str, float]:
    """mAP@0.5, mAP_max and Acc / AER of ``model`` on ``samples`` (``val_*`` keys)."""
    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.health import margin_health

    raws = predict_raw(model, samples, device, rescale_16bit=rescale_16bit)
    res = evaluate_detections(raws, samples, cfg, with_chance=False)
    return {"val_map50": res["map50"], "val_map50_max": res["map50_max"], "val_acc": res.get("acc", float("nan")),
            "val_aer": res.get("aer", float("nan")), "val_class_agnostic_ap50": res["class_agnostic_ap50"],
            "val_margin_health": margin_health(model, samples, device, rescale_16bit)}  # fmt: skip
