"""Where a training run of :func:`lungcvt.train.train` starts from: the weights of ``--init`` (fine-tuning from a
lungcvt checkpoint), and ``OUT/last_state.pt`` (resume): its run key (what must match for a resume), the RNG states
of every rank, and writing / reading the state itself (model weights, Adam moments, progress, history)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungcvt.config import LungCVTConfig, config_from_dict
from lungcvt.splits import DataOptions

__all__ = [
    "load_init",
    "rng_state",
    "set_rng_state",
    "run_key",
    "diff_keys",
    "save_state",
    "resume_from",
]

log = logging.getLogger(__name__)


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


def rng_state(g: torch.Generator, device: torch.device) -> dict:
    """The RNG states of this process: Python, NumPy, torch (CPU and ``device``'s CUDA) and the data-order ``g``."""
    st = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": g.get_state(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, g: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    g.set_state(st["generator"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def run_key(cfg_dict: dict, data: DataOptions, init: str | Path | None) -> dict:
    """What must match for a resume: the config without ``train.epochs``, the data options and the init weights."""
    key = json.loads(json.dumps({"config": cfg_dict, "data": data.to_dict(), "init": str(init) if init else None}))
    key["config"]["train"].pop("epochs", None)
    return key


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ (``["config.train.lr", ...]``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def save_state(
    path: Path,
    *,
    model_state: dict,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_score: float,
    best_epoch: int,
    best_val: dict,
    history: list[dict],
    key: dict,
    rngs: list[dict],
) -> None:
    """Write ``last_state.pt`` atomically after epoch ``epoch`` (0-based); ``rngs``: :func:`rng_state` of every rank."""
    from medshared.runtime import atomic_path

    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model_state,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_val": best_val,
                "history": history,
                "run_key": key,
                "rng": rngs,
            },
            tmp,
        )


def resume_from(
    path: Path,
    key: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    g: torch.Generator,
    device: torch.device,
    ctx: Any,
) -> tuple[int, float, int, dict, list[dict]]:
    """Load ``last_state.pt`` into ``model`` (plain or DDP-wrapped), ``optimizer`` and this rank's RNG states (when
    the world size is unchanged; else the data order is re-seeded, with a warning).

    Returns:
        ``(start_epoch, best_score, best_epoch, best_val, history)``.

    Raises:
        ValueError: the state was written under a different :func:`run_key` (naming the differing settings).
    """
    from medshared.distributed import unwrap_model

    st = torch.load(path, map_location="cpu", weights_only=False)
    if st.get("run_key") != key:
        diff = diff_keys(st.get("run_key") or {}, key)
        raise ValueError(
            f"{path} was written by a run with different settings ({', '.join(diff[:6]) or 'older format'});"
            " pass --no-resume to start over, or choose another --out"
        )
    unwrap_model(model).load_state_dict(st["model"])
    optimizer.load_state_dict(st["optimizer"])
    rngs = st["rng"]
    if len(rngs) == ctx.world_size:
        set_rng_state(rngs[ctx.rank], g, device)
    else:
        log.warning("state saved by %d rank(s), resuming with %d: data order re-seeded", len(rngs), ctx.world_size)
    if ctx.is_main:
        log.info("resumed from %s at epoch %d", path, st["epoch"] + 2)
    return st["epoch"] + 1, st["best_score"], st["best_epoch"], st["best_val"], st["history"]
