"""Benchmark: nnAudio/torch batched features against librosa per cycle, on the same cycles.

Run: ``uv run python packages/lungcvt/bench/features.py [--quick] [--batch 16] [--device cpu]``.
Each backend runs in its own subprocess so that its peak RSS is its own. Prints a table and, last, a JSON line
``{"bench": "features", "ratio": nnaudio_cycles_per_s / librosa_cycles_per_s, "target": 10, ...}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

FULL_ICBHI_CYCLES = 6898


def _cycles(n: int, seconds: float, sr: int) -> list[np.ndarray]:
    from lungcvt.synthetic import synth_cycle

    rng = np.random.default_rng(0)
    return [(0.1 * synth_cycle(i % 4, seconds, sr, rng)).astype(np.float32) for i in range(n)]


def worker(backend: str, n: int, seconds: float, batch: int, device: str) -> dict:
    import torch
    from lungcvt.config import FeatureConfig
    from lungcvt.features import compute_features

    cfg = FeatureConfig(backend=backend)
    ys = _cycles(n, seconds, cfg.sample_rate)
    compute_features(ys[:2], cfg, device=device, batch_size=batch)  # warm-up: filter banks, CQT kernels
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    feats = compute_features(ys, cfg, device=device, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    np.save(f"/tmp/lungcvt_bench_{backend}.npy", np.stack(feats[: min(8, n)]))
    return {
        "backend": backend,
        "cycles": n,
        "seconds": dt,
        "cycles_per_s": n / dt,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="about a minute")
    ap.add_argument("--n", type=int, default=None, help="cycles per backend")
    ap.add_argument("--seconds", type=float, default=2.7, help="cycle length (ICBHI mean 2.7 s)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.n, a.seconds, a.batch, a.device)))
        return
    n_lib = a.n or (16 if a.quick else 64)
    n_nna = a.n or (64 if a.quick else 256)
    res = {}
    for backend, n in (("librosa", n_lib), ("nnaudio", n_nna)):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                backend,
                "--n",
                str(n),
                "--seconds",
                str(a.seconds),
                "--batch",
                str(a.batch),
                "--device",
                a.device,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = np.load("/tmp/lungcvt_bench_librosa.npy")
    got = np.load("/tmp/lungcvt_bench_nnaudio.npy")[: len(ref)]
    diff = {name: float(np.abs(ref[:, c] - got[:, c]).mean()) for c, name in enumerate(("mfcc", "mel", "cqt"))}
    print(f"{'backend':10s} {'cycles':>7s} {'s':>8s} {'cycles/s':>9s} {'peak RSS MB':>12s} {'full ICBHI (min)':>17s}")
    for b, r in res.items():
        print(
            f"{b:10s} {r['cycles']:7d} {r['seconds']:8.2f} {r['cycles_per_s']:9.2f} {r['peak_rss_mb']:12.0f} "
            f"{FULL_ICBHI_CYCLES / r['cycles_per_s'] / 60:17.1f}"
        )
    print("mean |dB| difference nnAudio vs librosa: " + ", ".join(f"{k} {v:.3f}" for k, v in diff.items()))
    ratio = res["nnaudio"]["cycles_per_s"] / res["librosa"]["cycles_per_s"]
    print(
        json.dumps(
            {
                "bench": "features",
                "ratio": round(ratio, 2),
                "target": 10,
                "librosa_cycles_per_s": round(res["librosa"]["cycles_per_s"], 2),
                "nnaudio_cycles_per_s": round(res["nnaudio"]["cycles_per_s"], 2),
                "batch": a.batch,
                "cycle_s": a.seconds,
                "device": a.device,
                "mean_abs_db_diff": diff,
                "peak_rss_mb": {k: round(v["peak_rss_mb"]) for k, v in res.items()},
                "full_icbhi_minutes": {k: round(FULL_ICBHI_CYCLES / v["cycles_per_s"] / 60, 1) for k, v in res.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
