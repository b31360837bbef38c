"""Ranks of a sharded ``alges simulate`` that never wait in a collective.

Under ``torchrun`` the (strategy, seed) runs are dealt over the ranks and every run writes its own state file. The
ranks do not meet in a collective at the end (NCCL's watchdog kills a rank that waits in one for more than 30 min,
and one rank's share can take hours longer than another's). Instead each rank keeps a status file
``OUT/ranks/rank<r>.json`` (written atomically: ``running`` with a heartbeat every ``ALGES_RANK_HEARTBEAT_S`` s,
then ``done`` or ``failed`` with the error), and rank 0, after its own share, polls those files:

* every other rank ``done`` -> rank 0 reads the saved states and writes the report;
* a rank ``failed`` -> an error naming the rank and its error;
* a rank whose heartbeat is older than ``ALGES_RANK_STALE_S`` s (default 600), or that never wrote its file within
  that time -> an error naming the rank (its process died: killed, out of memory, node lost).

Rerunning the same command resumes: finished runs are read back from their state files.

A status file belongs to this launch when its ``launch`` id (torchrun's run id, rendezvous address and restart
count) matches rank 0's and it was started at most ``START_SLACK_S`` before rank 0 (files of earlier launches into
the same ``OUT`` are ignored). The clocks of several nodes must agree to within that slack.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from medshared.runtime import atomic_write_json

__all__ = ["RankStatus", "wait_for_ranks", "launch_id", "rank_device", "START_SLACK_S"]

START_SLACK_S = 60.0


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not a number of seconds") from e


def heartbeat_s() -> float:
    return _env_float("ALGES_RANK_HEARTBEAT_S", 30.0)


def stale_s() -> float:
    return _env_float("ALGES_RANK_STALE_S", 600.0)


def launch_id() -> str:
    """What tells this launch from an earlier one into the same folder (torchrun's environment)."""
    keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE")
    return "|".join(os.environ.get(k, "") for k in keys)


def rank_device(spec: str) -> Any:
    """``--device`` for this rank: ``cuda`` / ``auto`` with CUDA under torchrun -> ``cuda:LOCAL_RANK`` (one GPU per
    rank, no process group needed); anything else as :func:`medshared.runtime.resolve_device` gives it."""
    import torch
    from medshared.runtime import resolve_device

    dev = resolve_device(spec)
    if dev.type == "cuda" and dev.index is None:
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        n = torch.cuda.device_count()
        if local >= n:
            raise ValueError(
                f"LOCAL_RANK {local} but only {n} CUDA device(s) visible; launch torchrun with --nproc_per_node <= {n}"
            )
        dev = torch.device("cuda", local)
    return dev


def _path(out: Path, rank: int) -> Path:
    return out / "ranks" / f"rank{rank}.json"


class RankStatus:
    """This rank's status file with a heartbeat thread; use as a context manager around the rank's work."""

    def __init__(self, out: str | Path, rank: int, world: int, jobs: list | None = None) -> None:
        self.path = _path(Path(out), rank)
        self.rec: dict[str, Any] = {
            "rank": rank,
            "world": world,
            "launch": launch_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "status": "running",
            "jobs": [list(j) for j in jobs or []],
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> float:
        return float(self.rec["started"])

    def _write(self, **update: Any) -> None:
        with self._lock:
            self.rec.update(update, heartbeat=time.time())
            atomic_write_json(self.path, self.rec)

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_s()):
            if self.rec["status"] == "running":
                self._write()

    def __enter__(self) -> RankStatus:
        self._write()
        self._thread = threading.Thread(target=self._beat, name="alges-rank-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is None:
            self._write(status="done")
        else:
            self._write(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not written yet (writes are atomic, so never half a file)
        return None


def wait_for_ranks(
    out: str | Path, world: int, *, since: float, poll_s: float | None = None, progress: bool = True
) -> None:
    """Rank 0: return when ranks 1..world-1 of this launch are ``done``; raise ``RuntimeError`` naming a rank that
    failed, stopped beating, or never reported (see the module docstring). ``since``: rank 0's start time."""
    out = Path(out)
    poll = poll_s if poll_s is not None else min(10.0, max(0.05, heartbeat_s() / 3))
    limit = stale_s()
    me = launch_id()
    pending = set(range(1, world))
    said = False
    while pending:
        now = time.time()
        for r in sorted(pending):
            rec = _read(_path(out, r))
            ours = rec is not None and rec.get("launch") == me and float(rec.get("started", 0)) >= since - START_SLACK_S
            if not ours:
                if now - since > limit:
                    raise RuntimeError(
                        f"rank {r} of {world} never reported ({_path(out, r)} not written by this launch within "
                        f"{limit:.0f} s); did it start? Rerun the same command: finished runs are kept"
                    )
                continue
            if rec["status"] == "done":
                pending.discard(r)
            elif rec["status"] == "failed":
                raise RuntimeError(
                    f"rank {r} of {world} failed ({rec.get('host')}, pid {rec.get('pid')}): {rec.get('error')}; "
                    "fix it and rerun the same command: finished runs are kept"
                )
            elif now - float(rec.get("heartbeat", 0)) > limit:
                raise RuntimeError(
                    f"rank {r} of {world} stopped: no heartbeat in {_path(out, r)} for "
                    f"{now - float(rec['heartbeat']):.0f} s ({rec.get('host')}, pid {rec.get('pid')}; killed or out "
                    "of memory?). Rerun the same command: finished runs are kept"
                )
        if pending:
            if progress and not said:
                print(f"rank 0: waiting for rank(s) {sorted(pending)} to finish their runs (no collective)")
                said = True
            time.sleep(poll)
