"""Run a function on several local CPU ranks joined by gloo: the multi-process launcher of the tests.

:func:`run_local` forks ``world_size`` processes, gives each torchrun's environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR=127.0.0.1`` and a free port) and one torch thread, joins them through
:func:`medshared.distributed.init_distributed` and collects ``fn(ctx, *args)`` from each rank. Also importable from
:mod:`medshared.distributed`.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["run_local"]

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_worker(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple, out_dir: str) -> None:
    import torch

    from medshared.distributed import init_distributed  # imported here: medshared.distributed re-exports run_local

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    torch.set_num_threads(1)
    out = Path(out_dir) / f"rank{rank}.pt"
    ctx = None
    try:
        ctx = init_distributed("cpu")
        result = fn(ctx, *args)
        torch.save({"ok": True, "result": result}, out)
    except BaseException:
        with open(out, "wb") as f:
            pickle.dump({"ok": False, "error": traceback.format_exc()}, f)
        raise
    finally:
        if ctx is not None:
            ctx.close()


def run_local(fn: Callable[..., T], world_size: int, *args: Any, timeout_s: float = 300.0) -> list[T]:
    """Run ``fn(ctx, *args)`` in ``world_size`` CPU processes joined by gloo on 127.0.0.1; return their results.

    The processes are forked (Linux), so ``fn`` may be any function, including one defined in a test module; each
    process gets torchrun's environment variables and one torch thread. Results travel through ``torch.save``.

    Raises:
        RuntimeError: a rank failed (its traceback is in the message) or the run exceeded ``timeout_s``.
    """
    import multiprocessing as mp

    import torch

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mctx = mp.get_context(method)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="medshared-dist-") as tmp:
        procs = [
            mctx.Process(target=_local_worker, args=(fn, r, world_size, port, args, tmp), daemon=False)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
            p.join()
        results: list[Any] = []
        errors: list[str] = []
        for r, p in enumerate(procs):
            f = Path(tmp) / f"rank{r}.pt"
            if not f.exists():
                errors.append(f"rank {r}: exit code {p.exitcode}, no result" + (" (timed out)" if p in alive else ""))
                continue
            try:
                payload = torch.load(f, weights_only=False)
            except Exception:
                with open(f, "rb") as fh:
                    payload = pickle.load(fh)
            if payload.get("ok"):
                results.append(payload["result"])
            else:
                errors.append(f"rank {r} failed:\n{payload['error']}")
        if errors:
            raise RuntimeError("run_local: " + "\n".join(errors))
        return results
