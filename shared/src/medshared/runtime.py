"""Runtime helpers: seeding, device resolution, bf16 autocast, and atomic writes (temp file + rename) so that an
interrupted run never leaves a half-written result or checkpoint."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "autocast_context",
    "resolve_device",
    "seed_everything",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when installed) torch on every device."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional for medshared
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(spec: str = "auto") -> Any:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a ``torch.device``.

    Raises:
        ValueError: unknown spec, or CUDA asked for but not available (the message says to use ``--device cpu``).
    """
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec} asked for CUDA, but no CUDA device is available; use --device cpu")
        return torch.device(spec)
    raise ValueError(f"unknown device {spec!r}; expected auto, cpu or cuda")


def autocast_context(device: Any, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type when enabled and supported, else a no-op context."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if not enabled:
        return contextlib.nullcontext()
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return contextlib.nullcontext()
    if dev.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed.

    Example:
        >>> with atomic_path("out/model.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # torch tensors
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write JSON atomically; NumPy scalars/arrays, tensors and paths are converted; NaN is written as null."""
    text = json.dumps(_nan_to_none(obj), indent=indent, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    if isinstance(o, np.floating) and not np.isfinite(o):
        return None
    if isinstance(o, Mapping):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    if isinstance(o, np.ndarray):
        return _nan_to_none(o.tolist())
    return o


def atomic_write_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> None:
    """Write a list of dicts as CSV atomically. Columns default to the union of keys in first-seen order."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({k: _json_default(v) if isinstance(v, (np.generic, np.ndarray)) else v for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
