"""Argument helpers of ``alges``' command line (``alges.cli``): the shared flags, the config resolution (preset ->
``--config`` file -> flags), the device / precision lines every command prints, and the pool / test split of
``simulate`` and ``query``. Library code never needs them."""

from __future__ import annotations

import argparse
from typing import Any

from medshared.cli import add_runtime_args

__all__ = ["PRECISION_HELP", "WORKERS_HELP", "add_common", "config_from_args", "device_from_arg",
           "headline_print", "infer_device_precision", "print_precision", "runtime_args", "split_lists"]  # fmt: skip


def config_from_args(args: argparse.Namespace, **overrides: Any):
    """Preset -> --config YAML/JSON -> explicit CLI flags. Returns ``(cfg, explicit keys)``."""
    import os

    from medshared.config import load_config_file, override_dataclass

    from alges.config import create_config

    if getattr(args, "offline", False):
        os.environ["MEDREPRO_OFFLINE"] = "1"  # medshared.weights.is_offline; alges.cli.main restores it after

    cfg = create_config(args.preset)
    explicit: set[str] = set()
    if getattr(args, "config", None):
        d = load_config_file(args.config)
        if not isinstance(d, dict):
            raise ValueError(f"config file {args.config} must hold a mapping of config keys")
        cfg = override_dataclass(cfg, d)
        explicit |= set(d)
    flags = {k: v for k, v in overrides.items() if v is not None}
    if flags:
        cfg = override_dataclass(cfg, flags)
        explicit |= set(flags)
    return cfg, explicit


def device_from_arg(spec: str):
    from medshared.runtime import resolve_device

    return resolve_device(spec)


PRECISION_HELP = (
    "alges: training (and evaluation) use bf16 autocast under auto where it pays; selection (the pool forward "
    "feeding the gradient embeddings, k-means++ and core-set distances) stays fp32 under auto, TF32 off on CUDA, "
    "because the selection maths needs it (README 'Precision'); the config key amp: true is the old alias for a "
    "bf16 selection forward"
)
WORKERS_HELP = "image-decoding threads (default 0: decode in the main thread; results are the same)"


def runtime_args(p: argparse.ArgumentParser, **kw: Any) -> None:
    """``medshared.cli.add_runtime_args``; alges' ``--workers`` are image-decoding threads (no DataLoader)."""
    add_runtime_args(p, **kw)
    for action in p._actions:
        if action.dest == "workers":
            action.help = WORKERS_HELP


def add_common(p: argparse.ArgumentParser, preset: str = "alges_paper") -> None:
    p.add_argument(
        "--offline", action="store_true", help="never download weights (as HF_HUB_OFFLINE=1); missing ones are an error"
    )
    p.add_argument("--preset", default=preset, help=f"registered config (default {preset}; see alges.config)")
    runtime_args(p, workers=0, seed=0, config=True, precision_help=PRECISION_HELP)


def print_precision(prec) -> None:
    for line in prec.lines() if hasattr(prec, "lines") else [f"precision: {prec.name}: {prec.reason}"]:
        print(line)


def infer_device_precision(args: argparse.Namespace):
    """Device and inference precision for ``evaluate`` / ``predict`` (printed, so the run log states it)."""
    from alges.precision import resolve_infer_precision

    device = device_from_arg(args.device)
    prec = resolve_infer_precision(args.precision, device)
    print_precision(prec)
    return device, prec


def split_lists(args: argparse.Namespace, index, cfg) -> dict[str, list[str]]:
    from alges.cholec import cholec_split
    from alges.index import read_id_list
    from alges.study import default_split

    if args.pool_list or args.test_list:
        if not (args.pool_list and args.test_list):
            raise ValueError("give both --pool-list and --test-list (files with one image id per line)")
        return {"train": read_id_list(args.pool_list, index), "test": read_id_list(args.test_list, index)}
    if index.kind == "cholecseg8k" and (args.train_videos or args.test_videos or args.max_test_frames):
        videos = None
        if args.train_videos or args.test_videos:
            if not (args.train_videos and args.test_videos):
                raise ValueError("give both --train-videos and --test-videos")
            videos = {"train": args.train_videos.split(","), "test": args.test_videos.split(",")}
        sp = cholec_split(index, videos, args.max_test_frames)
        if not sp["train"] or not sp["test"]:
            raise ValueError(
                f"the split has {len(sp['train'])} pool and {len(sp['test'])} test images; check the videos"
            )
        return {"train": sp["train"], "test": sp["test"]}
    return default_split(index, cfg)


def headline_print(results: dict[str, Any]) -> None:
    summ = results["summary"]
    metric = next(iter(summ))
    print(f"{'strategy':<18} {'% labeled':>10} {metric:>16}")
    for s, d in summ[metric].items():
        print(f"{s:<18} {d['pct_labeled'][-1]:>10.2f} {d['mean'][-1]:>8.3f} ± {d['std'][-1]:.3f}")
