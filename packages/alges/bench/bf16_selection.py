"""Does bf16 pool inference pick the same images as fp32? Measured on a model trained on 10 real images.

Trains U-Net R18 (``alges_ddti`` preset: 128 px, from scratch, 80 Adam steps) on 10 DDTI images of a case-disjoint
pool, then embeds the rest of the pool with fp32 and with bf16 autocast (+ channels-last) and compares, for
ALGES-img and ALGES-sem: the k-means++ picks of a batch of 10 (overlap), the per-image cosine of the embeddings, and
the CPU time of each pass. The paper preset keeps fp32 unless the picks agree.

    uv run python packages/alges/bench/bf16_selection.py [--data ../shared/data/ddti] [--steps 80] [--size 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch


def main() -> None:
    from alges.active import select_batch
    from alges.config import adapt_to_classes, create_config
    from alges.data import load_arrays, open_dataset
    from alges.inference import infer
    from alges.model import build_model
    from alges.splits import group_split
    from alges.train import train_model
    from medshared.runtime import seed_everything
    from medshared.testing import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.data or (shared_data_dir() / "ddti")
    idx = open_dataset(root)
    cfg = create_config("alges_ddti", image_size=args.size, train_steps=args.steps)
    cfg = adapt_to_classes(cfg, idx.class_map)
    sp = group_split(list(idx.labeled_ids), cfg.case_pattern, 0.25, seed=0)
    pool = load_arrays(idx, sp["train"], cfg.image_size, empty_masks="drop", progress=False)
    lab = np.random.default_rng(0).choice(len(pool), 10, replace=False)
    seed_everything(0)
    model = build_model(cfg)
    t0 = time.perf_counter()
    train_model(model, pool.images[lab], pool.masks[lab], cfg, torch.device("cpu"), seed=0)
    print(f"trained on 10 images, {args.steps} steps, {args.size} px: {time.perf_counter() - t0:.0f} s")
    unl = np.setdiff1d(np.arange(len(pool)), lab)
    out: dict = {"bench": "alges_bf16_selection", "pool": int(len(unl)), "size": args.size}
    for name in ("alges-img", "alges-sem"):
        vals, picks, secs = {}, {}, {}
        for amp in (False, True):
            c = dataclasses.replace(cfg, amp=amp, channels_last=amp)
            t = time.process_time()
            vals[amp] = infer(model, pool.images, c, torch.device("cpu"), (name,), positions=unl).values[name]
            secs[amp] = time.process_time() - t
            picks[amp] = set(select_batch(name, model, pool.images, unl, lab, 10, c, torch.device("cpu"))[0].tolist())
        a, b = vals[False].astype(np.float64), vals[True].astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        same = len(picks[False] & picks[True])
        print(
            f"{name}: bf16 picks {same}/10 of fp32's; per-image cosine min {cos.min():.4f}, median "
            f"{np.median(cos):.4f}; CPU s fp32 {secs[False]:.1f}, bf16 {secs[True]:.1f}"
        )
        out[name] = {
            "same_picks": same,
            "cos_min": round(float(cos.min()), 4),
            "cos_median": round(float(np.median(cos)), 4),
            "cpu_s_fp32": round(secs[False], 2),
            "cpu_s_bf16": round(secs[True], 2),
        }
    out["ratio"] = min(out["alges-img"]["same_picks"], out["alges-sem"]["same_picks"]) / 10
    out["target"] = "bf16 picks == fp32 picks (ratio 1.0) to allow bf16 in the paper preset"
    from medshared.precision import cpu_model

    out["cpu"] = cpu_model()
    out["threads"] = torch.get_num_threads()
    out["bench"] = "alges_bf16_selection"
    print(f"CPU: {out['cpu']}, {out['threads']} thread(s); fp32 is what --precision auto runs for selection")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
