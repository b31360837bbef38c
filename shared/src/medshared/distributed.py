"""The one place for process groups: torchrun / DDP training and sharded work for every medrepro package.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), :func:`init_distributed` joins
the process group (gloo on CPU, nccl on CUDA) and pins the local rank's CUDA device; launched plainly it returns a
disabled context (rank 0 of 1) and every helper here becomes a no-op, so a ``train`` function is written once:

    ctx = init_distributed(args.device)
    model = wrap_model(model.to(ctx.device), ctx)
    sampler = make_sampler(dataset, ctx, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, shuffle=sampler is None, ...)
    for epoch in range(start, epochs):
        set_sampler_epoch(sampler, epoch)
        ...
        if ctx.is_main:
            save_checkpoint(..., unwrap_model(model).state_dict(), ...)
        barrier(ctx)
    ctx.close()

Sharded work (feature extraction, simulations) needs no process group: :func:`resolve_shard` reads ``--shard i/n``
or torchrun's rank and world size, and :func:`shard_items` gives each shard its items, every item exactly once.

Tests run several CPU ranks with :func:`run_local` (forked processes, gloo on a free 127.0.0.1 port), which lives in
:mod:`medshared.launch` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from medshared.launch import run_local

__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "distributed_session",
    "effective_batch",
    "init_distributed",
    "launched_by_torchrun",
    "main_only",
    "make_sampler",
    "parse_shard",
    "rank_seed",
    "resolve_shard",
    "run_local",
    "scale_lr",
    "set_sampler_epoch",
    "shard_items",
    "shutdown",
    "unwrap_model",
    "wrap_model",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node; picks the CUDA device.
        device: the ``torch.device`` this rank computes on.
        enabled: True when a process group with more than one rank is active.
        backend: ``"gloo"`` / ``"nccl"`` when enabled, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = "cpu"
    enabled: bool = False
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that writes checkpoints, metrics, plots and shows progress bars."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group (no-op when not distributed)."""
        if self.enabled:
            shutdown()


