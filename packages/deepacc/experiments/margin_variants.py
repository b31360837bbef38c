"""Margin-branch variants on real-crop spreads (issue 20, Build 1): which embedding / margin keeps Eq. 1 healthy.

    OMP_NUM_THREADS=1 uv run python packages/deepacc/experiments/margin_variants.py \
        --crops ../shared/data/chromosome/cells --out /work/runs/deepacc_m --iters 250

Short runs of each variant (``deepacc_tiny`` at 384 px, the table's cell split, one seed), then on the held-out
test spreads: ``margin_health`` (``deepacc.health``), mAP@0.5 at caps 100 / 300 and class-agnostic AP@0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

VARIANTS = {  # name: (Table 1 row, model overrides)
    "c_relu_hard": ("table1_c", {"margin_embedding": "relu", "easy_margin": False}),
    "c_relu_easy": ("table1_c", {"margin_embedding": "relu", "easy_margin": True}),
    "c_linear_hard": ("table1_c", {"margin_embedding": "linear", "easy_margin": False}),
    "c_bn_hard": ("table1_c", {"margin_embedding": "bn", "easy_margin": False}),
    "c_bn_easy": ("table1_c", {"margin_embedding": "bn", "easy_margin": True}),
    "f_relu": ("table1_f", {"margin_embedding": "relu"}),
    "f_linear": ("table1_f", {"margin_embedding": "linear"}),
    "f_bn": ("table1_f", {"margin_embedding": "bn"}),
    "c_relu_nobg": ("table1_c", {"margin_embedding": "relu", "margin_on_bg": False}),
    "c_bn_mwarm": ("table1_c", {"margin_embedding": "bn"}, {"margin_warmup_iters": 200}),
    "c_relu_mwarm": ("table1_c", {"margin_embedding": "relu"}, {"margin_warmup_iters": 200}),
    "c_bn_easy_mwarm": ("table1_c", {"margin_embedding": "bn", "easy_margin": True}, {"margin_warmup_iters": 200}),
    "f_bn_easy": ("table1_f", {"margin_embedding": "bn", "easy_margin": True}),
    "f_bn_mwarm": ("table1_f", {"margin_embedding": "bn"}, {"margin_warmup_iters": 200}),
    "f_bn_swarm": ("table1_f", {"margin_embedding": "bn", "warmup_scale": 8.0}, {"margin_warmup_iters": 200}),
    "f_bn_det_swarm_eq2": (
        "table1_f",
        {"margin_embedding": "bn", "detach_templates": True, "warmup_scale": 8.0, "inference_feature_norm": False},
        {"margin_warmup_iters": 200},
    ),
    "c_bn_swarm": ("table1_c", {"margin_embedding": "bn", "warmup_scale": 8.0}, {"margin_warmup_iters": 200}),
    "f_relu_swarm": ("table1_f", {"margin_embedding": "relu", "warmup_scale": 8.0}, {"margin_warmup_iters": 200}),
    "c_relu_swarm": ("table1_c", {"margin_embedding": "relu", "warmup_scale": 8.0}, {"margin_warmup_iters": 200}),
    "f_bn_det": ("table1_f", {"margin_embedding": "bn", "detach_templates": True}),
    "f_bn_det_swarm": (
        "table1_f",
        {"margin_embedding": "bn", "detach_templates": True, "warmup_scale": 8.0},
        {"margin_warmup_iters": 200},
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=250)
    ap.add_argument("--only", default=None)
    ap.add_argument("--roi-min-level", type=int, default=None)
    args = ap.parse_args()
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from deepacc.data import load_dataset
    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.health import margin_health
    from deepacc.train import train
    from real_crop_table import make_data, run_config

    torch.set_num_threads(1)
    out = Path(args.out)
    paths = make_data(args.crops, Path("/work/runs/deepacc_table_data"))
    data = {p: load_dataset(paths[p]) for p in ("train", "test")}
    batches = -(-len(data["train"]) // 2)
    epochs = max(1, round(args.iters / batches))
    for name, spec in VARIANTS.items():
        row, over, t_over = (*spec, {})[:3]
        if args.only and name not in args.only.split(","):
            continue
        res_path = out / f"{name}.json"
        if res_path.is_file():
            continue
        # the switches of the cone fix at their values when this table was measured (off; see cone_variants.py)
        before_cone_fix = {"centre_spread_weight": 0.0, "inference_scale": 0.0}
        cfg = run_config(name, (row, {"inference_feature_norm": True, **before_cone_fix, **over}, {}))
        extra = {"roi_min_level": args.roi_min_level} if args.roi_min_level is not None else {}
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, **extra),
            train=dataclasses.replace(cfg.train, epochs=epochs, milestones=(epochs,), **t_over),
        )
        t0 = time.time()
        model, hist = train(
            cfg,
            data["train"],
            out / name,
            "cpu",
            None,
            resume=False,
            seed=0,
            progress=False,
            log=lambda m, name=name: print(f"  {name}: {m}", flush=True),
        )
        tt = time.time() - t0
        raws = predict_raw(model, data["test"])
        res = evaluate_detections(raws, data["test"], cfg, with_chance=False)
        h = margin_health(model, data["test"])
        r = {
            "name": name,
            "iters": hist[-1]["iteration"],
            "train_s": tt,
            "map50": res["map50"],
            "map50_at": res.get("map50_at"),
            "class_agnostic_ap50": res["class_agnostic_ap50"],
            "class_acc_matched": res["classification_acc_on_matched"],
            "margin_health": h,
            "history": [
                {
                    k: v
                    for k, v in x.items()
                    if k in ("epoch", "own_class_cos", "centre_pairwise_cos", "template_local_fraction", "loss")
                }
                for x in hist
            ],
        }
        res_path.write_text(json.dumps(r, indent=1))
        print(
            json.dumps(
                {
                    k: r[k]
                    for k in (
                        "name",
                        "iters",
                        "train_s",
                        "map50",
                        "map50_at",
                        "class_agnostic_ap50",
                        "class_acc_matched",
                        "margin_health",
                    )
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
