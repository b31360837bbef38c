"""Evaluation: stage-1 tolerance curve, stage-2 summaries (malignant positive), plots, the prediction figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kfgnet.config import LABELS

__all__ = [
    "tolerance_curve",
    "plot_tolerance",
    "classification_summary",
    "plot_prediction",
    "plot_video_prediction",
    "fmt_pm",
    "fmt_ci",
]


def tolerance_curve(pred_idx: list[int], true_idx: list[int], max_distance: int = 32) -> np.ndarray:
    """Fraction of videos with |predicted - true key frame| <= D for D = 0..max_distance (medshared)."""
    from medshared.metrics import keyframe_tolerance_accuracy

    return keyframe_tolerance_accuracy(np.asarray(pred_idx), np.asarray(true_idx), max_distance)


def plot_tolerance(curves: dict[str, np.ndarray], path: Path, title: str = "Key-frame localisation") -> Path:
    """PNG of accuracy vs frame tolerance D (paper Fig. 3b)."""
    from medshared.plots import plot_curves

    first = next(iter(curves.values()))
    return plot_curves(
        np.arange(len(first)),
        {k: (v, None) for k, v in curves.items()},
        path,
        xlabel="frame distance tolerance D",
        ylabel="accuracy",
        title=title,
    )


def classification_summary(cv: dict[str, Any]) -> dict[str, Any]:
    """Mean and std of accuracy, sensitivity, specificity, precision, F1 (malignant positive) over folds."""
    keys = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auroc")
    return {k: cv["summary"][k] for k in keys if k in cv["summary"]}


def fmt_pm(d: dict[str, float], pct: bool = True) -> str:
    """``"mean ± std"`` of a summary entry, in percent by default."""
    f = 100.0 if pct else 1.0
    return f"{d['mean'] * f:.1f} ± {d['std'] * f:.1f}"


def fmt_ci(d: dict[str, float], pct: bool = True) -> str:
    """``"value [low, high]"`` of a ``medshared.bootstrap`` entry, in percent by default."""
    f = 100.0 if pct else 1.0
    return f"{d['value'] * f:.1f} [{d['ci_low'] * f:.1f}, {d['ci_high'] * f:.1f}]"


def plot_prediction(
    frame: np.ndarray,
    box: np.ndarray | None,
    key: int,
    curve_frames: np.ndarray,
    curve: np.ndarray,
    p_malignant: float,
    path: Path,
    title: str = "",
) -> Path:
    """PNG: the predicted key frame with its nodule box, and the per-frame key-frame score curve."""
    import matplotlib
    from medshared.runtime import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.imshow(frame, cmap="gray")
    if box is not None:
        x1, y1, x2, y2 = box
        a.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=2))
    lab = LABELS[int(p_malignant >= 0.5)]
    a.set_title(f"key frame {key}: {lab} (P(malignant) = {p_malignant:.2f})", fontsize=9)
    a.axis("off")
    b.plot(curve_frames, curve, marker=".", ms=3)
    b.axvline(key, color="r", ls="--", lw=1)
    b.set_xlabel("frame")
    b.set_ylabel("key-frame score")
    b.set_title(title or "per-frame score", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def plot_video_prediction(res: dict[str, Any], path: Path, title: str = "") -> Path:
    """:func:`plot_prediction` of a :meth:`kfgnet.pipeline.Pipeline.predict_video` result."""
    return plot_prediction(
        res["frame"],
        res["box"],
        res["key_frame"],
        res["curve_frames"],
        res["curve"],
        res["p_malignant"],
        path,
        title=title or f"key frame from {res['key_source']}",
    )
