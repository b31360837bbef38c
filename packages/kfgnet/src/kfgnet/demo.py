"""``kfgnet demo``: the paper's chain end to end on synthetic videos written to disk (real loaders exercised).

As in the paper, the two stages are trained separately and the classification cohort is the test set of stage 1:

1. two synthetic cohorts (AVI + manifest; real thyroid backgrounds when ``../shared/data`` is present): cohort A
   trains stage 1, cohort B (other patients, another seed) is stage 1's test set and stage 2's cohort;
2. stage 1 on A: a tiny Faster R-CNN on the annotated frames, then the LSTM key-frame scorer on its per-frame FC7
   features (best epoch on held-out A patients); on B: key frame + nodule box per video
   (:class:`kfgnet.pipeline.Stage1`, the same code as ``evaluate-keyframe``), tolerance curve against always taking
   the middle frame;
3. stage 2 on B: grouped stratified k-fold CV of the light C3D + SPP + motion attention on nodule crops around
   stage 1's key frames (the paper's chain; the one fallback for a video without any detection is the middle frame
   and the whole-frame crop), and the same CV around the annotated key frames for comparison; pooled out-of-fold
   metrics with bootstrap CIs; headline = CV accuracy with stage-1 key frames vs the majority rate;
4. one video of B through :meth:`kfgnet.pipeline.Pipeline.predict_video` (the same code as ``predict``).

Reduced sizes (64-px frames, 3 folds, 16 x 48 x 48 clips, tiny networks) so it takes a few minutes on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfgnet.config import (
    ClassifierTrainConfig,
    ClipConfig,
    KeyFrameTrainConfig,
    MotionConfig,
    config_to_dict,
    get_classifier_config,
    get_detector_config,
    get_keyframe_config,
)

__all__ = ["DemoConfig", "quick_demo_config", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``bf16=False`` runs the classifier in fp32."""

    n_patients: int = 18  # cohort B: stage 1's test set and stage 2's CV cohort
    stage1_patients: int = 24  # cohort A: stage 1's training set
    num_frames: int = 32
    frame_size: int = 64
    clip_frames: int = 16
    clip_size: int = 48
    folds: int = 3
    epochs: int = 12
    epochs2: int = 6
    batch_size: int = 8
    det_epochs: int = 12
    det_images_per_video: int = 4
    det_size: int = 128  # the tiny detector's input size (64-px frames upsampled: a 16 x 16 feature map, not 8 x 8)
    kf_epochs: int = 100
    kf_geo_dim: int = 6  # box + frame + detection score (the official 6-d input [V])
    kf_score_norm: str = "minmax"  # the score stretched per video (see KeyFrameConfig.score_norm)
    bf16: bool = True
    channels_last: bool = True
    detector_bf16: bool = False  # the detector's backbone under bf16 autocast (kfgnet.precision.backbone_autocast)
    annotated_cv: bool = True  # also cross-validate on the annotated key frames (the comparison row)


def quick_demo_config(bf16: bool = True) -> DemoConfig:
    """The ``demo --quick`` sizes (the test suite's): same pipeline, a few seconds of training per stage."""
    return DemoConfig(
        n_patients=14,
        stage1_patients=6,
        num_frames=24,
        frame_size=64,
        clip_frames=16,
        clip_size=48,
        folds=2,
        epochs=14,
        epochs2=6,
        batch_size=4,
        det_epochs=1,
        det_images_per_video=1,
        det_size=64,
        kf_epochs=10,
        bf16=bf16,
        channels_last=bf16,
        annotated_cv=False,
    )


