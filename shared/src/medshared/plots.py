"""The plots people look at, written as PNG atomically with the headless Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medshared.runtime import atomic_path

__all__ = ["plot_confusion_matrix", "plot_curves"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    cm: Any, labels: Sequence[str], path: str | Path, title: str | None = None, normalize: bool = False
) -> Path:
    """Confusion matrix heat map (rows true, columns predicted) with counts (or row fractions) in each cell."""
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    if m.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {len(labels)} labels")
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(shown, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    thresh = shown.max() / 2 if shown.size else 0
    if len(labels) <= 30:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                txt = f"{shown[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                ax.text(
                    j, i, txt, ha="center", va="center", fontsize=7, color="white" if shown[i, j] > thresh else "black"
                )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def plot_curves(
    x: Sequence[float],
    ys: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Line plot of several named curves, each ``(mean, std)`` with a shaded ±std band when std is given."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.asarray(x, dtype=float)
    for name, (mean, std) in ys.items():
        mu = np.asarray(mean, dtype=float)
        ax.plot(xs[: len(mu)], mu, marker="o", ms=3, label=name)
        if std is not None:
            sd = np.asarray(std, dtype=float)
            ax.fill_between(xs[: len(mu)], mu - sd, mu + sd, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
