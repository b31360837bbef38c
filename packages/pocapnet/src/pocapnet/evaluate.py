"""Evaluation (paper §3.2/§3.3; code: test phase): per-operation metrics without transition frames, mean ± std.

Per operation: last-stage argmax, frames whose ground truth is Transition removed, then frame-wise accuracy and
support-weighted precision/recall/F1 (the paper's metrics, scikit-learn via ``medshared.metrics``), and the field's
further metrics (``medshared.segmental``): per-phase precision, recall, F1 and Jaccard with macro averages over the
phases present, MS-TCN's Edit score and F1@{10,25,50} (Transition runs are background, as MS-TCN's ``bg_class``).
Predicting Transition on a non-transition frame counts as an error. Results are averaged over operations (the
paper's protocol); the per-phase table and the segmental F1 are also pooled over all test frames / segments.

``stream=True`` scores the online predictions: each operation's stored features are fed second by second through
:class:`~pocapnet.stream.StreamingPredictor` (the online extractor reproduces the stored features, test), i.e. what
``predict --stream`` would output live.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocapnet.config import NUM_CLASSES, PHASES, TRANSITION
from pocapnet.features import load_feature_operation
from pocapnet.model import PoCaPNet
from pocapnet.train import run_operation

__all__ = [
    "PHASE_COLOURS",
    "operation_metrics",
    "pooled_metrics",
    "evaluate_operations",
    "stream_operation",
    "majority_rate",
    "plot_ribbons",
    "write_results",
    "PermutedOperation",
]

log = logging.getLogger("pocapnet")

#: Ribbon colours of the paper's Fig. 3 (§3.3 text: Preparation blue, Puncture orange, Guide Wire green, Catheter
#: Placement red, Catheter Positioning brown, Catheter Adjustment pink, Catheter Control grey, Closing yellow): the
#: official code's tab10 map resampled to 9 classes; the 9th (Transition) is cyan.
PHASE_COLOURS: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _present(t: np.ndarray, p: np.ndarray) -> list[int]:
    return sorted((set(t.tolist()) | set(p.tolist())) - {TRANSITION})


def operation_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """One operation's scores: accuracy, weighted P/R/F1 and macro P/R/F1/Jaccard after removing transition frames;
    Edit and F1@{10,25,50} on the whole sequence with Transition as background."""
    from medshared.metrics import classification_metrics
    from medshared.segmental import per_class_scores, segmental_metrics

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true != TRANSITION
    if not keep.any():
        raise ValueError("operation has only transition frames; nothing to evaluate")
    t, p = y_true[keep], y_pred[keep]
    m = classification_metrics(t, p)
    macro = per_class_scores(t, p, labels=_present(t, p))["macro"]
    seg = segmental_metrics([(y_true, y_pred)], background=[TRANSITION])
    return {
        "accuracy": m["accuracy"],
        "f1_weighted": m["f1_weighted"],
        "precision_weighted": m["precision_weighted"],
        "recall_weighted": m["recall_weighted"],
        **{f"{k}_macro": v for k, v in macro.items()},
        "edit": seg["edit"],
        "f1@10": seg["f1@10"],
        "f1@25": seg["f1@25"],
        "f1@50": seg["f1@50"],
        "seconds": int(keep.sum()),
    }


def pooled_metrics(true: dict[str, np.ndarray], pred: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-phase P/R/F1/Jaccard over all frames of all operations (transitions removed), their macro average over
    the phases present, and the segmental metrics with counts pooled over operations (MS-TCN)."""
    from medshared.segmental import per_class_scores, segmental_metrics

    yt = np.concatenate([true[o] for o in true])
    yp = np.concatenate([pred[o] for o in true])
    keep = yt != TRANSITION
    pc = per_class_scores(yt[keep], yp[keep], labels=_present(yt[keep], yp[keep]))
    per_phase = [{"phase": PHASES[c], **v} for c, v in pc["per_class"].items()]
    seg = segmental_metrics([(true[o], pred[o]) for o in true], background=[TRANSITION])
    return {"per_phase": per_phase, "macro": pc["macro"], "segmental": seg}


