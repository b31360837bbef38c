"""Command-line interface of ``kfgnet`` (the parser; the commands live in :mod:`kfgnet.cmd_stage1` and
:mod:`kfgnet.cmd_stage2`).

Commands: ``demo``, ``make-synthetic``, ``train-detector``, ``evaluate-detector``, ``train-keyframe``,
``evaluate-keyframe``, ``train-classifier``, ``evaluate``, ``predict``. Expected bad input prints one
``kfgnet <command>: error: ...`` line to stderr and returns 1. The paper's chain, in order::

    kfgnet train-detector    --manifest train.json --out runs/det
    kfgnet train-keyframe    --manifest train.json --detector runs/det/detector_best.safetensors --out runs/kf
    kfgnet evaluate-keyframe --manifest cohort.json --detector runs/det/detector_best.safetensors \\
                             --keyframe runs/kf/keyframe.safetensors --out runs/kfpred
    kfgnet train-classifier  --manifest cohort.json --keyframes runs/kfpred/keyframes.csv --out runs/cls --final
    kfgnet predict VIDEO_OR_FOLDER --classifier runs/cls/model.safetensors --detector ... --keyframe ... --out runs/pred
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medshared.cli import EXPECTED_ERRORS, add_runtime_args, non_negative_int, run_cli

from kfgnet import __version__
from kfgnet.cmd_stage1 import cmd_evaluate_detector, cmd_evaluate_keyframe, cmd_train_detector, cmd_train_keyframe
from kfgnet.cmd_stage2 import cmd_demo, cmd_evaluate, cmd_make_synthetic, cmd_predict, cmd_train_classifier

__all__ = ["build_parser", "main", "COMMANDS"]

EXIT_ERROR = 1


PRECISION_HELP = (
    "kfgnet: bf16 = autocast over the classifier and the detector's backbone (losses, box coding and the key-frame "
    "LSTM stay fp32); every precision but fp32 also runs the classifier in channels_last_3d; CPU auto measures a "
    "light C3D step (classifier) or the detector backbone (detector). train.bf16: true in --config is an alias of "
    "--precision bf16"
)


def _add_runtime(p: argparse.ArgumentParser, seed: bool = True, config: bool = True, workers: bool = False) -> None:
    """The flags shared by every medrepro CLI (``medshared.cli.add_runtime_args``), plus kfgnet's worker default."""
    add_runtime_args(p, seed=0 if seed else None, config=config, precision_help=PRECISION_HELP)
    if workers:
        p.add_argument(
            "--workers",
            type=non_negative_int,
            default=None,
            help="DataLoader worker processes (default: 0 on a CPU, up to 4 per process on CUDA); "
            "pinned memory on CUDA",
        )
        p.add_argument("--num-workers", dest="workers", type=non_negative_int, help=argparse.SUPPRESS)  # old name


def _add_common(p: argparse.ArgumentParser, data: bool = True, workers: bool = False) -> None:
    if data:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--manifest", type=Path, help="manifest .json/.csv (video, patient_id, label, key_frame, boxes)")
        g.add_argument("--release", type=Path, help="authors' release folder (videos/*.avi + avi.xlsx|avi.csv)")
    _add_runtime(p, workers=workers)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_blackout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--blackout",
        help="black out burned-in text bands: TOP[,BOTTOM,LEFT,RIGHT] pixels set to 0 on "
        "every frame (default none; classifiers keep their own clip.blackout)",
    )


def _add_detection_data(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--data",
        type=Path,
        help="image folder: DIR/image/* with DIR/mask/* (same names) or DIR/boxes.csv, e.g. ../shared/data/ddti",
    )
    g.add_argument("--manifest", type=Path, help="video manifest with 'boxes' on annotated frames")
    g.add_argument("--release", type=Path, help="authors' release folder")
    p.add_argument(
        "--empty-masks",
        choices=("negative", "skip", "error"),
        default="negative",
        help="a mask without foreground: a background-only image (default: as stored), left out, or an "
        "error; always logged",
    )
    p.add_argument(
        "--mask-components",
        action="store_true",
        help="one box per connected mask component (default: one box around the whole mask)",
    )
    _add_blackout(p)


