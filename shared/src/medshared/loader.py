"""DataLoader settings that feed a GPU: pinned host memory and persistent workers, and ``non_blocking`` copies.

A ``non_blocking=True`` copy from pageable memory is synchronous; only pinned memory (``pin_memory=True``) lets the
host-to-GPU copy overlap with compute. On a CPU, pinning is pointless and skipped.
"""

from __future__ import annotations

from typing import Any

__all__ = ["loader_kwargs", "to_device"]


def loader_kwargs(device: Any, workers: int) -> dict[str, Any]:
    """Keyword arguments for ``torch.utils.data.DataLoader`` on ``device`` with ``workers`` worker processes.

    Returns:
        ``{"num_workers": workers, "pin_memory": device is CUDA, "persistent_workers": workers > 0}`` plus
        ``"prefetch_factor": 2`` when ``workers > 0`` (torch refuses it with 0 workers).

    Raises:
        ValueError: ``workers`` negative.
    """
    import torch

    dev = device if isinstance(device, torch.device) else torch.device(str(device))
    workers = int(workers)
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers} (--workers)")
    out: dict[str, Any] = {"num_workers": workers, "pin_memory": dev.type == "cuda", "persistent_workers": workers > 0}
    if workers > 0:
        out["prefetch_factor"] = 2
    return out


def to_device(obj: Any, device: Any) -> Any:
    """``obj`` with every tensor moved to ``device`` by ``.to(device, non_blocking=True)``; dicts (returned as plain
    dicts), lists and tuples (named tuples included) are walked, anything else is returned as is."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
