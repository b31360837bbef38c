"""Stage-2 and end-to-end commands of ``kfgnet``: ``train-classifier``, ``evaluate``, ``predict``, ``demo``,
``make-synthetic``. Each is a thin layer over the library (``train``, ``pipeline``, ``demo``, ``synthetic``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from kfgnet.cmd_common import (
    apply_section,
    classifier_precision_from_args,
    clip_from_args,
    detector_precision_from_args,
    load_overrides,
    records_from_args,
    workers_from_args,
)

__all__ = ["cmd_train_classifier", "cmd_evaluate", "cmd_predict", "cmd_demo", "cmd_make_synthetic", "list_videos"]

METRICS = ("accuracy", "sensitivity", "specificity", "auroc")


def _print_pooled(name: str, pooled: dict[str, Any], chance: float | None = None) -> None:
    from kfgnet.evaluate import fmt_ci

    txt = ", ".join(f"{k} {fmt_ci(pooled[k])}" for k in METRICS)
    unit = "patients" if pooled["resampled"] == "groups" else "videos"
    print(
        f"{name}: {txt} (95 % bootstrap CI resampling {unit}, {pooled['n']} videos)"
        + (f"; majority-class chance {chance:.3f}" if chance is not None else "")
    )


def cmd_train_classifier(args: argparse.Namespace) -> int:
    """k-fold CV (grouped by patient) of the stage-2 classifier on nodule crops around the annotated key frames or
    stage 1's (``--keyframes``); ``--table1`` runs every row of the paper's Table 1; ``--final`` trains on all."""
    from dataclasses import replace

    from medshared.distributed import effective_batch, init_distributed
    from medshared.runtime import atomic_write_csv, atomic_write_json

    from kfgnet.clips import ClipDataset
    from kfgnet.config import ClassifierTrainConfig, MotionConfig
    from kfgnet.evaluate import classification_summary, fmt_pm
    from kfgnet.pipeline import read_keyframes_csv
    from kfgnet.presets import TABLE1_ROWS, get_classifier_config
    from kfgnet.train import classifier_run_hash, cross_validate, save_classifier, train_classifier

    over = load_overrides(args)
    records = records_from_args(args)
    tcfg = apply_section(ClassifierTrainConfig(seed=args.seed), over, "train")
    for name in ("folds", "epochs", "epochs2", "batch_size"):
        if getattr(args, name, None) is not None:
            tcfg = replace(tcfg, **{name: getattr(args, name)})
    if args.sync_bn:
        tcfg = replace(tcfg, sync_bn=True)
    clip = clip_from_args(args, over)
    motion = apply_section(MotionConfig(), over, "motion")
    keys = read_keyframes_csv(args.keyframes, records) if args.keyframes else None
    rows = [(args.preset, args.preset, clip.sampling, {})] if not args.table1 else list(TABLE1_ROWS)
    ctx = init_distributed(args.device)
    results = []
    try:
        if args.workers is not None or "num_workers" not in (over.get("train") or {}):
            tcfg = replace(tcfg, num_workers=workers_from_args(args, ctx.device, ctx))
        tcfg, prec = classifier_precision_from_args(args, tcfg, over, ctx.device, ctx)
        for name, preset, sampling, row_over in rows:
            extra = {"pretrained": args.pretrained} if args.pretrained and preset in ("r3d_18", "r2plus1d_18") else {}
            cfg = apply_section(get_classifier_config(preset, **row_over, **extra), over, "model")
            cfg = replace(cfg, num_frames=clip.num_frames, size=clip.size)
            c = replace(clip, sampling=sampling)
            sub = args.out / (
                name.replace(" ", "_").replace("+", "p").replace("(", "").replace(")", "") if args.table1 else ""
            )
            cv = cross_validate(
                records,
                cfg,
                tcfg,
                c,
                ctx,
                motion,
                sub,
                keys,
                progress=not args.no_progress,
                allow_pad=not args.no_pad_short,
                restart=args.restart,
            )
            s = classification_summary(cv)
            results.append(
                {
                    "method": name,
                    **{k: v["mean"] for k, v in s.items()},
                    **{f"{k}_std": v["std"] for k, v in s.items()},
                    **{f"pooled_{k}": cv["pooled"][k]["value"] for k in METRICS},
                    **{f"pooled_{k}_ci": [cv["pooled"][k]["ci_low"], cv["pooled"][k]["ci_high"]] for k in METRICS},
                    "chance": cv["chance"],
                }
            )
            if ctx.is_main:
                atomic_write_json(
                    sub / "cv_metrics.json",
                    {
                        "summary": s,
                        "pooled": cv["pooled"],
                        "folds": cv["folds"],
                        "chance": cv["chance"],
                        "key_frames": str(args.keyframes) if args.keyframes else "annotation",
                        "n_fallback": sum(k.source == "fallback_middle" for k in keys) if keys else 0,
                        "crop": c.crop,
                        "precision": prec.as_dict(),
                        "channels_last": tcfg.channels_last,
                        "sync_bn": tcfg.sync_bn and ctx.device.type == "cuda",
                        "num_workers": tcfg.num_workers,
                        "world_size": ctx.world_size,
                        "effective_batch": effective_batch(tcfg.batch_size // ctx.world_size, ctx),
                        "lr_rule": "none: train.batch_size is the effective batch, split over ranks",
                    },
                )
                atomic_write_csv(sub / "predictions.csv", cv["predictions"])
                print(f"{name}: per fold " + ", ".join(f"{k} {fmt_pm(v)}" for k, v in s.items()))
                _print_pooled(f"{name} (pooled out-of-fold)", cv["pooled"], cv["chance"])
            if args.final and not args.table1:
                ds = ClipDataset(
                    records, c, cfg.attention_steps, motion, augment=True, keys=keys, allow_pad=not args.no_pad_short
                )
                run_hash = classifier_run_hash(cfg, tcfg, c, motion, records, ds.keys)
                model = train_classifier(
                    ds,
                    cfg,
                    tcfg,
                    ctx,
                    motion,
                    args.out / "final.state.pt",
                    not args.no_progress,
                    run_hash=run_hash,
                    restart=args.restart,
                )
                if ctx.is_main:
                    save_classifier(args.out / "model.safetensors", model, cfg, c, motion, {"config_hash": run_hash})
                    (args.out / "final.state.pt").unlink(missing_ok=True)  # finished: the model holds it
                    print(f"wrote {args.out / 'model.safetensors'}")
    finally:
        ctx.close()
    if ctx.is_main:
        atomic_write_csv(args.out / "results.csv", results)
    return 0


def _stage1_keys(args: argparse.Namespace, records: list[Any], device: Any, blackout: Any) -> tuple[Any, Any, Any]:
    """Stage 1's key frames (``--detector`` + ``--keyframe``): (keys, predictions, detector precision), or Nones."""
    from kfgnet.pipeline import Stage1

    if bool(args.detector) != bool(args.keyframe):
        raise ValueError(
            "give both --detector and --keyframe to locate key frames with stage 1 (or neither, to use "
            "the annotated key frames)"
        )
    if not args.detector:
        return None, None, None
    stage1 = Stage1.load(args.detector, args.keyframe, device)
    stage1.precision = detector_precision_from_args(args, device, cfg=stage1.dcfg)
    preds = stage1.locate([r.path for r in records], args.out / "cache", not args.no_progress, blackout)
    return [p.as_keyframe() for p in preds], preds, stage1.precision


