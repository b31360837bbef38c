"""Benchmark (run by hand): CPU cost of pooling RoIs from P2 (stride 4) instead of P3, RPN on P3-P5 in both, for the
real-crop demo's detector (``deepacc_tiny`` with the full head at 384 px, 128 RoIs per image, batch 2), training
step and inference, alternating the two models in one process (median of N), one thread.

    OMP_NUM_THREADS=1 uv run python packages/deepacc/bench/p2_pooling.py [--reps 12]

Target: a training step with P2 pooling costs <= 1.5x the P3 step (what the demo's 6-minute budget allows at its
iteration count). Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args()
    import numpy as np
    import torch
    from deepacc.demo import demo_config
    from deepacc.model import build_model

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 384, 384, generator=g) for _ in range(2)]
    targets = []
    for _ in range(2):
        xy = torch.rand(46, 2, generator=g) * 340
        wh = 6 + torch.rand(46, 2, generator=g) * 30
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 25, (46,), generator=g)})
    models = {}
    for level in (0, 2):
        torch.manual_seed(0)
        models[level] = build_model(demo_config(900, 12, 384, level))
    times: dict[str, list[float]] = {k: [] for k in ("train_p3", "train_p2", "infer_p3", "infer_p2")}
    for rep in range(args.reps + 1):
        for level, tag in ((0, "p3"), (2, "p2")):
            m = models[level].train()
            t = time.perf_counter()
            sum(m(images, targets).values()).backward()
            dt = time.perf_counter() - t
            m.eval()
            with torch.no_grad():
                t = time.perf_counter()
                m(images[:1])
                di = time.perf_counter() - t
            if rep:  # first round is warm-up
                times[f"train_{tag}"].append(dt)
                times[f"infer_{tag}"].append(di)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"deepacc_tiny, 384 px, full head, 1 thread, fp32, median of {args.reps}:")
    for k, v in med.items():
        print(f"  {k:<10} {v:.4f} s")
    ratio = med["train_p2"] / med["train_p3"]
    print(json.dumps({"bench": "p2_pooling", "ratio": round(ratio, 4), "target": 1.5,
                      "infer_ratio": round(med["infer_p2"] / med["infer_p3"], 4),
                      **{k: round(v, 4) for k, v in med.items()}, "iqr_train_p2": float(np.subtract(
                          *np.percentile(times["train_p2"], [75, 25])))}))  # fmt: skip


if __name__ == "__main__":
    main()
