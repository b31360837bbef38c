"""Sharded work without a process group: ``--shard i/n`` or torchrun's rank and world size pick this process's items.

Feature extraction and simulations split their items with :func:`shard_items` (every item in exactly one shard,
whatever order the caller listed them in); :func:`resolve_shard` says which shard this process is. Re-exported by
:mod:`medshared.distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["launched_by_torchrun", "parse_shard", "resolve_shard", "shard_items"]

T = TypeVar("T")


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
