"""Model checkpoints of DeepACC (safetensors weights + the full config) and the resume check of ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepacc import __version__
from deepacc.config import DeepACCConfig, config_from_dict, config_to_dict
from deepacc.model import build_model

__all__ = ["RESUMABLE_KEYS", "check_resume", "load_model", "save_model"]

#: Config keys that may differ between an interrupted run and its resumption.
RESUMABLE_KEYS = frozenset({"train.epochs", "train.checkpoint_every", "train.val_every", "train.num_workers",
                            "train.scan_images"})  # fmt: skip


def save_model(
    path: str | Path, model: torch.nn.Module, cfg: DeepACCConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write weights + config (safetensors, atomic)."""
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import unwrap_model

    state = dict(unwrap_model(model).state_dict())
    return save_checkpoint(path, state, {"deepacc": config_to_dict(cfg)}, {"version": __version__, **(extra or {})})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, DeepACCConfig, dict]:
    """Rebuild a model from a checkpoint alone. Raises FileNotFoundError / ValueError with clear messages."""
    from medshared.checkpoint import load_checkpoint

    state, config, extra = load_checkpoint(path)
    if "deepacc" not in config:
        raise ValueError(f"{path} is not a deepacc checkpoint (its config has keys {sorted(config)})")
    cfg = config_from_dict(config["deepacc"], base=DeepACCConfig())
    model = build_model(cfg, pretrained=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), cfg, extra


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_resume(
    saved: dict[str, Any], cfg: DeepACCConfig, world_size: int, state_path: Path, rescale_16bit: bool = False
) -> None:
    old, new = _flat(saved["config"]), _flat(config_to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ValueError(
            f"{state_path} was written under a different config ({diff}); resume with the same settings, or start "
            "over with --no-resume (or another --out)"
        )
    if saved.get("world_size", 1) != world_size:
        raise ValueError(
            f"{state_path} was written by {saved.get('world_size', 1)} process(es), this run has {world_size}; the "
            "effective batch and data order would change: resume with the same number, or use --no-resume"
        )
    if saved.get("rescale_16bit", False) != rescale_16bit:
        was = "with" if saved.get("rescale_16bit", False) else "without"
        raise ValueError(
            f"{state_path} was written by a run {was} --rescale-16bit; the images would be read differently: resume "
            f"{was} it, or use --no-resume"
        )
