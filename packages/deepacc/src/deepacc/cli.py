"""Command-line interface of ``deepacc``: ``demo``, ``compose``, ``make-synthetic``, ``train``, ``evaluate``,
``predict``. A thin layer over the library: :mod:`deepacc.compose`, :mod:`deepacc.train`, :mod:`deepacc.evaluate`,
:mod:`deepacc.predict`, :mod:`deepacc.demo`."""

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

from medshared.cli import add_runtime_args, run_cli

from deepacc import __version__

_EXPECTED_ERRORS = (FileNotFoundError, ValueError, FloatingPointError, OSError, KeyError, ImportError)


def _add_common(p: argparse.ArgumentParser, precision: bool = True, workers: int | None = None) -> None:
    """--device, --seed and (train / evaluate / predict) --precision from ``medshared.cli.add_runtime_args``; train
    also --workers."""
    from deepacc.precision import PRECISION_HELP

    add_runtime_args(p, precision=precision, workers=workers, seed=0, precision_help=PRECISION_HELP)


def _add_loading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", choices=["auto", "coco", "voc", "labelme"])
    p.add_argument("--split", default=None, help="VOC split list name (e.g. train -> train.txt)")
    p.add_argument(
        "--on-invalid",
        default="error",
        choices=["error", "clip", "skip"],
        help="boxes outside the image, degenerate or non-finite: error (default; all listed at once), clip them to "
        "the image, or skip them; clip/skip are logged with a summary",
    )
    p.add_argument(
        "--label-map",
        default=None,
        help="YAML/JSON file mapping other label names to classes ('chr_01: 1', 'sexX: X', 'junk: null' drops)",
    )


def _add_rescale(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rescale-16bit",
        action="store_true",
        help="read images deeper than 8 bits (16-bit TIFF/PNG) by dividing each by its own maximum and scaling to "
        "0-255 (logged: which files); without it they are an error. train records it in train.json and the "
        "checkpoint",
    )


def _note_rescale(extra: dict[str, Any], flag: bool) -> None:
    """A note when --rescale-16bit differs from the checkpoint's training run (not followed automatically)."""
    trained = bool(extra.get("rescale_16bit", False))
    if trained and not flag:
        _stderr("note: this checkpoint was trained with --rescale-16bit (images deeper than 8 bits divided by their "
                "own maximum); pass it here too to read such images the same way")  # fmt: skip
    elif flag and not trained:
        _stderr("note: this checkpoint was trained without --rescale-16bit (8-bit images read as stored); images "
                "rescaled by their own maximum may differ in contrast from its training images")  # fmt: skip


#: --amp of evaluate / predict (bench/inference.py measured both ways on the demo model).
_AMP_HELP = (
    "old name of --precision bf16: bf16 weights cast once (backbone, RPN head, RoI FC layers; boxes and the "
    "margin/inference branches stay fp32): "
    "1.12x and 98%% of top-1 detections unchanged on the demo, where autocast gave 1.04x and 80%%"
)
_PRIOR_HELP = "assign classes under the karyotype prior (at most two of each autosome; XX or XY), optimal assignment"


