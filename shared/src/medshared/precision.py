"""One precision setting for every medrepro command: ``auto | fp32 | tf32 | bf16``, resolved once per run.

:func:`resolve_precision` turns the ``--precision`` value into a :class:`Precision`: the resolved name, why it was
chosen (one line for logs, ``train.json`` and bench output), an autocast context and the TF32 switches.

- CUDA, ``auto``: bf16 autocast with TF32 matmuls where the GPU has native bf16, else TF32.
- CUDA, ``fp32``: real fp32: :meth:`Precision.apply` turns TF32 *off* for matmuls and cuDNN convolutions (PyTorch's
  default leaves cuDNN's TF32 on, so GPU "fp32" would otherwise differ from CPU-validated numbers).
- CPU, ``tf32``: there is no TF32 on a CPU; it runs fp32 and the reason says so.
- CPU, ``auto``: ``$MEDREPRO_PRECISION`` (``fp32 | bf16``) first; a CPU without native bf16 (no AVX512-BF16 / AMX) runs
  fp32 without measuring; otherwise the package's ``probe`` (its own op mix, e.g. one forward + backward of a small
  model) is timed in fp32 and under bf16 autocast, and bf16 is chosen only if its median time is below 0.95x fp32's.
  CPUs with the same flags differ (AMX pays, AVX512-BF16 alone was measured slower than fp32 on an AMD EPYC), hence
  a measurement, not a flag rule. The result is cached in ``$MEDREPRO_CACHE_DIR/precision.json`` (default
  ``~/.cache/medrepro/``) keyed by (key, CPU model, torch version, torch thread count).
- ``fp32_reason`` (any device): the package's maths needs fp32 there; ``auto`` resolves to fp32 with that reason. An
  explicit ``bf16`` still gives bf16.

Example:
    >>> prec = resolve_precision(args.precision, device, key="kfgnet.c3d_train", probe=probe)  # doctest: +SKIP
    >>> prec.apply()  # doctest: +SKIP
    >>> with prec.autocast():  # doctest: +SKIP
    ...     loss = model(x).loss
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "BF16_SPEEDUP_NEEDED",
    "ENV_CACHE_DIR",
    "ENV_PRECISION",
    "PRECISIONS",
    "Precision",
    "cache_key",
    "cache_path",
    "cpu_model",
    "measure_probe",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
ENV_PRECISION = "MEDREPRO_PRECISION"
ENV_CACHE_DIR = "MEDREPRO_CACHE_DIR"
#: bf16 is chosen on a CPU only when its median probe time is below this fraction of fp32's (5 % noise margin).
BF16_SPEEDUP_NEEDED = 0.95


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision.

    Attributes:
        name: ``"fp32" | "tf32" | "bf16"`` (what runs).
        requested: ``"auto" | "fp32" | "tf32" | "bf16"`` (what was asked).
        device_type: ``"cpu" | "cuda" | ...``.
        reason: one line saying why ``name`` was chosen.
    """

    name: str
    requested: str
    device_type: str
    reason: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on ``device_type`` when ``name == "bf16"``, else a no-op context."""
        import torch

        if self.name != "bf16" or not torch.amp.is_autocast_available(self.device_type):
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def apply(self) -> None:
        """Set the process-wide TF32 switches on CUDA: on for tf32 / bf16, off for fp32; no-op elsewhere."""
        if self.device_type != "cuda":
            return
        import torch

        on = self.name in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    def as_dict(self) -> dict[str, str]:
        """``{"name", "requested", "device_type", "reason"}`` for train.json / metrics.json / bench output."""
        return dataclasses.asdict(self)


def _device_type(device: Any) -> str:
    import torch

    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str):
        if device.lower() == "auto":
            from medshared.runtime import resolve_device

            return resolve_device("auto").type
        return torch.device(device).type
    raise TypeError(f"device must be a torch.device or a string such as 'cpu' / 'cuda:0', not {type(device).__name__}")


def _check_spec(spec: str, what: str) -> str:
    s = str(spec).strip().lower()
    if s not in PRECISIONS:
        raise ValueError(f"{what} {spec!r} is not a precision; choose one of {', '.join(PRECISIONS)}")
    return s


def resolve_precision(
    spec: str,
    device: Any,
    *,
    key: str,
    probe: Callable[[], None] | None = None,
    fp32_reason: str | None = None,
) -> Precision:
    """Resolve ``--precision spec`` on ``device`` (see the module docstring for the rules).

    Args:
        spec: ``auto | fp32 | tf32 | bf16`` (case-insensitive).
        device: ``torch.device`` or a string (``"cpu"``, ``"cuda:1"``, ``"auto"``).
        key: names the package's op mix, e.g. ``"kfgnet.c3d_train"``; part of the cache key and the reason.
        probe: the op mix timed on a CPU for ``auto`` (called about 10-30 times; keep one call well under 0.3 s).
            Called without arguments, on the caller's thread count. None: ``auto`` on a CPU stays fp32.
        fp32_reason: set when the package's maths needs fp32 here: ``auto`` resolves to fp32 with this reason.

    Raises:
        ValueError: ``spec`` (or ``$MEDREPRO_PRECISION``) not one of the choices.
    """
    req = _check_spec(spec, "precision")
    dtype = _device_type(device)
    if req == "fp32":
        extra = ": TF32 off for matmuls and cuDNN convolutions" if dtype == "cuda" else ""
        return Precision("fp32", req, dtype, f"fp32 asked{extra}")
    if req == "tf32":
        if dtype == "cuda":
            return Precision("tf32", req, dtype, "tf32 asked: fp32 storage, TF32 matmuls and convolutions")
        return Precision("fp32", req, dtype, f"tf32 asked on {dtype}: there is no TF32 on {dtype}, runs fp32")
    if req == "bf16":
        return Precision("bf16", req, dtype, _explicit_bf16_reason(dtype))
    # auto
    if fp32_reason:
        return Precision("fp32", req, dtype, f"auto: fp32 because {fp32_reason}")
    env = os.environ.get(ENV_PRECISION, "").strip()
    if env:
        name = _check_spec(env, f"${ENV_PRECISION}")
        if name == "auto":
            pass
        elif name == "tf32" and dtype != "cuda":
            return Precision("fp32", req, dtype, f"auto: ${ENV_PRECISION}=tf32, no TF32 on {dtype}, runs fp32")
        else:
            return Precision(name, req, dtype, f"auto: ${ENV_PRECISION}={name}")
    if dtype == "cuda":
        import torch

        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", req, dtype, "auto on CUDA: native bf16 autocast with TF32 matmuls")
        return Precision("tf32", req, dtype, "auto on CUDA: no native bf16 on this GPU, fp32 with TF32 matmuls")
    if dtype != "cpu":
        return Precision("fp32", req, dtype, f"auto on {dtype}: fp32 (nothing to measure on {dtype})")
    return _auto_cpu(key, probe)


def _explicit_bf16_reason(dtype: str) -> str:
    from medshared.runtime import native_bf16

    if dtype == "cpu" and not native_bf16("cpu"):
        return "bf16 asked (emulated on this CPU: no AVX512-BF16 / AMX, expect it slower than fp32)"
    return "bf16 asked: bf16 autocast"


# --------------------------------------------------------------------------------------------------------------------
# CPU: measure once, cache
# --------------------------------------------------------------------------------------------------------------------
def _auto_cpu(key: str, probe: Callable[[], None] | None) -> Precision:
    from medshared.runtime import native_bf16

    if not native_bf16("cpu"):
        return Precision("fp32", "auto", "cpu", "auto on CPU: no native bf16 (no AVX512-BF16 / AMX), fp32 unmeasured")
    if probe is None:
        return Precision("fp32", "auto", "cpu", f"auto on CPU: no probe for {key} to measure bf16 with, fp32")
    ck = cache_key(key)
    entries = _read_cache()
    hit = entries.get(ck)
    if isinstance(hit, dict) and hit.get("name") in ("fp32", "bf16") and "ratio" in hit:
        return Precision(hit["name"], "auto", "cpu", _measured_reason(key, hit, "cached"))
    result = measure_probe(probe)
    entries = _read_cache()  # another process may have written meanwhile
    entries[ck] = result
    _write_cache(entries)
    return Precision(result["name"], "auto", "cpu", _measured_reason(key, result, "measured"))


def _measured_reason(key: str, r: dict[str, Any], how: str) -> str:
    if r.get("error"):
        return f"auto on CPU: fp32, bf16 failed on the {key} op mix ({r['error']}) ({how})"
    ratio = r.get("ratio") or float("inf")  # JSON stores an infinite ratio as null
    speed = 1.0 / ratio if ratio > 0 else float("inf")
    verdict = "faster" if speed >= 1 else "slower"
    factor = speed if speed >= 1 else 1.0 / speed
    return f"auto on CPU: {r['name']}, bf16 {factor:.2f}x {verdict} than fp32 on the {key} op mix ({how})"


def measure_probe(probe: Callable[[], None], budget_s: float = 3.0, min_runs: int = 3, max_runs: int = 15) -> dict:
    """Time ``probe`` in fp32 and under CPU bf16 autocast; pick bf16 if its median < 0.95x fp32's.

    One warm-up call each, then interleaved runs (fp32, bf16, fp32, ...) so that drift on a shared machine hits both
    alike; the run count fits ``budget_s`` within ``[min_runs, max_runs]``. A probe that raises under bf16 gives fp32.

    Returns:
        ``{"name", "fp32_s", "bf16_s", "ratio" (bf16 / fp32 median), "runs", "error"}``.
    """
    import torch

    def fp32() -> float:
        t = time.perf_counter()
        probe()
        return time.perf_counter() - t

    def bf16() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t = time.perf_counter()
            probe()
            return time.perf_counter() - t

    w32 = fp32()
    try:
        w16 = bf16()
    except RuntimeError as e:  # an op without a bf16 CPU kernel
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return {"name": "fp32", "fp32_s": w32, "bf16_s": None, "ratio": float("inf"), "runs": 0, "error": msg}
    one = max(w32 + w16, 1e-6)
    runs = int(min(max_runs, max(min_runs, (budget_s - one) // one)))
    t32, t16 = [], []
    for _ in range(runs):
        t32.append(fp32())
        t16.append(bf16())
    m32, m16 = statistics.median(t32), statistics.median(t16)
    ratio = m16 / m32 if m32 > 0 else float("inf")
    name = "bf16" if m16 < BF16_SPEEDUP_NEEDED * m32 else "fp32"
    return {"name": name, "fp32_s": m32, "bf16_s": m16, "ratio": ratio, "runs": runs, "error": None}


def cpu_model() -> str:
    """The CPU's model name with family / model / stepping and its bf16 flags (``/proc/cpuinfo`` on Linux).

    Virtual machines often report a generic name ("Intel(R) Xeon(R) Processor") for different CPUs, so the numbers
    and the bf16 flags are part of it.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    ids = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    flags = sorted({"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"} & set(fields.get("flags", "").split()))
    return f"{name} [{ids}; {' '.join(flags) or 'no avx512/amx'}]"


def cache_key(key: str) -> str:
    """The cache entry name: ``key | CPU model | torch version | torch threads``."""
    import torch

    return f"{key} | {cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path:
    """``$MEDREPRO_CACHE_DIR/precision.json``, default ``~/.cache/medrepro/precision.json``."""
    base = os.environ.get(ENV_CACHE_DIR)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "medrepro"
    return root / "precision.json"


def _read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        print(f"medshared.precision: ignoring unreadable cache {path} ({e}); it will be rewritten", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, Any]) -> None:
    from medshared.runtime import atomic_write_json

    path = cache_path()
    try:
        atomic_write_json(path, entries)
    except OSError as e:
        print(f"medshared.precision: could not write the cache {path} ({e}); will measure again", file=sys.stderr)
