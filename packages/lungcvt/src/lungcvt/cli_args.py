"""Arguments of the ``lungcvt`` CLI (:mod:`lungcvt.cli`): the parser of every command, and the parsed arguments
turned into what the library functions take (config, DeiT weights, :class:`~lungcvt.splits.DataOptions`)."""

from __future__ import annotations

import argparse
import dataclasses

from medshared.cli import add_runtime_args

from lungcvt import __version__
from lungcvt.config import LungCVTConfig, get_config, list_configs, with_overrides

__all__ = ["build_parser", "data_options", "load_cfg", "train_cfg"]


_PRECISION_HELP = (
    "lungcvt's probe is one training step of the tiny model; train.bf16: true (old setting) is an alias of bf16 "
    "when --precision is auto; feature extraction always runs fp32"
)


def _add_common(p: argparse.ArgumentParser, data: bool = True, protocol: bool = False, precision: bool = False) -> None:
    if data:
        p.add_argument("--data", required=True, help="ICBHI folder with *.wav and *.txt (e.g. ICBHI_final_database)")
        p.add_argument("--split-file", default=None, help="official split file (default: found next to the data)")
        p.add_argument(
            "--allow-partial",
            action="store_true",
            help="accept split/fold-file entries without recordings (a subset of the database)",
        )
    if protocol:
        p.add_argument(
            "--protocol",
            default=None,
            help="official (60/40 split file; the default, for evaluate the checkpoint's protocol) | fold0..fold4 "
            "(patient-wise 5-fold file) | random80-20 (patients, stratified, drawn with the seed)",
        )
        p.add_argument("--fold-file", default=None, help="patient_list_foldwise.txt (default: found next to the data)")
        p.add_argument(
            "--devices", default=None, help="only recordings of these devices, e.g. Litt3200 or Meditron,LittC2SE"
        )
    add_runtime_args(p, device=True, precision=precision, workers=None, seed=None, precision_help=_PRECISION_HELP)


def _add_mix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mix-channels", action="store_true", help="average multi-channel files (features.channels=mix)")


