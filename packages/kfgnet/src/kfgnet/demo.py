"""``kfgnet demo``: both stages end to end on synthetic videos written to disk (real loaders exercised).

1. writes a synthetic cohort (AVI + manifest) with real backgrounds when ``../shared/data`` is present;
2. stage 1 on a patient-grouped train/test split: tiny Faster R-CNN -> per-frame FC7 features -> LSTM key-frame
   scores; tolerance curve on the held-out videos (chance: always predicting the middle frame);
3. stage 2: grouped stratified k-fold CV of the light C3D + SPP + motion attention on clips centred on the annotated
   key frames, and on the stage-1 key frames for the held-out videos; headline = CV accuracy vs the majority rate.

Reduced sizes (64-px frames, 3 folds, 18 epochs, 16 x 48 x 48 clips, tiny networks) so it takes about two
minutes on 2 idle CPU cores. Stage 1 is also scored on an extra held-out synthetic cohort (``data_stage1_test``,
another seed, never trained on) so that its tolerance curve is measured on ~55 videos, not ~9.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfgnet.config import (
    LABELS,
    ClassifierTrainConfig,
    ClipConfig,
    KeyFrameTrainConfig,
    MotionConfig,
    config_to_dict,
    get_classifier_config,
    get_detector_config,
    get_keyframe_config,
)

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (defaults: ~2 min on 2 idle CPU cores); ``bf16=False`` runs the classifier in fp32."""

    n_patients: int = 18
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
    stage1_extra_patients: int = 30  # extra held-out cohort for the stage-1 tolerance curve (0: none)
    bf16: bool = True
    channels_last: bool = True


