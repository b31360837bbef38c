"""Command-line interface of ``lungcvt``: demo, dataset-stats, features, train, cv, evaluate, predict."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medshared.cli import run_cli

from lungcvt import __version__
from lungcvt.config import CLASSES, LungCVTConfig, get_config, list_configs


def _add_common(p: argparse.ArgumentParser, data: bool = True, protocol: bool = False) -> None:
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
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _add_mix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mix-channels", action="store_true", help="average multi-channel files (features.channels=mix)")


def _data_options(args: argparse.Namespace, allow_missing_class: bool = False, keep_protocol_none: bool = False):
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


def _add_cfg(p: argparse.ArgumentParser, default: str | None = "lungcvt_base") -> None:
    p.add_argument("--preset", default=default, help=f"registered config: {', '.join(list_configs())}")
    p.add_argument("--config", default=None, help="YAML/JSON overrides, e.g. {train: {lr: 1e-4}, features: {...}}")


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
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (seeded per worker and epoch)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="reduced run (tests)")
    _add_common(p, data=False)

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
    _add_common(p, protocol=True)
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
    _add_common(p, protocol=True)
    _add_train_args(p)
    p.add_argument("--out", required=True, help="output folder (OUT/<fold>/seed<S>/, cv.json, cv.csv, cv.md)")
    p.add_argument("--folds", default="0-4", help="0-4 (patient-wise folds), 0,2, official or random80-20")
    p.add_argument("--seeds", default="0", help="0,1,2 or 0-2")

    p = sub.add_parser("evaluate", help="ICBHI / macro-OvR / 2-class scores of a checkpoint, by device and patient")
    _add_common(p, protocol=True)
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
    _add_common(p, data=False)
    return parser


def _load_cfg(args: argparse.Namespace, base: LungCVTConfig | None = None) -> LungCVTConfig:
    from medshared.config import load_config_file, override_dataclass

    cfg = get_config(args.preset) if args.preset else (base or get_config("lungcvt_base"))
    if getattr(args, "mix_channels", False):
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, channels="mix"))
    if args.config:
        d = load_config_file(args.config)
        cfg = override_dataclass(cfg, d)
        cfg = dataclasses.replace(cfg)  # re-validate
    return cfg


def _cmd_dataset_stats(args: argparse.Namespace) -> int:
    from lungcvt.data import load_dataset

    recs, missing = load_dataset(args.data, args.split_file, allow_partial=True)
    parts: dict[str, dict] = {}
    for r in recs:
        s = r.split or "unsplit"
        d = parts.setdefault(s, {"recordings": 0, "patients": set(), "devices": {}, "cycles": [0, 0, 0, 0]})
        d["recordings"] += 1
        d["patients"].add(r.info.patient)
        d["devices"][r.info.device] = d["devices"].get(r.info.device, 0) + 1
        for c in r.cycles:
            d["cycles"][c.label] += 1
    out = {
        "data": str(args.data),
        "recordings": len(recs),
        "patients": len({r.info.patient for r in recs}),
        "cycles": sum(len(r.cycles) for r in recs),
        "split_entries_without_recordings": len(missing),
        "splits": {
            k: {
                **v,
                "patients": len(v["patients"]),
                "cycles": dict(zip(CLASSES, v["cycles"])),
                "n_cycles": sum(v["cycles"]),
            }
            for k, v in sorted(parts.items())
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['recordings']} recordings, {out['patients']} patients, {out['cycles']} cycles in {args.data}")
        print(f"{'split':8s} {'recs':>5s} {'pats':>5s} " + " ".join(f"{c:>8s}" for c in CLASSES) + "    total  devices")
        for k, v in out["splits"].items():
            print(
                f"{k:8s} {v['recordings']:5d} {v['patients']:5d} "
                + " ".join(f"{v['cycles'][c]:8d}" for c in CLASSES)
                + f" {v['n_cycles']:8d}  "
                + ", ".join(f"{d}:{n}" for d, n in sorted(v["devices"].items()))
            )
        if missing:
            print(
                f"warning: {len(missing)} split-file entries have no recording (e.g. {missing[:3]}); "
                "the full ICBHI 2017 has 920 recordings, 6898 cycles",
                file=sys.stderr,
            )
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import time

    from medshared.distributed import resolve_shard, shard_items
    from medshared.runtime import resolve_device

    from lungcvt.data import load_dataset
    from lungcvt.dataset import extract_cycles
    from lungcvt.features import feature_key

    cfg = _load_cfg(args)
    fc = cfg.features if args.backend is None else dataclasses.replace(cfg.features, backend=args.backend)
    recs, _ = load_dataset(args.data, args.split_file, allow_partial=args.allow_partial)
    shard, n_shards = resolve_shard(args.shard)
    mine = shard_items(recs, shard, n_shards, key=lambda r: r.stem)
    t = time.time()
    cs = extract_cycles(mine, fc, args.cache, resolve_device(args.device), progress=True)
    dt = time.time() - t
    part = f" (shard {shard}/{n_shards}: {len(mine)} of {len(recs)} recordings)" if n_shards > 1 else ""
    print(
        f"{len(cs)} cycles from {len(mine)} recordings{part} -> {Path(args.cache) / feature_key(fc)} "
        f"({dt:.1f} s, {len(cs) / max(dt, 1e-9):.1f} cycles/s)"
    )
    return 0


def _train_cfg(args: argparse.Namespace) -> tuple[LungCVTConfig, str | None]:
    """Config of train/cv: --init's checkpoint config (unless --preset), the preset, --config, then the flags."""
    base = None
    if getattr(args, "init", None) and not args.preset:
        from medshared.checkpoint import load_checkpoint

        from lungcvt.config import config_from_dict

        base = config_from_dict(load_checkpoint(args.init)[1])
    cfg = _load_cfg(args, base)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from lungcvt.train import train

    cfg, weights = _train_cfg(args)
    res = train(
        cfg,
        args.data,
        args.out,
        data=_data_options(args, args.allow_missing_class),
        device=args.device,
        weights=weights,
        init=args.init,
        cache_dir=args.cache,
        num_workers=args.workers,
        resume=not args.no_resume,
        offline=args.offline,
    )
    import os

    if os.environ.get("RANK", "0") == "0":
        score = res.best_val.get("icbhi", {}).get("score", float("nan"))
        print(f"best epoch {res.best_epoch}: val ICBHI score {score:.4f} -> {res.best_checkpoint}")
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from lungcvt.cv import cv_table, parse_folds, parse_seeds, run_cv

    if args.protocol:
        raise ValueError("lungcvt cv takes --folds (e.g. 0-4, official or random80-20), not --protocol")
    cfg, weights = _train_cfg(args)
    res = run_cv(
        cfg,
        args.data,
        args.out,
        parse_folds(args.folds),
        parse_seeds(args.seeds),
        data=_data_options(args, args.allow_missing_class),
        device=args.device,
        weights=weights,
        cache_dir=args.cache,
        num_workers=args.workers,
        offline=args.offline,
    )
    print(cv_table(res["summary"], len(res["runs"])))
    print(f"results in {Path(args.out) / 'cv.json'}, cv.csv, cv.md")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lungcvt.evaluate import evaluate

    m = evaluate(
        args.checkpoint,
        args.data,
        args.out,
        split=args.split,
        data=_data_options(args, keep_protocol_none=True),
        device=args.device,
        cache_dir=args.cache,
        mix_channels=args.mix_channels,
    )
    print(f"{'variant':10s} {'Se':>7s} {'Sp':>7s} {'Score':>7s}")
    for v in ("icbhi", "macro_ovr", "two_class"):
        print(f"{v:10s} {m[v]['se']:7.4f} {m[v]['sp']:7.4f} {m[v]['score']:7.4f}")
    print(f"{'device':10s} {'n':>5s} {'Se':>7s} {'Sp':>7s} {'Score':>7s}")
    for d, v in m["by_device"].items():
        cells = " ".join(f"{x:7.4f}" if x is not None else f"{'n/a':>7s}" for x in (v["se"], v["sp"], v["score"]))
        print(f"{d:10s} {v['n']:5d} {cells}")
    print(f"accuracy {m['icbhi']['accuracy']:.4f} on {m['n']} cycles ({m['protocol']}); results in {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from lungcvt.predict import predict_files

    results = predict_files(
        args.checkpoint,
        args.wav,
        args.out,
        annotations=args.annotations,
        window_s=args.window,
        hop_s=args.hop,
        device=args.device,
        aggregate=args.aggregate,
        mix_channels=args.mix_channels,
    )
    for rows, rec in results:
        if args.out is None:
            for r in rows:
                print(
                    f"{r['start']:8.3f} {r['end']:8.3f}  {r['pred']:8s}"
                    + (f"  (true {r['true']})" if "true" in r else "")
                    + "  "
                    + " ".join(f"{c}={r[f'p_{c}']:.3f}" for c in CLASSES)
                )
        print(
            f"{rec['recording']}: {rec['pred']} (crackles {rec['crackles']}, wheezes {rec['wheezes']}; "
            f"{rec['n_windows']} {'cycles' if rec['window_s'] is None else 'windows'}, aggregate {rec['aggregate']})"
        )
    if args.out:
        print(f"{len(results)} recording(s) -> {args.out}/<stem>_windows.csv, <stem>.json")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lungcvt.demo import run_demo

    m = run_demo(args.out, device=args.device, seed=args.seed, quick=args.quick)
    h = m["headline"]
    print(f"headline: {h['metric']} = {h['value']:.4f} (chance {h['chance']:.4f}); results in {args.out}")
    return 0


_COMMANDS = {
    "demo": _cmd_demo,
    "dataset-stats": _cmd_dataset_stats,
    "features": _cmd_features,
    "train": _cmd_train,
    "cv": _cmd_cv,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (expected errors: one line on stderr, exit code 2)."""
    return run_cli(
        build_parser(),
        argv,
        _COMMANDS,
        expected=(FileNotFoundError, ValueError, KeyError),
        error_code=2,
        interrupt_hint="`lungcvt train` resumes from OUT/last_state.pt",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
