"""Benchmark: the motion index of one 32-frame 112 x 112 clip, vectorised torch vs the per-pair scikit-image /
OpenCV loop (values must agree within 1e-3), and its cost relative to one training step.

    uv run python packages/kfgnet/bench/motion_index.py [--quick]

Last line: JSON {"bench": "motion_index", "ratio": loop_s / torch_s, "target": 3.0, ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from kfgnet.features import frame_motion_index, motion_index_reference
from kfgnet.synthetic import make_video


def timed(fn, reps: int) -> tuple[float, object]:
    out = fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2], out


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each function, timed in alternation so both see the same load on a shared machine."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 compares "
                    "with the single-threaded loop on equal terms and avoids OpenMP spin-waits on a shared CPU")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    reps = 5 if a.quick else 15
    rng = np.random.default_rng(0)
    clip = make_video(rng, True, 32, 112)["frames"]  # (32, 112, 112) uint8 synthetic ultrasound
    t = interleaved({"torch": lambda: frame_motion_index(clip), "loop": lambda: motion_index_reference(clip)}, reps)
    t_torch, t_loop = t["torch"], t["loop"]
    diff = float(np.abs(frame_motion_index(clip) - motion_index_reference(clip)).max())

    from kfgnet.losses import kfgnet_loss
    from kfgnet.model import create_model

    model = create_model("kfgnet_light_c3d").train()
    model = model.to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 3, 32, 112, 112).contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, vt = model(x)
        loss, _ = kfgnet_loss(logits, torch.tensor([0, 1]), vt, torch.rand(2, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_step, _ = timed(step, 1 if a.quick else 2)
    print(f"motion index of one 32 x 112 x 112 clip (61 SSIM + histogram pairs), torch threads "
          f"{torch.get_num_threads()}, medians of {reps} interleaved runs")
    print(f"{'method':<40}{'ms':>10}")
    print(f"{'per-pair skimage/OpenCV loop (124 cmp)':<40}{t_loop * 1e3:>10.1f}")
    print(f"{'vectorised float32 torch (61 pairs)':<40}{t_torch * 1e3:>10.1f}")
    print(f"{'one training step (batch 2, bf16+CL)':<40}{t_step * 1e3:>10.1f}")
    print(f"max |torch - loop| = {diff:.2e}; motion index per clip = {100 * t_torch / (t_step / 2):.2f}% of a "
          f"training step's per-clip cost, computed once per clip and cached")
    print(json.dumps({"bench": "motion_index", "ratio": round(t_loop / t_torch, 3), "target": 3.0,
                      "torch_ms": round(t_torch * 1e3, 3), "loop_ms": round(t_loop * 1e3, 3), "max_abs_diff": diff,
                      "train_step_ms": round(t_step * 1e3, 1), "threads": torch.get_num_threads(),
                      "motion_fraction_of_step_per_clip": round(t_torch / (t_step / 2), 4)}))


if __name__ == "__main__":
    main()
