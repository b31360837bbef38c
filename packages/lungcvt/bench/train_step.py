"""Benchmark: training throughput and the share of time the training loop waits for data.

Run: ``OMP_NUM_THREADS=1 uv run python packages/lungcvt/bench/train_step.py [--quick] [--workers 2] [--device cpu]
[--image-size 224] [--model sleep|real] [--step-ms 50] [--state-size]``.

The question is whether an accelerator waits for data. Without one, ``--model sleep`` (default) stands in for it: the
training step is a ``--step-ms`` pause during which the CPU is free, as while a GPU computes (set it to your GPU's
measured step time). ``--model real`` runs the forward/backward of ``--preset`` (default ``lungcvt_tiny``, at
``--image-size`` 224 with 16 px patches) on ``--device``; on a CPU that step is seconds long and no data path is
visible next to it.

Four data paths feed the same cached-feature-like cycles (float16 [3, 96, T], T drawn around the ICBHI mean of 117
frames):

- ``item``: the previous path: each item resized and normalised on the CPU in ``__getitem__`` (``to_image``, here
  ``CycleDataset(image_cfg=...)``), no workers;
- ``item+workers``: the same with ``--workers`` DataLoader workers: what ``train --workers N`` runs on a CPU;
- ``batched``: items padded by ``collate_cycles``, the batch resized on the device by ``batch_to_image``, no workers;
- ``batched+workers``: workers + batched resize on the device: what ``train --workers N`` runs on a GPU.

For each: samples per second over the timed steps (after one warm-up batch) and the data-wait share = time blocked in
the loader's ``next()`` / loop time. Paths run interleaved (``--repeats`` rounds) so that load from other jobs hits
them alike; the median round is reported. With ``--state-size``, also the size of the resume state
(``last_state.pt``: weights + Adam moments + RNG states) for DeiT-B and DeiT-tiny against their weights.

Last line: ``{"bench": "train_step", "ratio": samples/s of the package's path on this device
(``lungcvt.train.resize_where``) / samples/s of ``item``, "target": 1.0, "data_wait_share": ...,
"data_wait_target": 0.2, ...}``: the package's path must be no slower than the old one and wait for data less than
20 % of the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _cycles(n: int, seed: int = 0):
    from lungcvt.dataset import CycleSet

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.gamma(8.0, 117 / 8.0, n), 10, 700).astype(int)  # ICBHI cycles: mean 2.7 s = 117 frames
    feats = [(rng.standard_normal((3, 96, int(t))) * 15 - 40).astype(np.float16) for t in lengths]
    return CycleSet(feats=feats, labels=[int(v) for v in rng.integers(0, 4, n)])


def _config(preset: str, image_size: int):
    from lungcvt.config import get_config

    cfg = get_config(preset)
    patch = 16 if image_size % 16 == 0 else cfg.model.patch_size
    return dataclasses.replace(
        cfg,
        features=dataclasses.replace(cfg.features, image_size=image_size),
        model=dataclasses.replace(cfg.model, img_size=image_size, patch_size=patch, pretrained=False),
    )


def run_path(
    path: str, cycles, cfg, workers: int, batch: int, steps: int, device: torch.device, step_ms: float | None
) -> dict:
    """One data path; ``step_ms`` replaces the model step by a pause of that length (``None``: the real model)."""
    from lungcvt.dataset import CycleDataset, make_loader
    from lungcvt.images import batch_to_image
    from lungcvt.model import LungCVT

    torch.manual_seed(0)
    if step_ms is None:
        model = LungCVT(cfg.model).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n_workers = workers if path.endswith("+workers") else 0
    g = torch.Generator().manual_seed(0)
    ds = CycleDataset(cycles, image_cfg=cfg.features if path.startswith("item") else None)
    dl = make_loader(ds, batch, shuffle=True, generator=g, num_workers=n_workers, drop_last=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(dl)
    wait = resize = 0.0
    done = 0
    t0 = None
    for k in range(steps + 1):
        a = time.perf_counter()
        batch_data = next(it)
        if k > 0:
            wait += time.perf_counter() - a
        else:
            t0 = time.perf_counter()  # step 0 is the warm-up (worker start-up, first allocations)
        if path.startswith("item"):
            x, y = batch_data[0].to(device), batch_data[2].to(device)
        else:
            r = time.perf_counter()
            x = batch_to_image(batch_data[0].to(device), batch_data[1], cfg.features)
            y = batch_data[2].to(device)
            sync()
            if k > 0:
                resize += time.perf_counter() - r
        if step_ms is None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
        else:
            time.sleep(step_ms / 1000.0)
        if k > 0:
            done += len(y)
    total = time.perf_counter() - t0
    del it
    return {
        "path": path,
        "workers": n_workers,
        "samples_per_s": done / total,
        "data_wait_share": wait / total,
        "resize_share": resize / total,
        "step_ms": 1000 * total / steps,
    }


def state_sizes() -> list[dict]:
    """Resume-state bytes for DeiT-B / DeiT-tiny LungCVT after one Adam step, against the weights alone."""
    from lungcvt.config import ModelConfig
    from lungcvt.model import LungCVT

    out = []
    for backbone in ("deit_tiny_patch16_224", "deit_base_patch16_224"):
        torch.manual_seed(0)
        model = LungCVT(ModelConfig(backbone=backbone, pretrained=False))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss = model(torch.randn(2, 3, 224, 224)).sum()
        loss.backward()
        opt.step()
        with tempfile.TemporaryDirectory() as d:
            w = Path(d) / "w.pt"
            torch.save(model.state_dict(), w)
            s = Path(d) / "s.pt"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, s)
            wb, sb = w.stat().st_size, s.stat().st_size
        n = sum(p.numel() for p in model.parameters())
        out.append({"backbone": backbone, "params": n, "weights_mb": wb / 1e6, "state_mb": sb / 1e6,
                    "state_over_weights": sb / wb})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lungcvt_tiny")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=("sleep", "real"), default="sleep", help="stand-in step or the real model")
    ap.add_argument("--step-ms", type=float, default=50.0, help="length of the stand-in step (--model sleep)")
    ap.add_argument("--quick", action="store_true", help="6 steps, 1 round")
    ap.add_argument("--state-size", action="store_true", help="also measure the resume state of DeiT-B / tiny")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 6, 1
    device = torch.device(args.device)
    cfg = _config(args.preset, args.image_size)
    cycles = _cycles(args.batch * (args.steps + 1) + args.batch)
    paths = ("item", "item+workers", "batched", "batched+workers")
    rounds: dict[str, list[dict]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for p in paths:
            step_ms = args.step_ms if args.model == "sleep" else None
            rounds[p].append(run_path(p, cycles, cfg, args.workers, args.batch, args.steps, device, step_ms))
    med = {}
    step = f"stand-in step {args.step_ms:g} ms" if args.model == "sleep" else f"model {args.preset}"
    print(f"{step}, {args.image_size} px, batch {args.batch}, {args.steps} steps, {args.repeats} rounds, "
          f"{args.workers} workers, device {device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'path':18s} {'samples/s':>10s} {'data wait':>10s} {'resize':>8s} {'step ms':>8s}   (median round)")
    for p in paths:
        r = sorted(rounds[p], key=lambda d: d["samples_per_s"])[len(rounds[p]) // 2]
        med[p] = r
        print(f"{p:18s} {r['samples_per_s']:10.1f} {100 * r['data_wait_share']:9.1f}% {100 * r['resize_share']:7.1f}% "
              f"{r['step_ms']:8.1f}")  # fmt: skip
    from lungcvt.train import resize_where

    ours = ("item" if resize_where(device, args.workers) == "workers" else "batched") + "+workers"
    result = {
        "bench": "train_step",
        "ratio": round(med[ours]["samples_per_s"] / med["item"]["samples_per_s"], 3),
        "target": 1.0,
        "package_path": ours,
        "data_wait_share": round(med[ours]["data_wait_share"], 4),
        "data_wait_target": 0.2,
        "data_wait_share_item": round(med["item"]["data_wait_share"], 4),
        "samples_per_s": {p: round(med[p]["samples_per_s"], 2) for p in paths},
        "spread_samples_per_s": {p: [round(r["samples_per_s"], 1) for r in rounds[p]] for p in paths},
        "config": {
            "model": args.model,
            "step_ms": args.step_ms if args.model == "sleep" else None,
            "preset": args.preset,
            "image_size": args.image_size,
            "batch": args.batch,
            "steps": args.steps,
            "workers": args.workers,
            "device": str(device),
        },  # fmt: skip
    }
    if args.state_size:
        sizes = state_sizes()
        for s in sizes:
            print(f"resume state {s['backbone']}: {s['params'] / 1e6:.1f} M params, weights {s['weights_mb']:.0f} MB, "
                  f"state {s['state_mb']:.0f} MB = {s['state_over_weights']:.2f} x weights")  # fmt: skip
        result["state_sizes"] = sizes
    result["pass"] = result["ratio"] >= result["target"] and result["data_wait_share"] <= result["data_wait_target"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
