"""The full head's centre collapse on the real-crop demo (issue 20): which change keeps W_M's class centres apart.

    OMP_NUM_THREADS=1 uv run python packages/deepacc/experiments/cone_variants.py \
        --crops ../shared/data/chromosome/cells --out /work/runs/deepacc20/cone --only base,spread --epochs 8 --seed 0

Each variant is ``deepacc demo --crops`` (:func:`deepacc.demo.run_demo`, its cell split and spreads for ``--seed``)
with the listed model / train overrides on top of the demo's config; ``--epochs`` shortens it (the lr step stays at
80 % of the epochs). Writes ``OUT/<variant>_s<seed>_e<epochs>/`` (the demo's outputs) and appends one JSON line per
run to ``OUT/summary.jsonl``: mAP@0.5, class-agnostic AP, ``margin_health`` on the held-out spreads, the per-epoch
training health (``history.csv``) and the wall / CPU seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _v(spread: float, s_inf: float, detach: bool, **extra: object) -> tuple[dict, dict]:
    """Model overrides with every switch of the cone fix stated (the package defaults changed during this study)."""
    train = extra.pop("train", {})
    return {"centre_spread_weight": spread, "inference_scale": s_inf, "detach_templates": detach, **extra}, train


#: name: (model overrides, train overrides); s_inf 0 = the margin branch's s (64). "base" = the previous defaults.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": _v(0.0, 0.0, True),
    "noaffine": _v(0.0, 0.0, True, margin_embedding="bn_noaffine"),
    "sinf16": _v(0.0, 16.0, True),
    "alpha1": _v(0.0, 0.0, True, aam_weight=1.0),
    "mwarm600": _v(0.0, 0.0, True, train={"margin_warmup_iters": 600}),
    "learns": _v(0.0, 16.0, True, inference_scale_learned=True),
    "spread": _v(1.0, 0.0, True),
    "spread01": _v(0.1, 0.0, True),
    "spread_sinf16": _v(1.0, 16.0, True),
    "spread_sinf8": _v(1.0, 8.0, True),
    "spread01_sinf16": _v(0.1, 16.0, True),
    "spread_learns": _v(1.0, 16.0, True, inference_scale_learned=True),
    "spread_global": _v(1.0, 0.0, True, delta=1.0),
    "spread_eq2": _v(1.0, 0.0, True, inference_feature_norm=False),
    "spread_nodet": _v(1.0, 0.0, False),
    "sinf16_nodet": _v(0.0, 16.0, False),
    "sinf8_nodet": _v(0.0, 8.0, False),
    "spread_sinf4_nodet": _v(1.0, 4.0, False),
    "spread_sinf8_nodet": _v(1.0, 8.0, False),  # the new defaults
    "spread_sinf16_nodet": _v(1.0, 16.0, False),
    "spread_sinf32_nodet": _v(1.0, 32.0, False),
    "spread3_sinf16_nodet": _v(3.0, 16.0, False),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", required=True, help="comma-separated variant names (VARIANTS)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import deepacc.demo as demo
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    orig = demo.demo_config
    for name in args.only.split(","):
        m_over, t_over = VARIANTS[name]
        run_dir = out / f"{name}_s{args.seed}_e{args.epochs or demo.CROPS_SETTINGS['epochs']}"

        def patched(*a, _m=m_over, _t=t_over, **k):  # noqa: ANN002, ANN003, ANN202
            cfg = orig(*a, **k)
            return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **_m),
                                       train=dataclasses.replace(cfg.train, **_t))  # fmt: skip

        demo.demo_config = patched
        t0, c0 = time.time(), time.process_time()
        m = demo.run_demo(run_dir, device="cpu", seed=args.seed, epochs=args.epochs, crops=args.crops,
                          progress=False, predict_real=False)  # fmt: skip
        wall, cpu = time.time() - t0, time.process_time() - c0
        keys = ("epoch", "loss_ce", "loss_aam", "loss_centre", "own_class_cos", "centre_pairwise_cos",
                "template_local_fraction")  # fmt: skip
        hist = [{k: r.get(k) for k in keys} for r in m["history"]]
        rec = {"variant": name, "seed": args.seed, "epochs": args.epochs, "model": m_over, "train": t_over,
               "map50": m["map50"], "map50_at": m.get("map50_at"), "class_agnostic_ap50": m["class_agnostic_ap50"],
               "class_acc_matched": m.get("classification_acc_on_matched"), "margin_health": m["margin_health"],
               "wall_s": wall, "cpu_s": cpu, "history": hist}  # fmt: skip
        with open(out / "summary.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        h = m["margin_health"]
        print(f"== {name} seed {args.seed}: mAP {m['map50']:.3f} agn {m['class_agnostic_ap50']:.3f} own "
              f"{h['own_class_cos']:.3f} pair {h['centre_pairwise_cos']:.3f} local {h['template_local_fraction']:.3f}"
              f" wall {wall:.0f}s cpu {cpu:.0f}s", flush=True)  # fmt: skip
    demo.demo_config = orig
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