def cmd_evaluate(args: argparse.Namespace) -> int:
    """A classifier on a labelled manifest: clips around stage 1's key frames (``--detector`` + ``--keyframe``, the
    paper's chain, with the one fallback) or the annotated ones; metrics with bootstrap CIs."""
    from medshared.bootstrap import binary_metrics_ci
    from medshared.metrics import binary_metrics
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.clips import ClipDataset
    from kfgnet.config import LABELS, ClassifierTrainConfig
    from kfgnet.pipeline import write_keyframes_csv
    from kfgnet.train import load_classifier, predict_clips

    device = resolve_device(args.device)
    records = records_from_args(args)
    model, cfg, clip, motion = load_classifier(args.classifier, device)
    tcfg, prec = classifier_precision_from_args(args, ClassifierTrainConfig(), load_overrides(args), device)
    keys, preds, dprec = _stage1_keys(args, records, device, clip.blackout)
    out: dict[str, Any] = {
        "key_frames": "stage1" if keys else "annotation",
        "precision": prec.as_dict(),
        "detector_precision": dprec.as_dict() if dprec else None,
    }
    if preds is not None:
        from kfgnet.cmd_stage1 import print_tolerance
        from kfgnet.pipeline import tolerance_report

        out["keyframe"] = tolerance_report(preds, records)
        print_tolerance(out["keyframe"], "key-frame localisation")
    ds = ClipDataset(records, clip, cfg.attention_steps, motion, keys=keys, allow_pad=not args.no_pad_short)
    p = predict_clips(model, ds, device, bf16=tcfg.bf16, num_workers=workers_from_args(args, device), precision=prec)
    y = ds.labels
    out["classification"] = binary_metrics(y, (p >= 0.5).astype(int), positive=1)
    out["classification_ci"] = binary_metrics_ci(
        y, p, positive=1, seed=args.seed, groups=[r.patient_id for r in records]
    )
    out["n_fallback"] = sum(k.source == "fallback_middle" for k in ds.keys)
    out["n_padded"] = len(ds.padded)
    atomic_write_json(args.out / "evaluation.json", out)
    atomic_write_csv(
        args.out / "predictions.csv",
        [
            {
                "video": str(r.path),
                "patient_id": r.patient_id,
                "label": LABELS[r.label],
                "p_malignant": float(pi),
                "pred": LABELS[int(pi >= 0.5)],
                "key_frame": k.frame,
                "key_source": k.source,
            }
            for r, pi, k in zip(records, p, ds.keys)
        ],
    )
    if preds is not None:
        write_keyframes_csv(preds, args.out / "keyframes.csv")
    _print_pooled("classification", out["classification_ci"])
    if out["n_fallback"]:
        print(f"{out['n_fallback']} video(s) without any detection: middle frame + whole-frame crop (fallback)")
    return 0


