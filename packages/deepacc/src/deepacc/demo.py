"""``deepacc demo``: data -> train ``deepacc_tiny`` with the full DeepACC head -> evaluate on held-out images ->
metrics.json, report.md, plots, and a prediction (overlay + karyogram) on the real spread ``A.tif`` when present.

* default (no argument): synthetic spreads composed from the shared sample crops (or procedural rods), about two
  minutes on two CPU cores;
* ``--crops DIR``: spreads composed per cell from real karyotyped cells (:mod:`deepacc.compose`), the test set from
  held-out cells (or ``--test-crops``): chromosomes the model never saw; about five minutes.
Headline: mAP@0.5 against the computed chance level (the same model's boxes and scores with uniformly random labels).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepacc.config import CLASS_NAMES, DeepACCConfig, create_config

__all__ = ["CROPS_SETTINGS", "DEMO_SETTINGS", "QUICK_SETTINGS", "demo_config", "run_demo"]

#: Score threshold of the demo's pictures only (metrics use the paper's 0.5): the short demo's top-1 scores are low.
DISPLAY_THRESH = 0.3
#: Synthetic demo: about two minutes on two idle CPU cores.
DEMO_SETTINGS = {"n_train": 96, "n_test": 8, "epochs": 18, "height": 320, "width": 320, "scale": 0.62}
#: ``quick=True`` (the package's demo test): smaller spreads, about 250 iterations, under a minute on one idle core.
QUICK_SETTINGS = {"n_train": 64, "n_test": 4, "epochs": 10, "height": 224, "width": 224, "scale": 0.44}
#: Real-crop demo: spreads of 384 px (crops at 0.5x), 80% of the cells for training, about five minutes.
#: 18 epochs = 1,368 iterations: 258-264 CPU-s, 4:18-4:35 wall on one thread (README), within the 6-minute budget.
CROPS_SETTINGS = {"n_train": 152, "n_test": 19, "epochs": 18, "train_fraction": 0.8, "scale": 0.5,
                  "roi_min_level": 2}  # fmt: skip


def demo_config(n_iters: int, epochs: int, size: int, roi_min_level: int = 0) -> DeepACCConfig:
    """``deepacc_tiny`` at ``size`` px with the full head (AAM + siamese inference branch with delta 0.5 from the
    first iteration + GIA); 128 RoIs per image, half positive; x0.1 after 80% of the epochs; ``roi_min_level`` 2:
    RoIs pooled from P2 (the RPN stays on P3-P5)."""
    base = create_config("deepacc_tiny")
    m_cfg = dataclasses.replace(base.model, min_size=size, max_size=size, box_batch_size_per_image=128,
                                box_positive_fraction=0.5, rpn_post_nms_top_n_train=200,
                                roi_min_level=roi_min_level)  # fmt: skip
    t_cfg = dataclasses.replace(base.train, epochs=epochs, milestones=(max(1, int(epochs * 0.8)),),
                                warmup_iters=min(30, max(1, n_iters // 10)), checkpoint_every=0)  # fmt: skip
    return dataclasses.replace(base, name="deepacc_demo", model=m_cfg, train=t_cfg)


def _head_name(cfg: DeepACCConfig) -> str:
    m = cfg.model
    parts = ["separate regression branch" if m.separate_reg else "shared FC head"]
    if m.aam:
        parts.append(f"AAM margin branch (m {m.margin}, s {m.scale:g}, alpha {m.aam_weight:g})")
    if m.centre_spread_weight > 0:
        parts.append(f"centre-spread penalty on W_M (weight {m.centre_spread_weight:g})")
    if m.siamese:
        s_inf = "learned s" if m.inference_scale_learned else f"s {m.inference_scale or m.scale:g}"
        x = f"{s_inf} * n(x)" if m.inference_feature_norm else "x not normalised (Eq. 2 as printed)"
        grad = "templates detached from L_CE" if m.detach_templates else "templates trained by L_CE too"
        parts.append(f"siamese inference branch (delta {m.delta:g}, local templates from the first iteration, {x}, "
                     f"{grad})")  # fmt: skip
    if m.gia:
        parts.append(f"GIA loss (gamma {m.gia_weight:g})")
    return ", ".join(parts)


def _make_data(out: Path, seed: int, n_train: int, n_test: int, source: str, crops: str | None,
               test_crops: str | None, settings: dict) -> tuple[Path, Path, dict[str, Any], int]:  # fmt: skip
    """Write the demo's train / test COCO sets; returns their paths, a data description and the image size."""
    if crops is None:
        from deepacc.synthetic import SynthConfig, write_synthetic

        h, w = settings["height"], settings["width"]
        scfg = SynthConfig(height=h, width=w, scale=settings["scale"])
        tr = write_synthetic(out / "data" / "train", n_train, seed * 1000 + 1, scfg, source)
        te = write_synthetic(out / "data" / "test", n_test, seed * 1000 + 2, scfg, source)
        src = json.loads(Path(tr).read_text())["info"]["source"]
        note = "test images are new compositions; the same sample crops appear in training and test compositions"
        return tr, te, {"kind": "synthetic", "source": src, "note": note}, h
    from deepacc.compose import cell_spread, compose_cells, index_cells, split_cells

    spread = cell_spread(settings.get("scale", 0.5))

    cells = index_cells(crops)
    if test_crops is None:
        frac = CROPS_SETTINGS["train_fraction"]
        parts = split_cells(list(cells), {"train": frac, "test": 1 - frac}, seed)
        train_cells = {c: cells[c] for c in parts["train"]}
        test_cells = {c: cells[c] for c in parts["test"]}
    else:
        train_cells, test_cells = cells, index_cells(test_crops)
    tr = compose_cells(train_cells, out / "data" / "train", n_train, seed * 1000 + 1, spread)
    te = compose_cells(test_cells, out / "data" / "test", n_test, seed * 1000 + 2, spread)
    overlap = sorted(set(train_cells) & set(test_cells)) if test_crops is None else []
    desc = {"kind": "real cells", "crops": str(crops), "test_crops": str(test_crops) if test_crops else None,
            "train_cells": sorted(train_cells, key=int), "test_cells": sorted(test_cells, key=int),
            "note": "one cell per spread; test spreads come from cells never seen in training"}  # fmt: skip
    assert not overlap
    return tr, te, desc, spread.height


