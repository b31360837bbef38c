"""The README's demo-data tables (run by hand, resumable): streaming vs offline, modality ablation, loss options.

    /work/bin/cpuslot uv run python packages/pocapnet/experiments/demo_tables.py --out /work/runs/pocapnet/tables

Data: the demo's synthetic operations (10 operations of 70-130 s, data seed 0) and features (tiny random extractors,
``pocapnet_demo`` preset), the demo's 6/2/2 split by operation (seed 0). Every run trains the ``pocapnet_demo``
preset with the run's overrides and a training seed, then scores the 2 test operations offline and (for the
streaming table) online with ``evaluate --stream``'s code. One JSON per (run, seed) under ``OUT/runs/``: an
interrupted invocation continues where it stopped. ``tables.md`` is rewritten after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

RUNS: dict[str, dict[str, Any]] = {
    # streaming vs offline
    "acausal (paper)": {},
    "causal (pocapnet_causal)": {"model": {"causal_conv": True}},
    # modalities (the concatenation is the acausal run above)
    "audio only": {"model": {"modalities": ["audio"]}},
    "X-ray only": {"model": {"modalities": ["xray"]}},
    "GMU fusion": {"model": {"fusion": "gmu"}},
    # losses (LDAM on raw logits is the acausal run above)
    "LDAM + cosine classifier": {"model": {"cosine_classifier": True}},
    "LDAM-DRW (cosine, re-weighting from epoch 8)": {
        "model": {"cosine_classifier": True},
        "train": {"ldam_drw_epoch": 8},
    },
    "LDAM + MS-TCN smoothing 0.15": {"train": {"smooth_weight": 0.15}},
    "class-weighted CE": {"train": {"loss": "wce"}},
}
TABLES = {
    "streaming": ["acausal (paper)", "causal (pocapnet_causal)"],
    "modality": ["audio only", "X-ray only", "acausal (paper)", "GMU fusion"],
    "loss": [
        "acausal (paper)",
        "LDAM + cosine classifier",
        "LDAM-DRW (cosine, re-weighting from epoch 8)",
        "LDAM + MS-TCN smoothing 0.15",
        "class-weighted CE",
    ],
}
METRICS = ("accuracy", "f1_weighted", "f1_macro", "edit", "f1@50")


def _cfg(overrides: dict[str, Any], seed: int):
    from medshared.config import override_dataclass
    from pocapnet.config import get_config

    cfg = override_dataclass(get_config("pocapnet_demo"), overrides) if overrides else get_config("pocapnet_demo")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def _prepare(out: Path) -> tuple[Path, dict]:
    from pocapnet.config import get_config
    from pocapnet.features import extract_dataset
    from pocapnet.synthetic import make_synthetic_dataset
    from pocapnet.train import split_operations

    data, feats = out / "data", out / "features"
    if not (data / "annotations.json").is_file():
        make_synthetic_dataset(data, n_ops=10, seconds=(70, 130), seed=0)
    ops = extract_dataset(data, feats, get_config("pocapnet_demo").features, "cpu", require_labels=True)
    return feats, split_operations(ops, get_config("pocapnet_demo"))


def _one(out: Path, feats: Path, split: dict, name: str, seed: int, stream: bool) -> dict:
    from pocapnet.evaluate import evaluate_operations
    from pocapnet.train import fit, load_model

    path = out / "runs" / name.replace(" ", "_").replace("/", "-") / f"seed{seed}.json"
    if path.is_file():
        res = json.loads(path.read_text())
        if not stream or "stream" in res:
            return res
    t0 = time.perf_counter()
    fitted = fit(
        feats, path.parent / f"seed{seed}", _cfg(RUNS[name], seed), split, "cpu", progress=False, precision="fp32"
    )
    model, cfg, extra = load_model(fitted["checkpoint"])
    res: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "train_s": round(time.perf_counter() - t0, 1),
        "best_epoch": fitted["best_epoch"],
        "epochs": len(fitted["history"]),
        "train_loss": [h["train_loss"] for h in fitted["history"]],
        "val_loss": [h["val_loss"] for h in fitted["history"]],
    }
    ev = evaluate_operations(model, feats, split["test"], cfg.train.batch_size, checkpoint_extra=extra, cfg=cfg)
    res["offline"] = {k: v["mean"] for k, v in ev["summary"].items()}
    res["per_op_offline"] = {r["op"]: r["accuracy"] for r in ev["per_operation"]}
    if stream:
        t1 = time.perf_counter()
        ev = evaluate_operations(
            model, feats, split["test"], cfg.train.batch_size, stream=True, checkpoint_extra=extra, cfg=cfg
        )
        res["stream"] = {k: v["mean"] for k, v in ev["summary"].items()}
        res["per_op_stream"] = {r["op"]: r["accuracy"] for r in ev["per_operation"]}
        res["stream_s"] = round(time.perf_counter() - t1, 1)
    from medshared.runtime import atomic_write_json

    atomic_write_json(path, res)
    return res


def _ms(vals: list[float]) -> str:
    import numpy as np

    v = np.asarray(vals, dtype=float)
    return f"{v.mean():.3f} ± {v.std():.3f}"


def _tables(results: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = [f"Seeds {seeds}; each value is mean ± std over seeds of the mean over the 2 test operations.", ""]
    lines += [
        "### Streaming vs offline",
        "",
        "| model | mode | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for name in TABLES["streaming"]:
        for mode in ("offline", "stream"):
            rs = [r for r in results.get(name, []) if mode in r]
            if rs:
                lines.append(
                    f"| {name} | {mode} | " + " | ".join(_ms([r[mode][m] for r in rs]) for m in METRICS) + " |"
                )
    for key, title in (("modality", "Modalities (offline)"), ("loss", "Losses (offline)")):
        extra = " | epoch-0 train loss | max train loss | non-finite |" if key == "loss" else " |"
        lines += [
            "",
            f"### {title}",
            "",
            "| run | " + " | ".join(METRICS) + extra,
            "|---|" + "---|" * (len(METRICS) + (3 if key == "loss" else 0)),
        ]
        for name in TABLES[key]:
            rs = results.get(name, [])
            if not rs:
                continue
            row = f"| {name} | " + " | ".join(_ms([r["offline"][m] for r in rs]) for m in METRICS)
            if key == "loss":
                e0 = _ms([r["train_loss"][0] for r in rs])
                mx = max(max(r["train_loss"]) for r in rs)
                bad = sum(not all(math.isfinite(x) for x in r["train_loss"]) for r in rs)
                row += f" | {e0} | {mx:.1f} | {bad} |"
            else:
                row += " |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", choices=sorted(TABLES), nargs="*", help="tables to run (default all)")
    a = ap.parse_args()
    from medshared.runtime import atomic_write_text

    feats, split = _prepare(a.out)
    names = list(dict.fromkeys(n for t in (a.only or TABLES) for n in TABLES[t]))
    results: dict[str, list[dict]] = {}
    for seed in a.seeds:
        for name in names:
            r = _one(a.out, feats, split, name, seed, stream=name in TABLES["streaming"])
            results.setdefault(name, []).append(r)
            print(
                f"{name} seed {seed}: offline acc {r['offline']['accuracy']:.3f}"
                + (f", stream {r['stream']['accuracy']:.3f}" if "stream" in r else "")
                + f" ({r['train_s']} s train)",
                flush=True,
            )
            atomic_write_text(a.out / "tables.md", _tables(results, a.seeds))
    print(_tables(results, a.seeds))


if __name__ == "__main__":
    main()
