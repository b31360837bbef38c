"""Device plumbing of kfgnet's DataLoaders: worker counts and pinned memory.

``loader_kwargs(device, workers)``: ``num_workers``, ``pin_memory`` on CUDA (so the ``.to(device,
non_blocking=True)`` copies of the training loops really overlap with compute; from pageable memory they are
synchronous), ``persistent_workers`` when there are workers: ``medshared.loader``'s.

``default_workers(device, world_size)``: the ``--workers`` default: 0 on a CPU (the loader would compete with the
model for the same cores; decoded clips are cached in memory, a batch is a cheap augmentation), else up to 4 per
process, within the CPU count shared by the processes of the node.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["loader_kwargs", "default_workers", "resolve_workers"]


def loader_kwargs(device: Any, workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for ``device`` (``medshared.loader.loader_kwargs``: ``num_workers``,
    ``pin_memory`` on CUDA, ``persistent_workers`` and ``prefetch_factor`` with workers)."""
    from medshared.loader import loader_kwargs as shared_loader_kwargs

    return dict(shared_loader_kwargs(torch.device(device), workers))


def default_workers(device: Any, world_size: int = 1) -> int:
    """0 on a CPU; on an accelerator min(4, CPUs per process) (at least 1)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus // max(world_size, 1) - 1))


def resolve_workers(workers: int | None, device: Any, world_size: int = 1) -> int:
    """``workers`` as given (>= 0, else a ValueError naming the flag), or :func:`default_workers` when None."""
    if workers is None:
        return default_workers(device, world_size)
    if workers < 0:
        raise ValueError(f"--workers {workers}: give 0 (load in the main process) or a positive number of workers")
    return workers
