"""``lungcvt predict``: classify the annotated cycles, or windows covering the whole recording, and aggregate them
into one result per recording.

Windows (no annotation file): ``window`` seconds (default 2.7 s, the ICBHI mean cycle) every ``hop`` seconds, plus a
last window that ends at the end of the file, so every sample is seen (a file shorter than the window is one window).

Per recording (:func:`aggregate_recording`), ``aggregate="any"`` (default): crackles are present when any
window/cycle is called crackle or both, wheezes when any is called wheeze or both, and the recording's class follows
from the two flags, as a recording with one adventitious cycle is an abnormal recording (ICBHI annotates events per
cycle; a wheeze lasts a fraction of a recording). ``aggregate="mean"``: the class of the mean class probabilities,
which a few abnormal windows in a long recording rarely move. Both report the mean and the maximum probability of
each class over the windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lungcvt.config import CLASSES, LungCVTConfig
from lungcvt.data import Cycle, DataError, Recording, check_cycles_within, parse_stem, read_annotations
from lungcvt.dataset import CycleSet, cut_cycles, load_recording_audio, predict_logits
from lungcvt.evaluate import load_model, prediction_rows
from lungcvt.features import compute_features
from lungcvt.scoring import apply_normal_bias

__all__ = ["window_spans", "aggregate_recording", "predict_recording", "predict_files", "AGGREGATES"]

AGGREGATES = ("any", "mean")


def window_spans(duration_s: float, window_s: float, hop_s: float | None = None) -> list[tuple[float, float]]:
    """(start, end) of windows covering ``[0, duration_s]``: every ``hop_s`` (default ``window_s / 2``), and a last
    one ending at ``duration_s``; one window of the whole file when it is shorter than ``window_s``."""
    if window_s <= 0:
        raise ValueError(f"--window must be positive, got {window_s}")
    hop = window_s / 2 if hop_s is None else hop_s
    if hop <= 0:
        raise ValueError(f"--hop must be positive, got {hop}")
    if duration_s <= window_s:
        return [(0.0, float(duration_s))]
    starts = list(np.arange(0.0, duration_s - window_s + 1e-9, hop))
    spans = [(float(s), float(s + window_s)) for s in starts]
    if spans[-1][1] < duration_s - 1e-6:
        spans.append((float(duration_s - window_s), float(duration_s)))
    return spans


def aggregate_recording(rows: Sequence[dict], aggregate: str = "any") -> dict:
    """One recording's result from its per-window (or per-cycle) rows (``pred`` and ``p_<class>`` keys)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"--aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if not rows:
        raise ValueError("no windows to aggregate")
    probs = np.array([[r[f"p_{c}"] for c in CLASSES] for r in rows], dtype=np.float64)  # [W, C]
    preds = [CLASSES.index(r["pred"]) for r in rows]
    p_mean = probs.mean(axis=0)
    if aggregate == "any":
        crackles = any(p in (1, 3) for p in preds)
        wheezes = any(p in (2, 3) for p in preds)
        label = int(crackles) + 2 * int(wheezes)
    else:
        label = int(p_mean.argmax())
        crackles, wheezes = label in (1, 3), label in (2, 3)
    out = {
        "aggregate": aggregate,
        "pred": CLASSES[label],
        "crackles": bool(crackles),
        "wheezes": bool(wheezes),
        "n_windows": len(rows),
        "windows_per_class": {c: preds.count(i) for i, c in enumerate(CLASSES)},
        "p_mean": {c: round(float(v), 5) for c, v in zip(CLASSES, p_mean)},
        "p_max": {c: round(float(v), 5) for c, v in zip(CLASSES, probs.max(axis=0))},
    }
    if all("true" in r for r in rows):
        t = [CLASSES.index(r["true"]) for r in rows]
        tc, tw = any(x in (1, 3) for x in t), any(x in (2, 3) for x in t)
        out["true"] = CLASSES[int(tc) + 2 * int(tw)]
    return out


