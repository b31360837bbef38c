"""Command-line interface of ``kfgnet``.

Commands: ``demo``, ``make-synthetic``, ``train-detector``, ``train-keyframe``, ``train-classifier``, ``evaluate``,
``predict``. Expected bad input prints one ``kfgnet: error: ...`` line to stderr and returns 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import EXPECTED_ERRORS, run_cli

from kfgnet import __version__

EXIT_ERROR = 1


def _add_common(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--manifest", type=Path, help="manifest .json/.csv (video, patient_id, label, key_frame, boxes)")
        g.add_argument("--release", type=Path, help="authors' release folder (videos/*.avi + avi.xlsx|avi.csv)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, help="YAML/JSON overrides; sections: model, train, clip, motion, "
                   "detector, keyframe, keyframe_train")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_detection_data(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--data", type=Path, help="image folder: DIR/image/* with DIR/mask/* (same names) or "
                   "DIR/boxes.csv, e.g. ../shared/data/ddti")
    g.add_argument("--manifest", type=Path, help="video manifest with 'boxes' on annotated frames")
    g.add_argument("--release", type=Path, help="authors' release folder")
    p.add_argument("--empty-masks", choices=("negative", "skip", "error"), default="negative",
                   help="a mask without foreground: a background-only image (default: as stored), left out, or an "
                   "error; always logged")
    p.add_argument("--mask-components", action="store_true", help="one box per connected mask component (default: "
                   "one box around the whole mask)")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``kfgnet`` argument parser."""
    parser = argparse.ArgumentParser(prog="kfgnet", description="KFGNet (MICCAI 2022): key-frame guided thyroid "
                                     "nodule recognition from ultrasound video.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="both stages end to end on synthetic videos (~2 min on CPU)")
    p.add_argument("--out", type=Path, default=Path("kfgnet_demo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller cohort and fewer epochs (tests)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="classifier training/inference: bf16 autocast + channels_last_3d (default) or fp32")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("make-synthetic", help="write synthetic ultrasound videos + manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--frames", type=int, default=48, help="frames per video (up to 1.25x)")
    p.add_argument("--size", type=int, default=128, help="frame size in pixels")
    p.add_argument("--format", choices=("avi", "mp4", "frames"), default="avi")
    p.add_argument("--layout", choices=("manifest", "release"), default="manifest",
                   help="release also writes the authors' avi.csv key-frame table and LabelMe images/*.json")
    p.add_argument("--no-real-backgrounds", action="store_true", help="procedural tissue instead of ../shared/data")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train-detector", help="train the Faster R-CNN nodule detector (AP50 on held-out cases every "
                       "epoch, best checkpoint, resumable)")
    _add_detection_data(p)
    _add_common(p, data=False)
    p.add_argument("--out", type=Path, required=True, help="output folder (detector_best.safetensors, train.json, "
                   "split.json)")
    p.add_argument("--preset", default="resnet50_fpn", help="resnet50_fpn | mobilenet_v3_fpn | kfgnet_ddti | tiny")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="effective batch (split over torchrun processes)")
    p.add_argument("--images-per-video", type=int, default=16, help="videos: annotated frames used per video")
    p.add_argument("--val-data", type=Path, help="held-out image folder (else --val-fraction of the cases)")
    p.add_argument("--val-manifest", type=Path, help="held-out video manifest (else --val-fraction of the patients)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="cases held out for validation (default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="cases held out for evaluate-detector, never trained or validated on (default 0.15)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the case split (default 0, fixed over --seed)")
    p.add_argument("--pretrained-backbone", default=None,
                   help="'none' (random init, the paper's setting), 'imagenet' (torchvision's, via torch.hub's "
                   "cache) or a local ImageNet weights file")
    p.add_argument("--weights", default=None, help="'none', 'coco' (torchvision's COCO Faster R-CNN weights via "
                   "torch.hub's cache) or a local fasterrcnn_resnet50_fpn_coco-*.pth; FrozenBN + 3 trainable stages")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--restart", action="store_true", help="ignore a saved state made under another config")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun (trainable-BN backbones)")

    p = sub.add_parser("evaluate-detector", help="COCO AP / AP50 / AP75 of a detector on held-out images, beside the "
                       "fixed median-box baseline")
    _add_detection_data(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="detector_best.safetensors of train-detector")
    p.add_argument("--split", type=Path, help="RUN/split.json: evaluate only the cases of --part")
    p.add_argument("--part", default="test", help="part of --split to evaluate (default test)")
    p.add_argument("--images-per-video", type=int, default=16)
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, detections.csv, detections.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-keyframe", help="train the LSTM key-frame scorer on detector features")
    _add_common(p)
    p.add_argument("--detector", type=Path, required=True, help="detector.safetensors from train-detector")
    p.add_argument("--out", type=Path, required=True, help="output folder (keyframe.safetensors)")
    p.add_argument("--preset", default="kfgnet_keyframe", help="kfgnet_keyframe | official_2023 | kfgnet_keyframe_tiny")
    p.add_argument("--epochs", type=int)

    p = sub.add_parser("train-classifier", help="k-fold CV (grouped by patient) of the stage-2 classifier")
    _add_common(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="kfgnet_light_c3d",
                   help="kfgnet_light_c3d | kfgnet_official | kfgnet_tiny | c3d | r3d_18 | r2plus1d_18")
    p.add_argument("--folds", type=int)
    p.add_argument("--epochs", type=int, help="epochs at lr (default 20); the lr2 phase keeps its length unless "
                   "--epochs2 is given")
    p.add_argument("--epochs2", type=int)
    p.add_argument("--sampling", choices=("keyframe", "uniform"))
    p.add_argument("--pretrained", default=None, help="baselines: 'none' or a local Kinetics weights file")
    p.add_argument("--table1", action="store_true", help="run every row of the paper's Table 1")
    p.add_argument("--no-pad-short", action="store_true", help="reject videos shorter than the clip")
    p.add_argument("--final", action="store_true", help="also train one model on all videos (model.safetensors)")

    p = sub.add_parser("evaluate", help="evaluate checkpoints on a labelled manifest")
    _add_common(p)
    p.add_argument("--classifier", type=Path, required=True, help="classifier .safetensors")
    p.add_argument("--detector", type=Path, help="with --keyframe: locate key frames (else the annotated ones)")
    p.add_argument("--keyframe", type=Path)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("predict", help="key frame, nodule box and P(malignant) of one video")
    p.add_argument("video", type=Path, help="video file (.avi/.mp4) or a folder of frames")
    p.add_argument("--classifier", type=Path, required=True)
    p.add_argument("--detector", type=Path, required=True)
    p.add_argument("--keyframe", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for prediction.json and prediction.png")
    p.add_argument("--device", default="auto")
    return parser


def _records(args: argparse.Namespace) -> list[Any]:
    from kfgnet.data import read_manifest, read_release

    return read_manifest(args.manifest) if args.manifest else read_release(args.release)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from medshared.config import load_config_file

    if not getattr(args, "config", None):
        return {}
    conf = load_config_file(args.config)
    valid = {"model", "train", "clip", "motion", "keyframe", "keyframe_train", "detector"}
    bad = sorted(set(conf) - valid)
    if bad:
        raise ValueError(f"unknown section(s) {bad} in {args.config}; valid sections: {sorted(valid)}")
    return conf


def _apply(cfg: Any, over: dict[str, Any], section: str) -> Any:
    from medshared.config import override_dataclass

    return override_dataclass(cfg, over.get(section, {}))


def cmd_demo(args: argparse.Namespace) -> int:
    from medshared.runtime import resolve_device

    from kfgnet.demo import DemoConfig, run_demo

    bf16 = getattr(args, "precision", "bf16") == "bf16"
    cfg = DemoConfig(bf16=bf16, channels_last=bf16)
    if args.quick:
        cfg = DemoConfig(n_patients=14, num_frames=24, frame_size=64, clip_frames=16, clip_size=48, folds=2, epochs=14,
                         epochs2=6, batch_size=4, det_epochs=1, det_images_per_video=1, det_size=64, kf_epochs=10,
                         stage1_extra_patients=3, bf16=bf16, channels_last=bf16)
    m = run_demo(args.out, resolve_device(args.device), args.seed, cfg, progress=not args.no_progress)
    print((args.out / "report.md").read_text())
    h = m["headline"]
    print(f"headline {h['metric']} = {h['value']:.3f} (chance {h['chance']:.3f}); outputs in {args.out}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from medshared.testing import shared_data_dir

    from kfgnet.synthetic import SyntheticConfig, make_synthetic

    if args.patients < 1 or args.frames < 4 or args.size < 32:
        raise ValueError("need --patients >= 1, --frames >= 4, --size >= 32")
    m = make_synthetic(args.out, SyntheticConfig(args.patients, args.frames, args.size, fmt=args.format,
                                                 seed=args.seed),
                       None if args.no_real_backgrounds else shared_data_dir(), layout=args.layout, progress=True)
    print(f"wrote {m}")
    return 0


def _detection_items(args: argparse.Namespace, cache: Path, manifest: Path | None = None,
                     data: Path | None = None) -> list[Any]:
    from kfgnet.data import read_manifest, read_release
    from kfgnet.detection_data import load_detection_items

    if manifest is None and data is None:
        manifest, data = args.manifest, args.data
    records = None
    if data is None:
        records = read_manifest(manifest) if manifest else read_release(args.release)
    return load_detection_items(data, records, cache, args.images_per_video, args.empty_masks, args.mask_components,
                                getattr(args, "seed", 0), progress=not args.no_progress)


def cmd_train_detector(args: argparse.Namespace) -> int:
    from medshared.distributed import init_distributed
    from medshared.runtime import atomic_write_json

    from kfgnet.config import get_detector_config
    from kfgnet.detection_data import make_detection_split
    from kfgnet.detector_train import detector_config_for_batch, train_detector

    over = _overrides(args)
    pre = {k: v for k, v in (("pretrained_backbone", args.pretrained_backbone), ("weights", args.weights)) if v}
    cfg = _apply(get_detector_config(args.preset, **pre), over, "detector")
    cfg = detector_config_for_batch(cfg, args.batch_size, args.epochs)
    ctx = init_distributed(args.device)
    try:
        items = _detection_items(args, args.out / "frames")
        if args.val_data or args.val_manifest:
            val = _detection_items(args, args.out / "frames", args.val_manifest, args.val_data)
            parts, split = {"train": items, "val": val, "test": []}, {"val_source": str(args.val_data or
                                                                                         args.val_manifest)}
        else:
            parts, split = make_detection_split(items, args.val_fraction, args.test_fraction, args.split_seed)
        if not parts["train"]:
            raise ValueError("no training images left after the split; lower --val-fraction / --test-fraction")
        split["data"] = str(args.data or args.manifest or args.release)
        split["empty_masks"] = args.empty_masks
        if ctx.is_main:
            atomic_write_json(args.out / "split.json", split)
        res = train_detector(parts["train"], parts["val"] or None, cfg, args.out, ctx, args.seed, args.restart,
                             not args.no_progress, args.offline, args.num_workers, args.sync_bn,
                             meta={"split_file": "split.json", "data": split["data"]})
    finally:
        ctx.close()
    if ctx.is_main:
        last = res["log"][-1] if res["log"] else {}
        print(f"wrote {args.out / 'detector_best.safetensors'} ({len(parts['train'])} training images, "
              f"{len(parts['val'])} validation); best validation AP50 {res['best_val_ap50']}; last epoch "
              + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if isinstance(v, float)))
    return 0


def cmd_evaluate_detector(args: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.detection_data import select_split_part
    from kfgnet.detector import load_detector
    from kfgnet.detector_eval import evaluate_detector, plot_detections

    device = resolve_device(args.device)
    model, cfg, extra = load_detector(args.checkpoint, device, with_extra=True)
    items = _detection_items(args, args.out / "frames")
    if args.split:
        items = select_split_part(items, args.split, args.part)
    fixed = np.asarray(extra["median_box"], np.float32) if "median_box" in extra else None
    m, dets = evaluate_detector(model, items, device, fixed, progress=not args.no_progress)
    m.update({"checkpoint": str(args.checkpoint), "data": str(args.data or args.manifest or args.release),
              "split": str(args.split) if args.split else None, "part": args.part if args.split else None,
              "empty_masks": args.empty_masks, "checkpoint_epoch": extra.get("epoch")})
    atomic_write_json(args.out / "metrics.json", m)
    rows = []
    for it, d in zip(items, dets):
        k = int(np.argmax(d["scores"])) if len(d["scores"]) else None
        rows.append({"image": str(it.path), "case": it.case, "n_true_boxes": len(it.boxes),
                     "true_box": it.boxes[0].round(1).tolist() if len(it.boxes) else "",
                     "top_box": d["boxes"][k].round(1).tolist() if k is not None else "",
                     "top_score": float(d["scores"][k]) if k is not None else ""})
    atomic_write_csv(args.out / "detections.csv", rows)
    plot_detections(items, dets, args.out / "detections.png", fixed)
    h, dm = m["headline"], m["detector"]
    fb = m.get("fixed_box", {})
    print(f"{len(items)} images, {m['n_cases']} cases: COCO AP {dm['ap']:.3f} (fixed box {fb.get('ap', float('nan')):.3f}), "
          f"AP50 {dm['ap50']:.3f} ({fb.get('ap50', float('nan')):.3f}), AP75 {dm['ap75']:.3f} "
          f"({fb.get('ap75', float('nan')):.3f}); headline {h['metric']} {h['value']:.3f} vs chance {h['chance']}; "
          f"wrote {args.out / 'metrics.json'}")
    return 0


def _stage1(records: list[Any], detector_path: Path, device: Any, cache: Path | None, progress: bool):
    from kfgnet.detector import load_detector
    from kfgnet.evaluate import extract_detections

    det, dcfg = load_detector(detector_path, device)
    return extract_detections(records, det, device, cache, dcfg.score_threshold, tag=str(detector_path.resolve()),
                              progress=progress), dcfg


def cmd_train_keyframe(args: argparse.Namespace) -> int:
    from medshared.runtime import atomic_write_json, resolve_device

    from kfgnet.config import KeyFrameTrainConfig, get_keyframe_config
    from kfgnet.evaluate import tolerance_curve
    from kfgnet.keyframe import build_sequences, predict_keyframes, save_keyframe, train_keyframe

    over = _overrides(args)
    device = resolve_device(args.device)
    records = _records(args)
    dets, dcfg = _stage1(records, args.detector, device, args.out / "cache", not args.no_progress)
    cfg = _apply(get_keyframe_config(args.preset, feature_dim=dcfg.representation), over, "keyframe")
    tcfg = _apply(KeyFrameTrainConfig(seed=args.seed), over, "keyframe_train")
    if args.epochs:
        from dataclasses import replace

        tcfg = replace(tcfg, epochs=args.epochs)
    keys = [r.key_frame for r in records]
    seqs = build_sequences(dets, keys, cfg, [str(r.path) for r in records])
    log: list[dict[str, Any]] = []
    model = train_keyframe(seqs, cfg, tcfg, device, not args.no_progress, log)
    save_keyframe(args.out / "keyframe.safetensors", model, cfg, {"log": log})
    pred, _ = predict_keyframes(model, seqs, device)
    tol = tolerance_curve(pred, keys)
    atomic_write_json(args.out / "keyframe_train.json", {"log": log, "train_tolerance_accuracy": tol.tolist()})
    print(f"wrote {args.out / 'keyframe.safetensors'}; training-set accuracy D<=0/2/5: "
          f"{tol[0]:.2f}/{tol[2]:.2f}/{tol[5]:.2f}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.config import TABLE1_ROWS, ClassifierTrainConfig, ClipConfig, MotionConfig, get_classifier_config
    from kfgnet.data import ClipDataset
    from kfgnet.evaluate import classification_summary, fmt_pm
    from kfgnet.train import cross_validate, save_classifier, train_classifier

    over = _overrides(args)
    device = resolve_device(args.device)
    records = _records(args)
    tcfg = _apply(ClassifierTrainConfig(seed=args.seed), over, "train")
    if args.folds:
        tcfg = replace(tcfg, folds=args.folds)
    if args.epochs is not None:
        tcfg = replace(tcfg, epochs=args.epochs)
    if args.epochs2 is not None:
        tcfg = replace(tcfg, epochs2=args.epochs2)
    clip = _apply(ClipConfig(), over, "clip")
    if args.sampling:
        clip = replace(clip, sampling=args.sampling)
    motion = _apply(MotionConfig(), over, "motion")
    rows = [(args.preset, args.preset, clip.sampling, {})] if not args.table1 else list(TABLE1_ROWS)
    results = []
    for name, preset, sampling, row_over in rows:
        extra = {"pretrained": args.pretrained} if args.pretrained and preset in ("r3d_18", "r2plus1d_18") else {}
        cfg = _apply(get_classifier_config(preset, **row_over, **extra), over, "model")
        cfg = replace(cfg, num_frames=clip.num_frames, size=clip.size)
        c = replace(clip, sampling=sampling)
        sub = args.out / (name.replace(" ", "_").replace("+", "p").replace("(", "").replace(")", "")
                          if args.table1 else "")
        cv = cross_validate(records, cfg, tcfg, c, device, motion, sub, progress=not args.no_progress,
                            allow_pad=not args.no_pad_short)
        s = classification_summary(cv)
        results.append({"method": name, **{k: v["mean"] for k, v in s.items()},
                        **{f"{k}_std": v["std"] for k, v in s.items()}, "chance": cv["chance"]})
        atomic_write_json(sub / "cv_metrics.json", {"summary": s, "folds": cv["folds"], "chance": cv["chance"]})
        atomic_write_csv(sub / "predictions.csv", cv["predictions"])
        print(f"{name}: " + ", ".join(f"{k} {fmt_pm(v)}" for k, v in s.items()) + f" (chance {cv['chance']:.3f})")
        if args.final and not args.table1:
            ds = ClipDataset(records, c, cfg.attention_steps, motion, augment=True, allow_pad=not args.no_pad_short)
            model = train_classifier(ds, cfg, tcfg, device, motion, args.out / "final.state.pt",
                                     not args.no_progress)
            save_classifier(args.out / "model.safetensors", model, cfg, c, motion)
            print(f"wrote {args.out / 'model.safetensors'}")
    atomic_write_csv(args.out / "results.csv", results)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medshared.metrics import binary_metrics
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.config import LABELS
    from kfgnet.data import ClipDataset
    from kfgnet.evaluate import plot_tolerance, tolerance_curve
    from kfgnet.keyframe import build_sequences, load_keyframe, predict_keyframes
    from kfgnet.train import load_classifier, predict_clips

    device = resolve_device(args.device)
    records = _records(args)
    model, cfg, clip, motion = load_classifier(args.classifier, device)
    out: dict[str, Any] = {}
    keys = None
    if args.detector and args.keyframe:
        dets, _ = _stage1(records, args.detector, device, args.out / "cache", not args.no_progress)
        km, kcfg = load_keyframe(args.keyframe, device)
        keys, _ = predict_keyframes(km, build_sequences(dets, None, kcfg, [str(r.path) for r in records]),
                                   device)
        tol = tolerance_curve(keys, [r.key_frame for r in records])
        plot_tolerance({"predicted key frames": tol}, args.out / "tolerance.png")
        out["keyframe_tolerance_accuracy"] = tol.tolist()
    elif args.detector or args.keyframe:
        raise ValueError("give both --detector and --keyframe to evaluate with predicted key frames")
    ds = ClipDataset(records, clip, cfg.attention_steps, motion, key_frames=keys)
    p = predict_clips(model, ds, device)
    y = ds.labels
    m = binary_metrics(y, (p >= 0.5).astype(int), positive=1)
    out["classification"] = m
    atomic_write_json(args.out / "evaluation.json", out)
    atomic_write_csv(args.out / "predictions.csv", [
        {"video": str(r.path), "label": LABELS[r.label], "p_malignant": float(pi),
         "key_frame": int(keys[i]) if keys else r.key_frame} for i, (r, pi) in enumerate(zip(records, p))])
    print(", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from medshared.runtime import atomic_write_json, resolve_device

    from kfgnet.config import LABELS
    from kfgnet.data import clip_indices, cut_clip, read_video
    from kfgnet.detector import detect_frames, load_detector
    from kfgnet.evaluate import plot_prediction
    from kfgnet.keyframe import build_sequences, load_keyframe, predict_keyframes
    from kfgnet.train import load_classifier

    device = resolve_device(args.device)
    cls, ccfg, clip, _ = load_classifier(args.classifier, device)
    det, dcfg = load_detector(args.detector, device)
    km, kcfg = load_keyframe(args.keyframe, device)
    frames = read_video(args.video)
    d = detect_frames(det, frames, device, score_threshold=dcfg.score_threshold)
    if len(d.frame_num) == 0:
        from kfgnet.data import DataError

        raise DataError(f"no nodule detected in any frame of {args.video} (detector score threshold "
                        f"{dcfg.score_threshold}); check the video or retrain the detector")
    seqs = build_sequences([d], None, kcfg)
    keys, curves = predict_keyframes(km, seqs, device)
    k = keys[0]
    idx, _ = clip_indices(len(frames), k, clip)
    x = torch.from_numpy(cut_clip(frames, idx, clip.size)).permute(3, 0, 1, 2).float().div(255.0)[None]
    with torch.no_grad():
        logits, _ = cls(x.to(device))  # x: (1, 3, T, S, S)
    p = float(torch.softmax(logits.float(), 1)[0, 1])
    j = int(np.flatnonzero(d.frame_num == k)[0])
    box = d.boxes[j]
    res = {"video": str(args.video), "key_frame": k, "box": [float(v) for v in box], "p_malignant": p,
           "prediction": LABELS[int(p >= 0.5)], "num_frames": len(frames),
           "scores": {int(f): float(s) for f, s in zip(seqs[0]["frame_num"], curves[0])}}
    atomic_write_json(args.out / "prediction.json", res)
    plot_prediction(frames[k], box, k, seqs[0]["frame_num"], curves[0], p, args.out / "prediction.png")
    print(f"{args.video}: key frame {k}, box {[round(v, 1) for v in res['box']]}, P(malignant) = {p:.3f} -> "
          f"{res['prediction']}; wrote {args.out / 'prediction.json'} and prediction.png")
    return 0


COMMANDS = {"demo": cmd_demo, "make-synthetic": cmd_make_synthetic, "train-detector": cmd_train_detector,
            "evaluate-detector": cmd_evaluate_detector,
            "train-keyframe": cmd_train_keyframe, "train-classifier": cmd_train_classifier,
            "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (EXIT_ERROR on expected bad input, with one message on stderr)."""
    return run_cli(build_parser(), argv, COMMANDS, expected=(*EXPECTED_ERRORS, RuntimeError), error_code=EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
