"""Benchmark (run by hand): DeepACC vs plain Faster R-CNN with the same ResNet-101-FPN backbone on a 1600x1200
metaphase, CPU: seconds per image, peak memory, training-step time; and bf16 against fp32 inference for DeepACC,
both as ``torch.autocast`` and as bf16 weights cast once (``deepacc.precision.cast_bf16``): speed-up and the fraction
of top-1 detections unchanged at IoU 0.9 with the same class.

    uv run python packages/deepacc/bench/inference.py [--quick] [--checkpoint run/model.safetensors]
    uv run python packages/deepacc/bench/inference.py --bf16-only --checkpoint demo/run/model.safetensors \
        --data demo/data/test/annotations.json     # the demo model on its held-out synthetic images

Target: DeepACC's heads add <= 10% inference time (ratio = DeepACC / Faster R-CNN seconds per image <= 1.10), both
at the precision ``--precision auto`` resolves to (printed with its reason), both pooling RoIs from P2 (the paper's
FPN). Prints the CPU model and thread count.
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
    bf16 = job.get("precision") == "bf16"
    if job["kind"] == "infer":
        model.eval()
        if bf16:  # what evaluate / predict run for --precision bf16 (auto where it pays)
            from deepacc.precision import cast_bf16

            model = cast_bf16(model)
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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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


def _agreement(d32: dict[str, Any], d16: dict[str, Any], min_score: float) -> tuple[int, int]:
    """(fp32 detections with score >= min_score, how many of them have a bf16 detection at IoU >= 0.9, same class)."""
    import numpy as np
    from medshared.metrics import box_iou

    keep = d32["scores"].numpy() >= min_score
    b32, l32 = d32["boxes"].numpy()[keep], d32["labels"].numpy()[keep]
    b16, l16 = d16["boxes"].numpy(), d16["labels"].numpy()
    if not len(b32) or not len(b16):
        return int(len(b32)), 0
    iou = box_iou(b32, b16)  # [N32, N16]
    same = ((iou >= 0.9) & (l16[None, :] == l32[:, None])).any(1)
    return int(len(b32)), int(np.sum(same))


def _bf16_compare(checkpoint: str | None, data: str | None, min_size: int, reps: int) -> dict[str, Any]:
    """fp32 against bf16 autocast and against bf16 weights cast once (``deepacc.precision.cast_bf16``), top-1 detections
    (mAP_max post-processing); images: ``data`` (COCO json, e.g. the demo's held-out set) or A.tif."""
    import copy

    import torch
    from deepacc.model import build_model, set_output_mode
    from deepacc.precision import cast_bf16

    if data:
        from deepacc.data import DetectionDataset, load_dataset

        ds = DetectionDataset(load_dataset(data), train=False)
        images = [ds[i][0] for i in range(len(ds))]
        img_note = f"{len(images)} images of {data}"
    else:
        images = [_image((1200, 1600))[0]]
        img_note = "1600x1200 image"
    if checkpoint:
        from deepacc.train import load_model

        model, _, _ = load_model(checkpoint)
        note = f"trained checkpoint {checkpoint}"
    else:
        torch.manual_seed(0)
        model = build_model(_cfg("deepacc_r101", min_size), pretrained=None).eval()
        note = "random-init R101 (no trained weights): scores are near-uniform, so class flips are likely"
    cast = cast_bf16(copy.deepcopy(model))
    for m in (model, cast):
        set_output_mode(m, "max")
    res: dict[str, Any] = {"model": note, "images": img_note}
    times: dict[str, list[float]] = {"fp32": [], "autocast": [], "cast": []}
    outs: dict[str, list[Any]] = {"fp32": [], "autocast": [], "cast": []}
    with torch.no_grad():
        for m, amp in ((model, False), (model, True), (cast, False)):  # warm-up
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                m([images[0]])
        for rep in range(reps):
            for x in images:
                for key, m, amp in (("fp32", model, False), ("autocast", model, True), ("cast", cast, False)):
                    t = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                        d = m([x])[0]
                    times[key].append(time.perf_counter() - t)
                    if rep == 0:
                        outs[key].append({k: v.float() if v.is_floating_point() else v for k, v in d.items()})
    for key in times:
        res[f"{key}_seconds"] = statistics.median(times[key])
    for key in ("autocast", "cast"):
        res[f"{key}_speedup"] = res["fp32_seconds"] / res[f"{key}_seconds"]
        for thr, tag in ((0.05, "all"), (0.5, "p05")):
            n, same = map(sum, zip(*[_agreement(a, b, thr) for a, b in zip(outs["fp32"], outs[key])]))
            res[f"{key}_n_{tag}"] = n
            res[f"{key}_unchanged_{tag}"] = same / n if n else float("nan")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short side 400 px and 1 repetition (about a minute)")
    ap.add_argument("--checkpoint", default=None, help="trained deepacc checkpoint for the bf16 comparison")
    ap.add_argument("--data", default=None, help="COCO json whose images the bf16 comparison uses (default A.tif)")
    ap.add_argument("--bf16-only", action="store_true", help="skip the DeepACC vs Faster R-CNN part")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="precision of the DeepACC vs Faster R-CNN part (default auto, as evaluate / predict)",
    )
    args = ap.parse_args()
    import platform

    import torch
    from deepacc.precision import resolve

    prec = resolve(args.precision, "cpu", train=False)
    cpu = platform.processor() or platform.machine()
    try:
        from medshared.precision import cpu_model

        cpu = cpu_model()
    except Exception:  # noqa: BLE001
        pass
    print(f"CPU: {cpu}; torch threads {torch.get_num_threads()}; precision {prec.name} ({prec.reason})")
    min_size, reps = (400, 1) if args.quick else (800, 3)
    bf = _bf16_compare(args.checkpoint, args.data, min_size, reps)
    print(f"bf16 vs fp32, DeepACC top-1 detections ({bf['model']}; {bf['images']})")
    print(f"{'mode':<22}{'s/image':>10}{'speed-up':>10}{'unchanged (all)':>17}{'unchanged (p>=0.5)':>20}")
    print(f"{'fp32':<22}{bf['fp32_seconds']:>10.4f}{1.0:>10.2f}")
    for key, label in (("autocast", "bf16 autocast"), ("cast", "bf16 weights (cast)")):
        print(f"{label:<22}{bf[key + '_seconds']:>10.4f}{bf[key + '_speedup']:>10.2f}"
              f"{bf[key + '_unchanged_all']:>10.3f} of {bf[key + '_n_all']:<5}"
              f"{bf[key + '_unchanged_p05']:>12.3f} of {bf[key + '_n_p05']:<5}")  # fmt: skip
    bf_json = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in bf.items() if k not in ("model", "images")}
    if args.bf16_only:
        print(json.dumps({"bench": "inference_bf16", "ratio": round(bf["cast_speedup"], 4), "target": 1.0, **bf_json}))
        return
    rows = []
    for name, label in (("faster_rcnn_r101", "Faster R-CNN R101-FPN"), ("deepacc_r101", "DeepACC R101-FPN")):
        inf = _run({"kind": "infer", "config": name, "min_size": min_size, "reps": reps, "precision": prec.name})
        trn = _run({"kind": "train", "config": name, "min_size": min_size, "reps": 1, "precision": prec.name})
        rows.append({"model": label, "infer_s": inf["seconds"], "infer_peak_mb": inf["peak_rss_mb"],
                     "train_step_s": trn["seconds"], "train_peak_mb": trn["peak_rss_mb"],
                     "image": inf["image"]})  # fmt: skip
    print(f"CPU, 1600x1200 image ({rows[0]['image']}) resized to short side {min_size}; median of {reps} run(s)")
    print(f"{'model':<24}{'s/image':>10}{'peak MB':>10}{'train s/step':>14}{'train peak MB':>15}")
    for r in rows:
        print(f"{r['model']:<24}{r['infer_s']:>10.3f}{r['infer_peak_mb']:>10.0f}{r['train_step_s']:>14.3f}"
              f"{r['train_peak_mb']:>15.0f}")  # fmt: skip
    ratio = rows[1]["infer_s"] / rows[0]["infer_s"]
    print(json.dumps({"bench": "inference", "ratio": round(ratio, 4), "target": 1.10,
                      "deepacc_s_per_image": round(rows[1]["infer_s"], 4),
                      "faster_rcnn_s_per_image": round(rows[0]["infer_s"], 4),
                      "train_step_ratio": round(rows[1]["train_step_s"] / rows[0]["train_step_s"], 4),
                      "deepacc_peak_mb": round(rows[1]["infer_peak_mb"]),
                      "faster_rcnn_peak_mb": round(rows[0]["infer_peak_mb"]),
                      "bf16": bf_json, "min_size": min_size, "quick": args.quick, "precision": prec.as_dict(),
                      "cpu": cpu, "roi_pooling": "P2-P5 (both models), RPN P2-P6"}))  # fmt: skip


if __name__ == "__main__":
    main()
