"""Command-line interface of ``deepacc``: ``demo``, ``compose``, ``make-synthetic``, ``train``, ``evaluate``,
``predict``. A thin layer over the library: :mod:`deepacc.compose`, :mod:`deepacc.train`, :mod:`deepacc.evaluate`,
:mod:`deepacc.predict`, :mod:`deepacc.demo`; the argument parser is :mod:`deepacc.cli_parser`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import run_cli

from deepacc.cli_parser import build_parser

_EXPECTED_ERRORS = (FileNotFoundError, ValueError, FloatingPointError, OSError, KeyError, ImportError)


def _note_rescale(extra: dict[str, Any], flag: bool) -> None:
    """A note when --rescale-16bit differs from the checkpoint's training run (not followed automatically)."""
    trained = bool(extra.get("rescale_16bit", False))
    if trained and not flag:
        _stderr("note: this checkpoint was trained with --rescale-16bit (images deeper than 8 bits divided by their "
                "own maximum); pass it here too to read such images the same way")  # fmt: skip
    elif flag and not trained:
        _stderr("note: this checkpoint was trained without --rescale-16bit (8-bit images read as stored); images "
                "rescaled by their own maximum may differ in contrast from its training images")  # fmt: skip


# --------------------------------------------------------------------------------------------------------- helpers
def _load_cfg(model: str, config_path: str | None) -> Any:
    from deepacc.config import config_from_dict, create_config

    cfg = create_config(model)
    if config_path:
        from medshared.config import load_config_file

        cfg = config_from_dict(load_config_file(config_path), base=cfg)
    return cfg


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load(args: argparse.Namespace, path: str, split: str | None = None) -> Any:
    from deepacc.annotations import load_dataset

    return load_dataset(path, args.format, split, on_invalid=args.on_invalid, label_map=args.label_map, log=_stderr)


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from deepacc.synthetic import SynthConfig, write_synthetic

    if args.n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
    scale = args.scale if args.scale is not None else 0.75 * min(args.height, args.width) / 384
    scfg = SynthConfig(height=args.height, width=args.width, scale=scale, overlap_rate=args.overlap_rate)
    path = write_synthetic(args.out, args.n_images, args.seed, scfg, args.source, args.crop_dir)
    print(f"wrote {args.n_images} images and {path}")
    return 0


def _parse_counts(text: str) -> dict[str, int] | int:
    if ":" not in text:
        return int(text)
    out = {}
    for part in text.split(","):
        name, _, n = part.partition(":")
        out[name.strip()] = int(n)
    return out


