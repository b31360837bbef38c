"""Command-line interface of ``deepacc``: ``demo``, ``make-synthetic``, ``train``, ``evaluate``, ``predict``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import run_cli

from deepacc import __version__

_EXPECTED_ERRORS = (FileNotFoundError, ValueError, FloatingPointError, OSError, KeyError)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


#: --amp of evaluate / predict (bench/inference.py measured both ways on the demo model).
_AMP_HELP = (
    "bf16 weights cast once (backbone, RPN head, RoI FC layers; boxes and the margin/inference branches stay fp32): "
    "1.12x and 98%% of top-1 detections unchanged on the demo, where autocast gave 1.04x and 80%%"
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``deepacc`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="deepacc",
        description="DeepACC: chromosome detection and 24-class classification on metaphase images "
        "(torchvision Faster R-CNN).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> report (about 2 minutes on CPU)")
    p.add_argument("--out", default="deepacc_demo", help="output folder (default: ./deepacc_demo)")
    p.add_argument("--n-train", type=int, default=None, help="synthetic training images (default: demo setting)")
    p.add_argument("--n-test", type=int, default=None, help="held-out synthetic images (default: demo setting)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: demo setting)")
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "real", "procedural"],
        help="chromosome crops: real BioImLab crops from the shared data folder, or procedural rods",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)

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

    p = sub.add_parser("train", help="train on COCO JSON / VOC XML / labelme data")
    p.add_argument("--data", required=True, help="training data: COCO .json, VOC folder or labelme folder")
    p.add_argument("--format", default="auto", choices=["auto", "coco", "voc", "labelme"])
    p.add_argument("--split", default=None, help="VOC split list name (e.g. train -> train.txt)")
    p.add_argument("--val-data", default=None, help="optional held-out data evaluated after training")
    p.add_argument("--out", required=True, help="run folder (checkpoint, history, metrics)")
    p.add_argument(
        "--model",
        default="deepacc_r101",
        help="registered config (deepacc_r101, table1_a..f, "
        "faster_rcnn_r101, retinanet_r101, deepacc_tiny, faster_rcnn_tiny)",
    )
    p.add_argument("--config", default=None, help="YAML/JSON overrides: {model: {...}, train: {...}, eval: {...}}")
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help="backbone ImageNet weights: imagenet (search $DEEPACC_WEIGHTS_DIR and the torch cache), a "
        "path, or none for random init (default: imagenet)",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="base lr before scaling (paper: 0.02)")
    p.add_argument("--lr-literal", action="store_true", help="use the lr as is (paper's literal 0.02 at batch 1)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has a train_state.pt")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (margin branch stays fp32)")
    p.add_argument("--quiet", action="store_true")
    _add_common(p)

    p = sub.add_parser("evaluate", help="mAP@0.5, mAP_max, Acc, AER, WCR of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by train")
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="auto", choices=["auto", "coco", "voc", "labelme"])
    p.add_argument("--split", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--amp", action="store_true", help=_AMP_HELP)
    p.add_argument("--quiet", action="store_true")
    _add_common(p)

    p = sub.add_parser("predict", help="detections JSON, overlay PNG and karyogram PNG for one image")
    p.add_argument("image", help="metaphase image (PNG, JPEG, TIFF, BMP; grey or RGB)")
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
    p.add_argument("--amp", action="store_true", help=_AMP_HELP)
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


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from deepacc.synthetic import SynthConfig, write_synthetic

    if args.n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
    scale = args.scale if args.scale is not None else 0.75 * min(args.height, args.width) / 384
    scfg = SynthConfig(height=args.height, width=args.width, scale=scale, overlap_rate=args.overlap_rate)
    path = write_synthetic(args.out, args.n_images, args.seed, scfg, args.source, args.crop_dir)
    print(f"wrote {args.n_images} images and {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medshared.runtime import atomic_write_json, resolve_device

    from deepacc.data import load_dataset
    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.train import train

    cfg = _load_cfg(args.model, args.config)
    t = cfg.train
    t = dataclasses.replace(
        t,
        epochs=args.epochs if args.epochs is not None else t.epochs,
        batch_size=args.batch_size if args.batch_size is not None else t.batch_size,
        lr=args.lr if args.lr is not None else t.lr,
        lr_scaling="literal" if args.lr_literal else t.lr_scaling,
    )
    cfg = dataclasses.replace(cfg, train=t)
    device = resolve_device(args.device)
    samples = load_dataset(args.data, args.format, args.split)
    val = load_dataset(args.val_data, args.format) if args.val_data else None
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if cfg.model.backbone == "tiny":
        pretrained = None
    model, history = train(cfg, samples, args.out, device, pretrained, resume=not args.no_resume, seed=args.seed,
                           amp=args.amp, progress=not args.quiet)  # fmt: skip
    if val is not None:
        res = evaluate_detections(predict_raw(model, val, device, args.amp, not args.quiet), val, cfg)
        res.pop("matched_pairs", None)
        atomic_write_json(Path(args.out) / "val_metrics.json", res)
        print(f"validation: mAP@0.5 {res['map50']:.4f}  mAP_max {res['map50_max']:.4f}  Acc {res.get('acc', 0):.4f}  "
              f"AER {res.get('aer', 0):.4f}")  # fmt: skip
    print(f"checkpoint: {Path(args.out) / 'model.safetensors'}")
    return 0


def _write_eval(out: Path, res: dict[str, Any], prefix: str = "") -> None:
    from medshared.runtime import atomic_write_csv, atomic_write_json

    res = dict(res)
    pairs = res.pop("matched_pairs", None)
    atomic_write_json(out / f"{prefix}metrics.json", res)
    rows = [{"class": k, "ap50": v} for k, v in res["ap_per_class"].items()]
    atomic_write_csv(out / f"{prefix}per_class_ap.csv", rows)
    if pairs and pairs["true"]:
        from medshared.metrics import confusion_matrix
        from medshared.plots import plot_confusion_matrix

        from deepacc.config import CLASS_NAMES

        cm = confusion_matrix(pairs["true"], pairs["pred"], labels=list(range(1, 25)))
        plot_confusion_matrix(cm, list(CLASS_NAMES[1:]), out / f"{prefix}confusion_matrix.png",
                              title="matched chromosomes (rows true, cols predicted)")  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medshared.runtime import resolve_device

    from deepacc.data import load_dataset
    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.model import cast_bf16
    from deepacc.train import load_model

    device = resolve_device(args.device)
    model, cfg, _ = load_model(args.checkpoint, device)
    if args.amp:  # bf16 weights once (bench/inference.py: faster and closer to fp32 than autocast)
        model = cast_bf16(model)
    samples = load_dataset(args.data, args.format, args.split)
    res = evaluate_detections(predict_raw(model, samples, device, False, not args.quiet), samples, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_eval(out, res)
    print(_table([("mAP@0.5", res["map50"]), ("mAP_max", res["map50_max"]), ("Acc", res.get("acc")),
                  ("AER", res.get("aer")), ("WCR", res["wcr"])]))  # fmt: skip
    return 0


def predict_image(
    model: Any,
    cfg: Any,
    image_path: str | Path,
    device: Any,
    score_thresh: float | None = None,
    amp: bool = False,
    short_side: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Detect chromosomes on one image: top-1 class per RoI, score >= thresh, class-agnostic NMS (Sec. 3.1)."""
    import torch
    from medshared.runtime import autocast_context

    from deepacc.config import CLASS_NAMES
    from deepacc.data import read_image
    from deepacc.model import agnostic_top1, set_output_mode

    img = read_image(image_path)  # [H, W, 3]
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0).to(device)  # [3, H, W]
    thr = cfg.eval.acc_score_thresh if score_thresh is None else score_thresh
    if short_side is not None and short_side < 32:
        raise ValueError(f"--short-side must be >= 32 pixels, got {short_side}")
    tr = model.transform
    old_sizes = (tr.min_size, tr.max_size)
    if short_side is not None:
        tr.min_size, tr.max_size = (short_side,), int(short_side * 1333 / 800)
    set_output_mode(model, "max")
    try:
        with torch.no_grad(), autocast_context(device, amp):
            det = model([x])[0]
    finally:
        set_output_mode(model, "standard")
        tr.min_size, tr.max_size = old_sizes
    det = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in det.items()}
    det = agnostic_top1(det, thr, cfg.eval.agnostic_nms_thresh)
    items = []
    for i in range(len(det["labels"])):
        lab = int(det["labels"][i])
        items.append({"box_xyxy": [round(float(v), 2) for v in det["boxes"][i]], "class_id": lab,
                      "class_name": CLASS_NAMES[lab], "score": round(float(det["scores"][i]), 5),
                      "roi_index": int(det["roi_indices"][i]) if "roi_indices" in det else None})  # fmt: skip
    counts = {CLASS_NAMES[c]: sum(1 for it in items if it["class_id"] == c) for c in range(1, 25)}
    result = {"image": str(image_path), "height": img.shape[0], "width": img.shape[1], "score_thresh": thr,
              "n_detections": len(items), "count_per_class": counts, "detections": items}  # fmt: skip
    return img, result


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_json, resolve_device

    from deepacc.model import cast_bf16
    from deepacc.train import load_model
    from deepacc.viz import draw_detections, karyogram, save_png

    device = resolve_device(args.device)
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image not found: {args.image}")
    model, cfg, _ = load_model(args.checkpoint, device)
    if args.amp:  # bf16 weights once (bench/inference.py: faster and closer to fp32 than autocast)
        model = cast_bf16(model)
    img, result = predict_image(model, cfg, args.image, device, args.score_thresh, False, args.short_side)
    boxes = np.array([d["box_xyxy"] for d in result["detections"]]).reshape(-1, 4)
    labels = np.array([d["class_id"] for d in result["detections"]], dtype=np.int64)
    scores = np.array([d["score"] for d in result["detections"]])
    overlay = draw_detections(img, boxes, labels, scores)
    kary = karyogram(img, boxes, labels, scores)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    save_png(out / f"{stem}_overlay.png", overlay)
    save_png(out / f"{stem}_karyogram.png", kary)
    atomic_write_json(out / f"{stem}_detections.json", result)
    print(f"{result['n_detections']} chromosomes detected; wrote {out / (stem + '_detections.json')}, "
          f"{stem}_overlay.png, {stem}_karyogram.png")  # fmt: skip
    return 0


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for k, v in rows:
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from deepacc.demo import run_demo

    run_demo(args.out, device=args.device, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
             epochs=args.epochs, source=args.source, progress=not args.quiet)  # fmt: skip
    return 0


_COMMANDS = {
    "demo": _cmd_demo,
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
            if command != "demo":
                print(f"done in {time.time() - t0:.1f}s", file=sys.stderr)
            return rc

        return run

    return run_cli(build_parser(), argv, {name: timed(name) for name in _COMMANDS}, expected=_EXPECTED_ERRORS)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
