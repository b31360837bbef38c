"""Command-line interface of ``pocapnet``: demo, make-synthetic, ingest, extract, train, evaluate, predict.

A thin layer over the library: :mod:`pocapnet.ingest`, :func:`pocapnet.features.extract_dataset`,
:func:`pocapnet.train.fit`, :func:`pocapnet.evaluate.evaluate_operations` and :mod:`pocapnet.predict`.
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

from pocapnet import __version__

__all__ = ["build_parser", "main", "resolve_config"]


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
    p.add_argument("--xray-fps", type=float, help="frame rate of DICOM images without timing")
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
    prec.add_argument("--fp32", action="store_true", help="run wav2vec2 in float32")
    prec.add_argument(
        "--bf16",
        action="store_true",
        help="run wav2vec2 on a bf16 copy (default: only where the hardware has native bf16)",
    )
    p.add_argument("--channels", type=int, nargs="+", help="Channel_k.wav files to use (default 1 2 3)")
    p.add_argument("--ops", nargs="*", help="only these operations")
    p.add_argument("--shard", help="i/n: this process extracts shard i of n (default: torchrun's rank/world size)")
    _add_policy_args(p)
    p.add_argument("--device", default="auto")

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
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="per-operation and per-phase metrics, Edit, F1@k, ribbons, confusion")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--ops", nargs="*", help="operations (default: the checkpoint's test split)")
    p.add_argument("--stream", action="store_true", help="score the online (second by second, past only) predictions")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")

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
    p.add_argument("--bf16", action="store_true", help="--stream: audio branches in bf16 (CPUs with native bf16)")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="run wav2vec2 in float32 (default: as the checkpoint's features.bf16; auto = native bf16 only)",
    )
    _add_weights_args(p)
    _add_policy_args(p)
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
        + (f"; changes: {'; '.join(rec['changes'])}" if rec["changes"] else "")
    )
    return 0


def _cmd_extract(a: argparse.Namespace) -> int:
    from medshared.distributed import resolve_shard

    from pocapnet.features import extract_dataset

    bf16 = False if a.fp32 else (True if a.bf16 else None)
    cfg = resolve_config(
        a.preset,
        a.config,
        wav2vec2=a.wav2vec2,
        xray_weights=a.xray_weights,
        pooled=a.pooled,
        fp16=a.fp16,
        channels=tuple(a.channels) if a.channels else None,
    )
    if bf16 is not None:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, bf16=bf16))
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
        res = fit(a.features, a.out, cfg, split, ctx.device, resume=not a.no_resume, ctx=ctx)
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
    from pocapnet.predict import causal_warning
    from pocapnet.train import load_model

    dev = _device(a.device)
    model, cfg, extra = load_model(a.checkpoint, dev)
    ops = a.ops or extra.get("split", {}).get("test")
    if not ops:
        raise ValueError("no operations to evaluate: pass --ops (the checkpoint holds no test split)")
    if a.stream and causal_warning(cfg):
        logging.getLogger("pocapnet").warning(causal_warning(cfg))
    res = evaluate_operations(
        model, a.features, ops, cfg.train.batch_size, dev, stream=a.stream, checkpoint_extra=extra, cfg=cfg
    )
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
    dev = _device(a.device)
    model, cfg, extra = load_model(a.checkpoint, dev)
    if a.fp32:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, bf16=False))
    fx = cfg.features
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
        ex = load_extractors(cfg, extra, dev, a.wav2vec2, a.xray_weights, a.offline)
        src = (
            follow_seconds(a.op, fx.channels, fx.sample_rate, need_audio, need_xray, idle_timeout_s=a.idle_timeout)
            if a.follow
            else operation_seconds(op, need_audio, need_xray)
        )
        r = predict_stream(model, cfg, src, ex, dev, bf16=a.bf16, on_second=show)
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
            )
        )
        r = predict_offline(model, cfg, extra, op, a.features, dev, ex, progress=not a.quiet)
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
