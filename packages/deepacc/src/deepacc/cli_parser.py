"""Argument parser of the ``deepacc`` command line (:mod:`deepacc.cli` runs the commands)."""

from __future__ import annotations

import argparse

from medshared.cli import add_runtime_args

from deepacc import __version__

__all__ = ["build_parser"]


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
