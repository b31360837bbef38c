"""The one place for process groups: torchrun / DDP training and sharded work for every medrepro package.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), :func:`init_distributed` joins
the process group (gloo on CPU, nccl on CUDA; ``device_id`` set on CUDA; timeout ``$MEDREPRO_DIST_TIMEOUT_MIN``,
default 180 min) and pins the local rank's CUDA device; launched plainly it returns a disabled context (rank 0 of 1)
and every helper here becomes a no-op, so a ``train`` function is written once. ``MEDREPRO_FORCE_DDP=1`` makes one
process join a real group of world size 1, so one GPU (nccl) or a CPU (gloo) runs the DDP path:

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
or torchrun's rank and world size, and :func:`shard_items` gives each shard its items, every item exactly once (they
live in :mod:`medshared.shard` and are re-exported here).

Tests run several CPU ranks with :func:`run_local` (forked processes, gloo on a free 127.0.0.1 port), which lives in
:mod:`medshared.launch` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any, TypeVar

from medshared.collectives import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    main_only,
)
from medshared.launch import run_local
from medshared.shard import _env_int, launched_by_torchrun, parse_shard, resolve_shard, shard_items

__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "distributed_session",
    "dist_timeout_s",
    "effective_batch",
    "force_ddp",
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
        enabled: True when a process group is active: more than one rank, or one rank forced by
            ``MEDREPRO_FORCE_DDP=1``.
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


#: Default collective timeout (minutes) when ``$MEDREPRO_DIST_TIMEOUT_MIN`` is unset: ranks that wait in a collective
#: while rank 0 validates or writes must not be killed by the NCCL watchdog (torch's default is 10 / 30 minutes).
DEFAULT_TIMEOUT_MIN = 180.0
ENV_TIMEOUT_MIN = "MEDREPRO_DIST_TIMEOUT_MIN"
ENV_FORCE_DDP = "MEDREPRO_FORCE_DDP"


def dist_timeout_s() -> float:
    """The process-group timeout in seconds: ``$MEDREPRO_DIST_TIMEOUT_MIN`` minutes (default 180).

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get(ENV_TIMEOUT_MIN, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_MIN * 60.0
    try:
        minutes = float(raw)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or math.isinf(minutes):
        raise ValueError(f"{ENV_TIMEOUT_MIN}={raw!r} is not a positive number of minutes (e.g. 180)")
    return minutes * 60.0


def force_ddp() -> bool:
    """True when ``$MEDREPRO_FORCE_DDP`` asks for a real process group even with one process (1 / true / yes / on).

    Raises:
        ValueError: a value that is neither on (1, true, yes, on) nor off (0, false, no, off, empty).
    """
    raw = os.environ.get(ENV_FORCE_DDP, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ENV_FORCE_DDP}={raw!r}: use 1 to force a one-process DDP group, 0 or unset for none")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float | None = None) -> DistContext:
    """Join torchrun's process group, or return a disabled context when not launched by torchrun.

    With ``MEDREPRO_FORCE_DDP=1`` a single process (plain launch, or torchrun with one process) joins a real process
    group of world size 1 (127.0.0.1 on a free port unless torchrun set ``MASTER_ADDR`` / ``MASTER_PORT``; gloo on
    CPU, nccl on CUDA), so one GPU or a CPU runs the DDP path: DDP wrapping, samplers, collectives.

    Args:
        device: ``auto | cpu | cuda | cuda:N`` (``--device``). Under torchrun with CUDA each rank takes
            ``cuda:LOCAL_RANK``; a forced one-process group keeps the device asked for (``cuda`` = ``cuda:0``).
        backend: override the backend (default: nccl on CUDA, gloo on CPU).
        timeout_s: collective timeout; default :func:`dist_timeout_s` (``$MEDREPRO_DIST_TIMEOUT_MIN``, 180 min), long
            enough for ranks that wait while rank 0 validates.

    Returns:
        The :class:`DistContext`. With ``WORLD_SIZE=1`` and no forcing, no group is created (``enabled=False``).

    Raises:
        ValueError: CUDA asked for but absent, fewer visible GPUs than local ranks, or a bad environment variable.
    """
    import torch

    from medshared.runtime import resolve_device

    dev = resolve_device(device)
    forced = force_ddp()
    torchrun = launched_by_torchrun()
    if not torchrun and not forced:
        return DistContext(device=dev)
    rank, world, local = (
        (_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)) if torchrun else (0, 1, 0)
    )
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if torchrun:
            if local >= n:
                raise ValueError(
                    f"LOCAL_RANK {local} but only {n} CUDA device(s) visible; "
                    f"launch torchrun with --nproc_per_node <= {n}"
                )
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cuda", dev.index if dev.index is not None else 0)
        torch.cuda.set_device(dev)
    if world <= 1 and not forced:
        return DistContext(rank=rank, world_size=1, local_rank=local, device=dev)
    import datetime

    import torch.distributed as dist

    be = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {
            "backend": be,
            "rank": rank,
            "world_size": world,
            "timeout": datetime.timedelta(seconds=dist_timeout_s() if timeout_s is None else float(timeout_s)),
        }
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds the rank to its GPU: NCCL's communicator is created eagerly on it
        if not torchrun:  # forced group, plain launch: no MASTER_ADDR / MASTER_PORT from torchrun
            kwargs["init_method"] = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(**kwargs)
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
