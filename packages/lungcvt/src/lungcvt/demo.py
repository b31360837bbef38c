"""``lungcvt demo``: synthetic ICBHI-layout data -> features -> train -> evaluate -> report (about 2 min on 2 cores)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from lungcvt.config import CLASSES, LungCVTConfig, get_config

__all__ = ["run_demo", "plot_feature_examples"]


def plot_feature_examples(data_dir: Path, cfg: LungCVTConfig, path: Path) -> None:
    """One cycle per class (rows) x the three feature channels (columns), as the model sees them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from medshared.runtime import atomic_path

    from lungcvt.data import load_dataset
    from lungcvt.features import to_image
    from lungcvt.train import extract_cycles

    recs, _ = load_dataset(data_dir)
    picked: dict[int, tuple] = {}
    for r in recs:
        for c in r.cycles:
            picked.setdefault(c.label, (r, c))
        if len(picked) == 4:
            break
    fig, axes = plt.subplots(len(picked), 3, figsize=(8, 2.2 * len(picked)), squeeze=False)
    full = dataclasses.replace(cfg.features, image_size=cfg.features.image_size)
    for row, label in enumerate(sorted(picked)):
        r, c = picked[label]
        one = dataclasses.replace(r, cycles=[c])
        f = extract_cycles([one], full, progress=False).feats[0]
        img = to_image(f, full).numpy()
        for col, name in enumerate(("MFCC", "mel", "CQT")):
            ax = axes[row, col]
            ax.imshow(f[col], origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{CLASSES[label]} ({r.info.device}): {name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        del img
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run_demo(
    out_dir: str | Path,
    device: str = "auto",
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    epochs: int | None = None,
    precision: str = "auto",
) -> dict:
    """Run the whole pipeline on synthetic data; returns the metrics dict (also written to ``out/metrics.json``).

    Args:
        quick: a reduced run for tests (fewer patients and epochs).
        epochs: override the number of epochs.
        precision: ``auto | fp32 | tf32 | bf16`` for training and evaluation (:mod:`lungcvt.precision`).
    """
    from medshared.plots import plot_confusion_matrix, plot_curves
    from medshared.runtime import atomic_write_json, atomic_write_text

    from lungcvt.evaluate import evaluate, majority_chance
    from lungcvt.synthetic import generate_icbhi
    from lungcvt.train import train

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = get_config("lungcvt_tiny")
    n_patients = 32 if quick else 40
    epochs = epochs or (12 if quick else base.train.epochs)
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed, epochs=epochs))
    data = out / "data"
    syn = generate_icbhi(data, n_patients=n_patients, recordings_per_patient=(1, 3), seed=seed)
    t_data = time.time() - t0
    cache = out / "feature_cache"
    res = train(
        cfg, data, out / "train", device=device, cache_dir=cache, resume=False, progress=progress, precision=precision
    )
    t_train = time.time() - t0 - t_data
    ev = evaluate(
        res.best_checkpoint,
        data,
        out / "eval",
        split="test",
        device=device,
        cache_dir=cache,
        progress=progress,
        precision=precision,
    )
    from lungcvt.data import load_dataset

    recs, _ = load_dataset(data)
    test_labels = [c.label for r in recs if r.split == "test" for c in r.cycles]
    train_labels = [c.label for r in recs if r.split == "train" for c in r.cycles]
    chance = majority_chance(train_labels, test_labels)
    hist = res.history
    plot_curves(
        [h["epoch"] for h in hist],
        {
            "val ICBHI score": ([h["val_icbhi_score"] for h in hist], None),
            "train loss": ([h["train_loss"] for h in hist], None),
        },
        out / "training_curve.png",
        xlabel="epoch",
        ylabel="value",
        title="LungCVT demo training",
    )
    plot_confusion_matrix(
        np.array(ev["confusion_matrix"]),
        list(CLASSES),
        out / "confusion_matrix.png",
        title=f"test ICBHI score {ev['icbhi']['score']:.3f}",
    )
    plot_feature_examples(data, cfg, out / "feature_examples.png")
    wall = time.time() - t0
    metrics = {
        "headline": {"metric": "icbhi_score", "value": ev["icbhi"]["score"], "chance": chance["icbhi"]["score"]},
        "precision": ev["precision"],
        "test": {k: ev[k] for k in ("icbhi", "macro_ovr", "two_class", "classification", "confusion_matrix", "n")},
        "chance_majority_class": {k: chance[k] for k in ("majority_class", "icbhi", "macro_ovr", "two_class")},
        "best_val": res.best_val,
        "best_epoch": res.best_epoch,
        "history": hist,
        "data": {
            "recordings": syn.n_recordings,
            "cycles": syn.n_cycles,
            "class_counts": syn.class_counts,
            "train_counts_after_val_holdout": res.train_counts,
            "n_val": res.n_val,
            "n_test": len(test_labels),
        },
        "timing_s": {"data": round(t_data, 1), "train": round(t_train, 1), "total": round(wall, 1)},
        "config": cfg.to_dict(),
        "quick": quick,
        "seed": seed,
    }
    atomic_write_json(out / "metrics.json", metrics)
    lines = [
        "# LungCVT demo (synthetic ICBHI-layout data)",
        "",
        f"{syn.n_recordings} recordings, {syn.n_cycles} cycles (normal/crackle/wheeze/both = {syn.class_counts}); "
        f"config `lungcvt_tiny` (random init), {epochs} epochs, best epoch {res.best_epoch} on the stratified, "
        "patient-grouped validation split.",
        "",
        "| metric (test split) | Se | Sp | Score | Accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, d in (
        ("ICBHI (official, headline)", ev["icbhi"]),
        ("macro one-vs-rest (paper code)", ev["macro_ovr"]),
        ("2-class normal/abnormal", ev["two_class"]),
        (f"chance: always '{chance['majority_class']}' (ICBHI)", chance["icbhi"]),
    ):
        lines.append(f"| {name} | {d['se']:.3f} | {d['sp']:.3f} | {d['score']:.3f} | {d['accuracy']:.3f} |")
    lines += [
        "",
        f"Confusion matrix (rows true N/C/W/B): {ev['confusion_matrix']}",
        "",
        f"Wall time {wall:.0f} s (data {t_data:.0f} s, train {t_train:.0f} s).",
        "",
        "Plots: `confusion_matrix.png`, `training_curve.png`, `feature_examples.png`.",
        "",
    ]
    report = "\n".join(lines)
    atomic_write_text(out / "report.md", report)
    if progress:
        print(report)
    return metrics
