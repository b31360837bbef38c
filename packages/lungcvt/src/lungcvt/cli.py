"""Command-line interface of ``lungcvt``: demo, dataset-stats, features, train, cv, evaluate, predict.

A thin layer: each command calls the library function and prints its result; the parser and the arguments' mapping
to configs and data options are in :mod:`lungcvt.cli_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medshared.cli import run_cli

from lungcvt.cli_args import build_parser, data_options, load_cfg, train_cfg
from lungcvt.config import CLASSES

__all__ = ["build_parser", "main"]


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

    cfg = load_cfg(args)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from lungcvt.train import train

    cfg, weights = train_cfg(args)
    res = train(
        cfg,
        args.data,
        args.out,
        data=data_options(args, args.allow_missing_class),
        device=args.device,
        weights=weights,
        init=args.init,
        cache_dir=args.cache,
        num_workers=args.workers,
        resume=not args.no_resume,
        offline=args.offline,
        precision=args.precision,
    )
    import os

    if os.environ.get("RANK", "0") == "0":
        score = res.best_val.get("icbhi", {}).get("score", float("nan"))
        print(f"best epoch {res.best_epoch}: val ICBHI score {score:.4f} -> {res.best_checkpoint}")
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from lungcvt.cv import cv_table, device_table, parse_folds, parse_seeds, run_cv

    if args.protocol:
        raise ValueError("lungcvt cv takes --folds (e.g. 0-4, official or random80-20), not --protocol")
    cfg, weights = train_cfg(args)
    res = run_cv(
        cfg,
        args.data,
        args.out,
        parse_folds(args.folds),
        parse_seeds(args.seeds),
        data=data_options(args, args.allow_missing_class),
        device=args.device,
        weights=weights,
        cache_dir=args.cache,
        num_workers=args.workers,
        offline=args.offline,
        precision=args.precision,
    )
    print(cv_table(res["summary"], len(res["runs"])))
    print(device_table(res))
    print(f"results in {Path(args.out) / 'cv.json'}, cv.csv, cv.md")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from lungcvt.baseline import run_baseline
    from lungcvt.cv import cv_table, device_table, parse_folds, parse_seeds

    if args.protocol:
        raise ValueError("lungcvt baseline takes --folds (e.g. 0-4, official or random80-20), not --protocol")
    res = run_baseline(
        args.data,
        args.out,
        parse_folds(args.folds),
        parse_seeds(args.seeds),
        data=data_options(args),
        cache_dir=args.cache,
        n_estimators=args.trees,
    )
    print(cv_table(res["summary"], len(res["runs"])))
    print(device_table(res))
    print(f"results in {Path(args.out) / 'cv.json'}, cv.csv, cv.md (features {res['feature_seconds']} s)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lungcvt.evaluate import evaluate

    m = evaluate(
        args.checkpoint,
        args.data,
        args.out,
        split=args.split,
        data=data_options(args, keep_protocol_none=True),
        device=args.device,
        cache_dir=args.cache,
        mix_channels=args.mix_channels,
        precision=args.precision,
    )
    print(f"{'variant':10s} {'Se':>7s} {'Sp':>7s} {'Score':>7s}")
    for v in ("icbhi", "macro_ovr", "two_class"):
        print(f"{v:10s} {m[v]['se']:7.4f} {m[v]['sp']:7.4f} {m[v]['score']:7.4f}")
    print(f"{'device':10s} {'n':>5s} {'Se':>7s} {'Sp':>7s} {'Score':>7s} {'AUCabn':>7s} {'AUCovr':>7s}")
    for d, v in [("all", {**m["icbhi"], "n": m["n"], **m}), *m["by_device"].items()]:
        vals = (v["se"], v["sp"], v["score"], v.get("auroc_abnormal"), v.get("auroc_macro_ovr"))
        cells = " ".join(f"{x:7.4f}" if x is not None else f"{'n/a':>7s}" for x in vals)
        print(f"{d:10s} {v['n']:5d} {cells}")
    for note in m.get("device_notes", []):
        print(f"note: {note}")
    print(f"accuracy {m['icbhi']['accuracy']:.4f} on {m['n']} cycles ({m['protocol']}); results in {args.out}")
    print(f"precision {m['precision']['name']} ({m['precision']['reason']})")
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
        precision=args.precision,
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

    m = run_demo(args.out, device=args.device, seed=args.seed, quick=args.quick, precision=args.precision)
    h = m["headline"]
    print(f"headline: {h['metric']} = {h['value']:.4f} (chance {h['chance']:.4f}); results in {args.out}")
    print(f"precision {m['precision']['name']} ({m['precision']['reason']})")
    return 0


_COMMANDS = {
    "demo": _cmd_demo,
    "dataset-stats": _cmd_dataset_stats,
    "features": _cmd_features,
    "train": _cmd_train,
    "cv": _cmd_cv,
    "baseline": _cmd_baseline,
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
