"""Benchmark: one training step of the paper-size light C3D (32 x 112 x 112 clips), plain fp32 against what
``--precision auto`` runs on this machine, plus the other variants, same batch, steps interleaved (round-robin over
the variants, so drift on a shared machine hits all alike), medians.

    OMP_NUM_THREADS=1 flock /tmp/medrepro-bench.lock uv run python packages/kfgnet/bench/train_step.py --quick

``auto`` is resolved by ``kfgnet.precision.classifier_precision`` exactly as the commands do (on a CPU: the light-C3D
probe timed in fp32 and bf16, bf16 only if < 0.95x; measured afresh in a temporary cache unless ``--use-cache``),
then run with channels_last_3d. Target: 2x over plain fp32 where auto chose bf16 (it pays: AMX); where it chose fp32,
auto must be no slower than plain fp32 (ratio >= 0.95, 5 % noise).
Last line: JSON {"bench": "kfgnet_train_step", "ratio": fp32_s / auto_s, "target", "auto", "reason", "cpu", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from kfgnet.losses import kfgnet_loss
from kfgnet.model import create_model

VARIANTS = {  # name -> (channels_last_3d, bf16 autocast)
    "fp32 (plain)": (False, False),
    "fp32 + channels_last_3d": (True, False),
    "bf16 autocast": (False, True),
    "bf16 + channels_last_3d": (True, True),
}


def make_step(channels_last: bool, bf16: bool, batch: int, frames: int, size: int):  # noqa: ANN201
    torch.manual_seed(0)
    model = create_model("kfgnet_light_c3d", num_frames=frames, size=size).train()
    x = torch.rand(batch, 3, frames, size, size)
    y = torch.arange(batch) % 2
    vm = torch.rand(batch, frames // 4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-8)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, v_temp = model(x)
        loss, _ = kfgnet_loss(logits, y, v_temp, vm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def main() -> None:
    from kfgnet.precision import classifier_precision
    from medshared.precision import cpu_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps per variant")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = OMP_NUM_THREADS / torch's default)")
    ap.add_argument("--use-cache", action="store_true", help="take auto's choice from the user's precision cache")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    batch = a.batch or 2
    steps = a.steps or (2 if a.quick else 4)
    if not a.use_cache:
        os.environ["MEDREPRO_CACHE_DIR"] = tempfile.mkdtemp(prefix="kfgnet-bench-cache-")
    t0 = time.perf_counter()
    prec = classifier_precision("auto", "cpu")
    probe_s = time.perf_counter() - t0
    auto_name = "bf16 + channels_last_3d" if prec.name == "bf16" else "fp32 + channels_last_3d"
    fns = {n: make_step(cl, bf, batch, a.frames, a.size) for n, (cl, bf) in VARIANTS.items()}
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    for f in fns.values():  # warm-up step each
        f()
    for _ in range(steps):
        for n, f in fns.items():
            times[n].append(f())
    med = {n: statistics.median(t) for n, t in times.items()}
    base, auto_t = med["fp32 (plain)"], med[auto_name]
    ratio = base / auto_t
    target = 2.0 if prec.name == "bf16" else 0.95
    cpu = cpu_model()
    print(
        f"light C3D training step, batch {batch}, {a.frames} x {a.size} x {a.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), CPU {cpu}"
    )
    print(f"--precision auto chose {prec.name}: {prec.reason} (probe {probe_s:.1f} s) -> runs {auto_name}")
    print(f"{'variant':<26}{'s/step':>10}{'vs fp32':>10}   (median of {steps}, interleaved)")
    for n, t in med.items():
        print(f"{n:<26}{t:>10.3f}{base / t:>10.2f}{'   <- auto' if n == auto_name else ''}")
    verdict = "met" if ratio >= target else "MISSED"
    print(f"auto vs plain fp32: {ratio:.2f}x (target {target}x where auto = {prec.name}): {verdict}")
    print(
        json.dumps(
            {
                "bench": "kfgnet_train_step",
                "ratio": round(ratio, 3),
                "target": target,
                "auto": auto_name,
                "precision": prec.as_dict(),
                "cpu": cpu,
                "threads": torch.get_num_threads(),
                "fp32_s": round(base, 4),
                "auto_s": round(auto_t, 4),
                "batch": batch,
                "clip": [a.frames, a.size, a.size],
                "variants": {n: round(t, 4) for n, t in med.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
