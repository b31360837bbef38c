"""Helpers shared by the ``kfgnet`` commands (reading the data arguments and the ``--config`` overrides)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "records_from_args",
    "load_overrides",
    "apply_section",
    "CONFIG_SECTIONS",
    "clip_from_args",
    "classifier_precision_from_args",
    "detector_precision_from_args",
    "report_precision",
    "workers_from_args",
]

CONFIG_SECTIONS = ("model", "train", "clip", "motion", "keyframe", "keyframe_train", "detector")


def records_from_args(args: argparse.Namespace) -> list[Any]:
    """Video records of ``--manifest`` or ``--release``."""
    from kfgnet.data import read_manifest, read_release

    return read_manifest(args.manifest) if args.manifest else read_release(args.release)


def load_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file's sections (unknown sections are an error listing the valid ones)."""
    from medshared.config import load_config_file

    if not getattr(args, "config", None):
        return {}
    conf = load_config_file(args.config)
    bad = sorted(set(conf) - set(CONFIG_SECTIONS))
    if bad:
        raise ValueError(f"unknown section(s) {bad} in {args.config}; valid sections: {sorted(CONFIG_SECTIONS)}")
    return conf


def apply_section(cfg: Any, over: dict[str, Any], section: str) -> Any:
    """``cfg`` with the overrides of one config section applied (unknown keys are an error)."""
    from medshared.config import override_dataclass

    return override_dataclass(cfg, over.get(section, {}))


def clip_from_args(args: argparse.Namespace, over: dict[str, Any]) -> Any:
    """The clip config: defaults, the ``clip`` section, then ``--sampling`` / ``--crop`` / ``--blackout``."""
    from dataclasses import replace

    from kfgnet.config import ClipConfig
    from kfgnet.video_io import parse_blackout

    clip = apply_section(ClipConfig(), over, "clip")
    if getattr(args, "sampling", None):
        clip = replace(clip, sampling=args.sampling)
    if getattr(args, "crop", None):
        clip = replace(clip, crop=args.crop)
    if getattr(args, "blackout", None):
        clip = replace(clip, blackout=parse_blackout(args.blackout))
    return clip


def out_path(args: argparse.Namespace, name: str) -> Path:
    return Path(args.out) / name


def classifier_precision_from_args(
    args: argparse.Namespace, tcfg: Any, over: dict[str, Any], device: Any, ctx: Any = None
) -> tuple[Any, Any]:
    """``--precision`` (or its alias ``train.bf16: true``) resolved for the classifier on ``device``, its TF32
    switches applied, and ``tcfg`` with ``bf16`` / ``channels_last`` set from it (``train.channels_last`` in the
    config wins over the precision's default: channels_last_3d for every precision but an explicit fp32).

    Returns:
        (the training config, the ``medshared.precision.Precision``).
    """
    from dataclasses import replace

    from kfgnet.precision import classifier_precision, spec_from_alias

    train = over.get("train", {}) or {}
    spec = spec_from_alias(args.precision, train.get("bf16"), f"train.bf16 in {getattr(args, 'config', None)}")
    prec = classifier_precision(spec, device, ctx)
    prec.apply()
    channels_last = bool(train.get("channels_last", prec.requested != "fp32"))
    report_precision("classifier", prec, ctx)
    return replace(tcfg, bf16=prec.name == "bf16", channels_last=channels_last), prec


def detector_precision_from_args(args: argparse.Namespace, device: Any, ctx: Any = None, cfg: Any = None) -> Any:
    """``--precision`` resolved for the detector of config ``cfg`` (bf16 = backbone autocast), TF32 switches
    applied."""
    from kfgnet.precision import detector_precision

    prec = detector_precision(args.precision, device, ctx, cfg)
    prec.apply()
    report_precision("detector", prec, ctx)
    return prec


def report_precision(what: str, prec: Any, ctx: Any = None) -> None:
    """One line on stdout (rank 0): the precision ``what`` runs in and why."""
    if ctx is None or getattr(ctx, "is_main", True):
        print(f"{what} precision: {prec.name} ({prec.reason})", flush=True)


def workers_from_args(args: argparse.Namespace, device: Any, ctx: Any = None) -> int:
    """``--workers`` (alias ``--num-workers``), or the device's default (``kfgnet.devices.default_workers``)."""
    from kfgnet.devices import resolve_workers

    return resolve_workers(getattr(args, "workers", None), device, getattr(ctx, "world_size", 1))
