"""Collectives of :mod:`medshared.distributed` (re-exported there): barrier, sums, means, gathers and broadcasts over
the ranks of a :class:`~medshared.distributed.DistContext`, and :func:`main_only`. Each is a no-op (or returns its
input) when the context is not distributed, so training code calls them unconditionally."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from medshared.distributed import DistContext

__all__ = ["all_gather_object", "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_object", "main_only"]

T = TypeVar("T")


def main_only(ctx: DistContext) -> Callable[[Callable[..., T]], Callable[..., T | None]]:
    """Decorator: run the function on rank 0 only (other ranks get None).

    Example:
        >>> from medshared.distributed import DistContext
        >>> @main_only(DistContext())
        ... def write(x):
        ...     return x
        >>> write(3)
        3
    """

    def deco(fn: Callable[..., T]) -> Callable[..., T | None]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T | None:
            return fn(*args, **kwargs) if ctx.is_main else None

        return inner

    return deco


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. before reading what rank 0 wrote, around resume)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _reduce(x: Any, ctx: DistContext, mean: bool) -> Any:
    if not ctx.enabled:
        return x
    import torch
    import torch.distributed as dist

    is_tensor = isinstance(x, torch.Tensor)
    t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64, device=ctx.device)
    orig_device = t.device
    t = t.to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if mean:
        t = t / ctx.world_size
    if is_tensor:
        return t.to(orig_device)
    return float(t.item())


def all_reduce_sum(x: Any, ctx: DistContext) -> Any:
    """Sum of ``x`` (tensor or number) over ranks; the same type comes back (numbers as float)."""
    return _reduce(x, ctx, mean=False)


def all_reduce_mean(x: Any, ctx: DistContext) -> Any:
    """Mean of ``x`` (tensor or number) over ranks."""
    return _reduce(x, ctx, mean=True)


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