def launched_by_torchrun() -> bool:
    """True when torchrun's (or torch.distributed.launch's) environment is present."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun?)") from e


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join torchrun's process group, or return a disabled context when not launched by torchrun.

    Args:
        device: ``auto | cpu | cuda`` (``--device``). Under torchrun with CUDA each rank takes ``cuda:LOCAL_RANK``.
        backend: override the backend (default: nccl on CUDA, gloo on CPU).
        timeout_s: collective timeout.

    Returns:
        The :class:`DistContext`. With ``WORLD_SIZE=1`` no group is created (``enabled=False``).

    Raises:
        ValueError: CUDA asked for but absent, or fewer visible GPUs than local ranks.
    """
    import torch

    from medshared.runtime import resolve_device

    dev = resolve_device(device)
    if not launched_by_torchrun():
        return DistContext(device=dev)
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise ValueError(
                f"LOCAL_RANK {local} but only {n} CUDA device(s) visible; launch torchrun with --nproc_per_node <= {n}"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(rank=rank, world_size=1, local_rank=local, device=dev)
    import torch.distributed as dist

    be = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        import datetime

        dist.init_process_group(backend=be, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, enabled=True, backend=be)


def shutdown() -> None:
    """Destroy the default process group if one exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistContext]:
    """``init_distributed`` + ``close`` around a block."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        ctx.close()


# --------------------------------------------------------------------------------------------------------------------
# models, samplers, seeds
# --------------------------------------------------------------------------------------------------------------------
def wrap_model(model: Any, ctx: DistContext, find_unused_parameters: bool = False, sync_batchnorm: bool = False) -> Any:
    """Wrap ``model`` (already on ``ctx.device``) in DDP when distributed; return it unchanged otherwise.

    Args:
        find_unused_parameters: only where a branch really receives no gradient in some steps (costs a graph walk).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (statistics over the global batch). Off by default:
            each package documents its choice. CUDA only: torch's SyncBatchNorm refuses CPU tensors, so on CPU
            (gloo) this raises instead of failing at the first forward pass.

    Raises:
        ValueError: ``sync_batchnorm`` on a CPU context.
    """
    if not ctx.enabled:
        return model
    import torch

    if sync_batchnorm and torch.device(ctx.device).type != "cuda":
        raise ValueError(
            "SyncBatchNorm needs CUDA (torch refuses CPU tensors); on CPU keep per-rank BatchNorm "
            "or all-reduce the statistics yourself"
        )
    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    dev = torch.device(ctx.device)
    device_ids = [dev.index] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap_model(model: Any) -> Any:
    """The plain module inside DDP / ``torch.compile`` wrappers (for ``state_dict`` and checkpoints)."""
    import torch

    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_sampler(dataset: Any, ctx: DistContext, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> Any:
    """A ``DistributedSampler`` over ``dataset`` when distributed, else None (use the loader's own shuffle).

    Each rank sees ``ceil(len / world)`` items per epoch (the sampler pads by repeating items unless ``drop_last``).
    """
    if not ctx.enabled:
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def set_sampler_epoch(sampler: Any, epoch: int) -> None:
    """``sampler.set_epoch(epoch)`` when the sampler has it (a new shuffle every epoch); no-op for None."""
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def rank_seed(seed: int, ctx: DistContext) -> int:
    """Seed for this rank's data order and augmentation (``seed + rank``). Model init uses ``seed`` on every rank
    (DDP also broadcasts rank 0's weights at wrap time)."""
    return int(seed) + ctx.rank


def effective_batch(per_rank_batch: int, ctx: DistContext, accumulation: int = 1) -> int:
    """Samples per optimizer step over all ranks."""
    return int(per_rank_batch) * ctx.world_size * int(accumulation)


def scale_lr(lr: float, base_batch: int, eff_batch: int, rule: str = "none") -> float:
    """Learning rate for ``eff_batch`` given a recipe's ``lr`` at ``base_batch``.

    Args:
        rule: ``"none"`` (keep ``lr``), ``"linear"`` (Goyal et al. 2017: ``lr * eff / base``) or ``"sqrt"``.
    """
    if rule == "none":
        return float(lr)
    if base_batch <= 0 or eff_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got base {base_batch}, effective {eff_batch}")
    if rule == "linear":
        return float(lr) * eff_batch / base_batch
    if rule == "sqrt":
        return float(lr) * math.sqrt(eff_batch / base_batch)
    raise ValueError(f"unknown lr scaling rule {rule!r}; expected none, linear or sqrt")


def main_only(ctx: DistContext) -> Callable[[Callable[..., T]], Callable[..., T | None]]:
    """Decorator: run the function on rank 0 only (other ranks get None).

    Example:
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


# --------------------------------------------------------------------------------------------------------------------
# collectives (no-ops when not distributed)
# --------------------------------------------------------------------------------------------------------------------
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
    t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64)
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


# --------------------------------------------------------------------------------------------------------------------
# sharded work
# --------------------------------------------------------------------------------------------------------------------
def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` (zero-based ``i``, ``0 <= i < n``) -> ``(i, n)``.

    Raises:
        ValueError: anything else, with the expected form.
    """
    try:
        a, b = str(spec).split("/")
        i, n = int(a), int(b)
    except ValueError as e:
        raise ValueError(f"--shard {spec!r}: expected i/n with integers, e.g. 0/4 (shards are numbered from 0)") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def resolve_shard(spec: str | None = None) -> tuple[int, int]:
    """This process's shard: ``--shard i/n`` when given, else torchrun's ``(RANK, WORLD_SIZE)``, else ``(0, 1)``."""
    if spec:
        return parse_shard(spec)
    if launched_by_torchrun():
        world = _env_int("WORLD_SIZE", 1)
        return (_env_int("RANK", 0), world) if world > 1 else (0, 1)
    return 0, 1


def shard_items(items: Sequence[T], index: int, count: int, key: Callable[[T], Any] = str) -> list[T]:
    """The items of shard ``index`` of ``count``: round-robin over ``items`` sorted by ``key``.

    Every item lands in exactly one shard whatever order the caller listed them in, so ``n`` processes that list the
    same folder agree without talking to each other.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    ordered = sorted(items, key=key)
    return [x for k, x in enumerate(ordered) if k % count == index]
