"""L_CE of the siamese inference branch over 100 iterations: local templates from the first iteration (Eq. 2, delta
0.5) against the previous design (global centres only, then a hard switch to local templates at iteration 50), each
with x not normalised (Eq. 2 as printed) and with s * n(x).

    OMP_NUM_THREADS=1 uv run python packages/deepacc/experiments/template_stability.py

16 procedural 192 px spreads, deepacc_tiny (64 RoIs per image, half positive), batch 2, SGD lr 0.02 with a
20-iteration warm-up, grad clip 10, seed 0. About 2 CPU-minutes.
"""

from __future__ import annotations

import dataclasses
import tempfile

import numpy as np
import torch
from deepacc.config import create_config
from deepacc.data import DetectionDataset, load_dataset
from deepacc.model import build_model
from deepacc.synthetic import SynthConfig, write_synthetic
from deepacc.train import margin_factor


def make_data(folder: str, size: int = 192, n_images: int = 16) -> list:
    """Procedural spreads of ``size`` px as (image, target) pairs."""
    path = write_synthetic(folder, n_images, seed=1, cfg=SynthConfig(height=size, width=size, scale=0.4 * size / 192),
                           source="procedural")  # fmt: skip
    ds = DetectionDataset(load_dataset(path), train=False)
    return [ds[i] for i in range(len(ds))]


def run(
    data: list,
    size: int = 192,
    switch_at: int | None = None,
    norm: bool = False,
    n: int = 100,
    warmup: bool = False,
    **model_kw: object,
) -> tuple[np.ndarray, np.ndarray]:
    """L_CE and the fraction of local templates per iteration (tiny full head, delta 0.5 from iteration 0, or global
    centres until ``switch_at``); ``model_kw`` overrides further ModelConfig fields."""
    cfg = create_config("deepacc_tiny")
    delta = 0.5 if switch_at is None else 2.0  # 2.0: no probability passes, every template is the global centre
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, min_size=size, max_size=size, delta=delta, box_batch_size_per_image=64, box_positive_fraction=0.5,
        rpn_post_nms_top_n_train=100, inference_feature_norm=norm, **model_kw))  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    ce, local = [], []
    for it in range(n):
        if switch_at is not None and it == switch_at:  # the old hard global -> local switch
            model.roi_heads.cfg = dataclasses.replace(model.roi_heads.cfg, delta=0.5)
        for g in opt.param_groups:
            g["lr"] = 0.02 * min(1.0, 0.001 + it / 20)
        if warmup:  # the s / m warm-up train() applies (off: s = 64 and m = 0.25 from iteration 0, as measured above)
            model.roi_heads.margin_factor = margin_factor(it, cfg.train)
        batch = [data[(2 * it) % len(data)], data[(2 * it + 1) % len(data)]]
        losses = model([x for x, _ in batch], [t for _, t in batch])
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        ce.append(float(losses["loss_ce"].detach()))
        local.append(model.roi_heads.last_template_stats["local_fraction"])
    return np.array(ce), np.array(local)


def main() -> None:
    torch.set_num_threads(1)
    data = make_data(tempfile.mkdtemp())
    variants = {"local from 0, x (Eq. 2)": {}, "local from 0, s*n(x)": {"norm": True},
                "global, switch at 50, x": {"switch_at": 50}, "global, switch at 50, s*n(x)": {"switch_at": 50,
                                                                                             "norm": True}}  # fmt: skip
    print("| variant | L_CE first 10 | max (iteration) | L_CE last 20 | local templates |")
    print("|---|---|---|---|---|")
    for name, kw in variants.items():
        ce, loc = run(data, **kw)
        print(f"| {name} | {ce[:10].mean():.2f} | {ce.max():.2f} ({ce.argmax()}) | {ce[-20:].mean():.2f} | "
              f"{loc.mean():.0%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
