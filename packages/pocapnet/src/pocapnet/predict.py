"""Prediction as library functions (the CLI's ``predict`` calls these): a whole operation offline, a finished
recording streamed second by second, or a live recording followed while it is being written.

Every path builds its extractors from the checkpoint's recorded feature settings and refuses weights whose SHA-256
differs from those the model was trained on (:func:`load_extractors`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocapnet.config import PHASES, PocapConfig
from pocapnet.data import Operation, read_frame
from pocapnet.extractors import AudioExtractor, XrayExtractor
from pocapnet.model import PoCaPNet

__all__ = [
    "CAUSAL_NOTE",
    "causal_warning",
    "load_extractors",
    "predict_offline",
    "operation_seconds",
    "predict_stream",
    "prediction_rows",
]

log = logging.getLogger("pocapnet")

#: Measured on the demo data (README "Streaming vs offline"): what streaming costs an acausal checkpoint.
CAUSAL_NOTE = (
    "its MS-TCN is acausal (model.causal_conv false, the paper's setting): offline, each second also sees the rest of "
    "its chunk, which streaming cannot; on the demo data streamed accuracy was 0.520 against 0.720 offline, and a "
    "causal model's 0.579 (README 'Streaming vs offline'). A model trained with --preset pocapnet_causal "
    "(model.causal_conv: true) streams exactly its offline predictions"
)


def causal_warning(cfg: PocapConfig) -> str | None:
    """The warning for streaming an acausal checkpoint, or None for a causal one."""
    return None if cfg.model.causal_conv else f"streaming an acausal checkpoint: {CAUSAL_NOTE}"


def load_extractors(
    cfg: PocapConfig,
    extra: dict[str, Any],
    device: torch.device | str,
    wav2vec2: str | None = None,
    xray_weights: str | None = None,
    offline: bool = False,
    bf16: bool | None = None,
) -> tuple[AudioExtractor | None, XrayExtractor | None]:
    """The checkpoint's extractors (only the modalities the model reads), checked against its recorded weights.

    Args:
        bf16: run them on bf16 copies (what ``--precision`` resolved to for ``pocapnet.extract``); None: the
            config's ``features.bf16`` (the old field), else fp32.
        wav2vec2, xray_weights: where to load the weights from instead of the recorded source (e.g. a local copy);
            they must be the same weights (SHA-256).

    Raises:
        ValueError: the weights differ from the ones the checkpoint's features were made with.
    """
    from pocapnet.weights import load_densenet, load_wav2vec2, weights_identity

    fx = cfg.features
    recorded = extra.get("weights") or {}
    audio = xray = None
    if "audio" in cfg.model.modalities:
        src = wav2vec2 or fx.wav2vec2
        m = load_wav2vec2(src, offline=offline)
        _same(weights_identity(m, src), recorded.get("wav2vec2"), "wav2vec2", "--wav2vec2")
        audio = AudioExtractor(m, fx, device, bf16=bf16)
    if "xray" in cfg.model.modalities:
        src = xray_weights or fx.xray_weights
        m = load_densenet(src, offline=offline)
        _same(weights_identity(m, src), recorded.get("xray"), "X-ray", "--xray-weights")
        xray = XrayExtractor(m, fx, device, bf16=bool(fx.bf16) if bf16 is None else bf16)
    return audio, xray


def _same(got: dict[str, Any], want: dict[str, Any] | None, what: str, flag: str) -> None:
    if want is None:
        log.warning("the checkpoint does not record its %s weights; they cannot be checked", what)
        return
    if got["sha256"] != want.get("sha256"):
        raise ValueError(
            f"{what} weights {got['source']!r} (sha256 {got['sha256']}) are not the ones this checkpoint "
            f"was trained with ({want.get('source')!r} from {want.get('path')}, sha256 "
            f"{want.get('sha256')}); pass {flag} with those weights"
        )


def prediction_rows(pred: np.ndarray, prob: np.ndarray) -> list[dict[str, Any]]:
    """``predictions.csv`` rows ``second, phase, index, prob``."""
    return [
        {"second": t, "phase": PHASES[int(p)], "index": int(p), "prob": round(float(prob[t, int(p)]), 4)}
        for t, p in enumerate(pred)
    ]


def predict_offline(
    model: PoCaPNet,
    cfg: PocapConfig,
    extra: dict[str, Any],
    op: Operation | None = None,
    features: str | Path | None = None,
    device: str | torch.device = "cpu",
    extractors: tuple[AudioExtractor | None, XrayExtractor | None] | None = None,
    progress: bool = False,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Whole-operation prediction (the paper's offline setting): from a feature folder, or from the raw operation
    (features extracted with the checkpoint's settings into a temporary folder). Returns ``{"pred", "prob"}``.

    ``autocast``: a context factory for the model's forward (``Precision.autocast``)."""
    import tempfile

    from pocapnet.features import extract_operation, load_feature_operation
    from pocapnet.train import check_checkpoint_features, run_operation

    with tempfile.TemporaryDirectory(prefix="pocapnet_feat_") as tmp:
        if features is not None:
            features = Path(features)
            fop = load_feature_operation(features.parent, features.name)
            check_checkpoint_features(extra, cfg, fop)
        else:
            if op is None:
                raise ValueError("predict_offline needs an operation or a feature folder")
            audio, xray = extractors or load_extractors(cfg, extra, device)
            if audio is None or xray is None:  # the feature files hold both modalities
                audio, xray = load_extractors(
                    dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, modalities=("xray", "audio"))),
                    extra,
                    device,
                )
            extract_operation(
                op, Path(tmp) / op.name, audio, xray, cfg.features, extra.get("weights"), progress=progress
            )
            fop = load_feature_operation(tmp, op.name)
        r = run_operation(model, fop, cfg.train.batch_size, device, autocast=autocast)
        del fop
    return {"pred": r["pred"], "prob": r["prob"]}


