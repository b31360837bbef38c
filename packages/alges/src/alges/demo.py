"""``alges demo``: synthetic CholecSeg8k-layout videos -> real loader -> AL simulation (random, entropy, ALGES-img,
ALGES-sem) -> metrics.json, report.md, learning curves and an example-prediction figure.

Headline: dataset-level macro Dice of ALGES-img at the last round (mean over seeds); chance: the same Dice of a
constant prediction of the training pool's majority class (a model that ignores its input).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from alges.config import OFFICIAL_DICE_CLASSES, create_config

__all__ = ["run_demo", "DEMO_STRATEGIES"]

DEMO_STRATEGIES = ("random", "entropy", "alges-img", "alges-sem")


def _example_figure(model_path: Path, test, cfg, device, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from medshared.runtime import atomic_path

    from alges.evaluate import predict_arrays
    from alges.model import load_trained
    from alges.synthetic import PALETTE

    model, _, _ = load_trained(model_path)
    pick = np.linspace(0, len(test) - 1, 3).astype(int)
    pred = predict_arrays(model, test.images[pick], cfg, device)
    pal = np.asarray(PALETTE + [(255, 255, 255)] * (256 - len(PALETTE)), np.uint8)
    fig, axes = plt.subplots(len(pick), 3, figsize=(7, 2.4 * len(pick)))
    for r, j in enumerate(pick):
        for c, (im, title) in enumerate(
            (
                (test.images[j].transpose(1, 2, 0), "image"),
                (pal[test.masks[j]], "truth"),
                (pal[pred[r]], "ALGES-img, last round"),
            )
        ):
            axes[r, c].imshow(im)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run_demo(out: str | Path, device: str = "auto", seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Run the demo into ``out`` and return the metrics dict (also written to ``out/metrics.json``)."""
    from medshared.runtime import atomic_write_json, atomic_write_text, resolve_device

    from alges.active import simulate
    from alges.arrays import load_arrays
    from alges.cholec import cholec_split, scan_cholecseg8k
    from alges.evaluate import majority_chance
    from alges.report import summarize, table_markdown, write_simulation_outputs
    from alges.synthetic import generate_cholecseg8k

    t0 = time.perf_counter()
    out = Path(out)
    dev = resolve_device(device)
    cfg = create_config("alges_demo", seeds=(seed,), dice_classes=OFFICIAL_DICE_CLASSES)
    n_videos, frames = 6, 40
    if quick:
        cfg = dataclasses.replace(cfg, image_size=32, batch_size=2, epochs=10, n_init=10, n_query=10, n_rounds=2)
        n_videos, frames = 3, 16
    data_dir = out / "data"
    videos = generate_cholecseg8k(data_dir, n_videos=n_videos, frames_per_video=frames, seed=seed)
    n_test = 2 if n_videos >= 6 else 1  # whole videos held out: no near-duplicate frames leak into the test set
    index = scan_cholecseg8k(data_dir)  # the real CholecSeg8k loader reads the synthetic files
    split = cholec_split(index, {"train": videos[:-n_test], "test": videos[-n_test:]})
    pool = load_arrays(index, split["train"], cfg.image_size, progress=False)
    test = load_arrays(index, split["test"], cfg.image_size, progress=False)
    strategies = DEMO_STRATEGIES if not quick else ("random", "alges-img")
    rows = simulate(pool, test, strategies, cfg.seeds, cfg, dev, out, resume=True, class_names=index.class_names)
    chance = majority_chance(pool.masks, test, cfg)
    summ = summarize(rows, "dice_macro")
    summ_off = summarize(rows, "dice_official")
    head = {
        "metric": "alges-img test Dice (dataset-level macro) at the last round",
        "value": summ["alges-img"]["mean"][-1],
        "chance": chance["dice_macro"],
    }
    write_simulation_outputs(
        rows, out, {"majority_chance": chance}, chance={k: chance[k] for k in ("dice_macro", "dice_official")}
    )
    try:
        _example_figure(out / "models" / f"alges-img_seed{seed}.safetensors", test, cfg, dev, out / "predictions.png")
    except Exception as e:  # the figure is a nicety; never fail the demo on it
        print(f"note: example figure skipped ({e})")
    wall = time.perf_counter() - t0
    metrics = {
        "headline": head,
        "chance": chance,
        "final_round": {
            s: {
                "pct_labeled": d["pct_labeled"][-1],
                "dice_macro": d["mean"][-1],
                "dice_official": summ_off[s]["mean"][-1],
            }
            for s, d in summ.items()
        },
        "summary": {"dice_macro": summ, "dice_official": summ_off},
        "data": {"videos": videos, "pool_images": len(pool), "test_images": len(test), "image_size": cfg.image_size},
        "config": cfg.to_dict(),
        "wall_seconds": round(wall, 1),
        "quick": quick,
    }
    atomic_write_json(out / "metrics.json", metrics)
    lines = [
        "# ALGES demo (synthetic CholecSeg8k-layout videos)",
        "",
        f"Pool: {len(pool)} frames of {len(videos) - n_test} videos; test: {len(test)} frames of {n_test} videos; "
        f"{cfg.image_size}x{cfg.image_size} px; {cfg.n_rounds} rounds of {cfg.n_query} images after {cfg.n_init} "
        f"initial ones; {cfg.epochs} epochs per round; seed {seed}; device {dev}; {wall:.0f} s.",
        "",
        f"**Headline**: {head['metric']} = **{head['value']:.3f}** vs chance {head['chance']:.3f} "
        f"(constant class {chance['majority_class']}).",
        "",
        "## Test Dice per round (dataset-level macro)",
        "",
        table_markdown(summ, max_cols=cfg.n_rounds),
        "## Official per-image smoothed Dice (8 classes)",
        "",
        table_markdown(summ_off, max_cols=cfg.n_rounds),
        "Figures: `learning_curve.png`, `learning_curve_official.png`, `predictions.png`. Per-round data: "
        "`rounds.csv`, "
        "`results.json`; saved state under `state/` (rerun to resume).",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    print(f"{'strategy':<12} {'% labeled':>9} {'dice macro':>11} {'dice official':>14}")
    for s, d in metrics["final_round"].items():
        print(f"{s:<12} {d['pct_labeled']:>9.1f} {d['dice_macro']:>11.3f} {d['dice_official']:>14.3f}")
    print(f"{'chance':<12} {'':>9} {chance['dice_macro']:>11.3f} {chance['dice_official']:>14.3f}")
    return metrics