def _cmd_compose(args: argparse.Namespace) -> int:
    from deepacc.compose import CELL_SPREAD, compose_split, parse_split

    if args.size < 64:
        raise ValueError(f"--size must be >= 64 pixels, got {args.size}")
    scale = args.scale if args.scale is not None else args.size / 768
    b0, b1 = CELL_SPREAD.blur_range  # A.tif's edge blur at 1x, scaled with the crops
    cfg = dataclasses.replace(CELL_SPREAD, height=args.size, width=args.size, scale=scale,
                              blur_range=(b0 * scale, b1 * scale))  # fmt: skip
    split = parse_split(args.split) if args.split else None
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    paths = compose_split(args.crops, args.out, split, _parse_counts(args.n_images), args.seed, cfg, cells,
                          progress=not args.quiet)  # fmt: skip
    for name, p in paths.items():
        print(f"{name}: {p}")
    print(f"cells per part: {Path(args.out) / 'split.json'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medshared.distributed import init_distributed
    from medshared.runtime import atomic_write_json

    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.health import margin_health
    from deepacc.precision import resolve as resolve_precision
    from deepacc.train import train

    cfg = _load_cfg(args.model, args.config)
    t = cfg.train
    t = dataclasses.replace(
        t,
        epochs=args.epochs if args.epochs is not None else t.epochs,
        batch_size=args.batch_size if args.batch_size is not None else t.batch_size,
        lr=args.lr if args.lr is not None else t.lr,
        lr_scaling=args.lr_scaling or t.lr_scaling,
        checkpoint_every=args.checkpoint_every if args.checkpoint_every is not None else t.checkpoint_every,
    )
    cfg = dataclasses.replace(cfg, train=t)
    samples = _load(args, args.data, args.split)
    val = _load(args, args.val_data) if args.val_data else None
    pretrained = None if args.pretrained.lower() == "none" or cfg.model.backbone == "tiny" else args.pretrained
    ctx = init_distributed(args.device)
    try:
        prec = resolve_precision(args.precision, ctx.device, train=True, amp_alias=args.amp)
        if ctx.is_main:
            print(f"precision: {prec.name} ({prec.reason})")
        model, history = train(cfg, samples, args.out, ctx.device, pretrained, resume=not args.no_resume,
                               seed=args.seed, progress=not args.quiet, val_samples=val, ctx=ctx,
                               offline=args.offline, rescale_16bit=args.rescale_16bit, precision=prec,
                               workers=args.workers)  # fmt: skip
        if val is not None and ctx.is_main:
            raws = predict_raw(model, val, ctx.device, False, not args.quiet, args.rescale_16bit)
            res = evaluate_detections(raws, val, cfg)
            res.pop("matched_pairs", None)
            res["margin_health"] = margin_health(model, val, ctx.device, args.rescale_16bit)
            per_epoch = Path(args.out) / "val_metrics.json"  # train() wrote the per-epoch validations there
            res["per_epoch"] = json.loads(per_epoch.read_text())["per_epoch"] if per_epoch.is_file() else []
            atomic_write_json(per_epoch, res)
            print(f"validation (last epoch): mAP@0.5 {res['map50']:.4f}  mAP_max {res['map50_max']:.4f}  "
                  f"Acc {res.get('acc', 0):.4f}  AER {res.get('aer', 0):.4f}")  # fmt: skip
    finally:
        ctx.close()
    if ctx.is_main:
        print(f"checkpoint: {Path(args.out) / 'model.safetensors'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medshared.runtime import resolve_device

    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.health import margin_health
    from deepacc.images import scan_images
    from deepacc.reporting import markdown_table, write_eval
    from deepacc.train import load_model

    device = resolve_device(args.device)
    model, cfg, extra = load_model(args.checkpoint, device)
    _note_rescale(extra, args.rescale_16bit)
    model = _apply_precision(model, args, device)
    samples = _load(args, args.data, args.split)
    scan_images(samples, not args.quiet, args.rescale_16bit, log=_stderr)  # every bad image at once, before predicting
    raws = predict_raw(model, samples, device, False, not args.quiet, args.rescale_16bit)
    res = evaluate_detections(raws, samples, cfg, coco=args.coco, karyotype_prior=args.karyotype_prior)
    res["margin_health"] = margin_health(model, samples, device, args.rescale_16bit)
    write_eval(Path(args.out), res)
    rows = [("mAP@0.5", res["map50"]), *((f"mAP@0.5, {c} detections per image", v)
                                          for c, v in res.get("map50_at", {}).items()),
            ("class-agnostic AP@0.5", res["class_agnostic_ap50"]), ("mAP_max", res["map50_max"]),
            ("Acc", res.get("acc")), ("AER", res.get("aer")), ("WCR", res["wcr"])]  # fmt: skip
    mh = res["margin_health"]
    if mh:
        rows += [("margin health: own-class cos", mh["own_class_cos"]),
                 ("margin health: centre pairwise cos", mh["centre_pairwise_cos"]),
                 ("margin health: local templates", mh["template_local_fraction"])]  # fmt: skip
        if mh["reason"]:
            _stderr(f"WARNING: {mh['reason']}")
    if args.coco:
        rows.append(("COCO mAP@[.5:.95]", res["coco"]["map"]))
    if args.karyotype_prior and "acc_prior" in res:
        rows += [("Acc (karyotype prior)", res["acc_prior"]), ("AER (karyotype prior)", res["aer_prior"])]
    print(markdown_table(rows))
    return 0


def _apply_precision(model: Any, args: argparse.Namespace, device: Any) -> Any:
    """Resolve --precision (--amp = bf16) for inference; bf16 casts the heavy parts once (``cast_bf16``:
    bench/inference.py measured it faster and closer to fp32 than autocast)."""
    from deepacc.precision import cast_bf16
    from deepacc.precision import resolve as resolve_precision

    prec = resolve_precision(args.precision, device, train=False, amp_alias=args.amp)
    prec.apply()
    _stderr(f"precision: {prec.name} ({prec.reason})")
    return cast_bf16(model) if prec.name == "bf16" else model


def _cmd_predict(args: argparse.Namespace) -> int:
    from medshared.runtime import resolve_device

    from deepacc.predict import list_images, predict_paths
    from deepacc.train import load_model

    device = resolve_device(args.device)
    list_images(args.inputs)  # missing inputs fail before the model is loaded
    model, cfg, extra = load_model(args.checkpoint, device)  # once for every image
    _note_rescale(extra, args.rescale_16bit)
    model = _apply_precision(model, args, device)
    results = predict_paths(model, cfg, args.inputs, args.out, device, args.score_thresh, args.short_side,
                            args.karyotype_prior, progress=not args.quiet, log=print,
                            rescale_16bit=args.rescale_16bit)  # fmt: skip
    n = sum(r["n_detections"] for r in results)
    print(f"{len(results)} image(s), {n} chromosomes; wrote <stem>_detections.json, _overlay.png, _karyogram.png "
          f"to {args.out}")  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from deepacc.demo import run_demo

    run_demo(args.out, device=args.device, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
             epochs=args.epochs, source=args.source, progress=not args.quiet, crops=args.crops,
             test_crops=args.test_crops, scale=args.scale,
             roi_min_level=None if args.roi_level is None else (0 if args.roi_level == 3 else 2))  # fmt: skip
    return 0


_COMMANDS = {
    "demo": _cmd_demo,
    "compose": _cmd_compose,
    "make-synthetic": _cmd_make_synthetic,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 bad input, 2 usage)."""
    t0 = time.time()

    def timed(command: str):
        def run(args: argparse.Namespace) -> int:
            rc = _COMMANDS[command](args)
            if command != "demo" and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 only
                print(f"done in {time.time() - t0:.1f}s", file=sys.stderr)
            return rc

        return run

    return run_cli(build_parser(), argv, {name: timed(name) for name in _COMMANDS}, expected=_EXPECTED_ERRORS,
                   interrupt_hint="run the same train command again to resume from OUT/train_state.pt")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
