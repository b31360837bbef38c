"""Evaluation with ICBHI Se / Sp / Score (default), the paper code's macro one-vs-rest variant and the 2-class one.

All scores go through ``medshared.metrics.icbhi_scores``. Brief section 5: the paper's 57.36 % is the macro-OvR
Score; the same predictions score 43.02 % under the ICBHI definitions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lungcvt.config import CLASSES, LungCVTConfig, config_from_dict
from lungcvt.data import Cycle, DataError, Recording, load_audio, load_dataset, parse_stem, read_annotations
from lungcvt.model import LungCVT
from lungcvt.train import CycleSet, extract_cycles, predict_logits

__all__ = ["load_model", "score_predictions", "evaluate", "predict_file"]


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[LungCVT, LungCVTConfig, dict]:
    """Rebuild the model from a checkpoint alone (weights + config); returns (model in eval mode, config, extra)."""
    import dataclasses

    from medshared.checkpoint import load_checkpoint

    sd, cfg_d, extra = load_checkpoint(checkpoint)
    try:
        cfg = config_from_dict(cfg_d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint}: not a lungcvt checkpoint ({e})") from None
    mcfg = dataclasses.replace(cfg.model, pretrained=False)  # the checkpoint holds all weights
    model = LungCVT(mcfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: weights do not match the stored config ({str(e)[:300]})") from None
    return model.to(device).eval(), cfg, extra


def score_predictions(y_true, y_pred) -> dict:
    """ICBHI (default), macro-OvR and 2-class Se/Sp/Score, accuracy, macro F1 and the confusion matrix."""
    from medshared.metrics import classification_metrics, confusion_matrix, icbhi_scores

    y_true, y_pred = [int(v) for v in y_true], [int(v) for v in y_pred]
    out = {v: icbhi_scores(y_true, y_pred, variant=v, labels=CLASSES) for v in ("icbhi", "macro_ovr", "two_class")}
    out["classification"] = classification_metrics(y_true, y_pred, labels=list(range(len(CLASSES))))
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(range(len(CLASSES)))).tolist()
    out["n"] = len(y_true)
    return out


def majority_chance(train_labels, test_labels) -> dict:
    """Scores of always predicting the training split's majority class (what an input-blind model gets)."""
    maj = int(np.bincount(np.asarray(train_labels, dtype=int), minlength=len(CLASSES)).argmax())
    return {"majority_class": CLASSES[maj], **score_predictions(test_labels, [maj] * len(test_labels))}


def _rows(cycles: CycleSet, logits: np.ndarray) -> list[dict]:
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    rows = []
    for i in range(len(cycles)):
        p = int(probs[i].argmax())
        rows.append(
            {
                "recording": cycles.stems[i],
                "start": cycles.starts[i],
                "end": cycles.ends[i],
                "true": CLASSES[cycles.labels[i]],
                "pred": CLASSES[p],
                **{f"p_{c}": round(float(probs[i, k]), 5) for k, c in enumerate(CLASSES)},
            }
        )
    return rows


def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    split_file: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    allow_partial: bool = False,
    progress: bool = True,
) -> dict:
    """Score a checkpoint on one split; writes ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``.

    Args:
        split: ``test`` (official), ``train`` or ``all`` (every recording, e.g. a folder without a split file).
    """
    from medshared.plots import plot_confusion_matrix
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    dev = resolve_device(device)
    model, cfg, extra = load_model(checkpoint, dev)
    recs, _ = load_dataset(data_dir, split_file, allow_partial=allow_partial)
    chosen = recs if split == "all" else [r for r in recs if r.split == split]
    if not chosen:
        raise DataError(f"no recordings in split {split!r} under {data_dir}; use --split all for an unsplit folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cycles = extract_cycles(chosen, cfg.features, cache_dir, dev, progress)
    logits = predict_logits(model, cycles, cfg.features, dev, bf16=cfg.train.bf16, progress=progress)
    pred = logits.argmax(1)
    metrics = score_predictions(cycles.labels, pred)
    metrics.update(
        {"split": split, "checkpoint": str(checkpoint), "n_recordings": len(chosen), "config_name": cfg.name}
    )
    atomic_write_csv(out / "predictions.csv", _rows(cycles, logits))
    plot_confusion_matrix(
        np.array(metrics["confusion_matrix"]),
        list(CLASSES),
        out / "confusion_matrix.png",
        title=f"LungCVT {split}: ICBHI score {metrics['icbhi']['score']:.3f}",
    )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def predict_file(
    checkpoint: str | Path,
    wav: str | Path,
    annotations: str | Path | None = None,
    window_s: float = 2.7,
    hop_s: float | None = None,
    device: str = "auto",
) -> list[dict]:
    """Classify one recording: per annotated cycle, or on sliding windows (``window_s``, default the ICBHI mean
    cycle length 2.7 s, hop ``window_s / 2``) when no annotation file is given.

    Returns:
        one dict per cycle/window: start, end, pred, p_<class> (and ``true`` when annotated).
    """
    from medshared.runtime import resolve_device

    from lungcvt.features import compute_features

    dev = resolve_device(device)
    model, cfg, _ = load_model(checkpoint, dev)
    audio, sr = load_audio(wav, cfg.features.sample_rate)
    dur = len(audio) / sr
    annotated = annotations is not None
    if annotated:
        cyc = read_annotations(annotations)
        stem = Path(wav).stem
        try:
            info = parse_stem(stem)
        except DataError:
            info = parse_stem("0_0_Tc_sc_unknown")
        from lungcvt.data import check_cycles_within

        cyc = check_cycles_within(Recording(stem, Path(wav), Path(annotations), info, cyc), dur)
    else:
        if window_s <= 0:
            raise ValueError(f"--window must be positive, got {window_s}")
        hop = hop_s or window_s / 2
        starts = np.arange(0.0, max(dur - window_s, 0.0) + 1e-9, hop)
        cyc = [Cycle(float(s), float(min(s + window_s, dur)), 0, 0) for s in starts]
    pieces = [audio[int(round(c.start * sr)) : max(int(round(c.end * sr)), int(round(c.start * sr)) + 1)] for c in cyc]
    feats = compute_features(pieces, cfg.features, device=dev)
    cs = CycleSet(
        feats=feats,
        labels=[c.label for c in cyc],
        stems=[Path(wav).stem] * len(cyc),
        starts=[c.start for c in cyc],
        ends=[c.end for c in cyc],
    )
    rows = _rows(cs, predict_logits(model, cs, cfg.features, dev))
    for r in rows:
        if not annotated:
            r.pop("true")
    return rows
