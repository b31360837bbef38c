"""Stage-1 commands of ``kfgnet``: ``train-detector``, ``evaluate-detector``, ``train-keyframe``,
``evaluate-keyframe``. Each is a thin layer over the library (``detector_train``, ``detector_eval``, ``keyframe``,
``pipeline``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kfgnet.cmd_common import (
    apply_section,
    detector_precision_from_args,
    load_overrides,
    records_from_args,
    workers_from_args,
)
from kfgnet.pipeline import TOLERANCE_TABLE_D, tolerance_report

__all__ = [
    "cmd_train_detector",
    "cmd_evaluate_detector",
    "cmd_train_keyframe",
    "cmd_evaluate_keyframe",
    "detection_items",
    "print_tolerance",
]


def detection_items(
    args: argparse.Namespace, cache: Path, manifest: Path | None = None, data: Path | None = None
) -> list[Any]:
    from kfgnet.data import read_manifest, read_release
    from kfgnet.detection_data import load_detection_items
    from kfgnet.video_io import parse_blackout

    if manifest is None and data is None:
        manifest, data = args.manifest, args.data
    records = None
    if data is None:
        records = read_manifest(manifest) if manifest else read_release(args.release)
    return load_detection_items(
        data,
        records,
        cache,
        args.images_per_video,
        args.empty_masks,
        args.mask_components,
        getattr(args, "seed", 0),
        progress=not args.no_progress,
        blackout=parse_blackout(getattr(args, "blackout", None)),
    )


def cmd_train_detector(args: argparse.Namespace) -> int:
    from medshared.distributed import init_distributed
    from medshared.runtime import atomic_write_json

    from kfgnet.detection_data import make_detection_split
    from kfgnet.detector_train import detector_config_for_batch, train_detector
    from kfgnet.presets import get_detector_config

    over = load_overrides(args)
    pre = {k: v for k, v in (("pretrained_backbone", args.pretrained_backbone), ("weights", args.weights)) if v}
    cfg = apply_section(get_detector_config(args.preset, **pre), over, "detector")
    cfg = detector_config_for_batch(cfg, args.batch_size, args.epochs)
    ctx = init_distributed(args.device)
    try:
        prec = detector_precision_from_args(args, ctx.device, ctx, cfg)
        items = detection_items(args, args.out / "frames")
        if args.val_data or args.val_manifest:
            val = detection_items(args, args.out / "frames", args.val_manifest, args.val_data)
            parts, split = (
                {"train": items, "val": val, "test": []},
                {"val_source": str(args.val_data or args.val_manifest)},
            )
        else:
            parts, split = make_detection_split(items, args.val_fraction, args.test_fraction, args.split_seed)
        if not parts["train"]:
            raise ValueError("no training images left after the split; lower --val-fraction / --test-fraction")
        split["data"] = str(args.data or args.manifest or args.release)
        split["empty_masks"] = args.empty_masks
        if ctx.is_main:
            atomic_write_json(args.out / "split.json", split)
        res = train_detector(
            parts["train"],
            parts["val"] or None,
            cfg,
            args.out,
            ctx,
            args.seed,
            args.restart,
            not args.no_progress,
            args.offline,
            workers_from_args(args, ctx.device, ctx),
            args.sync_bn,
            meta={"split_file": "split.json", "data": split["data"]},
            precision=prec,
        )
    finally:
        ctx.close()
    if ctx.is_main:
        last = res["log"][-1] if res["log"] else {}
        print(
            f"wrote {args.out / 'detector_best.safetensors'} ({len(parts['train'])} training images, "
            f"{len(parts['val'])} validation); best validation AP50 {res['best_val_ap50']}; last epoch "
            + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if isinstance(v, float))
        )
    return 0


def cmd_evaluate_detector(args: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.detection_data import select_split_part
    from kfgnet.detector import load_detector
    from kfgnet.detector_eval import evaluate_detector, plot_detections

    device = resolve_device(args.device)
    model, cfg, extra = load_detector(args.checkpoint, device, with_extra=True)
    prec = detector_precision_from_args(args, device, cfg=cfg)
    items = detection_items(args, args.out / "frames")
    if args.split:
        items = select_split_part(items, args.split, args.part)
    fixed = np.asarray(extra["median_box"], np.float32) if "median_box" in extra else None
    m, dets = evaluate_detector(
        model,
        items,
        device,
        fixed,
        num_workers=workers_from_args(args, device),
        progress=not args.no_progress,
        precision=prec,
    )
    m.update(
        {
            "checkpoint": str(args.checkpoint),
            "data": str(args.data or args.manifest or args.release),
            "split": str(args.split) if args.split else None,
            "part": args.part if args.split else None,
            "empty_masks": args.empty_masks,
            "checkpoint_epoch": extra.get("epoch"),
            "precision": prec.as_dict(),
        }
    )
    atomic_write_json(args.out / "metrics.json", m)
    rows = []
    for it, d in zip(items, dets):
        k = int(np.argmax(d["scores"])) if len(d["scores"]) else None
        rows.append(
            {
                "image": str(it.path),
                "case": it.case,
                "n_true_boxes": len(it.boxes),
                "true_box": it.boxes[0].round(1).tolist() if len(it.boxes) else "",
                "top_box": d["boxes"][k].round(1).tolist() if k is not None else "",
                "top_score": float(d["scores"][k]) if k is not None else "",
            }
        )
    atomic_write_csv(args.out / "detections.csv", rows)
    plot_detections(items, dets, args.out / "detections.png", fixed)
    h, dm = m["headline"], m["detector"]
    nan = float("nan")
    fb = m.get("fixed_box", {})
    print(
        f"{len(items)} images, {m['n_cases']} cases: COCO AP {dm['ap']:.3f} (fixed box {fb.get('ap', nan):.3f}), "
        f"AP50 {dm['ap50']:.3f} ({fb.get('ap50', nan):.3f}), AP75 {dm['ap75']:.3f} ({fb.get('ap75', nan):.3f}); "
        f"headline {h['metric']} {h['value']:.3f} vs chance {h['chance']}; wrote {args.out / 'metrics.json'}"
    )
    return 0


def _detections_for(
    ctx: Any, stage1: Any, videos: list[Path], cache: Path, progress: bool, blackout: tuple[int, int, int, int]
) -> list[Any]:
    """Rank 0 runs the detector (filling the cache), the other ranks read the cache after a barrier."""
    from medshared.distributed import barrier

    from kfgnet.pipeline import extract_detections

    def run() -> list[Any]:
        return extract_detections(
            videos,
            stage1.detector,
            stage1.device,
            cache,
            stage1.dcfg.score_threshold,
            stage1.tag,
            progress and ctx.is_main,
            blackout,
            stage1.precision,
        )

    dets = run() if ctx.is_main else None
    barrier(ctx)
    return dets if dets is not None else run()


def print_tolerance(rep: dict[str, Any], what: str) -> None:
    if not rep:
        return
    ds = " ".join(f"{d:>5}" for d in TOLERANCE_TABLE_D)
    print(f"{what}: {rep['n_videos']} videos ({rep['n_fallback']} without any detection: middle frame)")
    print(f"  D            {ds}")
    print("  stage 1      " + " ".join(f"{rep['table'][f'D={d}']['stage1']:5.2f}" for d in TOLERANCE_TABLE_D))
    print("  middle frame " + " ".join(f"{rep['table'][f'D={d}']['middle_frame']:5.2f}" for d in TOLERANCE_TABLE_D))


def cmd_train_keyframe(args: argparse.Namespace) -> int:
    """Train the LSTM scorer on detector features, keep the best epoch on held-out patients, report their tolerance
    accuracy against the middle frame, and write their stage-1 key frames."""
    from dataclasses import replace

    from medshared.distributed import effective_batch, init_distributed
    from medshared.runtime import atomic_write_json
    from medshared.splits import ratio_split

    from kfgnet.data import DataError
    from kfgnet.detector import load_detector
    from kfgnet.keyframe import build_sequences, save_keyframe, train_keyframe
    from kfgnet.pipeline import Stage1, file_digest, locate_keyframes, write_keyframes_csv
    from kfgnet.presets import get_keyframe_config, get_keyframe_train_config
    from kfgnet.video_io import parse_blackout

    over = load_overrides(args)
    records = records_from_args(args)
    lacking = [r.path.name for r in records if r.key_frame is None]
    if lacking:
        raise DataError(
            f"{len(lacking)} video(s) have no key_frame, which stage-1 training needs: {', '.join(lacking[:5])}"
        )
    det, dcfg = load_detector(args.detector, "cpu")
    preset = args.preset
    cfg = apply_section(get_keyframe_config(preset, feature_dim=dcfg.representation), over, "keyframe")
    tcfg = apply_section(get_keyframe_train_config(preset, seed=args.seed), over, "keyframe_train")
    if args.epochs:
        tcfg = replace(tcfg, epochs=args.epochs)
    if args.val_fraction is not None:
        tcfg = replace(tcfg, val_fraction=args.val_fraction)
    ctx = init_distributed(args.device)
    try:
        prec = detector_precision_from_args(args, ctx.device, ctx, dcfg)
        det = det.to(ctx.device)
        # key-frame model: below
        stage1 = Stage1(det, dcfg, None, cfg, ctx.device, file_digest(args.detector), prec)
        blackout = parse_blackout(args.blackout)
        videos = [r.path for r in records]
        dets = _detections_for(ctx, stage1, videos, args.out / "cache", not args.no_progress, blackout)
        idx = list(range(len(records)))
        if tcfg.val_fraction > 0:
            parts = ratio_split(
                idx,
                (1 - tcfg.val_fraction, tcfg.val_fraction),
                seed=args.seed,
                groups=[r.patient_id for r in records],
                names=("train", "val"),
            )
        else:
            parts = {"train": idx, "val": []}
        tr = [i for i in parts["train"] if len(dets[i].frame_num)]
        if not tr:
            raise DataError("no training video has any detection; retrain the detector or lower its score threshold")
        seqs = build_sequences(
            [dets[i] for i in tr], [records[i].key_frame for i in tr], cfg, [str(records[i].path) for i in tr]
        )
        va = [i for i in parts["val"] if len(dets[i].frame_num)]
        val_seqs = build_sequences([dets[i] for i in va], None, cfg) if va else None
        log: list[dict[str, Any]] = []
        model = train_keyframe(
            seqs,
            cfg,
            tcfg,
            ctx,
            not args.no_progress,
            log,
            val_seqs,
            [records[i].key_frame for i in va] if va else None,
        )
    finally:
        ctx.close()
    if not ctx.is_main:
        return 0
    save_keyframe(args.out / "keyframe.safetensors", model, cfg, {"log": log, "detector": str(args.detector)})
    report: dict[str, Any] = {
        "config": cfg.__dict__,
        "train_config": tcfg.__dict__,
        "log": log,
        "n_train_videos": len(parts["train"]),
        "n_train_without_detection": len(parts["train"]) - len(tr),
        "n_val_videos": len(parts["val"]),
        "world_size": ctx.world_size,
        "effective_batch": effective_batch(tcfg.batch_size // ctx.world_size, ctx),
        "lr_rule": "none: keyframe_train.batch_size is the effective batch, split over ranks",
        "detector_precision": prec.as_dict(),
        "lstm_precision": "fp32",
    }
    if parts["val"]:
        val_recs = [records[i] for i in parts["val"]]
        preds = locate_keyframes([r.path for r in val_recs], [dets[i] for i in parts["val"]], model, cfg, ctx.device)
        report["validation"] = tolerance_report(preds, val_recs)
        write_keyframes_csv(preds, args.out / "keyframes_val.csv", [{"true_key_frame": r.key_frame} for r in val_recs])
        print_tolerance(report["validation"], "held-out patients (best epoch)")
    atomic_write_json(args.out / "keyframe_train.json", report)
    print(f"wrote {args.out / 'keyframe.safetensors'} and keyframe_train.json")
    return 0


def cmd_evaluate_keyframe(args: argparse.Namespace) -> int:
    """Stage 1 on a manifest: keyframes.csv (the input of ``train-classifier --keyframes``) and, where key frames are
    annotated, tolerance accuracy at D = 0..32 against always taking the middle frame."""
    from medshared.runtime import atomic_write_json, resolve_device

    from kfgnet.evaluate import plot_tolerance
    from kfgnet.pipeline import Stage1, write_keyframes_csv
    from kfgnet.video_io import parse_blackout

    device = resolve_device(args.device)
    records = records_from_args(args)
    stage1 = Stage1.load(args.detector, args.keyframe, device)
    stage1.precision = detector_precision_from_args(args, device, cfg=stage1.dcfg)
    preds = stage1.locate(
        [r.path for r in records], args.out / "cache", not args.no_progress, parse_blackout(args.blackout)
    )
    write_keyframes_csv(
        preds,
        args.out / "keyframes.csv",
        [{"true_key_frame": "" if r.key_frame is None else r.key_frame} for r in records],
    )
    rep = tolerance_report(preds, records)
    rep.update(
        {
            "detector": str(args.detector),
            "keyframe": str(args.keyframe),
            "n_fallback_all": sum(p.source != "stage1" for p in preds),
            "detector_precision": stage1.precision.as_dict(),
            "fallback": "middle frame, whole-frame crop",
        }
    )
    atomic_write_json(args.out / "metrics.json", rep)
    if "tolerance_accuracy" in rep:
        import numpy as np

        plot_tolerance(
            {
                "KFGNet stage 1": np.asarray(rep["tolerance_accuracy"]),
                "middle frame (chance)": np.asarray(rep["middle_frame_tolerance"]),
            },
            args.out / "tolerance.png",
        )
        print_tolerance(rep, "key-frame localisation")
    print(
        f"wrote {args.out / 'keyframes.csv'} ({len(preds)} videos, {rep['n_fallback_all']} fallback) and metrics.json"
    )
    return 0