def run_demo(out: Path, device: torch.device, seed: int = 0, cfg: DemoConfig | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo and write ``metrics.json``, ``report.md``, ``tolerance.png``, ``confusion.png``,
    ``prediction.png`` under ``out``. Returns the metrics dict."""
    from medshared.metrics import confusion_matrix
    from medshared.plots import plot_confusion_matrix
    from medshared.runtime import atomic_write_csv, atomic_write_json, atomic_write_text, seed_everything
    from medshared.splits import stratified_group_kfold
    from medshared.testing import shared_data_dir

    from kfgnet.data import read_manifest
    from kfgnet.detection_data import extract_annotated_frames
    from kfgnet.detector import load_detector
    from kfgnet.detector_train import train_detector
    from kfgnet.evaluate import (
        classification_summary,
        extract_detections,
        fmt_pm,
        plot_prediction,
        plot_tolerance,
        tolerance_curve,
    )
    from kfgnet.keyframe import build_sequences, predict_keyframes, save_keyframe, train_keyframe
    from kfgnet.synthetic import SyntheticConfig, make_synthetic
    from kfgnet.train import cross_validate

    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data_dir = shared_data_dir()
    manifest = make_synthetic(out / "data", SyntheticConfig(n_patients=cfg.n_patients, num_frames=cfg.num_frames,
                                                            size=cfg.frame_size, seed=seed), data_dir,
                              progress=progress)
    records = read_manifest(manifest)
    labels = np.array([r.label for r in records])
    timings["synthetic_s"] = time.perf_counter() - t0

    # ---- stage 1: detector + key-frame model on a grouped split (the test fold of a 3-fold split)
    t0 = time.perf_counter()
    tr, te = stratified_group_kfold(labels.tolist(), [r.patient_id for r in records], n_splits=3, seed=seed)[0]
    rec_tr, rec_te = [records[i] for i in tr], [records[i] for i in te]
    dcfg = get_detector_config("tiny", min_size=cfg.det_size, max_size=cfg.det_size)
    samples = extract_annotated_frames(rec_tr, out / "detector" / "frames", max_per_video=cfg.det_images_per_video,
                                       seed=seed)
    dcfg = replace(dcfg, epochs=cfg.det_epochs)
    det_log = train_detector(samples, None, dcfg, out / "detector", seed=seed, progress=progress)["log"]
    detector, _ = load_detector(out / "detector" / "detector_best.safetensors", device)
    timings["detector_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dets = extract_detections(records, detector, device, out / "cache", dcfg.score_threshold, tag="demo",
                              progress=progress)
    rec_x: list = []
    if cfg.stage1_extra_patients > 0:  # extra held-out cohort (another seed) scored by stage 1 only
        man_x = make_synthetic(out / "data_stage1_test",
                               SyntheticConfig(n_patients=cfg.stage1_extra_patients, num_frames=cfg.num_frames,
                                               size=cfg.frame_size, seed=seed + 1000), data_dir)
        rec_x = read_manifest(man_x)
    dets_x = extract_detections(rec_x, detector, device, out / "cache", dcfg.score_threshold, tag="demo",
                                progress=progress) if rec_x else []
    timings["detect_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kcfg = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=dcfg.representation, geo_dim=cfg.kf_geo_dim,
                               score_norm=cfg.kf_score_norm)
    tr_ok = [i for i in tr if len(dets[i].frame_num)]  # a training video without any detection teaches nothing
    seq_tr = build_sequences([dets[i] for i in tr_ok], [records[i].key_frame for i in tr_ok], kcfg)
    test_dets = [dets[i] for i in te] + dets_x
    true_keys = [r.key_frame for r in rec_te] + [r.key_frame for r in rec_x]
    has = [len(d.frame_num) > 0 for d in test_dets]
    seq_te = build_sequences([d for d, h in zip(test_dets, has) if h], None, kcfg)
    kf_log: list[dict[str, Any]] = []
    kf_model = train_keyframe(seq_tr, kcfg, KeyFrameTrainConfig(epochs=cfg.kf_epochs, batch_size=32, lr=0.01,
                                                                seed=seed), device, progress, kf_log)
    save_keyframe(out / "keyframe.safetensors", kf_model, kcfg)
    keys_ok, curves = predict_keyframes(kf_model, seq_te, device)
    it_ok = iter(keys_ok)
    # a test video without any detection gets the middle frame (counted, not dropped)
    pred_keys = [next(it_ok) if h else (d.num_frames - 1) // 2 for d, h in zip(test_dets, has)]
    tol = tolerance_curve(pred_keys, true_keys)
    mid = tolerance_curve([(d.num_frames - 1) // 2 for d in test_dets], true_keys)
    timings["keyframe_s"] = time.perf_counter() - t0
    plot_tolerance({"KFGNet stage 1 (LSTM on detections)": tol, "chance: middle frame": mid},
                   out / "tolerance.png")

    # ---- stage 2: grouped stratified k-fold CV of the classifier on key-frame-centred clips
    t0 = time.perf_counter()
    clip = ClipConfig(num_frames=cfg.clip_frames, size=cfg.clip_size)
    ccfg = get_classifier_config("kfgnet_tiny", num_frames=cfg.clip_frames, size=cfg.clip_size)
    tcfg = ClassifierTrainConfig(epochs=cfg.epochs, epochs2=cfg.epochs2, batch_size=cfg.batch_size, folds=cfg.folds,
                                 seed=seed, bf16=cfg.bf16, channels_last=cfg.channels_last)
    motion = MotionConfig()
    cv = cross_validate(records, ccfg, tcfg, clip, device, motion, out / "cv", progress=progress)
    timings["classifier_cv_s"] = time.perf_counter() - t0
    summ = classification_summary(cv)
    y_true = [LABELS.index(p["label"]) for p in cv["predictions"]]
    y_pred = [LABELS.index(p["pred"]) for p in cv["predictions"]]
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1])
    plot_confusion_matrix(cm, list(LABELS), out / "confusion.png", title="classification, all CV folds")
    atomic_write_csv(out / "predictions.csv", cv["predictions"])

    # ---- one held-out video through both stages (figure)
    i0 = int(te[0])
    frames = __import__("kfgnet.data", fromlist=["read_video"]).read_video(records[i0].path, gray=True)
    d0 = dets[i0]
    k0 = pred_keys[0]
    j = int(np.flatnonzero(d0.frame_num == k0)[0]) if (d0.frame_num == k0).any() else None
    p0 = next(p["p_malignant"] for p in cv["predictions"] if p["video"] == str(records[i0].path))
    c_frames, c0 = (seq_te[0]["frame_num"], curves[0]) if has[0] else (np.zeros(0, int), np.zeros(0))
    plot_prediction(frames[k0], d0.boxes[j] if j is not None else None, k0, c_frames, c0, p0,
                    out / "prediction.png", title=f"true key frame {true_keys[0]}, label {LABELS[records[i0].label]}")

    timings["total_s"] = time.perf_counter() - t_all
    metrics: dict[str, Any] = {
        "headline": {"metric": "cv_accuracy", "value": summ["accuracy"]["mean"], "chance": cv["chance"]},
        "classification": {"summary": summ, "folds": cv["folds"], "chance_majority_rate": cv["chance"],
                           "confusion_matrix": cm.tolist(), "n_videos": len(records),
                           "n_malignant": int(labels.sum())},
        "keyframe": {"tolerance_accuracy": tol.tolist(), "middle_frame_tolerance": mid.tolist(),
                     "acc_d0": float(tol[0]), "acc_d2": float(tol[2]), "acc_d5": float(tol[5]),
                     "acc_d15": float(tol[15]), "n_test_videos": len(true_keys),
                     "n_test_from_cv_cohort": len(rec_te), "n_test_extra_cohort": len(rec_x),
                     "n_test_without_detection": int(len(has) - sum(has)), "pred": pred_keys, "true": true_keys},
        "detector": {"train_images": len(samples), "log": det_log},
        "config": {"demo": config_to_dict(cfg), "classifier": config_to_dict(ccfg), "train": config_to_dict(tcfg),
                   "clip": config_to_dict(clip), "keyframe": config_to_dict(kcfg), "detector": config_to_dict(dcfg)},
        "timings": timings,
        "real_backgrounds": data_dir is not None,
        "device": str(device),
        "seed": seed,
    }
    atomic_write_json(out / "metrics.json", metrics)
    rows = [f"| {k} | {fmt_pm(v)} |" for k, v in summ.items()]
    report = "\n".join([
        "# KFGNet demo (synthetic ultrasound videos)", "",
        f"{len(records)} videos ({int(labels.sum())} malignant) from {cfg.n_patients} patients, "
        f"{'real thyroid backgrounds' if data_dir else 'procedural backgrounds'}; device {device}; seed {seed}.", "",
        f"## Stage 2: classification, {cfg.folds}-fold CV grouped by patient (malignant positive), "
        f"{'bf16 autocast' if cfg.bf16 else 'fp32'}{' + channels_last_3d' if cfg.channels_last else ''}", "",
        "| metric | mean ± std (%) |", "|---|---|", *rows, "",
        f"Headline: CV accuracy **{summ['accuracy']['mean']:.3f}** vs majority-class rate {cv['chance']:.3f}.", "",
        f"## Stage 1: key-frame localisation on {len(true_keys)} held-out videos ({len(rec_te)} of the CV cohort, "
        f"{len(rec_x)} of an extra cohort; {len(has) - sum(has)} without any detection get the middle frame)", "",
        "| D | 0 | 1 | 2 | 3 | 5 | 10 | 15 |", "|---|---|---|---|---|---|---|---|",
        "| KFGNet stage 1 | " + " | ".join(f"{tol[d]:.2f}" for d in (0, 1, 2, 3, 5, 10, 15)) + " |",
        "| middle frame (chance) | " + " | ".join(f"{mid[d]:.2f}" for d in (0, 1, 2, 3, 5, 10, 15)) + " |", "",
        "Plots: `tolerance.png`, `confusion.png`, `prediction.png`.", "",
        f"Wall time {timings['total_s']:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
    ])
    atomic_write_text(out / "report.md", report)
    return metrics