def predict_recording(
    model: torch.nn.Module,
    cfg: LungCVTConfig,
    wav: str | Path,
    annotations: str | Path | None = None,
    window_s: float = 2.7,
    hop_s: float | None = None,
    device: torch.device | str = "cpu",
    aggregate: str = "any",
    normal_bias: float = 0.0,
    bf16: bool = False,
) -> tuple[list[dict], dict]:
    """Classify one recording: per annotated cycle, or on windows covering the whole file (``normal_bias``: the
    checkpoint's validation-chosen offset of the normal logit, :mod:`lungcvt.scoring`).

    Returns:
        (rows: one dict per cycle/window with start, end, pred, p_<class> (and ``true`` when annotated),
        recording: :func:`aggregate_recording` plus recording, duration_s, window_s, hop_s).
    """
    dev = torch.device(device)
    wav = Path(wav)
    audio, sr = load_recording_audio(wav, cfg.features)
    dur = len(audio) / sr
    annotated = annotations is not None
    if annotated:
        cyc = read_annotations(annotations)
        try:
            info = parse_stem(wav.stem)
        except DataError:
            info = parse_stem("0_0_Tc_sc_unknown")
        cyc = check_cycles_within(Recording(wav.stem, wav, Path(annotations), info, cyc), dur)
    else:
        cyc = [Cycle(s, e, 0, 0) for s, e in window_spans(dur, window_s, hop_s)]
    feats = compute_features(cut_cycles(audio, sr, [(c.start, c.end) for c in cyc]), cfg.features, device=dev)
    cs = CycleSet(
        feats=[f.astype(np.float16) for f in feats],
        labels=[c.label for c in cyc],
        stems=[wav.stem] * len(cyc),
        starts=[round(c.start, 4) for c in cyc],
        ends=[round(c.end, 4) for c in cyc],
    )
    logits = apply_normal_bias(predict_logits(model, cs, cfg.features, dev, bf16=bf16), normal_bias)
    rows = prediction_rows(cs, logits, with_truth=annotated)
    rec = {"recording": wav.stem, "duration_s": round(dur, 4), **aggregate_recording(rows, aggregate)}
    rec.update({"window_s": None if annotated else window_s, "hop_s": None if annotated else (hop_s or window_s / 2)})
    return rows, rec


def predict_files(
    checkpoint: str | Path,
    wavs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    annotations: Sequence[str | Path | None] | None = None,
    window_s: float = 2.7,
    hop_s: float | None = None,
    device: str = "auto",
    aggregate: str = "any",
    mix_channels: bool = False,
    precision: str = "auto",
) -> list[tuple[list[dict], dict]]:
    """:func:`predict_recording` for each file with one model; with ``out_dir``, writes ``<stem>_windows.csv`` (one
    row per window or cycle) and ``<stem>.json`` (the recording's result) per file, atomically."""
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    if aggregate not in AGGREGATES:
        raise ValueError(f"--aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    dev = resolve_device(device)
    model, cfg, extra = load_model(checkpoint, dev)
    bias = float(extra.get("normal_bias", 0.0))
    from lungcvt.precision import resolve

    prec = resolve(precision, dev, bf16_alias=cfg.train.bf16)
    prec.apply()
    if mix_channels:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, channels="mix"))
    anns = list(annotations) if annotations is not None else [None] * len(wavs)
    if len(anns) != len(wavs):
        raise ValueError(f"{len(wavs)} recordings but {len(anns)} annotation files")
    results = []
    for wav, ann in zip(wavs, anns):
        rows, rec = predict_recording(model, cfg, wav, ann, window_s, hop_s, dev, aggregate, bias, prec.name == "bf16")
        rec["checkpoint"] = str(checkpoint)
        rec["normal_bias"] = bias
        rec["precision"] = prec.name
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            stem = Path(wav).stem
            atomic_write_csv(out / f"{stem}_windows.csv", rows)
            atomic_write_json(out / f"{stem}.json", rec)
        results.append((rows, rec))
    return results
