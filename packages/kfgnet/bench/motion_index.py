"""Benchmark: the motion index of one 32-frame 112 x 112 clip, vectorised torch against two loops, and its cost
relative to one training step.

- fair loop: the best straightforward loop: one gray histogram per frame (OpenCV), each unordered pair (i, i + d),
  d = 1, 2, computed once with scikit-image SSIM and OpenCV's correlation (61 pairs); the target is against it;
- vectorised: float32 torch, the box filter of all SSIM maps in one ``cv2.blur`` call;
- fork-style loop (``kfgnet.features.motion_index_reference``): per frame, each neighbour compared again (124
  comparisons, histograms recomputed per comparison), as the LeeTaylorLondon fork's loop is organised.

All three must agree within 1e-3. Times are CPU seconds (``time.process_time``) of one thread, the methods
alternated and medians taken, so they hold on a machine loaded by other jobs.

    OMP_NUM_THREADS=1 uv run python packages/kfgnet/bench/motion_index.py [--quick]

Last line: JSON {"bench": "motion_index", "ratio": fair_loop / torch, "target": 3.0, ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from kfgnet.config import MotionConfig
from kfgnet.features import frame_motion_index, motion_index_reference, to_gray
from kfgnet.synthetic import make_video


def fair_loop(frames: np.ndarray, cfg: MotionConfig | None = None) -> np.ndarray:
    """Each unordered pair once (scikit-image SSIM, OpenCV histogram correlation), one histogram per frame."""
    import cv2
    from skimage.metrics import structural_similarity

    cfg = cfg or MotionConfig()
    g = to_gray(frames).numpy()  # (T, H, W) float64
    t = len(g)
    hists = [cv2.calcHist([f.astype(np.float32)], [0], None, [cfg.hist_bins], [0, 256]) for f in g]
    total, count = np.zeros(t), np.zeros(t)
    for d in cfg.neighbours:
        for i in range(t - d):
            s = structural_similarity(g[i], g[i + d], win_size=cfg.ssim_win, data_range=cfg.data_range)
            h = cv2.compareHist(hists[i], hists[i + d], cv2.HISTCMP_CORREL)
            sim = (s + h) / 2
            total[i] += sim
            total[i + d] += sim
            count[i] += 1
            count[i + d] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def interleaved_cpu(fns: dict, reps: int) -> dict[str, float]:
    """Median CPU seconds of each function, timed in alternation (warm-up first)."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            ts[k].append(time.process_time() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


def train_step_cpu(reps: int) -> float:
    """Median CPU seconds of one paper-size light C3D training step (batch 2, 32 x 112 x 112, channels_last_3d, bf16
    autocast only where the CPU has native bf16: what ``--precision auto`` runs)."""
    from kfgnet.losses import kfgnet_loss
    from kfgnet.model import create_model
    from medshared.runtime import native_bf16

    bf16 = native_bf16("cpu")

    model = create_model("kfgnet_light_c3d").train().to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 3, 32, 112, 112).contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, vt = model(x)
        loss, _ = kfgnet_loss(logits, torch.tensor([0, 1]), vt, torch.rand(2, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return interleaved_cpu({"step": step}, reps)["step"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    reps = 7 if a.quick else 21
    clip = make_video(np.random.default_rng(0), True, 32, 112)["frames"]  # (32, 112, 112) uint8 synthetic ultrasound
    ref = frame_motion_index(clip)
    diffs = {
        "fair": float(np.abs(fair_loop(clip) - ref).max()),
        "fork": float(np.abs(motion_index_reference(clip) - ref).max()),
    }
    assert max(diffs.values()) < 1e-3, diffs
    t = interleaved_cpu(
        {
            "torch": lambda: frame_motion_index(clip),
            "fair": lambda: fair_loop(clip),
            "fork": lambda: motion_index_reference(clip),
        },
        reps,
    )
    t_step = train_step_cpu(1 if a.quick else 3)
    share = t["torch"] / (t_step / 2)
    print(f"motion index of one 32 x 112 x 112 clip, CPU ms on one thread, medians of {reps} alternated runs")
    print(f"{'method':<52}{'ms':>9}{'torch is x faster':>20}")
    print(
        f"{'fair loop: each pair once, skimage SSIM (61 pairs)':<52}{t['fair'] * 1e3:>9.1f}"
        f"{t['fair'] / t['torch']:>20.2f}"
    )
    print(
        f"{'fork-style loop: every neighbour again (124 cmp)':<52}{t['fork'] * 1e3:>9.1f}"
        f"{t['fork'] / t['torch']:>20.2f}"
    )
    print(f"{'vectorised float32 torch + OpenCV box filter':<52}{t['torch'] * 1e3:>9.1f}")
    print(f"{'one training step (batch 2, --precision auto)':<52}{t_step * 1e3:>9.1f}")
    print(
        f"max |torch - loop|: fair {diffs['fair']:.1e}, fork-style {diffs['fork']:.1e}; the index costs "
        f"{100 * share:.2f} % of a training step's per-clip cost, once per clip (cached, never per batch)"
    )
    print(
        json.dumps(
            {
                "bench": "motion_index",
                "ratio": round(t["fair"] / t["torch"], 3),
                "target": 3.0,
                "ratio_vs_fork_loop": round(t["fork"] / t["torch"], 3),
                "torch_cpu_ms": round(t["torch"] * 1e3, 2),
                "fair_loop_cpu_ms": round(t["fair"] * 1e3, 2),
                "fork_loop_cpu_ms": round(t["fork"] * 1e3, 2),
                "train_step_cpu_ms": round(t_step * 1e3, 1),
                "motion_fraction_of_step_per_clip": round(share, 4),
                "max_abs_diff": max(diffs.values()),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
