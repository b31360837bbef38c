"""The ``pocapnet`` command line's argument parser: every subcommand's options (the handlers are in
:mod:`pocapnet.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medshared.cli import add_runtime_args

from pocapnet import __version__

_WORKERS_HELP = "threads loading the next feature chunks while the model runs (default %(default)s; 0: none)"


def _workers_help(p: argparse.ArgumentParser, text: str = _WORKERS_HELP) -> None:
    """pocapnet's loaders are threads, not DataLoader processes: say so in ``--workers``' help."""
    for action in p._actions:  # argparse has no public way to edit an added option's help
        if action.dest == "workers":
            action.help = text


__all__ = ["build_parser"]


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "pocapnet") -> None:
    p.add_argument(
        "--preset",
        default=default_preset,
        help="registered config: pocapnet (LDAM + delayed estimation), pocapnet_tcn / pocapnet_pe / "
        "pocapnet_de (Table 1 rows), pocapnet_ce / pocapnet_focal (Table 2), pocapnet_causal "
        "(recommended for streaming), pocapnet_tiny, pocapnet_demo, pocapnet_demo_causal "
        "(default: %(default)s)",
    )
    p.add_argument("--config", type=Path, help="YAML/JSON overrides {model: {...}, features: {...}, train: {...}}")


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input changes (each one logged; without the flag the mismatch is an error)")
    g.add_argument("--mix-to-mono", action="store_true", help="average the channels of a multi-channel Channel_k.wav")
    g.add_argument("--dicom-first-frame", action="store_true", help="use the first frame of a multi-frame DICOM frame")
    g.add_argument("--trim", action="store_true", help="cut channels, frames and labels to the shortest")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wav2vec2", help="local folder / Hugging Face name / tiny-random / random-xlsr53")
    p.add_argument("--xray-weights", help="densenet121-res224-all / a .pt file / random / tiny-random")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download weights (also HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 / MEDREPRO_OFFLINE=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``pocapnet`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pocapnet",
        description="PoCaPNet (Interspeech 2023): surgical phase recognition from speech and X-ray with MS-TCN.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> features -> train -> evaluate -> report (~2 min on CPU)")
    p.add_argument("--out", type=Path, default=Path("pocapnet_demo"))
    add_runtime_args(p, precision=False, seed=0)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (for tests)")

    p = sub.add_parser("make-synthetic", help="write synthetic operations in the PoCaP layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-ops", type=int, default=10)
    p.add_argument("--seconds", type=int, nargs=2, default=(90, 120), metavar=("MIN", "MAX"))
    add_runtime_args(p, device=False, precision=False, seed=0)
    p.add_argument("--frame-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--labels", choices=("json", "csv"), default="json")

    p = sub.add_parser(
        "ingest",
        help="raw recordings of one operation (audio files, monitor video / DICOM, "
        "annotations) -> the layout extract reads",
    )
    p.add_argument("--out", type=Path, required=True, help="data folder (OP_xxx/ is written inside)")
    p.add_argument("--op", required=True, help="operation name, e.g. OP_041")
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME=FILE[:INDEX]",
        help="one microphone per option, in Channel_1, Channel_2, ... order (paper: physician, assistant, "
        "ambient); INDEX picks a channel of a multi-channel file (from 0)",
    )
    p.add_argument(
        "--xray", type=Path, help="monitor video (anything OpenCV reads), DICOM series folder or multi-frame DICOM"
    )
    p.add_argument("--labels", type=Path, help="annotations.json (corpus format) or CSV second,phase / start,end,phase")
    p.add_argument("--labels-op", help="the annotations.json entry to use (default: --op)")
    p.add_argument("--physician", help="swap the two headsets when annotations say this wearer had headset 2")
    p.add_argument("--peak-normalize", action="store_true", help="official preprocessing: peak to -0.1 dBFS")
    p.add_argument(
        "--mic-off-threshold",
        type=float,
        metavar="X",
        help="official preprocessing: zero STFT frames whose summed |STFT| (int16 scale, Hann 2048, hop 512) "
        "exceeds X; calibrate X on a known mic-off stretch (the code's 1e5 has no stated scale)",
    )
    p.add_argument(
        "--align-to",
        metavar="NAME",
        help="official preprocessing: cross-correlation alignment of the channels of other files onto this "
        "channel's clock (code: the ambient GoPro track)",
    )
    p.add_argument("--xray-offset", type=float, default=0.0, help="audio time (s) at which the X-ray clock starts")
    p.add_argument(
        "--xray-fps",
        type=float,
        help="frame rate of DICOM images without timing and of videos without frame timestamps",
    )
    p.add_argument("--crop", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="X-ray region of the monitor")
    p.add_argument("--fill-before-xray", action="store_true", help="black frames before the X-ray source starts")
    p.add_argument("--mix-to-mono", action="store_true", help="average a multi-channel file given without :INDEX")
    p.add_argument("--trim", action="store_true", help="cut audio, frames and labels to the shortest")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("extract", help="wav2vec2 + DenseNet features, one .npy per operation and modality")
    p.add_argument("--data", type=Path, required=True, help="folder with OP_xxx/ operations")
    p.add_argument("--out", type=Path, required=True, help="feature folder (resumable inside an operation)")
    _add_config_args(p)
    _add_weights_args(p)
    p.add_argument("--pooled", action="store_true", help="mean-pool the 349 wav2vec2 frames (349x smaller)")
    p.add_argument("--fp16", action="store_true", help="store float16 arrays")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp32", action="store_true", help="old alias of --precision fp32")
    prec.add_argument("--bf16", action="store_true", help="old alias of --precision bf16")
    p.add_argument("--channels", type=int, nargs="+", help="Channel_k.wav files to use (default 1 2 3)")
    p.add_argument("--ops", nargs="*", help="only these operations")
    p.add_argument("--shard", help="i/n: this process extracts shard i of n (default: torchrun's rank/world size)")
    _add_policy_args(p)
    add_runtime_args(
        p,
        workers=1,
        seed=None,
        precision_help="bf16: wav2vec2 and DenseNet on copies cast once to bf16 (auto on a CPU: measured on the "
        "extraction op mix). Old aliases: --fp32, --bf16, config features.bf16 true/false",
    )
    _workers_help(p, "threads decoding frames and windowing audio ahead of the extractors (default %(default)s)")

    p = sub.add_parser("train", help="train on extracted features (early stopping, resumable; torchrun for DDP)")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)
    p.add_argument(
        "--split",
        type=Path,
        help="split manifest (medshared save_split JSON) or 'official' (the code's "
        "16/6/5 operations); default: seeded 60/20/20 by operation",
    )
    p.add_argument("--no-resume", action="store_true")
    add_runtime_args(
        p,
        workers=1,
        seed=None,
        precision_help="bf16: the model's forward under bf16 autocast, the losses from float64 logits outside it "
        "(auto on a CPU: measured on a training step of the model's size)",
    )
    _workers_help(p)

    p = sub.add_parser("evaluate", help="per-operation and per-phase metrics, Edit, F1@k, ribbons, confusion")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--ops", nargs="*", help="operations (default: the checkpoint's test split)")
    p.add_argument("--stream", action="store_true", help="score the online (second by second, past only) predictions")
    p.add_argument("--out", type=Path, required=True)
    add_runtime_args(
        p,
        workers=1,
        seed=None,
        precision_help="bf16: the offline forward under bf16 autocast; with --stream the microphone branches in "
        "bf16 (auto on a CPU: measured on a forward of the model's size)",
    )
    _workers_help(p)

    p = sub.add_parser("predict", help="phase per second for one operation (whole, --stream, or --stream --follow)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--op", type=Path, required=True, help="operation folder OP_xxx/ (raw wav + frames)")
    p.add_argument("--features", type=Path, help="precomputed feature folder of this operation (whole-op mode)")
    p.add_argument("--stream", action="store_true", help="causal, one estimate per second")
    p.add_argument(
        "--follow",
        action="store_true",
        help="with --stream: read the files while a recorder appends to them (stops at OP/END or after --idle-timeout)",
    )
    p.add_argument("--idle-timeout", type=float, default=10.0, help="--follow: seconds without a new second")
    p.add_argument("--bf16", action="store_true", help="old alias of --precision bf16")
    p.add_argument("--fp32", action="store_true", help="old alias of --precision fp32")
    _add_weights_args(p)
    _add_policy_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (predictions.csv)")
    p.add_argument("--quiet", action="store_true")
    add_runtime_args(
        p,
        seed=None,
        precision_help="resolved twice: for the extractors (as extract) and for the model (as evaluate); without "
        "--precision or the old aliases the checkpoint's features.bf16, when set, decides the extractors'",
    )
    return parser
