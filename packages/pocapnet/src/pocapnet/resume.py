"""Training resume state (``last.pt``): what is saved, and how it is read back on any device.

``last.pt`` is always loaded onto the CPU (``map_location="cpu"``): the random-number-generator states in it are
CPU ``ByteTensor``\\ s that ``torch.set_rng_state`` / ``torch.cuda.set_rng_state`` accept only there (loading with
``map_location=<cuda device>`` put them on the GPU and resume crashed with ``TypeError: RNG state must be a
torch.ByteTensor``). The model's and the optimizer's states are then copied to where the live model's parameters
are: ``Module.load_state_dict`` copies into the parameters, and ``Optimizer.load_state_dict`` casts its state to
each parameter's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["resume_key", "rng_state", "set_rng", "load_resume", "restore_resume"]


def resume_key(d: dict[str, Any], world: int) -> dict[str, Any]:
    """Config fields that must match to resume (max_epochs / patience / prefetch / precision may change)."""
    skip = ("max_epochs", "patience", "prefetch", "precision", "workers")
    train = {k: v for k, v in d.get("train", {}).items() if k not in skip}
    return {"model": d.get("model"), "features": d.get("features"), "train": train, "world_size": world}


def rng_state(device: torch.device | str) -> dict[str, torch.Tensor]:
    """This process's generator states (CPU ByteTensors): the CPU one, and the CUDA device's when on CUDA
    (dropout on a GPU draws from the CUDA generator)."""
    device = torch.device(device)
    st = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng(state: dict[str, torch.Tensor] | torch.Tensor, device: torch.device | str) -> None:
    """Restore :func:`rng_state` (or a bare CPU state, as older ``last.pt`` files hold)."""
    device = torch.device(device)
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"].to("cpu", torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to("cpu", torch.uint8), device)


def load_resume(path: str | Path) -> dict[str, Any]:
    """Read ``last.pt`` onto the CPU (never onto the training device: see the module docstring)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def restore_resume(
    st: dict[str, Any], net: nn.Module, opt: torch.optim.Optimizer, rank: int, device: torch.device | str
) -> None:
    """Load the model and optimizer states (onto the parameters' device) and this rank's generator states."""
    net.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    rngs = st.get("rng_per_rank") or [st["rng"]]
    set_rng(rngs[rank % len(rngs)], device)