def _add_stage1_models(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--detector", type=Path, required=required, help="detector_best.safetensors of train-detector")
    p.add_argument("--keyframe", type=Path, required=required, help="keyframe.safetensors of train-keyframe")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``kfgnet`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kfgnet",
        description="KFGNet (MICCAI 2022): key-frame guided thyroid nodule recognition from ultrasound video.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="both stages end to end on synthetic videos (~2 min on CPU)")
    p.add_argument("--out", type=Path, default=Path("kfgnet_demo"))
    _add_runtime(p, config=False)
    p.add_argument("--quick", action="store_true", help="smaller cohort and fewer epochs (tests)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("make-synthetic", help="write synthetic ultrasound videos + manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--frames", type=int, default=48, help="frames per video (up to 1.25x)")
    p.add_argument("--size", type=int, default=128, help="frame size in pixels")
    p.add_argument("--format", choices=("avi", "mp4", "frames"), default="avi")
    p.add_argument(
        "--layout",
        choices=("manifest", "release"),
        default="manifest",
        help="release also writes the authors' avi.csv key-frame table and LabelMe images/*.json",
    )
    p.add_argument("--no-real-backgrounds", action="store_true", help="procedural tissue instead of ../shared/data")
    add_runtime_args(p, device=False, precision=False, seed=0)

    p = sub.add_parser(
        "train-detector",
        help="train the Faster R-CNN nodule detector (AP50 on held-out cases every epoch, best checkpoint, resumable)",
    )
    _add_detection_data(p)
    _add_common(p, data=False, workers=True)
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (detector_best.safetensors, train.json, split.json)"
    )
    p.add_argument("--preset", default="resnet50_fpn", help="resnet50_fpn | mobilenet_v3_fpn | kfgnet_ddti | tiny")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="effective batch (split over torchrun processes)")
    p.add_argument("--images-per-video", type=int, default=16, help="videos: annotated frames used per video")
    p.add_argument("--val-data", type=Path, help="held-out image folder (else --val-fraction of the cases)")
    p.add_argument("--val-manifest", type=Path, help="held-out video manifest (else --val-fraction of the patients)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="cases held out for validation (default 0.15)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.15,
        help="cases held out for evaluate-detector, never trained or validated on (default 0.15)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the case split (default 0, fixed over --seed)")
    p.add_argument(
        "--pretrained-backbone",
        default=None,
        help="'none' (random init, the paper's setting), 'imagenet' (torchvision's, via torch.hub's "
        "cache) or a local ImageNet weights file",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="'none', 'coco' (torchvision's COCO Faster R-CNN weights via "
        "torch.hub's cache) or a local fasterrcnn_resnet50_fpn_coco-*.pth; FrozenBN + 3 trainable stages",
    )
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--restart", action="store_true", help="ignore a saved state made under another config")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="SyncBatchNorm under torchrun on CUDA (the kfgnet_ddti / tiny backbones' BatchNorm over the "
        "effective batch, not each rank's images); no effect on FrozenBatchNorm (pretrained recipe)",
    )

    p = sub.add_parser(
        "evaluate-detector",
        help="COCO AP / AP50 / AP75 of a detector on held-out images, beside the fixed median-box baseline",
    )
    _add_detection_data(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="detector_best.safetensors of train-detector")
    p.add_argument("--split", type=Path, help="RUN/split.json: evaluate only the cases of --part")
    p.add_argument("--part", default="test", help="part of --split to evaluate (default test)")
    p.add_argument("--images-per-video", type=int, default=16)
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, detections.csv, detections.png")
    _add_runtime(p, seed=False, config=False, workers=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "train-keyframe", help="train the LSTM key-frame scorer on detector features (best epoch on held-out patients)"
    )
    _add_common(p)
    _add_blackout(p)
    p.add_argument("--detector", type=Path, required=True, help="detector_best.safetensors of train-detector")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (keyframe.safetensors, keyframe_train.json, keyframes_val.csv)",
    )
    p.add_argument(
        "--preset",
        default="kfgnet_keyframe",
        help="kfgnet_keyframe (paper) | official_2023 (official model + optimisation) | kfgnet_keyframe_tiny",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--val-fraction", type=float, help="patients held out to pick the best epoch (default 0.2; 0: last epoch)"
    )

    p = sub.add_parser(
        "evaluate-keyframe",
        help="stage 1 on a manifest: keyframes.csv and tolerance accuracy at D = 0..8 against the middle frame",
    )
    _add_common(p)
    _add_blackout(p)
    _add_stage1_models(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for keyframes.csv, metrics.json, tolerance.png")

    p = sub.add_parser("train-classifier", help="k-fold CV (grouped by patient) of the stage-2 classifier")
    _add_common(p, workers=True)
    _add_blackout(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--preset",
        default="kfgnet_light_c3d",
        help="kfgnet_light_c3d | kfgnet_official | kfgnet_tiny | c3d | r3d_18 | r2plus1d_18",
    )
    p.add_argument(
        "--keyframes",
        type=Path,
        help="keyframes.csv of evaluate-keyframe: stage 1's key frames and boxes (default: the annotated ones)",
    )
    p.add_argument("--crop", choices=("nodule", "frame"), help="nodule crop (default, the paper's) or whole frames")
    p.add_argument("--folds", type=int)
    p.add_argument(
        "--epochs", type=int, help="epochs at lr (default 20); the lr2 phase keeps its length unless --epochs2 is given"
    )
    p.add_argument("--epochs2", type=int)
    p.add_argument("--batch-size", type=int, help="effective batch (split over torchrun processes)")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="SyncBatchNorm under torchrun on CUDA (train.sync_bn): BatchNorm3d statistics over the effective "
        "batch; use it with several GPUs (16 clips over 8 ranks leave 2 clips per statistic)",
    )
    p.add_argument("--sampling", choices=("keyframe", "uniform"))
    p.add_argument(
        "--pretrained",
        default=None,
        help="baselines: 'none', 'kinetics' (torchvision's, via torch.hub's cache) or a local Kinetics weights file",
    )
    p.add_argument("--table1", action="store_true", help="run every row of the paper's Table 1")
    p.add_argument(
        "--no-pad-short",
        action="store_true",
        help="refuse videos shorter than the clip (default: pad "
        "them with a warning when at least clip.min_frames long)",
    )
    p.add_argument("--final", action="store_true", help="also train one model on all videos (model.safetensors)")
    p.add_argument("--restart", action="store_true", help="redo folds/states made under another config")

    p = sub.add_parser(
        "evaluate",
        help="evaluate a classifier on a labelled manifest (stage-1 key frames with --detector and --keyframe)",
    )
    _add_common(p, workers=True)
    p.add_argument("--classifier", type=Path, required=True, help="classifier .safetensors")
    _add_stage1_models(p, required=False)
    p.add_argument("--no-pad-short", action="store_true")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("predict", help="key frame, nodule box and P(malignant) of a video or a folder of videos")
    p.add_argument(
        "video",
        type=Path,
        help="video file (.avi/.mp4), DICOM cine, folder of frames, or a folder of videos (one predictions.csv)",
    )
    p.add_argument("--classifier", type=Path, required=True)
    _add_stage1_models(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for prediction.json / predictions.csv and PNGs")
    p.add_argument("--no-pad-short", action="store_true")
    _add_runtime(p, seed=False, config=False)
    return parser


COMMANDS = {
    "demo": cmd_demo,
    "make-synthetic": cmd_make_synthetic,
    "train-detector": cmd_train_detector,
    "evaluate-detector": cmd_evaluate_detector,
    "train-keyframe": cmd_train_keyframe,
    "evaluate-keyframe": cmd_evaluate_keyframe,
    "train-classifier": cmd_train_classifier,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (EXIT_ERROR on expected bad input, with one message on stderr)."""
    return run_cli(
        build_parser(),
        argv,
        COMMANDS,
        expected=(*EXPECTED_ERRORS, RuntimeError),
        error_code=EXIT_ERROR,
        interrupt_hint="re-run the same command to resume",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
