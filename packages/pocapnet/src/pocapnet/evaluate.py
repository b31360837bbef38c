"""Evaluation (paper §3.2/§3.3; code: test phase): per-operation metrics without transition frames, mean ± std.

Per operation: last-stage argmax, frames whose ground truth is Transition removed, then frame-wise accuracy and
support-weighted precision/recall/F1 (scikit-learn via ``medshared.metrics``). Predicting Transition on a
non-transition frame counts as an error. Results are averaged over operations, not pooled over frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocapnet.config import NUM_CLASSES, PHASES, TRANSITION
from pocapnet.features import load_feature_operation
from pocapnet.model import PoCaPNet
from pocapnet.train import run_operation

__all__ = ["operation_metrics", "evaluate_operations", "majority_rate", "plot_ribbons", "write_results",
           "PermutedOperation"]


def operation_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and weighted P/R/F1 of one operation after removing transition frames."""
    from medshared.metrics import classification_metrics

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true != TRANSITION
    if not keep.any():
        raise ValueError("operation has only transition frames; nothing to evaluate")
    m = classification_metrics(y_true[keep], y_pred[keep])
    return {"accuracy": m["accuracy"], "f1_weighted": m["f1_weighted"], "precision_weighted": m["precision_weighted"],
            "recall_weighted": m["recall_weighted"], "seconds": int(keep.sum())}


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
        self.name, self.meta, self.labels = fop.name, fop.meta, fop.labels
        self.xray = np.asarray(fop.xray)[perm]
        self.audio = [np.asarray(a)[perm] for a in fop.audio]

    def __len__(self) -> int:
        return len(self.xray)

    def chunk(self, start: int, stop: int, num_images: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
        from pocapnet.features import image_windows

        imgs = image_windows(self.xray, np.arange(start, stop), num_images)
        aud = torch.stack([torch.from_numpy(np.array(a[start:stop], dtype=np.float32)) for a in self.audio], 1)
        return imgs, aud


def evaluate_operations(model: PoCaPNet, feat_root: str | Path, ops: list[str], batch_size: int,
                        device: str | torch.device = "cpu", permute_seed: int | None = None) -> dict[str, Any]:
    """Predict and score each operation; returns per-op rows, mean ± std, predictions and a confusion matrix.

    With ``permute_seed`` the features of each operation are shuffled in time first (see :class:`PermutedOperation`).
    """
    from medshared.metrics import aggregate, confusion_matrix

    model.eval()
    rows, preds, trues = [], {}, {}
    with torch.no_grad():
        for o in ops:
            fop = load_feature_operation(feat_root, o)
            if permute_seed is not None:
                fop = PermutedOperation(fop, permute_seed)
            if fop.labels is None:
                raise ValueError(f"{o}: no labels stored with the features; cannot evaluate (use predict)")
            r = run_operation(model, fop, batch_size, device)
            rows.append({"op": o, **operation_metrics(fop.labels, r["pred"])})
            preds[o], trues[o] = r["pred"], np.asarray(fop.labels)
    yt = np.concatenate([trues[o] for o in ops])
    yp = np.concatenate([preds[o] for o in ops])
    keep = yt != TRANSITION
    cm = confusion_matrix(yt[keep], yp[keep], labels=list(range(NUM_CLASSES)))
    return {"per_operation": rows, "summary": aggregate(rows), "pred": preds, "true": trues, "confusion": cm}


def plot_ribbons(true: dict[str, np.ndarray], pred: dict[str, np.ndarray], path: str | Path,
                 title: str | None = None) -> Path:
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

    colours = [plt.get_cmap("tab10")(i) for i in range(8)] + [(0.85, 0.85, 0.85, 1.0)]
    cmap = ListedColormap(colours)
    ops = list(true)
    tmax = max(len(v) for v in true.values()) / 60.0
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 0.9 * len(ops) + 1.2), squeeze=False, sharex=True)
    for ax, o in zip(axes[:, 0], ops, strict=True):
        T = len(true[o])
        img = np.stack([true[o], pred[o]])  # (2, T)
        ax.imshow(img, aspect="auto", cmap=cmap, vmin=-0.5, vmax=NUM_CLASSES - 0.5, interpolation="nearest",
                  extent=(0, T / 60.0, 1.5, -0.5))
        ax.set_yticks([0, 1], ["truth", "pred"], fontsize=7)
        ax.set_ylabel(o, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xlim(0, tmax)
    axes[-1, 0].set_xlabel("time (min)")
    fig.legend(handles=[Patch(color=colours[i], label=PHASES[i]) for i in range(NUM_CLASSES)], loc="upper center",
               ncol=5, fontsize=7, frameon=False)
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
        "ribbons": str(out_dir / f"{prefix}_ribbons.png"),
        "confusion": str(out_dir / f"{prefix}_confusion.png"),
    }
    atomic_write_json(files["metrics"], {"per_operation": res["per_operation"], "summary": res["summary"],
                                         "confusion": np.asarray(res["confusion"]).tolist(), "labels": list(PHASES)})
    atomic_write_csv(files["per_operation"], res["per_operation"])
    plot_ribbons(res["true"], res["pred"], files["ribbons"])
    plot_confusion_matrix(res["confusion"], list(PHASES), files["confusion"], title="confusion (transitions removed)")
    return files