def majority_rate(train_labels: list[np.ndarray], test_labels: list[np.ndarray]) -> dict[str, Any]:
    """Chance level: always predict the training set's most frequent phase; mean accuracy over test operations."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for y in train_labels:
        counts += np.bincount(y, minlength=NUM_CLASSES)
    counts[TRANSITION] = 0
    major = int(np.argmax(counts))
    accs = [float(np.mean(y[y != TRANSITION] == major)) for y in test_labels]
    return {"phase": PHASES[major], "accuracy": float(np.mean(accs))}


class PermutedOperation:
    """Control: an operation whose per-second features are shuffled in time (labels kept in order).

    A model that reads its inputs loses accuracy on it; one that only exploits position/phase-order priors does not.
    """

    def __init__(self, fop: Any, seed: int = 0) -> None:
        perm = np.random.default_rng(seed).permutation(len(fop))
        self.name, self.meta, self.labels, self.channels = fop.name, fop.meta, fop.labels, fop.channels
        self.xray = np.asarray(fop.xray)[perm]
        self.audio = [np.asarray(a)[perm] for a in fop.audio]

    def __len__(self) -> int:
        return len(self.xray)

    def chunk(
        self, start: int, stop: int, num_images: int = 7, audio: bool = True, pin: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from pocapnet.features import chunk_arrays

        return chunk_arrays(self.xray, self.audio, start, stop, num_images, audio, pin)


def stream_operation(
    model: PoCaPNet, fop: Any, batch_size: int, device: str | torch.device = "cpu", bf16: bool = False
) -> dict[str, np.ndarray]:
    """Online predictions of one operation from its stored features, one second at a time (past only).

    Returns ``{"pred": (T,), "prob": (T, C)}``.
    """
    from pocapnet.stream import StreamingPredictor

    sp = StreamingPredictor(model, batch_size, device, bf16=bf16)
    use_audio = "audio" in model.cfg.modalities
    preds, probs = [], []
    for t in range(len(fop)):
        img = torch.as_tensor(np.array(fop.xray[t], dtype=np.float32))
        aud = (
            torch.stack([torch.from_numpy(np.array(a[t], dtype=np.float32)) for a in fop.audio]) if use_audio else None
        )
        p, q = sp.step(img, aud)
        preds.append(p)
        probs.append(q)
    return {"pred": np.array(preds, dtype=np.int64), "prob": np.stack(probs)}


def evaluate_operations(
    model: PoCaPNet,
    feat_root: str | Path,
    ops: list[str],
    batch_size: int,
    device: str | torch.device = "cpu",
    permute_seed: int | None = None,
    stream: bool = False,
    checkpoint_extra: dict[str, Any] | None = None,
    cfg: Any = None,
    precision: Any = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Predict and score each operation; returns per-op rows, mean ± std, pooled per-phase and segmental metrics,
    predictions and a confusion matrix.

    Args:
        permute_seed: shuffle each operation's features in time first (see :class:`PermutedOperation`).
        stream: online predictions (:func:`stream_operation`) instead of the offline chunk forward.
        checkpoint_extra, cfg: the checkpoint's metadata and config; when given, features made with other settings
            or weights are refused (:func:`pocapnet.train.check_checkpoint_features`).
        precision: a resolved :class:`medshared.precision.Precision` (None: fp32): bf16 runs the offline forward
            under bf16 autocast, and the streaming predictor's microphone branches in bf16.
        workers: threads loading the feature chunks ahead (offline).
    """
    from medshared.metrics import aggregate, confusion_matrix

    from pocapnet.train import check_checkpoint_features

    model.eval()
    rows, preds, trues = [], {}, {}
    with torch.no_grad():
        for o in ops:
            fop = load_feature_operation(feat_root, o)
            if checkpoint_extra is not None:
                check_checkpoint_features(checkpoint_extra, cfg, fop)
            if permute_seed is not None:
                fop = PermutedOperation(fop, permute_seed)
            if fop.labels is None:
                raise ValueError(f"{o}: no labels stored with the features; cannot evaluate (use predict)")
            bf16 = precision is not None and precision.name == "bf16"
            r = (
                stream_operation(model, fop, batch_size, device, bf16=bf16)
                if stream
                else run_operation(
                    model,
                    fop,
                    batch_size,
                    device,
                    autocast=precision.autocast if precision is not None else None,
                    workers=workers,
                )
            )
            rows.append({"op": o, **operation_metrics(fop.labels, r["pred"])})
            preds[o], trues[o] = r["pred"], np.asarray(fop.labels)
    yt = np.concatenate([trues[o] for o in ops])
    yp = np.concatenate([preds[o] for o in ops])
    keep = yt != TRANSITION
    cm = confusion_matrix(yt[keep], yp[keep], labels=list(range(NUM_CLASSES)))
    return {
        "per_operation": rows,
        "summary": aggregate(rows),
        "pooled": pooled_metrics(trues, preds),
        "pred": preds,
        "true": trues,
        "confusion": cm,
        "mode": "stream" if stream else "offline",
    }


