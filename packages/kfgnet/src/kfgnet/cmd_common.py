"""Helpers shared by the ``kfgnet`` commands (reading the data arguments and the ``--config`` overrides)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["records_from_args", "load_overrides", "apply_section", "CONFIG_SECTIONS", "clip_from_args"]

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