def _add_cfg(p: argparse.ArgumentParser, default: str | None = "lungcvt_base") -> None:
    p.add_argument("--preset", default=default, help=f"registered config: {', '.join(list_configs())}")
    add_runtime_args(p, device=False, precision=False, seed=None, config=True)  # --config: YAML/JSON overrides


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_cfg(p, default=None)
    p.add_argument(
        "--pretrained",
        default="auto",
        help="DeiT ImageNet weights: 'imagenet' (local file or cache, else downloaded into torch.hub's / "
        "huggingface_hub's cache), 'auto' (the same when the preset is pretrained; the tiny preset is not), a file, "
        "an http(s) URL named like torch.hub files (name-<sha256 prefix>.pth, hash-checked), or 'none' (random init)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download weights (as HF_HUB_OFFLINE=1); a missing file is an error",
    )
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/feature_cache)")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    add_runtime_args(p, device=False, precision=False, workers=0, seed=None)  # --workers (seeded per worker, epoch)
    p.add_argument("--allow-missing-class", action="store_true", help="train even if a class has no training cycles")
    _add_mix(p)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``lungcvt`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lungcvt", description="Convolution-Vision Transformer for ICBHI 2017 lung-sound classification."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> report (about 2 minutes)")
    p.add_argument("--out", default="lungcvt_demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="reduced run (tests)")
    add_runtime_args(p, device=False, precision=False, seed=0)
    _add_common(p, data=False, precision=True)

    p = sub.add_parser("dataset-stats", help="recordings, patients, devices, cycles per class per split")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("features", help="compute and cache features for every cycle")
    _add_common(p)
    _add_cfg(p)
    p.add_argument("--cache", required=True, help="feature cache folder")
    p.add_argument("--backend", choices=("librosa", "torch", "nnaudio"), default=None, help="override features.backend")
    p.add_argument(
        "--shard",
        default=None,
        help="i/n: this process computes every n-th recording (by stem) from the i-th; default: torchrun's "
        "RANK/WORLD_SIZE, else all. One cache file per recording, so the shards need no merge",
    )
    _add_mix(p)

    p = sub.add_parser(
        "train", help="train on a protocol's training part (stratified patient-grouped validation inside)"
    )
    _add_common(p, protocol=True, precision=True)
    _add_train_args(p)
    p.add_argument("--out", required=True, help="output folder (best.safetensors, history.csv, last_state.pt)")
    p.add_argument(
        "--init",
        default=None,
        help="start from this lungcvt checkpoint (per-device fine-tuning, e.g. with --devices Litt3200); its config "
        "is used unless --preset is given",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last_state.pt exists")

    p = sub.add_parser("cv", help="train + evaluate every fold x seed, resumably; mean ± std of Se, Sp, Score")
    _add_common(p, protocol=True, precision=True)
    _add_train_args(p)
    p.add_argument("--out", required=True, help="output folder (OUT/<fold>/seed<S>/, cv.json, cv.csv, cv.md)")
    p.add_argument("--folds", default="0-4", help="0-4 (patient-wise folds), 0,2, official or random80-20")
    p.add_argument("--seeds", default="0", help="0,1,2 or 0-2")

    p = sub.add_parser(
        "baseline",
        help="random forest on per-cycle log-mel statistics (4 kHz, 64 bands) under the cv protocols, mean ± std",
    )
    _add_common(p, protocol=True)
    p.add_argument("--out", required=True, help="output folder (OUT/<fold>/seed<S>/metrics.json, cv.json, cv.md)")
    p.add_argument("--folds", default="0-4", help="0-4 (patient-wise folds), 0,2, official or random80-20")
    p.add_argument("--seeds", default="0", help="0,1,2 or 0-2 (forest seed; the split for random80-20)")
    p.add_argument("--trees", type=int, default=300, help="number of trees (default 300)")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/feature_cache)")

    p = sub.add_parser("evaluate", help="ICBHI / macro-OvR / 2-class scores of a checkpoint, by device and patient")
    _add_common(p, protocol=True, precision=True)
    p.add_argument("--checkpoint", required=True, help="best.safetensors from train")
    p.add_argument("--out", required=True, help="output folder (metrics.json, predictions.csv, confusion_matrix.png)")
    p.add_argument("--split", default="test", choices=("test", "train", "all"))
    p.add_argument("--cache", default=None, help="feature cache folder")
    _add_mix(p)

    p = sub.add_parser("predict", help="classify the cycles (or windows covering the file) of recordings")
    p.add_argument("wav", nargs="+", help="recording(s) (.wav, any rate / bit depth)")
    p.add_argument("--checkpoint", required=True, help="best.safetensors from train")
    p.add_argument(
        "--annotations", nargs="+", default=None, help="ICBHI .txt with cycles, one per wav; without: windows"
    )
    p.add_argument("--window", type=float, default=2.7, help="window length in s without annotations")
    p.add_argument(
        "--hop", type=float, default=None, help="window hop in s (default window/2); a last window ends at the end"
    )
    p.add_argument(
        "--aggregate",
        choices=("any", "mean"),
        default="any",
        help="per recording: 'any' window with crackles/wheezes (default), or the mean class probabilities",
    )
    p.add_argument("--out", default=None, help="folder for <stem>_windows.csv and <stem>.json (default: print)")
    _add_mix(p)
    _add_common(p, data=False, precision=True)
    return parser


def data_options(args: argparse.Namespace, allow_missing_class: bool = False, keep_protocol_none: bool = False):
    """:class:`~lungcvt.splits.DataOptions` from the data flags (``--protocol`` default ``official``, unless
    ``keep_protocol_none``: evaluate then uses the checkpoint's protocol)."""
    from lungcvt.splits import DataOptions

    protocol = getattr(args, "protocol", None) or (None if keep_protocol_none else "official")
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip()) if getattr(args, "devices", None) else None
    return DataOptions(
        split_file=args.split_file,
        protocol=protocol,
        fold_file=getattr(args, "fold_file", None),
        allow_partial=args.allow_partial,
        allow_missing_class=allow_missing_class,
        devices=devices,
    )


def load_cfg(args: argparse.Namespace, base: LungCVTConfig | None = None) -> LungCVTConfig:
    """Config of a command: ``--preset`` (else ``base``, else ``lungcvt_base``), ``--mix-channels``, then ``--config``
    overrides (re-validated)."""
    from medshared.config import load_config_file

    cfg = get_config(args.preset) if args.preset else (base or get_config("lungcvt_base"))
    if getattr(args, "mix_channels", False):
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, channels="mix"))
    if args.config:
        cfg = with_overrides(cfg, load_config_file(args.config))
    return cfg


def train_cfg(args: argparse.Namespace) -> tuple[LungCVTConfig, str | None]:
    """Config of train/cv: --init's checkpoint config (unless --preset), the preset, --config, then the flags."""
    base = None
    if getattr(args, "init", None) and not args.preset:
        from medshared.checkpoint import load_checkpoint

        from lungcvt.config import config_from_dict

        base = config_from_dict(load_checkpoint(args.init)[1])
    cfg = load_cfg(args, base)
    weights = None
    if args.pretrained == "none":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    elif args.pretrained == "imagenet":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=True))
    elif args.pretrained != "auto":
        weights = args.pretrained
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=True))
    tr = {}
    if args.epochs is not None:
        tr["epochs"] = args.epochs
    if args.seed is not None:
        tr["seed"] = args.seed
    if tr:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **tr))
    return cfg, weights
