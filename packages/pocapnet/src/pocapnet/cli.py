"""Command-line interface of ``pocapnet``: demo, make-synthetic, ingest, extract, train, evaluate, predict.

A thin layer over the library: :mod:`pocapnet.ingest`, :func:`pocapnet.features.extract_dataset`,
:func:`pocapnet.train.fit`, :func:`pocapnet.evaluate.evaluate_operations` and :mod:`pocapnet.predict`; the parser
is built in :mod:`pocapnet.cli_args` (``build_parser`` stays importable here).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import run_cli

from pocapnet.cli_args import build_parser

__all__ = ["build_parser", "main", "resolve_config"]


def resolve_config(preset: str, config_file: Path | None, **features: Any) -> Any:
    """Preset, then YAML overrides, then explicit feature flags."""
    from medshared.config import load_config_file, override_dataclass

    from pocapnet.config import get_config

    cfg = get_config(preset)
    if config_file is not None:
        cfg = override_dataclass(cfg, load_config_file(config_file))
    feat = {k: v for k, v in features.items() if v is not None and v is not False}
    if feat:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, **feat))
    return cfg


def _device(spec: str) -> Any:
    from medshared.runtime import resolve_device

    return resolve_device(spec)


def _policy(a: argparse.Namespace) -> Any:
    from pocapnet.data import InputPolicy

    return InputPolicy(mix_to_mono=a.mix_to_mono, dicom_first_frame=a.dicom_first_frame, trim=a.trim)


def _cmd_make_synthetic(a: argparse.Namespace) -> int:
    from pocapnet.synthetic import make_synthetic_dataset

    names = make_synthetic_dataset(a.out, a.n_ops, tuple(a.seconds), a.seed, a.frame_format, a.labels)
    print(f"wrote {len(names)} operations to {a.out}")
    return 0


def _cmd_ingest(a: argparse.Namespace) -> int:
    from pocapnet.ingest import IngestOptions, ingest_operation, parse_channel

    opt = IngestOptions(
        mix_to_mono=a.mix_to_mono,
        physician=a.physician,
        peak_normalize=a.peak_normalize,
        mic_off_threshold=a.mic_off_threshold,
        align_to=a.align_to,
        xray_offset_s=a.xray_offset,
        xray_fps=a.xray_fps,
        crop=tuple(a.crop) if a.crop else None,
        fill_before_xray=a.fill_before_xray,
        trim=a.trim,
        labels_op=a.labels_op,
    )
    rec = ingest_operation(a.out, a.op, [parse_channel(c) for c in a.channel], a.xray, a.labels, opt, a.overwrite)
    print(
        f"{a.out / a.op}: {rec['seconds']} s, {len(rec['channels'])} channels"
        + (f", X-ray from {rec['xray']['kind']}" if "xray" in rec else "")
        + (f" ({rec['xray']['timing']['frame_rate']} frame rate)" if "timing" in rec.get("xray", {}) else "")
        + (f"; changes: {'; '.join(rec['changes'])}" if rec["changes"] else "")
    )
    return 0


def _cmd_extract(a: argparse.Namespace) -> int:
    from medshared.distributed import resolve_shard

    from pocapnet.features import extract_dataset

    cfg = resolve_config(
        a.preset,
        a.config,
        wav2vec2=a.wav2vec2,
        xray_weights=a.xray_weights,
        pooled=a.pooled,
        fp16=a.fp16,
        channels=tuple(a.channels) if a.channels else None,
    )
    from pocapnet.precision import spec_from_aliases

    # --precision, else the old --fp32 / --bf16 flags, else (in extract_dataset) the config's features.bf16
    spec = spec_from_aliases(a.precision, True if a.bf16 else None, a.fp32)
    shard = resolve_shard(a.shard)
    ops = extract_dataset(
        a.data,
        a.out,
        cfg.features,
        _device(a.device),
        ops=a.ops or None,
        policy=_policy(a),
        shard=shard,
        offline=a.offline,
        precision=spec,
        workers=a.workers,
    )
    print(f"features of {len(ops)} operations in {a.out}" + (f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from medshared.distributed import init_distributed

    from pocapnet.train import fit, split_operations

    cfg = resolve_config(a.preset, a.config)
    if not a.features.is_dir():
        raise FileNotFoundError(f"feature folder not found: {a.features} (run `pocapnet extract` first)")
    ops = sorted(p.name for p in a.features.iterdir() if (p / "meta.json").is_file())
    if not ops:
        raise FileNotFoundError(f"{a.features}: no extracted operations (OP_xxx/meta.json); run `pocapnet extract`")
    split = split_operations(ops, cfg, a.split)
    ctx = init_distributed(a.device)
    try:
        res = fit(
            a.features,
            a.out,
            cfg,
            split,
            ctx.device,
            resume=not a.no_resume,
            ctx=ctx,
            precision=a.precision,
            workers=a.workers,
        )
    finally:
        ctx.close()
    if ctx.is_main:
        print(
            f"best epoch {res['best_epoch']} val loss {res['best_val_loss']:.4f} -> {res['checkpoint']} "
            f"(world size {res['run']['world_size']}, effective batch {res['run']['effective_batch_seconds']} s)"
        )
    return 0


def _summary_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | mean | std |", "|---|---|---|"]
    for k in ("accuracy", "f1_weighted", "f1_macro", "jaccard_macro", "edit", "f1@10", "f1@25", "f1@50"):
        if k in summary:
            lines.append(f"| {k} | {summary[k]['mean']:.4f} | {summary[k]['std']:.4f} |")
    return "\n".join(lines)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from pocapnet.evaluate import evaluate_operations, write_results
    from pocapnet.precision import resolve
    from pocapnet.predict import causal_warning
    from pocapnet.train import load_model

    dev = _device(a.device)
    model, cfg, extra = load_model(a.checkpoint, dev)
    prec = resolve(a.precision, dev, "pocapnet.infer", cfg.model)
    logging.getLogger("pocapnet").info("precision %s: %s", prec.name, prec.reason)
    ops = a.ops or extra.get("split", {}).get("test")
    if not ops:
        raise ValueError("no operations to evaluate: pass --ops (the checkpoint holds no test split)")
    if a.stream and causal_warning(cfg):
        logging.getLogger("pocapnet").warning(causal_warning(cfg))
    res = evaluate_operations(
        model,
        a.features,
        ops,
        cfg.train.batch_size,
        dev,
        stream=a.stream,
        checkpoint_extra=extra,
        cfg=cfg,
        precision=prec,
        workers=a.workers,
    )
    res["precision"] = prec.as_dict()
    write_results(res, a.out, prefix="stream" if a.stream else "test")
    print(("online (streaming)" if a.stream else "offline") + f" metrics over {len(ops)} operations")
    print(_summary_table(res["summary"]))
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_csv

    from pocapnet.config import PHASES
    from pocapnet.data import load_operation
    from pocapnet.follow import follow_seconds
    from pocapnet.predict import load_extractors, operation_seconds, predict_offline, predict_stream, prediction_rows
    from pocapnet.train import load_model

    if a.follow and not a.stream:
        raise ValueError("--follow reads a recording while it is written, one second at a time: add --stream")
    from pocapnet.precision import resolve, spec_from_aliases

    dev = _device(a.device)
    model, cfg, extra = load_model(a.checkpoint, dev)
    fx = cfg.features
    # the old flags are aliases; without them and --precision, the checkpoint's features.bf16 decides the extractors
    spec = spec_from_aliases(a.precision, True if a.bf16 else None, a.fp32)
    prec_m = resolve(spec, dev, "pocapnet.infer", cfg.model)
    log = logging.getLogger("pocapnet")
    log.info("model's precision %s: %s", prec_m.name, prec_m.reason)
    bf16_x = False
    if a.stream or a.features is None:  # the extractors run (not with precomputed features)
        prec_x = resolve(spec_from_aliases(spec, fx.bf16), dev, "pocapnet.extract")
        log.info("extractors' precision %s: %s", prec_x.name, prec_x.reason)
        bf16_x = prec_x.name == "bf16"
    need_audio, need_xray = "audio" in cfg.model.modalities, "xray" in cfg.model.modalities
    op = None
    if not a.follow:  # a finished recording (its labels, when present, are scored)
        op = load_operation(
            a.op.parent, a.op.name, fx.sample_rate, channels=fx.channels, require_labels=False, policy=_policy(a)
        )

    def show(t: int, pred: int, prob: np.ndarray, lat: float) -> None:
        if not a.quiet:
            print(
                f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d} {PHASES[pred]:16s} p={prob[pred]:.2f} "
                f"({1000 * lat:.0f} ms)",
                flush=True,
            )

    if a.stream:
        ex = load_extractors(cfg, extra, dev, a.wav2vec2, a.xray_weights, a.offline, bf16=bf16_x)
        src = (
            follow_seconds(a.op, fx.channels, fx.sample_rate, need_audio, need_xray, idle_timeout_s=a.idle_timeout)
            if a.follow
            else operation_seconds(op, need_audio, need_xray)
        )
        r = predict_stream(model, cfg, src, ex, dev, bf16=prec_m.name == "bf16", on_second=show)
        print(
            f"streamed {len(r['pred'])} s, mean latency {1000 * np.mean(r['latency_s']):.1f} ms per second "
            "(incl. extraction)"
        )
    else:
        ex = (
            None
            if a.features is not None
            else load_extractors(
                dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, modalities=("xray", "audio"))),
                extra,
                dev,
                a.wav2vec2,
                a.xray_weights,
                a.offline,
                bf16=bf16_x,
            )
        )
        r = predict_offline(model, cfg, extra, op, a.features, dev, ex, progress=not a.quiet, autocast=prec_m.autocast)
    rows = prediction_rows(r["pred"], r["prob"])
    if op is not None and op.labels is not None:
        from pocapnet.evaluate import operation_metrics

        m = operation_metrics(op.labels[: len(rows)], r["pred"])
        print(
            f"{op.name}: accuracy {m['accuracy']:.4f}, weighted F1 {m['f1_weighted']:.4f}, macro F1 "
            f"{m['f1_macro']:.4f}, Edit {m['edit']:.4f} (transitions removed)"
        )
    atomic_write_csv(Path(a.out) / "predictions.csv", rows)
    print(f"wrote {Path(a.out) / 'predictions.csv'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pocapnet.demo import run_demo

    run_demo(args.out, device=args.device, seed=args.seed, quick=args.quick)
    return 0


def _setup_logging() -> None:
    log = logging.getLogger("pocapnet")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("pocapnet: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 on expected bad input, with one message on stderr)."""
    from pocapnet.data import DataError

    _setup_logging()
    handlers = {
        "demo": _cmd_demo,
        "make-synthetic": _cmd_make_synthetic,
        "ingest": _cmd_ingest,
        "extract": _cmd_extract,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "predict": _cmd_predict,
    }
    return run_cli(
        build_parser(),
        argv,
        handlers,
        expected=(FileNotFoundError, FileExistsError, DataError, ValueError),
        interrupt_hint="re-run the same command to resume",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