def run_demo(
    out: Path, device: torch.device, seed: int = 0, cfg: DemoConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the demo and write ``metrics.json``, ``report.md``, ``tolerance.png``, ``confusion.png``,
    ``prediction.png``, ``keyframes.csv`` under ``out``. Returns the metrics dict."""
    from medshared.distributed import DistContext
    from medshared.metrics import confusion_matrix
    from medshared.plots import plot_confusion_matrix
    from medshared.runtime import atomic_write_csv, atomic_write_json, atomic_write_text, seed_everything
    from medshared.splits import ratio_split
    from medshared.testing import shared_data_dir

    from kfgnet.config import LABELS
    from kfgnet.data import read_manifest
    from kfgnet.detection_data import extract_annotated_frames
    from kfgnet.detector import load_detector
    from kfgnet.detector_train import train_detector
    from kfgnet.evaluate import classification_summary, fmt_ci, plot_tolerance, plot_video_prediction
    from kfgnet.keyframe import build_sequences, train_keyframe
    from kfgnet.pipeline import Pipeline, Stage1, extract_detections, tolerance_report, write_keyframes_csv
    from kfgnet.precision import fixed_precision
    from kfgnet.synthetic import SyntheticConfig, make_synthetic
    from kfgnet.train import cross_validate, load_classifier

    cfg = cfg or DemoConfig()
    dprec = fixed_precision("bf16" if cfg.detector_bf16 else "fp32", device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data_dir = shared_data_dir()

    def cohort(name: str, patients: int, s: int) -> list[Any]:
        syn = SyntheticConfig(n_patients=patients, num_frames=cfg.num_frames, size=cfg.frame_size, seed=s)
        return read_manifest(make_synthetic(out / name, syn, data_dir, progress=progress))

    rec_a = cohort("data_stage1_train", cfg.stage1_patients, seed + 1000)
    records = cohort("data", cfg.n_patients, seed)
    labels = np.array([r.label for r in records])
    timings["synthetic_s"] = time.perf_counter() - t0

    # ---- stage 1, trained on cohort A only
    t0 = time.perf_counter()
    dcfg = get_detector_config("tiny", min_size=cfg.det_size, max_size=cfg.det_size, epochs=cfg.det_epochs)
    items = extract_annotated_frames(
        rec_a, out / "detector" / "frames", max_per_video=cfg.det_images_per_video, seed=seed
    )
    det_log = train_detector(
        items,
        None,
        dcfg,
        out / "detector",
        DistContext(device=torch.device(device)),  # on the demo's device (it trained on the CPU before)
        seed=seed,
        progress=progress,
        precision=dprec,
    )["log"]
    detector, _ = load_detector(out / "detector" / "detector_best.safetensors", device)
    timings["detector_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kcfg = get_keyframe_config(
        "kfgnet_keyframe_tiny", feature_dim=dcfg.representation, geo_dim=cfg.kf_geo_dim, score_norm=cfg.kf_score_norm
    )
    dets_a = extract_detections(
        [r.path for r in rec_a],
        detector,
        device,
        out / "cache",
        dcfg.score_threshold,
        "demo",
        progress,
        precision=dprec,
    )
    parts = ratio_split(
        list(range(len(rec_a))), (0.8, 0.2), seed=seed, groups=[r.patient_id for r in rec_a], names=("train", "val")
    )
    tr = [i for i in parts["train"] if len(dets_a[i].frame_num)]  # a video without detections teaches nothing
    va = [i for i in parts["val"] if len(dets_a[i].frame_num)]
    seq_tr = build_sequences([dets_a[i] for i in tr], [rec_a[i].key_frame for i in tr], kcfg)
    seq_va = build_sequences([dets_a[i] for i in va], None, kcfg) if va else None
    kf_log: list[dict[str, Any]] = []
    kf_model = train_keyframe(
        seq_tr,
        kcfg,
        KeyFrameTrainConfig(epochs=cfg.kf_epochs, batch_size=32, lr=0.01, seed=seed),
        device,
        progress,
        kf_log,
        seq_va,
        [rec_a[i].key_frame for i in va] if va else None,
    )
    stage1 = Stage1(detector, dcfg, kf_model, kcfg, device, tag="demo", precision=dprec)
    preds = stage1.locate([r.path for r in records], out / "cache", progress)
    write_keyframes_csv(preds, out / "keyframes.csv", [{"true_key_frame": r.key_frame} for r in records])
    tol = tolerance_report(preds, records)
    timings["keyframe_s"] = time.perf_counter() - t0
    plot_tolerance(
        {
            "KFGNet stage 1 (LSTM on detections)": np.asarray(tol["tolerance_accuracy"]),
            "chance: middle frame": np.asarray(tol["middle_frame_tolerance"]),
        },
        out / "tolerance.png",
    )

    # ---- stage 2 on cohort B: nodule crops around stage 1's key frames (the chain), and around the annotated ones
    t0 = time.perf_counter()
    clip = ClipConfig(num_frames=cfg.clip_frames, size=cfg.clip_size)
    ccfg = get_classifier_config("kfgnet_tiny", num_frames=cfg.clip_frames, size=cfg.clip_size)
    tcfg = ClassifierTrainConfig(
        epochs=cfg.epochs,
        epochs2=cfg.epochs2,
        batch_size=cfg.batch_size,
        folds=cfg.folds,
        seed=seed,
        bf16=cfg.bf16,
        channels_last=cfg.channels_last,
    )
    motion = MotionConfig()
    keys = [p.as_keyframe() for p in preds]
    cv = cross_validate(
        records, ccfg, tcfg, clip, device, motion, out / "cv_stage1", keys, progress=progress, restart=True
    )
    timings["classifier_cv_s"] = time.perf_counter() - t0
    cv_ann = None
    if cfg.annotated_cv:
        t0 = time.perf_counter()
        cv_ann = cross_validate(
            records, ccfg, tcfg, clip, device, motion, out / "cv_annotated", progress=progress, restart=True
        )
        timings["classifier_cv_annotated_s"] = time.perf_counter() - t0
    summ = classification_summary(cv)
    y_true = [LABELS.index(p["label"]) for p in cv["predictions"]]
    y_pred = [LABELS.index(p["pred"]) for p in cv["predictions"]]
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1])
    plot_confusion_matrix(
        cm, list(LABELS), out / "confusion.png", title="classification, all CV folds (stage-1 key frames)"
    )
    atomic_write_csv(out / "predictions.csv", cv["predictions"])

    # ---- one video through predict_video (the code of `kfgnet predict`), with fold 0's classifier
    pipe = Pipeline(stage1, *load_classifier(out / "cv_stage1" / "fold0.safetensors", device))
    res = pipe.predict_video(records[0].path)
    plot_video_prediction(
        res,
        out / "prediction.png",
        title=f"true key frame {records[0].key_frame}, label {LABELS[records[0].label]}; key from {res['key_source']}",
    )

    timings["total_s"] = time.perf_counter() - t_all
    pooled = cv["pooled"]
    metric_keys = ("accuracy", "sensitivity", "specificity", "auroc")
    ann_row = ["| annotated | " + " | ".join(fmt_ci(cv_ann["pooled"][k]) for k in metric_keys) + " |"] if cv_ann else []
    metrics: dict[str, Any] = {
        "headline": {
            "metric": "cv_accuracy_stage1_keyframes",
            "value": summ["accuracy"]["mean"],
            "chance": cv["chance"],
        },
        "classification": {
            "summary": summ,
            "pooled": pooled,
            "folds": cv["folds"],
            "chance_majority_rate": cv["chance"],
            "confusion_matrix": cm.tolist(),
            "n_videos": len(records),
            "n_malignant": int(labels.sum()),
            "key_frames": "stage 1 (detector + LSTM trained on cohort A)",
            "n_fallback": sum(p.source != "stage1" for p in preds),
        },
        "classification_annotated_keyframes": (
            {"summary": classification_summary(cv_ann), "pooled": cv_ann["pooled"]} if cv_ann else None
        ),
        "keyframe": {
            **tol,
            "n_stage1_train_videos": len(rec_a),
            "log": kf_log,
            "pred": [p.key_frame for p in preds],
            "true": [r.key_frame for r in records],
        },
        "detector": {"train_images": len(items), "log": det_log},
        "config": {
            "demo": config_to_dict(cfg),
            "classifier": config_to_dict(ccfg),
            "train": config_to_dict(tcfg),
            "clip": config_to_dict(clip),
            "keyframe": config_to_dict(kcfg),
            "detector": config_to_dict(dcfg),
        },
        "timings": timings,
        "real_backgrounds": data_dir is not None,
        "device": str(device),
        "seed": seed,
    }
    atomic_write_json(out / "metrics.json", metrics)
    ds = (0, 1, 2, 3, 5, 8, 10, 15)
    t, m = tol["tolerance_accuracy"], tol["middle_frame_tolerance"]
    report = "\n".join(
        [
            "# KFGNet demo (synthetic ultrasound videos)",
            "",
            f"Stage 1 trained on cohort A ({len(rec_a)} videos, {cfg.stage1_patients} patients); stage 1 tested and "
            f"stage 2 cross-validated on cohort B ({len(records)} videos, {int(labels.sum())} malignant, "
            f"{cfg.n_patients} patients); {'real thyroid backgrounds' if data_dir else 'procedural backgrounds'}; "
            f"device {device}; seed {seed}.",
            "",
            f"## Stage 1: key-frame localisation on cohort B ({tol['n_fallback']} videos without any detection get the "
            f"middle frame)",
            "",
            "| D | " + " | ".join(str(d) for d in ds) + " |",
            "|---" * (len(ds) + 1) + "|",
            "| KFGNet stage 1 | " + " | ".join(f"{t[d]:.2f}" for d in ds) + " |",
            "| middle frame (chance) | " + " | ".join(f"{m[d]:.2f}" for d in ds) + " |",
            "",
            f"## Stage 2: {cfg.folds}-fold CV grouped by patient, nodule crops, malignant positive, "
            f"{'bf16 autocast' if cfg.bf16 else 'fp32'}{' + channels_last_3d' if cfg.channels_last else ''}",
            "",
            "Pooled out-of-fold predictions, 95 % bootstrap CI over patients:",
            "",
            "| key frames | accuracy | sensitivity | specificity | AUROC |",
            "|---|---|---|---|---|",
            "| stage 1 (the chain) | " + " | ".join(fmt_ci(pooled[k]) for k in metric_keys) + " |",
            *ann_row,
            "",
            f"Headline: CV accuracy with stage-1 key frames **{summ['accuracy']['mean']:.3f}** (mean over folds) vs "
            f"majority-class rate {cv['chance']:.3f}.",
            "",
            "Plots: `tolerance.png`, `confusion.png`, `prediction.png`.",
            "",
            f"Wall time {timings['total_s']:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
            "",
        ]
    )
    atomic_write_text(out / "report.md", report)
    return metrics
