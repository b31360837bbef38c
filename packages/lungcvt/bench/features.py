"""Benchmark: batched torch features against librosa per cycle, on the same cycles, with the same thread count.

Run: ``uv run python packages/lungcvt/bench/features.py [--quick] [--batch 16] [--device cpu] [--nnaudio]``.
Each backend runs in its own subprocess (after a warm-up) so that its peak RSS is its own:

- ``librosa``: the reference, one cycle at a time (exactly the official code's librosa calls);
- ``torch``: the batched default, ``torch.stft`` mel/MFCC + :class:`lungcvt.features.FFTCQT`;
- ``nnaudio`` (with ``--nnaudio``): the same batched path with nnAudio's ``CQT1992v2`` for the CQT channel.

Prints the CPU, that the features run in fp32, and which precision ``--precision auto`` chose for the model (and
why). Timed: pre-resize features (what the cache stores), as the ratio; a second table times each stage of the batched
path, including the resize to ``--image-size`` and the normalisation that training applies afterwards. Prints the
tables and, last, a JSON line ``{"bench": "features", "ratio": torch_cycles_per_s / librosa_cycles_per_s,
"target": 10, ...}``.
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


def worker(backend: str, n: int, seconds: float, batch: int, device: str, image_size: int) -> dict:
    import torch
    from lungcvt.config import FeatureConfig
    from lungcvt.features import compute_features, get_featurizer, to_image

    cfg = FeatureConfig(backend=backend, image_size=image_size)
    ys = _cycles(n, seconds, cfg.sample_rate)
    compute_features(ys[:batch], cfg, device=device, batch_size=batch)  # warm-up: filter banks, CQT kernels
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t, c = time.perf_counter(), time.process_time()
    feats = compute_features(ys, cfg, device=device, batch_size=batch)
    sync()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    np.save(f"/tmp/lungcvt_bench_{backend}.npy", np.stack(feats[: min(8, n)]))
    out = {
        "backend": backend,
        "cycles": n,
        "seconds": dt,
        "cycles_per_s": n / dt,
        "cpu_cycles_per_s": n / dc,  # per CPU-second of this process: less sensitive to other users' load
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if backend != "librosa":  # per-stage profile of the batched path, plus resize + normalise
        fz = get_featurizer(cfg, device)
        stages: dict[str, float] = {}
        t = time.perf_counter()
        for s in range(0, n, batch):
            t0 = time.perf_counter()
            x, lens = fz.pad(ys[s : s + batch])
            sync()
            stages["pad"] = stages.get("pad", 0.0) + time.perf_counter() - t0
            f = fz.batch(x, lens, stages)
            t0 = time.perf_counter()
            to_image(f, cfg)  # [B, 3, S, S]; batches are equal-length here, so no per-item crop is needed
            sync()
            stages["resize+norm"] = stages.get("resize+norm", 0.0) + time.perf_counter() - t0
        out["stages_ms_per_cycle"] = {k: 1000 * v / n for k, v in stages.items()}
        out["with_resize_cycles_per_s"] = n / (time.perf_counter() - t)
    else:  # librosa path + per-cycle resize, for the end-to-end comparison
        t = time.perf_counter()
        for f in feats:
            to_image(f, cfg)
        out["resize_ms_per_cycle"] = 1000 * (time.perf_counter() - t) / n
        out["with_resize_cycles_per_s"] = n / (dt + (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="about a minute")
    ap.add_argument("--n", type=int, default=None, help="cycles per backend")
    ap.add_argument("--seconds", type=float, default=2.7, help="cycle length (ICBHI mean 2.7 s)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nnaudio", action="store_true", help="also time the nnAudio CQT1992v2 backend")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.n, a.seconds, a.batch, a.device, a.image_size)))
        return
    n_lib = a.n or (16 if a.quick else 64)
    n_bat = a.n or (128 if a.quick else 512)
    runs = [("librosa", n_lib), ("torch", n_bat)] + (
        [("nnaudio", a.n or (48 if a.quick else 128))] if a.nnaudio else []
    )
    res = {}
    for backend, n in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", backend, "--n", str(n), "--seconds", str(a.seconds)]
            + ["--batch", str(a.batch), "--device", a.device, "--image-size", str(a.image_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        res[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = np.load("/tmp/lungcvt_bench_librosa.npy")
    diff = {}
    for b in res:
        if b == "librosa":
            continue
        got = np.load(f"/tmp/lungcvt_bench_{b}.npy")[: len(ref)]
        d = np.abs(ref - got)
        diff[b] = {
            "mfcc_mean": float(d[:, 0].mean()),
            "mel_mean": float(d[:, 1].mean()),
            "mel_max": float(d[:, 1].max()),
            "cqt_mean": float(d[:, 2].mean()),
            "cqt_p99": float(np.percentile(d[:, 2], 99)),
        }
    head = ("backend", "cycles", "s", "cycles/s", "per CPU-s", "+resize", "peak RSS MB", "ICBHI min")
    print("{:8s} {:>7s} {:>7s} {:>9s} {:>10s} {:>8s} {:>12s} {:>10s}".format(*head))
    for b, r in res.items():
        row = (b, r["cycles"], r["seconds"], r["cycles_per_s"], r["cpu_cycles_per_s"], r["with_resize_cycles_per_s"])
        row += (r["peak_rss_mb"], FULL_ICBHI_CYCLES / r["cycles_per_s"] / 60)
        print("{:8s} {:7d} {:7.2f} {:9.1f} {:10.1f} {:8.1f} {:12.0f} {:10.2f}".format(*row))
    print(f"librosa per-cycle resize to {a.image_size}: {res['librosa']['resize_ms_per_cycle']:.2f} ms/cycle")
    for b, r in res.items():
        if "stages_ms_per_cycle" in r:
            print(f"{b} stages (ms/cycle): " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms_per_cycle"].items()))
    for b, d in diff.items():
        print(f"|dB| difference {b} vs librosa: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items()))
    ratio = res["torch"]["cycles_per_s"] / res["librosa"]["cycles_per_s"]
    from lungcvt.precision import resolve
    from medshared.precision import cpu_model

    prec = resolve("auto", a.device)
    print(
        f"CPU {cpu_model()}; features run in fp32 (every backend); --precision auto for the model on "
        f"{a.device}: {prec.name} ({prec.reason})"
    )
    summary = {
        "bench": "features",
        "ratio": round(ratio, 2),
        "target": 10,
        "ratio_with_resize": round(
            res["torch"]["with_resize_cycles_per_s"] / res["librosa"]["with_resize_cycles_per_s"], 2
        ),
        "ratio_cpu_time": round(res["torch"]["cpu_cycles_per_s"] / res["librosa"]["cpu_cycles_per_s"], 2),
        "cycles_per_s": {k: round(v["cycles_per_s"], 1) for k, v in res.items()},
        "cpu_cycles_per_s": {k: round(v["cpu_cycles_per_s"], 1) for k, v in res.items()},
        "batch": a.batch,
        "cycle_s": a.seconds,
        "device": a.device,
        "cpu": cpu_model(),
        "features_precision": "fp32",
        "precision_auto": prec.as_dict(),
        "mean_abs_db_diff": diff,
        "stages_ms_per_cycle": {
            k: {s: round(t, 3) for s, t in v["stages_ms_per_cycle"].items()}
            for k, v in res.items()
            if "stages_ms_per_cycle" in v
        },
        "peak_rss_mb": {k: round(v["peak_rss_mb"]) for k, v in res.items()},
        "full_icbhi_minutes": {k: round(FULL_ICBHI_CYCLES / v["cycles_per_s"] / 60, 2) for k, v in res.items()},
    }
    if "nnaudio" in res:
        summary["ratio_nnaudio"] = round(res["nnaudio"]["cycles_per_s"] / res["librosa"]["cycles_per_s"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
