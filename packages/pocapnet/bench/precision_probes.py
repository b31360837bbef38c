"""What ``--precision auto`` picks on this CPU, and whether it is ever slower than fp32 (run by hand):
``OMP_NUM_THREADS=1 flock /tmp/medrepro-bench.lock uv run python packages/pocapnet/bench/precision_probes.py``.

For each pocapnet probe (:mod:`pocapnet.precision`: the extraction op mix, the paper-size training step and forward,
and the tiny preset's training step) it prints auto's choice and reason (as the commands resolve it, cached), then
measures the probe afresh (``medshared.precision.measure_probe``: interleaved fp32 / bf16 runs, medians) and reports
fp32 time / auto's time. Target (it fails if auto picked the slower one): that ratio >= 0.95 for every probe (auto
never slower than fp32 beyond 5 % noise). The JSON line's ``ratio`` is the smallest of them.
"""

from __future__ import annotations

import functools
import json

import torch
from medshared.precision import cpu_model, measure_probe
from pocapnet.config import get_config
from pocapnet.precision import extract_probe, infer_probe, resolve, train_probe


def main() -> None:
    tiny = get_config("pocapnet_tiny").model
    probes = [
        ("extract", "pocapnet.extract", None, extract_probe),
        ("train (paper size)", "pocapnet.train", None, train_probe),
        ("infer (paper size)", "pocapnet.infer", None, infer_probe),
        ("train (tiny preset)", "pocapnet.train", tiny, functools.partial(train_probe, tiny)),
    ]
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'probe':22s} {'auto':5s} {'fp32 ms':>9s} {'bf16 ms':>9s} {'fp32/auto':>9s}  reason")
    out = {}
    for name, key, mcfg, fn in probes:
        prec = resolve("auto", "cpu", key, mcfg)
        r = measure_probe(fn)
        auto_s = r["bf16_s"] if prec.name == "bf16" else r["fp32_s"]
        speed = r["fp32_s"] / auto_s
        out[name] = {"auto": prec.name, "fp32_ms": r["fp32_s"] * 1e3, "bf16_ms": r["bf16_s"] * 1e3, "x": speed}
        print(
            f"{name:22s} {prec.name:5s} {r['fp32_s'] * 1e3:9.1f} {r['bf16_s'] * 1e3:9.1f} {speed:9.2f}  {prec.reason}"
        )
    worst = min(v["x"] for v in out.values())
    print(
        json.dumps(
            {
                "bench": "pocapnet-precision-auto",
                "ratio": round(worst, 3),
                "target": 0.95,
                "met": worst >= 0.95,
                "cpu": cpu_model(),
                "threads": torch.get_num_threads(),
                "probes": {
                    k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                    for k, v in out.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
