"""Command-line interface of ``pocapnet``: demo, make-synthetic, extract, train, evaluate, predict."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import run_cli

from pocapnet import __version__

__all__ = ["build_parser", "main", "resolve_config"]


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "pocapnet") -> None:
    p.add_argument("--preset", default=default_preset,
                   help="registered config: pocapnet (LDAM + delayed estimation), pocapnet_tcn / pocapnet_pe / "
                        "pocapnet_de (Table 1 rows), pocapnet_ce / pocapnet_focal (Table 2), pocapnet_causal, "
                        "pocapnet_tiny, pocapnet_demo (default: %(default)s)")
    p.add_argument("--config", type=Path, help="YAML/JSON overrides {model: {...}, features: {...}, train: {...}}")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``pocapnet`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pocapnet",
        description="PoCaPNet (Interspeech 2023): surgical phase recognition from speech and X-ray with MS-TCN.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> features -> train -> evaluate -> report (~2 min on CPU)")
    p.add_argument("--out", type=Path, default=Path("pocapnet_demo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (for tests)")

    p = sub.add_parser("make-synthetic", help="write synthetic operations in the PoCaP layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-ops", type=int, default=10)
    p.add_argument("--seconds", type=int, nargs=2, default=(90, 120), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--labels", choices=("json", "csv"), default="json")

    p = sub.add_parser("extract", help="wav2vec2 + DenseNet features, one .npy per operation and modality")
    p.add_argument("--data", type=Path, required=True, help="folder with OP_xxx/ operations")
    p.add_argument("--out", type=Path, required=True, help="feature folder (resumable)")
    _add_config_args(p)
    p.add_argument("--wav2vec2", help="local folder / HF cache name / tiny-random / random-xlsr53")
    p.add_argument("--xray-weights", help="densenet121-res224-all / a .pt file / random / tiny-random")
    p.add_argument("--pooled", action="store_true", help="mean-pool the 349 wav2vec2 frames (349x smaller)")
    p.add_argument("--fp16", action="store_true", help="store float16 arrays")
    p.add_argument("--fp32", action="store_true",
                   help="run wav2vec2 in float32 (default: a copy cast once to bf16, several times faster on CPUs with "
                        "AVX512-BF16/AMX; cosine >= 0.9998 to fp32, bench/extract.py)")
    p.add_argument("--ops", nargs="*", help="only these operations")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("train", help="train on extracted features (early stopping, resumable)")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)
    p.add_argument("--split", type=Path, help="split manifest (medshared save_split JSON) or 'official' (the code's "
                                              "16/6/5 operations); default: seeded 60/20/20 by operation")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="per-operation accuracy / weighted F1 (mean ± std), ribbons, confusion")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--ops", nargs="*", help="operations (default: the checkpoint's test split)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("predict", help="phase per second for one operation (whole, or --stream second by second)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--op", type=Path, required=True, help="operation folder OP_xxx/ (raw wav + frames)")
    p.add_argument("--features", type=Path, help="precomputed feature folder of this operation (whole-op mode)")
    p.add_argument("--stream", action="store_true", help="causal, one estimate per second from the live feed")
    p.add_argument("--fp32", action="store_true",
                   help="float32 everywhere (default: wav2vec2 as the checkpoint's features.bf16 says, and with "
                        "--stream the three audio branches on bf16 weights; same predictions, bench/stream.py)")
    p.add_argument("--out", type=Path, required=True, help="output folder (predictions.csv)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--device", default="auto")
    return parser


def resolve_config(preset: str, config_file: Path | None, **features: Any) -> Any:
    """Preset, then YAML overrides, then explicit feature flags."""
    from medshared.config import load_config_file, override_dataclass

    from pocapnet.config import get_config

    cfg = get_config(preset)
    if config_file is not None:
        cfg = override_dataclass(cfg, load_config_file(config_file))
    feat = {k: v for k, v in features.items() if v not in (None, False)}
    if feat:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, **feat))
    return cfg


def _device(spec: str) -> Any:
    from medshared.runtime import resolve_device

    return resolve_device(spec)


def _cmd_make_synthetic(a: argparse.Namespace) -> int:
    from pocapnet.synthetic import make_synthetic_dataset

    names = make_synthetic_dataset(a.out, a.n_ops, tuple(a.seconds), a.seed, a.frame_format, a.labels)
    print(f"wrote {len(names)} operations to {a.out}")
    return 0


def _cmd_extract(a: argparse.Namespace) -> int:
    from pocapnet.features import extract_dataset

    cfg = resolve_config(a.preset, a.config, wav2vec2=a.wav2vec2, xray_weights=a.xray_weights, pooled=a.pooled,
                         fp16=a.fp16)
    if a.fp32:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, bf16=False))
    ops = extract_dataset(a.data, a.out, cfg.features, _device(a.device), ops=a.ops or None)
    print(f"features of {len(ops)} operations in {a.out}")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from pocapnet.train import fit, split_operations

    cfg = resolve_config(a.preset, a.config)
    if not a.features.is_dir():
        raise FileNotFoundError(f"feature folder not found: {a.features} (run `pocapnet extract` first)")
    ops = sorted(p.name for p in a.features.iterdir() if (p / "meta.json").is_file())
    if not ops:
        raise FileNotFoundError(f"{a.features}: no extracted operations (OP_xxx/meta.json); run `pocapnet extract`")
    split = split_operations(ops, cfg, a.split)
    res = fit(a.features, a.out, cfg, split, _device(a.device), resume=not a.no_resume)
    print(f"best epoch {res['best_epoch']} val loss {res['best_val_loss']:.4f} -> {res['checkpoint']}")
    return 0


def _summary_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | mean | std |", "|---|---|---|"]
    for k in ("accuracy", "f1_weighted", "precision_weighted", "recall_weighted"):
        if k in summary:
            lines.append(f"| {k} | {summary[k]['mean']:.4f} | {summary[k]['std']:.4f} |")
    return "\n".join(lines)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from pocapnet.evaluate import evaluate_operations, write_results
    from pocapnet.train import load_model

    dev = _device(a.device)
    model, cfg, extra = load_model(a.checkpoint, dev)
    ops = a.ops or extra.get("split", {}).get("test")
    if not ops:
        raise ValueError("no operations to evaluate: pass --ops (the checkpoint holds no test split)")
    res = evaluate_operations(model, a.features, ops, cfg.train.batch_size, dev)
    write_results(res, a.out)
    print(_summary_table(res["summary"]))
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_csv

    from pocapnet.config import PHASES
    from pocapnet.data import load_operation, read_frame
    from pocapnet.features import (
        AudioExtractor,
        XrayExtractor,
        extract_operation,
        load_densenet,
        load_feature_operation,
        load_wav2vec2,
    )
    from pocapnet.train import load_model, run_operation

    dev = _device(a.device)
    model, cfg, _ = load_model(a.checkpoint, dev)
    if a.fp32:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, bf16=False))
    op = load_operation(a.op.parent, a.op.name, cfg.features.sample_rate, require_labels=False)
    rows: list[dict[str, Any]] = []
    if a.stream:
        from pocapnet.stream import OnlineExtractor, StreamingPredictor

        fx = cfg.features
        online = OnlineExtractor(AudioExtractor(load_wav2vec2(fx.wav2vec2), fx, dev),
                                 XrayExtractor(load_densenet(fx.xray_weights), fx, dev), fx)
        sp = StreamingPredictor(model, cfg.train.batch_size, dev, bf16=not a.fp32)
        sr = fx.sample_rate
        lat = []
        for t in range(op.seconds):
            t0 = time.perf_counter()
            img, aud = online.step(op.audio[:, t * sr : (t + 1) * sr], read_frame(op.frames[t]))
            pred, prob = sp.step(img, aud)
            lat.append(time.perf_counter() - t0)
            rows.append({"second": t, "phase": PHASES[pred], "index": pred, "prob": round(float(prob[pred]), 4)})
            if not a.quiet:
                print(f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d} {PHASES[pred]:16s} p={prob[pred]:.2f}",
                      flush=True)
        print(f"streamed {op.seconds} s, mean latency {1000 * np.mean(lat):.1f} ms per second (incl. extraction)")
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pocapnet_feat_") as tmp:
            if a.features is not None:
                fop = load_feature_operation(a.features.parent, a.features.name)
            else:  # extract this operation's features with the checkpoint's extractor settings
                fx = cfg.features
                extract_operation(op, Path(tmp) / op.name, AudioExtractor(load_wav2vec2(fx.wav2vec2), fx, dev),
                                  XrayExtractor(load_densenet(fx.xray_weights), fx, dev), fx, progress=not a.quiet)
                fop = load_feature_operation(tmp, op.name)
            r = run_operation(model, fop, cfg.train.batch_size, dev)
            del fop
        for t, p in enumerate(r["pred"]):
            prob_t = round(float(r["prob"][t, p]), 4)
            rows.append({"second": t, "phase": PHASES[int(p)], "index": int(p), "prob": prob_t})
    if op.labels is not None:
        from pocapnet.evaluate import operation_metrics

        m = operation_metrics(op.labels[: len(rows)], np.array([r["index"] for r in rows]))
        print(f"{op.name}: accuracy {m['accuracy']:.4f}, weighted F1 {m['f1_weighted']:.4f} (transitions removed)")
    atomic_write_csv(Path(a.out) / "predictions.csv", rows)
    print(f"wrote {Path(a.out) / 'predictions.csv'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pocapnet.demo import run_demo

    run_demo(args.out, device=args.device, seed=args.seed, quick=args.quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 on expected bad input, with one message on stderr)."""
    from pocapnet.data import DataError

    handlers = {"demo": _cmd_demo, "make-synthetic": _cmd_make_synthetic, "extract": _cmd_extract,
                "train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict}
    return run_cli(build_parser(), argv, handlers, expected=(FileNotFoundError, DataError, ValueError),
                   interrupt_hint="re-run the same command to resume")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