def build_parser() -> argparse.ArgumentParser:
    """Build the ``deepacc`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="deepacc",
        description="DeepACC: chromosome detection and 24-class classification on metaphase images "
        "(torchvision Faster R-CNN).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="data -> train -> evaluate -> report (synthetic: ~2 min; --crops: ~5 min on CPU)")
    p.add_argument("--out", default="deepacc_demo", help="output folder (default: ./deepacc_demo)")
    p.add_argument(
        "--crops",
        default=None,
        help="folder of real karyotyped cells (<cell>_<class><copy>.bmp); spreads are composed per cell and the "
        "test set is held-out cells (default: synthetic spreads from the shared sample crops)",
    )
    p.add_argument("--test-crops", default=None, help="test spreads from these cells instead of held-out cells")
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="--crops only: crop-to-spread scale, 0.5 (384 px spreads, default) or 1.0 (768 px, native)",
    )
    p.add_argument(
        "--roi-level",
        type=int,
        default=None,
        choices=[2, 3],
        help="lowest FPN level RoIs pool from: 2 (P2, stride 4; default with --crops) or 3",
    )
    p.add_argument("--n-train", type=int, default=None, help="training images (default: demo setting)")
    p.add_argument("--n-test", type=int, default=None, help="held-out images (default: demo setting)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: demo setting)")
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "real", "procedural"],
        help="synthetic demo only: real BioImLab sample crops from the shared data folder, or procedural rods",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p, precision=False)

    p = sub.add_parser("compose", help="metaphase spreads from real karyotyped cells, split by cell (COCO JSON + PNG)")
    p.add_argument("--crops", required=True, help="folder of <cell>_<class><copy>.bmp crops (one folder per cell)")
    p.add_argument("--out", required=True, help="output folder: <part>/annotations.json + images/, split.json")
    p.add_argument("--cells", default=None, help="comma-separated cell ids to use (default: all)")
    p.add_argument("--split", default=None, help="parts of the cells, e.g. train:0.7,val:0.1,test:0.2 (default: one)")
    p.add_argument("--n-images", default="100", help="images per part: N, or part:N pairs (train:300,test:60)")
    p.add_argument("--size", type=int, default=768, help="image side in pixels (default 768)")
    p.add_argument("--scale", type=float, default=None, help="crop scale (default: size / 768, native at 768)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("make-synthetic", help="write synthetic metaphases as COCO JSON + PNG")
    p.add_argument("--out", required=True, help="output folder (gets images/ and annotations.json)")
    p.add_argument("--n-images", type=int, default=20)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--scale", type=float, default=None, help="crop-to-image scale (default 0.75 per 384 px)")
    p.add_argument("--source", default="auto", choices=["auto", "real", "procedural"])
    p.add_argument("--crop-dir", default=None, help="folder of <cell>_<class><copy>.bmp crops")
    p.add_argument("--overlap-rate", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train on COCO JSON / VOC XML / labelme data (torchrun: DDP)")
    p.add_argument("--data", required=True, help="training data: COCO .json, VOC folder or labelme folder")
    _add_loading(p)
    p.add_argument("--val-data", default=None, help="validated every epoch; best.safetensors keeps the best mAP@0.5")
    p.add_argument("--out", required=True, help="run folder (checkpoints, history, train.json)")
    p.add_argument(
        "--model",
        default="deepacc_r101",
        help="registered config (deepacc_r101, table1_a..f, faster_rcnn_r101, retinanet_r101, deepacc_tiny, "
        "faster_rcnn_tiny)",
    )
    p.add_argument("--config", default=None, help="YAML/JSON overrides: {model: {...}, train: {...}, eval: {...}}")
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help="backbone ImageNet weights: imagenet ($DEEPACC_WEIGHTS_DIR, torch.hub's cache, else downloaded there "
        "with its hash checked), a file or folder, or none for random init (default: imagenet)",
    )
    p.add_argument("--offline", action="store_true", help="never download weights (also: HF_HUB_OFFLINE=1)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="images per process and step")
    p.add_argument("--lr", type=float, default=None, help="base lr before scaling (paper: 0.02)")
    p.add_argument(
        "--lr-scaling",
        default=None,
        choices=["literal", "linear"],
        help="literal: the lr as given (paper: 0.02 at batch 1; the default); linear: lr x effective batch / 16",
    )
    p.add_argument("--checkpoint-every", type=int, default=None, help="iterations between mid-epoch resume points")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has a train_state.pt")
    p.add_argument(
        "--amp",
        action="store_true",
        help="old name of --precision bf16 (bf16 autocast; the margin and inference branches stay fp32)",
    )
    _add_rescale(p)
    p.add_argument("--quiet", action="store_true")
    _add_common(p, workers=0)
    p.add_argument("--num-workers", dest="workers", type=int, help=argparse.SUPPRESS)

    p = sub.add_parser("evaluate", help="mAP@0.5, mAP_max, Acc, AER, WCR (and COCO mAP) of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or best.safetensors written by train")
    p.add_argument("--data", required=True)
    _add_loading(p)
    p.add_argument("--out", required=True)
    p.add_argument("--coco", action="store_true", help="also COCO mAP@[.5:.95], AP50, AP75")
    p.add_argument("--karyotype-prior", action="store_true", help="also Acc/AER after the karyotype prior")
    p.add_argument("--amp", action="store_true", help=_AMP_HELP)
    _add_rescale(p)
    p.add_argument("--quiet", action="store_true")
    _add_common(p)

    p = sub.add_parser("predict", help="detections JSON, overlay PNG and karyogram PNG for images or folders")
    p.add_argument("inputs", nargs="+", help="metaphase images or folders of them (PNG, JPEG, TIFF, BMP)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thresh", type=float, default=None, help="default: eval.acc_score_thresh (0.5)")
    p.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="resize the image's short side to this many pixels inside the model (default: the config's "
        "min_size); use it when chromosomes are much larger or smaller than in training",
    )
    p.add_argument("--karyotype-prior", action="store_true", help=_PRIOR_HELP)
    p.add_argument("--amp", action="store_true", help=_AMP_HELP)
    _add_rescale(p)
    p.add_argument("--quiet", action="store_true")
    _add_common(p)
    return parser


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