def list_videos(path: Path) -> list[Path]:
    """The videos of ``path``: itself when it is a video file, DICOM or a folder of frames; else its video files,
    DICOM files and frame folders (sorted)."""
    from kfgnet.data import DataError
    from kfgnet.video_io import IMAGE_EXTS, VIDEO_EXTS, is_dicom

    p = Path(path)
    if not p.exists():
        raise DataError(
            f"{p} does not exist; give a video file, a DICOM cine, a folder of frames or a folder of videos"
        )
    if p.is_file() or any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir()):
        return [p]
    vids = sorted(
        f
        for f in p.iterdir()
        if (f.is_file() and (f.suffix.lower() in VIDEO_EXTS or is_dicom(f)))
        or (f.is_dir() and any(g.suffix.lower() in IMAGE_EXTS for g in f.iterdir()))
    )
    if not vids:
        raise DataError(f"{p} holds no videos (files {', '.join(VIDEO_EXTS)}, DICOM, or folders of frames)")
    return vids


def cmd_predict(args: argparse.Namespace) -> int:
    """Key frame, nodule box and P(malignant) of one video or of every video in a folder (one CSV)."""
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from kfgnet.config import ClassifierTrainConfig
    from kfgnet.data import DataError
    from kfgnet.evaluate import plot_video_prediction
    from kfgnet.pipeline import Pipeline

    device = resolve_device(args.device)
    videos = list_videos(args.video)
    _, prec = classifier_precision_from_args(args, ClassifierTrainConfig(), {}, device)
    pipe = Pipeline.load(args.classifier, args.detector, args.keyframe, device, prec)
    pipe.stage1.precision = detector_precision_from_args(args, device, cfg=pipe.stage1.dcfg)
    rows, failed = [], []
    for v in videos:
        try:
            res = pipe.predict_video(v, allow_pad=not args.no_pad_short)
        except DataError as e:
            if len(videos) == 1:
                raise
            failed.append(v.name)
            rows.append({"video": str(v), "error": str(e)})
            continue
        name = v.stem if v.suffix else v.name
        png = args.out / (f"{name}.png" if len(videos) > 1 else "prediction.png")
        plot_video_prediction(res, png)
        row = {
            k: res[k]
            for k in ("video", "key_frame", "key_source", "detection_score", "p_malignant", "prediction", "num_frames")
        }
        row["box"] = [round(c, 1) for c in res["box"]] if res["box"] else ""
        rows.append({**row, "error": ""})
        if len(videos) == 1:
            atomic_write_json(
                args.out / "prediction.json",
                {
                    **row,
                    "box": res["box"],
                    "scores": {int(f): float(s) for f, s in zip(res["curve_frames"], res["curve"])},
                },
            )
        print(
            f"{v}: key frame {res['key_frame']} ({res['key_source']}), box {row['box'] or 'none'}, "
            f"P(malignant) = {res['p_malignant']:.3f} -> {res['prediction']}"
        )
    if len(videos) > 1:
        atomic_write_csv(args.out / "predictions.csv", rows)
        print(f"wrote {args.out / 'predictions.csv'} ({len(videos) - len(failed)} of {len(videos)} videos)")
    if failed:
        raise DataError(
            f"{len(failed)} video(s) could not be read ({', '.join(failed[:5])}); their rows in "
            f"predictions.csv give the reason"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Both stages end to end on synthetic videos (see :mod:`kfgnet.demo`)."""
    from medshared.runtime import resolve_device

    from kfgnet.config import ClassifierTrainConfig
    from kfgnet.demo import DemoConfig, quick_demo_config, run_demo

    device = resolve_device(args.device)
    tcfg, prec = classifier_precision_from_args(args, ClassifierTrainConfig(), {}, device)
    from kfgnet.presets import get_detector_config

    dprec = detector_precision_from_args(args, device, cfg=get_detector_config("tiny"))  # the demo's detector
    cfg = quick_demo_config(tcfg.bf16) if args.quick else DemoConfig(bf16=tcfg.bf16)
    cfg = dataclasses.replace(cfg, channels_last=tcfg.channels_last, detector_bf16=dprec.name == "bf16")
    m = run_demo(args.out, device, args.seed, cfg, progress=not args.no_progress)
    print((args.out / "report.md").read_text())
    h = m["headline"]
    print(f"headline {h['metric']} = {h['value']:.3f} (chance {h['chance']:.3f}); outputs in {args.out}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic cohort (videos + manifest, or the authors' release layout)."""
    from medshared.testing import shared_data_dir

    from kfgnet.synthetic import SyntheticConfig, make_synthetic

    if args.patients < 1 or args.frames < 4 or args.size < 32:
        raise ValueError("need --patients >= 1, --frames >= 4, --size >= 32")
    m = make_synthetic(
        args.out,
        SyntheticConfig(args.patients, args.frames, args.size, fmt=args.format, seed=args.seed),
        None if args.no_real_backgrounds else shared_data_dir(),
        layout=args.layout,
        progress=True,
    )
    print(f"wrote {m}")
    return 0
