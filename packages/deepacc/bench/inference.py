"""Benchmark (run by hand): DeepACC vs plain Faster R-CNN with the same ResNet-101-FPN backbone on a 1600x1200
metaphase, CPU: seconds per image, peak memory, training-step time; and bf16 autocast vs fp32 inference for DeepACC
(speed-up and the fraction of detections unchanged at IoU 0.9 with the same class).

    uv run python packages/deepacc/bench/inference.py [--quick] [--checkpoint run/model.safetensors]

Target: DeepACC's heads add <= 10% inference time (ratio = DeepACC / Faster R-CNN seconds per image <= 1.10).
Each measurement runs in a fresh process so peak RSS is per model. Weights are random (no ImageNet file needed);
with --checkpoint the bf16 comparison uses that trained model instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import statistics
import time
from typing import Any


def _image(size: tuple[int, int]) -> Any:
    import numpy as np
    import torch
    from deepacc.data import read_image

    try:
        from medshared.testing import shared_data_dir

        root = shared_data_dir()
    except Exception:  # noqa: BLE001
        root = None
    if root is not None and (root / "chromosome" / "A.tif").is_file():
        img = read_image(root / "chromosome" / "A.tif")
        src = "A.tif"
    else:
        from deepacc.synthetic import SynthConfig, compose_metaphase, procedural_crops

        g, _, _, _ = compose_metaphase(procedural_crops(0), np.random.default_rng(0),
                                       SynthConfig(height=size[0], width=size[1], scale=2.0))  # fmt: skip
        img = np.repeat(g[..., None], 3, 2)
        src = "synthetic"
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0, src


def _cfg(name: str, min_size: int) -> Any:
    from deepacc.config import create_config

    cfg = create_config(name)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, min_size=min_size))


def _measure(job: dict[str, Any], q: Any) -> None:
    import torch
    from deepacc.model import build_model

    torch.manual_seed(0)
    x, src = _image((1200, 1600))
    cfg = _cfg(job["config"], job["min_size"])
    model = build_model(cfg, pretrained=None)
    out: dict[str, Any] = {"image": src}
    if job["kind"] == "infer":
        model.eval()
        with torch.no_grad():
            model([x])  # warm-up
            ts = []
            for _ in range(job["reps"]):
                t = time.perf_counter()
                model([x])
                ts.append(time.perf_counter() - t)
        out["seconds"] = statistics.median(ts)
    else:
        model.train()
        target = [{"boxes": torch.tensor([[700.0, 400.0, 760.0, 500.0], [900.0, 600.0, 940.0, 660.0]]),
                   "labels": torch.tensor([1, 21])}]  # fmt: skip
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        ts = []
        for i in range(job["reps"] + 1):
            t = time.perf_counter()
            loss = sum(model([x], target).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # first step is warm-up
                ts.append(time.perf_counter() - t)
        out["seconds"] = statistics.median(ts)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


def _run(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(job, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _bf16_compare(checkpoint: str | None, min_size: int, reps: int) -> dict[str, Any]:
    import torch
    from deepacc.model import build_model, set_output_mode
    from medshared.metrics import box_iou

    x, _ = _image((1200, 1600))
    if checkpoint:
        from deepacc.train import load_model

        model, _, _ = load_model(checkpoint)
        note = f"trained checkpoint {checkpoint}"
    else:
        torch.manual_seed(0)
        model = build_model(_cfg("deepacc_r101", min_size), pretrained=None).eval()
        note = "random-init R101 (no trained weights): scores are near-uniform, so class flips are likely"
    set_output_mode(model, "max")
    res: dict[str, Any] = {"model": note}
    with torch.no_grad():
        model([x])
        t32, t16 = [], []
        for _ in range(reps):
            t = time.perf_counter()
            d32 = model([x])[0]
            t32.append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                d16 = model([x])[0]
            t16.append(time.perf_counter() - t)
    res["fp32_seconds"] = statistics.median(t32)
    res["bf16_seconds"] = statistics.median(t16)
    res["speedup"] = res["fp32_seconds"] / res["bf16_seconds"]
    keep32 = torch.ones(len(d32["scores"]), dtype=torch.bool)  # every top-1 detection with score > 0.05
    b32, l32 = d32["boxes"][keep32].float().numpy(), d32["labels"][keep32].numpy()
    b16, l16 = d16["boxes"].float().numpy(), d16["labels"].numpy()
    same = 0
    if len(b32) and len(b16):
        iou = box_iou(b32, b16)
        for i in range(len(b32)):
            same += int(((iou[i] >= 0.9) & (l16 == l32[i])).any())
    res["n_fp32_detections"] = int(len(b32))
    res["fraction_unchanged_iou0.9_same_class"] = same / len(b32) if len(b32) else float("nan")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short side 400 px and 1 repetition (about a minute)")
    ap.add_argument("--checkpoint", default=None, help="trained deepacc checkpoint for the bf16 comparison")
    args = ap.parse_args()
    min_size, reps = (400, 1) if args.quick else (800, 3)
    rows = []
    for name, label in (("faster_rcnn_r101", "Faster R-CNN R101-FPN"), ("deepacc_r101", "DeepACC R101-FPN")):
        inf = _run({"kind": "infer", "config": name, "min_size": min_size, "reps": reps})
        trn = _run({"kind": "train", "config": name, "min_size": min_size, "reps": 1})
        rows.append({"model": label, "infer_s": inf["seconds"], "infer_peak_mb": inf["peak_rss_mb"],
                     "train_step_s": trn["seconds"], "train_peak_mb": trn["peak_rss_mb"],
                     "image": inf["image"]})  # fmt: skip
    bf = _bf16_compare(args.checkpoint, min_size, reps)
    print(f"CPU, 1600x1200 image ({rows[0]['image']}) resized to short side {min_size}; median of {reps} run(s)")
    print(f"{'model':<24}{'s/image':>10}{'peak MB':>10}{'train s/step':>14}{'train peak MB':>15}")
    for r in rows:
        print(f"{r['model']:<24}{r['infer_s']:>10.3f}{r['infer_peak_mb']:>10.0f}{r['train_step_s']:>14.3f}"
              f"{r['train_peak_mb']:>15.0f}")  # fmt: skip
    print(f"bf16 autocast vs fp32 (DeepACC): fp32 {bf['fp32_seconds']:.3f}s, bf16 {bf['bf16_seconds']:.3f}s, "
          f"speed-up {bf['speedup']:.2f}x, unchanged detections {bf['fraction_unchanged_iou0.9_same_class']:.3f} "
          f"of {bf['n_fp32_detections']} ({bf['model']})")  # fmt: skip
    ratio = rows[1]["infer_s"] / rows[0]["infer_s"]
    print(json.dumps({"bench": "inference", "ratio": round(ratio, 4), "target": 1.10,
                      "deepacc_s_per_image": round(rows[1]["infer_s"], 4),
                      "faster_rcnn_s_per_image": round(rows[0]["infer_s"], 4),
                      "train_step_ratio": round(rows[1]["train_step_s"] / rows[0]["train_step_s"], 4),
                      "deepacc_peak_mb": round(rows[1]["infer_peak_mb"]),
                      "faster_rcnn_peak_mb": round(rows[0]["infer_peak_mb"]),
                      "bf16_speedup": round(bf["speedup"], 4),
                      "bf16_unchanged_fraction": bf["fraction_unchanged_iou0.9_same_class"],
                      "min_size": min_size, "quick": args.quick}))  # fmt: skip


if __name__ == "__main__":
    main()
