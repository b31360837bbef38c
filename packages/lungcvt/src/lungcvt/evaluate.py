"""Evaluation with ICBHI Se / Sp / Score (default), the paper code's macro one-vs-rest variant and the 2-class one,
overall and broken down by recording device and by patient.

All overall scores go through ``medshared.metrics.icbhi_scores``. Brief section 5: the paper's 57.36 % is the
macro-OvR Score; the same predictions score 43.02 % under the ICBHI definitions. Device shift is the known failure of
ICBHI models (4 kHz Litt3200 audio has nothing above 2 kHz), hence the per-device report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lungcvt.config import CLASSES, LungCVTConfig, config_from_dict
from lungcvt.data import DataError, audio_summary, device_notes
from lungcvt.dataset import CycleSet, extract_cycles, predict_logits
from lungcvt.model import LungCVT, LungCVTEnsemble, build_lungcvt
from lungcvt.scoring import apply_normal_bias, auroc_scores
from lungcvt.splits import DataOptions, select_recordings

__all__ = [
    "load_model",
    "score_predictions",
    "majority_chance",
    "group_scores",
    "plot_group_scores",
    "evaluate",
    "prediction_rows",
]

log = logging.getLogger(__name__)


def load_model(
    checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[LungCVT | LungCVTEnsemble, LungCVTConfig, dict]:
    """Rebuild the model from a checkpoint alone (weights + config); returns (model in eval mode, config, extra)."""
    import dataclasses

    from medshared.checkpoint import load_checkpoint

    sd, cfg_d, extra = load_checkpoint(checkpoint)
    try:
        cfg = config_from_dict(cfg_d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint}: not a lungcvt checkpoint ({e})") from None
    mcfg = dataclasses.replace(cfg.model, pretrained=False)  # the checkpoint holds all weights
    model = build_lungcvt(mcfg)
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


def group_scores(
    y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence, probs: np.ndarray | None = None
) -> dict[str, dict]:
    """ICBHI Se / Sp / Score and accuracy per group (device, patient, ...), and with ``probs`` [N, C] the AUROCs of
    :func:`lungcvt.scoring.auroc_scores`.

    Se (exact-class hits over abnormal cycles) is ``None`` for a group without abnormal cycles, Sp for one without
    normal cycles, and Score then as well (an AUROC likewise): nothing is filled in for an undefined rate.

    Returns:
        {str(group): {"n", "counts" (true cycles per class), "se", "sp", "score", "accuracy", "confusion_matrix"
        [, "auroc_macro_ovr", "auroc_abnormal", "auroc_per_class", "auroc_classes_used"]}}.
    """
    t, p, g = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), np.asarray([str(x) for x in groups])
    out: dict[str, dict] = {}
    for key in sorted(set(g.tolist()), key=lambda s: (len(s), s)):
        m = g == key
        tt, pp = t[m], p[m]
        normal, abn = tt == 0, tt != 0
        sp = float((pp[normal] == 0).mean()) if normal.any() else None
        se = float((pp[abn] == tt[abn]).mean()) if abn.any() else None
        cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
        np.add.at(cm, (tt, pp), 1)
        out[key] = {
            "n": int(m.sum()),
            "counts": np.bincount(tt, minlength=len(CLASSES)).tolist(),
            "se": se,
            "sp": sp,
            "score": (se + sp) / 2 if se is not None and sp is not None else None,
            "accuracy": float((tt == pp).mean()),
            "confusion_matrix": cm.tolist(),
        }
        if probs is not None:
            out[key].update(auroc_scores(tt, np.asarray(probs)[m], CLASSES))
    return out


def plot_group_scores(by: dict[str, dict], path: str | Path, title: str, max_groups: int = 60) -> None:
    """Bars of Se, Sp, Score and accuracy per group (an undefined rate is left out and marked 'n/a')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from medshared.runtime import atomic_path

    keys = list(by)[:max_groups]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(keys) * 2 + 2), 3.6))
    x = np.arange(len(keys))
    for j, (metric, colour) in enumerate((("se", "C3"), ("sp", "C0"), ("score", "C2"), ("accuracy", "C7"))):
        vals = [by[k][metric] for k in keys]
        ax.bar(x + (j - 1.5) * 0.2, [v if v is not None else 0.0 for v in vals], 0.2, color=colour, label=metric)
        for i, v in enumerate(vals):
            if v is None:
                ax.text(x[i] + (j - 1.5) * 0.2, 0.01, "n/a", rotation=90, fontsize=6, ha="center", va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{k}\n(n={by[k]['n']})" for k in keys], fontsize=7, rotation=0 if len(keys) < 8 else 90)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def prediction_rows(cycles: CycleSet, logits: np.ndarray, with_truth: bool = True) -> list[dict]:
    """One dict per cycle/window: recording, start, end, (true,) pred, p_<class>."""
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    rows = []
    for i in range(len(cycles)):
        row = {"recording": cycles.stems[i], "start": cycles.starts[i], "end": cycles.ends[i]}
        if cycles.devices:
            row["device"] = cycles.devices[i]
        if with_truth:
            row["true"] = CLASSES[cycles.labels[i]]
        row["pred"] = CLASSES[int(probs[i].argmax())]
        row.update({f"p_{c}": round(float(probs[i, k]), 5) for k, c in enumerate(CLASSES)})
        rows.append(row)
    return rows


def _flat_rows(by: dict[str, dict], name: str) -> list[dict]:
    return [
        {
            name: k,
            "n": v["n"],
            **dict(zip(CLASSES, v["counts"])),
            **{m: v.get(m) for m in ("se", "sp", "score", "accuracy", "auroc_macro_ovr", "auroc_abnormal")},
        }
        for k, v in by.items()
    ]


def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    data: DataOptions | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    mix_channels: bool = False,
    precision: str = "auto",
) -> dict:
    """Score a checkpoint on one part of a protocol; writes ``metrics.json``, ``predictions.csv``,
    ``per_device.csv`` / ``.png``, ``per_patient.csv`` / ``.png`` and ``confusion_matrix.png``.

    Args:
        split: ``test`` (the protocol's test part), ``train`` or ``all`` (every recording, e.g. an unsplit folder).
        data: protocol and data options; by default the protocol stored in the checkpoint (``official`` for older
            ones). ``random80-20`` is drawn with the checkpoint's ``train.seed``, as in training.
        mix_channels: average multi-channel files (``features.channels="mix"``) whatever the checkpoint says.
        precision: ``auto | fp32 | tf32 | bf16`` for the model (:func:`lungcvt.precision.resolve`); in metrics.json.
    """
    import dataclasses

    from medshared.plots import plot_confusion_matrix
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    dev = resolve_device(device)
    model, cfg, extra = load_model(checkpoint, dev)
    if mix_channels:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, channels="mix"))
    if data is None:
        data = DataOptions(protocol=None)
    if data.protocol is None:  # the protocol the checkpoint was trained under
        data = dataclasses.replace(data, protocol=extra.get("protocol", "official"))
    if split == "all":
        data = dataclasses.replace(data, protocol="official", split_file=None)
        from lungcvt.data import load_dataset

        recs, _ = load_dataset(data_dir, allow_partial=True, use_split_file=False)
        chosen = [r for r in recs if not data.devices or r.info.device in data.devices]
    else:
        chosen = [r for r in select_recordings(data_dir, data, seed=cfg.train.seed) if r.split == split]
    if not chosen:
        raise DataError(
            f"no recordings in the {split!r} part of protocol {data.protocol} under {data_dir}; use --split all for an "
            "unsplit folder"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cycles = extract_cycles(chosen, cfg.features, cache_dir, dev, progress)
    from lungcvt.precision import resolve

    prec = resolve(precision, dev, bf16_alias=cfg.train.bf16)
    prec.apply()
    logits = predict_logits(model, cycles, cfg.features, dev, bf16=prec.name == "bf16", progress=progress)
    bias = float(extra.get("normal_bias", 0.0))
    logits = apply_normal_bias(logits, bias)  # the validation-chosen decision bias (0 when not tuned)
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    pred = logits.argmax(1)
    metrics = score_predictions(cycles.labels, pred)
    metrics.update(auroc_scores(cycles.labels, probs, CLASSES))
    by_device = group_scores(cycles.labels, pred, cycles.devices, probs)
    by_patient = group_scores(cycles.labels, pred, cycles.patients)
    notes = device_notes(chosen)
    for note in notes:
        log.info("%s", note)
    metrics.update(
        {
            "normal_bias": bias,
            "precision": prec.as_dict(),
            "device_notes": notes,
            "audio_by_device": audio_summary(chosen),
            "split": split,
            "protocol": data.protocol,
            "devices_filter": list(data.devices) if data.devices else None,
            "checkpoint": str(checkpoint),
            "n_recordings": len(chosen),
            "config_name": cfg.name,
            "by_device": by_device,
            "by_patient": by_patient,
        }
    )
    atomic_write_csv(out / "predictions.csv", prediction_rows(cycles, logits))
    atomic_write_csv(out / "per_device.csv", _flat_rows(by_device, "device"))
    atomic_write_csv(out / "per_patient.csv", _flat_rows(by_patient, "patient"))
    plot_group_scores(by_device, out / "per_device.png", f"LungCVT {split} ({data.protocol}) by device")
    plot_group_scores(by_patient, out / "per_patient.png", f"LungCVT {split} ({data.protocol}) by patient")
    plot_confusion_matrix(
        np.array(metrics["confusion_matrix"]),
        list(CLASSES),
        out / "confusion_matrix.png",
        title=f"LungCVT {split}: ICBHI score {metrics['icbhi']['score']:.3f}",
    )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
