"""The stage-2 classifier's checkpoints (safetensors with the model, clip and motion configs) and batch inference.

Shapes: clips ``(B, 3, T, S, S)`` float in [0, 1]; ``predict_clips`` returns P(malignant) per clip ``(N,)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kfgnet.config import ClassifierConfig, ClipConfig, MotionConfig, config_to_dict
from kfgnet.model import build_classifier

__all__ = ["predict_clips", "save_classifier", "load_classifier"]


@torch.no_grad()
def predict_clips(
    model: torch.nn.Module,
    ds: Any,
    device: torch.device,
    batch_size: int = 8,
    bf16: bool = False,
    num_workers: int = 0,
    precision: Any = None,
) -> np.ndarray:
    """P(malignant) per clip, ``(N,)`` float.

    ``precision`` (a ``medshared.precision.Precision``) sets the autocast when given, else ``bf16`` does. The
    probabilities stay on the device until the end (one copy back, not one per batch).
    """
    from medshared.runtime import autocast_context

    from kfgnet.devices import loader_kwargs

    dev = torch.device(device)
    model.eval()
    out = []
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, **loader_kwargs(dev, num_workers))
    for x, _, _ in loader:
        with precision.autocast() if precision is not None else autocast_context(dev, bf16):
            logits, _ = model(x.to(dev, non_blocking=True))
        out.append(torch.softmax(logits.float(), 1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def save_classifier(
    path: Path,
    model: torch.nn.Module,
    cfg: ClassifierConfig,
    clip: ClipConfig,
    motion: MotionConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Safetensors checkpoint with the model, clip and motion configs in its metadata."""
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import unwrap_model

    save_checkpoint(
        path,
        unwrap_model(model).state_dict(),
        {"model": config_to_dict(cfg), "clip": config_to_dict(clip), "motion": config_to_dict(motion)},
        extra,
    )


def load_classifier(
    path: Path, device: torch.device
) -> tuple[torch.nn.Module, ClassifierConfig, ClipConfig, MotionConfig]:
    """Rebuild a classifier from its checkpoint alone (a checkpoint from before the nodule crop keeps the
    whole-frame crop it was trained with)."""
    from medshared.checkpoint import load_checkpoint

    from kfgnet.config import config_from_dict

    sd, conf, _ = load_checkpoint(path)
    if "model" not in conf or "clip" not in conf:
        raise ValueError(f"{path} is not a kfgnet classifier checkpoint (no model/clip config in its metadata)")
    cfg = config_from_dict(ClassifierConfig, conf["model"])
    clip = config_from_dict(ClipConfig, {"crop": "frame", **conf["clip"]})
    motion = config_from_dict(MotionConfig, conf.get("motion", {}))
    model = build_classifier(cfg, load_weights=False)  # the checkpoint holds the weights
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg, clip, motion
