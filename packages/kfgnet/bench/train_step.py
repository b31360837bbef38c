"""Benchmark: one training step of the paper-size light C3D (32 x 112 x 112 clips), plain fp32 against the speed
switches (channels_last_3d, bf16 autocast, both), same batch, side by side in one run.

    uv run python packages/kfgnet/bench/train_step.py [--quick] [--batch 2] [--steps 3]

The ratio is plain fp32 over what ``--precision auto`` picks on this machine: bf16 + channels_last_3d where bf16 is
native (AVX512-BF16 / AMX CPUs, CUDA), channels_last_3d in fp32 elsewhere (emulated bf16 is slower than fp32).
Last line: JSON {"bench": "train_step", "ratio": fp32_s / auto_s, "target": 2.0, "native_bf16": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from kfgnet.losses import kfgnet_loss
from kfgnet.model import create_model
from medshared.runtime import native_bf16


def step_time(channels_last: bool, bf16: bool, batch: int, steps: int, frames: int, size: int) -> float:
    torch.manual_seed(0)
    model = create_model("kfgnet_light_c3d", num_frames=frames, size=size).train()
    x = torch.rand(batch, 3, frames, size, size)
    y = torch.arange(batch) % 2
    vm = torch.rand(batch, frames // 4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-8)
    times = []
    for i in range(steps + 1):  # first step is warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, v_temp = model(x)
        loss, _ = kfgnet_loss(logits, y, v_temp, vm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default); 1 compares "
        "with the single-threaded loop on equal terms and avoids OpenMP spin-waits on a shared CPU",
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    batch = a.batch or (2 if a.quick else 4)
    steps = a.steps or (2 if a.quick else 4)
    rows = []
    for name, cl, bf in (
        ("fp32 (default)", False, False),
        ("channels_last_3d", True, False),
        ("bf16 autocast", False, True),
        ("bf16 + channels_last_3d", True, True),
    ):
        rows.append((name, step_time(cl, bf, batch, steps, a.frames, a.size)))
    base = rows[0][1]
    native = native_bf16("cpu")
    auto_name = "bf16 + channels_last_3d" if native else "channels_last_3d"
    auto_t = dict(rows)[auto_name]
    print(
        f"light C3D training step, batch {batch}, {a.frames} x {a.size} x {a.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':<26}{'s/step':>10}{'speed-up':>10}")
    for name, t in rows:
        print(f"{name:<26}{t:>10.3f}{base / t:>10.2f}")
    print(f"native bf16 on this CPU: {native}; --precision auto runs: {auto_name}")
    print(
        json.dumps(
            {
                "bench": "train_step",
                "ratio": round(base / auto_t, 3),
                "target": 2.0,
                "native_bf16": native,
                "auto": auto_name,
                "fp32_s": round(base, 4),
                "fast_s": round(auto_t, 4),
                "batch": batch,
                "clip": [a.frames, a.size, a.size],
                "variants": {n: round(t, 4) for n, t in rows},
            }
        )
    )


if __name__ == "__main__":
    main()