def operation_seconds(
    op: Operation, need_audio: bool = True, need_xray: bool = True
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """A finished operation replayed second by second: ``(t, samples (M, sr), frame)``."""
    sr = op.sample_rate
    for t in range(op.seconds):
        samples = op.audio[:, t * sr : (t + 1) * sr] if need_audio else None
        frame = read_frame(op.frames[t], dicom_first_frame=op.policy.dicom_first_frame) if need_xray else None
        yield t, samples, frame


def predict_stream(
    model: PoCaPNet,
    cfg: PocapConfig,
    seconds: Iterable[tuple[int, Any, Any]],
    extractors: tuple[AudioExtractor | None, XrayExtractor | None],
    device: str | torch.device = "cpu",
    bf16: bool = False,
    on_second: Callable[[int, int, np.ndarray, float], None] | None = None,
) -> dict[str, Any]:
    """Online prediction: one estimate per second from the past only.

    Args:
        seconds: ``(t, samples, frame)`` per second (:func:`operation_seconds`, or
            :func:`pocapnet.follow.follow_seconds` for a recording still being written).
        extractors: from :func:`load_extractors`.
        on_second: called as ``on_second(t, phase_index, probabilities, latency_s)`` after each second (the live
            output).

    Returns:
        ``{"pred": (T,), "prob": (T, C), "latency_s": (T,)}`` (latency includes the feature extraction).
    """
    from pocapnet.stream import OnlineExtractor, StreamingPredictor

    warn = causal_warning(cfg)
    if warn:
        log.warning(warn)
    audio, xray = extractors
    online = OnlineExtractor(audio, xray, cfg.features, num_mics=cfg.model.num_mics)
    sp = StreamingPredictor(model, cfg.train.batch_size, device, bf16=bf16)
    preds, probs, lat = [], [], []
    for t, samples, frame in seconds:
        t0 = time.perf_counter()
        img, aud = online.step(samples, frame)
        pred, prob = sp.step(img, aud)
        lat.append(time.perf_counter() - t0)
        preds.append(pred)
        probs.append(prob)
        if on_second is not None:
            on_second(t, pred, prob, lat[-1])
    if not preds:
        raise ValueError("no complete second of input to predict")
    return {"pred": np.array(preds, dtype=np.int64), "prob": np.stack(probs), "latency_s": np.array(lat)}