def plot_ribbons(
    true: dict[str, np.ndarray], pred: dict[str, np.ndarray], path: str | Path, title: str | None = None
) -> Path:
    """Ground-truth and predicted phase ribbons per operation on ONE shared time axis (minutes).

    Unlike the official code, the predicted ribbon keeps every second (transition frames are shown in the ground
    truth and scored nowhere), so both ribbons stay aligned in time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from medshared.runtime import atomic_path

    colours = list(PHASE_COLOURS)
    cmap = ListedColormap(colours)
    ops = list(true)
    tmax = max(len(v) for v in true.values()) / 60.0
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 0.9 * len(ops) + 1.2), squeeze=False, sharex=True)
    for ax, o in zip(axes[:, 0], ops, strict=True):
        T = len(true[o])
        img = np.stack([true[o], pred[o]])  # (2, T)
        ax.imshow(
            img,
            aspect="auto",
            cmap=cmap,
            vmin=-0.5,
            vmax=NUM_CLASSES - 0.5,
            interpolation="nearest",
            extent=(0, T / 60.0, 1.5, -0.5),
        )
        ax.set_yticks([0, 1], ["truth", "pred"], fontsize=7)
        ax.set_ylabel(o, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xlim(0, tmax)
    axes[-1, 0].set_xlabel("time (min)")
    fig.legend(
        handles=[Patch(color=colours[i], label=PHASES[i]) for i in range(NUM_CLASSES)],
        loc="upper center",
        ncol=5,
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, y=0.02, fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.9))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_results(res: dict[str, Any], out_dir: str | Path, prefix: str = "test") -> dict[str, str]:
    """Write ``<prefix>_metrics.json``, ``<prefix>_per_operation.csv``, ribbons and confusion matrix PNGs."""
    from medshared.plots import plot_confusion_matrix
    from medshared.runtime import atomic_write_csv, atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": str(out_dir / f"{prefix}_metrics.json"),
        "per_operation": str(out_dir / f"{prefix}_per_operation.csv"),
        "per_phase": str(out_dir / f"{prefix}_per_phase.csv"),
        "ribbons": str(out_dir / f"{prefix}_ribbons.png"),
        "confusion": str(out_dir / f"{prefix}_confusion.png"),
    }
    atomic_write_json(
        files["metrics"],
        {
            "mode": res.get("mode", "offline"),
            "per_operation": res["per_operation"],
            "summary": res["summary"],
            **res["pooled"],
            "confusion": np.asarray(res["confusion"]).tolist(),
            "labels": list(PHASES),
            **({"precision": res["precision"]} if "precision" in res else {}),
        },
    )
    atomic_write_csv(files["per_operation"], res["per_operation"])
    atomic_write_csv(files["per_phase"], res["pooled"]["per_phase"])
    plot_ribbons(res["true"], res["pred"], files["ribbons"])
    plot_confusion_matrix(res["confusion"], list(PHASES), files["confusion"], title="confusion (transitions removed)")
    return files