def run_demo(
    out: str | Path,
    device: str = "auto",
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    epochs: int | None = None,
    source: str = "auto",
    progress: bool = True,
    predict_real: bool = True,
    crops: str | Path | None = None,
    test_crops: str | Path | None = None,
    quick: bool = False,
    scale: float | None = None,
    roi_min_level: int | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline and return the metrics dict (also written to ``out/metrics.json``).

    ``scale`` (``--crops`` only): crops -> spread scale (0.5: 384 px spreads, the default; 1.0: 768 px, native);
    ``roi_min_level``: 2 pools RoIs from P2, 0 from the RPN's levels (default: the setting's).

    ``quick``: the synthetic demo at :data:`QUICK_SETTINGS` (the package's test; the README reports the full demo).
    """
    from medshared.plots import plot_curves
    from medshared.runtime import atomic_write_json, atomic_write_text, resolve_device, seed_everything
    from medshared.testing import shared_data_dir

    from deepacc.annotations import load_dataset
    from deepacc.evaluate import detections_from_raw, evaluate_detections, predict_raw
    from deepacc.health import margin_health
    from deepacc.images import read_image
    from deepacc.postprocess import agnostic_top1
    from deepacc.predict import predict_image, write_prediction
    from deepacc.reporting import markdown_table, write_eval
    from deepacc.train import train
    from deepacc.viz import draw_detections, karyogram, save_png

    t_start, cpu_start = time.time(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(CROPS_SETTINGS if crops is not None else (QUICK_SETTINGS if quick else DEMO_SETTINGS))
    if scale is not None:
        if crops is None:
            raise ValueError("--scale applies to spreads composed from --crops only")
        settings["scale"] = scale
    if roi_min_level is not None:
        settings["roi_min_level"] = roi_min_level
    n_train = n_train or settings["n_train"]
    n_test = n_test or settings["n_test"]
    epochs = epochs or settings["epochs"]
    dev = resolve_device(device)
    seed_everything(seed)

    # 1. data, written in the real COCO format and read back through the real loader
    train_json, test_json, data_desc, size = _make_data(out, seed, n_train, n_test, source,
                                                        None if crops is None else str(crops),
                                                        None if test_crops is None else str(test_crops),
                                                        settings)  # fmt: skip
    train_samples, test_samples = load_dataset(train_json), load_dataset(test_json)

    # 2. train the tiny config with the full DeepACC head
    batch = create_config("deepacc_tiny").train.batch_size
    cfg = demo_config(epochs * -(-n_train // batch), epochs, size, settings.get("roi_min_level", 0))
    t0 = time.time()
    model, history = train(cfg, train_samples, out / "run", dev, None, resume=False, seed=seed, progress=progress)
    train_seconds = time.time() - t0

    # 3. evaluate on the held-out images
    t0 = time.time()
    raws = predict_raw(model, test_samples, dev, progress=progress)
    res = evaluate_detections(raws, test_samples, cfg, coco=True, karyotype_prior=True)
    res["margin_health"] = margin_health(model, test_samples, dev)
    eval_seconds = time.time() - t0
    chance = res["chance"]["random_labels"]
    metrics: dict[str, Any] = {
        "headline": {"metric": "map50", "value": res["map50"], "chance": chance,
                     "chance_definition": "mAP@0.5 of the model's own boxes and scores with labels drawn uniformly "
                     "from the 24 classes (mean of 5 draws)"},
        **{k: v for k, v in res.items() if k != "matched_pairs"},
        "head": _head_name(cfg),
        "data": {"n_train": n_train, "n_test": n_test, "size": size, **data_desc},
        "config": dataclasses.asdict(cfg),
        "history": history,
        "timing": {"train_seconds": train_seconds, "eval_seconds": eval_seconds},
    }  # fmt: skip

    # 4. plots
    write_eval(out, res, prefix="test_")
    ep = [r["epoch"] for r in history]
    curves = {k: (np.array([r[k] for r in history]), np.zeros(len(history)))
              for k in ("loss", "loss_box_reg", "loss_aam", "loss_ce", "loss_gia", "loss_objectness")
              if k in history[0]}  # fmt: skip
    plot_curves(np.array(ep), curves, out / "loss_curves.png", "epoch", "loss", title="DeepACC demo training")
    _plot_ap(res["ap_per_class"], chance, out / "ap_per_class.png")
    det0 = detections_from_raw(raws[:1], cfg, "max")[0]
    det0 = {k: v.numpy() for k, v in agnostic_top1(det0, DISPLAY_THRESH, cfg.eval.agnostic_nms_thresh).items()}
    img0 = read_image(test_samples[0].image_path)
    save_png(out / "test0_overlay.png", draw_detections(img0, det0["boxes"], det0["labels"], det0["scores"]))
    save_png(out / "test0_groundtruth.png", draw_detections(img0, test_samples[0].boxes, test_samples[0].labels))
    save_png(out / "test0_karyogram.png", karyogram(img0, det0["boxes"], det0["labels"], det0["scores"]))

    # 5. the real metaphase A.tif (if the shared data folder exists), downscaled towards the training scale
    real_note = "skipped: shared data folder absent"
    root = shared_data_dir()
    if predict_real and root is not None and (root / "chromosome" / "A.tif").is_file():
        # A.tif's chromosomes are 60-250 px long; these short sides bring them near the training scale
        short = 480 if crops is None else 360
        result = predict_image(model, cfg, root / "chromosome" / "A.tif", dev, DISPLAY_THRESH, short_side=short,
                               karyotype_prior=crops is not None)  # fmt: skip
        write_prediction(result, out, "A")
        real_note = (
            f"{result['n_detections']} detections at score >= {result['score_thresh']} "
            f"(short side {short} px{', karyotype prior' if crops is not None else ''}; no ground truth)"
        )
    metrics["real_image_A_tif"] = real_note
    metrics["timing"]["total_seconds"] = time.time() - t_start
    metrics["timing"]["process_cpu_seconds"] = time.process_time() - cpu_start
    atomic_write_json(out / "metrics.json", metrics)

    rows = [
        ("mAP@0.5 (headline)", res["map50"]),
        *((f"mAP@0.5 at {c} detections per image", v) for c, v in res.get("map50_at", {}).items()),
        ("class-agnostic AP@0.5 (1 - p_bg)", res["class_agnostic_ap50"]),
        ("chance mAP@0.5 (random labels, own boxes)", chance),
        ("chance mAP@0.5 (GT boxes, random class scores)", res["chance"]["gt_boxes_random_scores"]),
        ("mAP_max@0.5", res["map50_max"]),
        ("COCO mAP@[.5:.95]", res["coco"]["map"]),
        ("Acc (top-1, p>=0.5, agnostic NMS 0.7)", res.get("acc", float("nan"))),
        ("AER", res.get("aer", float("nan"))),
        ("Acc / AER with the karyotype prior", f"{res.get('acc_prior', float('nan')):.4f} / "
                                               f"{res.get('aer_prior', float('nan')):.4f}"),
        ("Acc class-agnostic", res.get("acc_agnostic", float("nan"))),
        ("AER class-agnostic", res.get("aer_agnostic", float("nan"))),
        ("WCR", res["wcr"]),
        ("class accuracy on matched boxes", res["classification_acc_on_matched"]),
        ("count MAE per image", res["count_mae"]),
        *_health_rows(res["margin_health"]),
        ("train seconds", train_seconds),
        ("total seconds", metrics["timing"]["total_seconds"]),
    ]  # fmt: skip
    table = markdown_table(rows)
    what = ("spreads composed per cell from real karyotyped cells; test cells never seen in training"
            if crops is not None else f"synthetic metaphases ({data_desc['source']})")  # fmt: skip
    report = [
        "# DeepACC demo",
        "",
        f"Data: {what}; {n_train} training and {n_test} held-out images of {size}x{size} px, 46 chromosomes each.",
        f"Model: `deepacc_tiny` trained {epochs} epochs on {dev}. Head: {_head_name(cfg)}.",
        "",
        table,
        "",
        "Chance: the trained model's own boxes and scores with uniformly random labels (a classifier that ignores",
        f"its input). {data_desc['note']}.",
        "",
        f"Real metaphase A.tif: {real_note}.",
        "",
        f"Pictures (overlays, karyograms) show detections with top-1 score >= {DISPLAY_THRESH}; metrics use 0.5.",
        "Plots: loss_curves.png, ap_per_class.png, test_confusion_matrix.png, test0_overlay.png,",
        "test0_groundtruth.png, test0_karyogram.png, A_overlay.png, A_karyogram.png.",
    ]
    atomic_write_text(out / "report.md", "\n".join(report) + "\n")
    print(table)
    print(f"headline mAP@0.5 {res['map50']:.4f} vs chance {chance:.4f}; outputs in {out}")
    return metrics


def _health_rows(h: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not h:
        return []
    return [("margin branch: own-class cos (median)", h["own_class_cos"]),
            ("margin branch: class-centre pairwise cos (median)", h["centre_pairwise_cos"]),
            ("local templates (share of classes, Eq. 2)", h["template_local_fraction"]),
            ("margin branch", "collapsed: " + h["reason"] if h["reason"] else "healthy")]  # fmt: skip


def _plot_ap(ap: dict[str, float], chance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from medshared.runtime import atomic_path

    fig, ax = plt.subplots(figsize=(9, 3))
    keys = sorted(ap, key=int)
    vals = [0.0 if ap[k] != ap[k] else ap[k] for k in keys]
    ax.bar([CLASS_NAMES[int(k)] for k in keys], vals, color="tab:blue")
    ax.axhline(chance, color="tab:red", ls="--", label="chance")
    ax.set_ylabel("AP@0.5")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
