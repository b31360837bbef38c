"""Checkpoints as one safetensors file: the weights plus the model config (and any extra JSON) in its metadata,
so that a model can be rebuilt from the file alone. Written atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medshared.runtime import atomic_path, json_default, nan_to_none

__all__ = ["load_checkpoint", "save_checkpoint"]

_CONFIG_KEY = "medrepro.config"
_EXTRA_KEY = "medrepro.extra"


def save_checkpoint(
    path: str | Path, state_dict: Mapping[str, Any], config: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> Path:
    """Save ``state_dict`` (tensors) to ``path`` as safetensors with ``config`` and ``extra`` as JSON metadata.

    Shared tensors (tied weights) are cloned so safetensors accepts them; tensors are made contiguous.
    """
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor; put it in extra")
        t = v.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            t = t.clone()
        else:
            seen[ptr] = k
        tensors[k] = t.contiguous()
    meta = {
        _CONFIG_KEY: json.dumps(nan_to_none(dict(config)), default=json_default),
        _EXTRA_KEY: json.dumps(nan_to_none(dict(extra or {})), default=json_default),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(
    path: str | Path, map_location: str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(state_dict, config, extra)``.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to make one).
        ValueError: the file is not a safetensors checkpoint of this project.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (train one first, e.g. with the package's `train` command)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device=str(map_location))
    except Exception as e:  # safetensors raises several error types for corrupt files
        raise ValueError(
            f"{path} is not a readable safetensors checkpoint ({type(e).__name__}: {e}); pass the .safetensors file a "
            "`train` run wrote (best.safetensors / model.safetensors), or retrain if it was cut short"
        ) from e
    if _CONFIG_KEY not in meta:
        raise ValueError(f"{path} has no model config in its metadata; it was not written by save_checkpoint")
    return state, json.loads(meta[_CONFIG_KEY]), json.loads(meta.get(_EXTRA_KEY, "{}"))
