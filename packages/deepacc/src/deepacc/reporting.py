"""Writing evaluation results: metrics JSON, per-class AP CSV, confusion matrix PNG, and Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "write_eval"]


def markdown_table(rows: Sequence[tuple[str, Any]]) -> str:
    """``| metric | value |`` table; floats with four decimals."""
    lines = ["| metric | value |", "|---|---|"]
    for k, v in rows:
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def write_eval(out: Path, res: dict[str, Any], prefix: str = "") -> None:
    """``{prefix}metrics.json``, ``{prefix}per_class_ap.csv`` and ``{prefix}confusion_matrix.png`` (atomic)."""
    from medshared.runtime import atomic_write_csv, atomic_write_json

    res = dict(res)
    pairs = res.pop("matched_pairs", None)
    atomic_write_json(out / f"{prefix}metrics.json", res)
    rows = [{"class": k, "ap50": v} for k, v in res["ap_per_class"].items()]
    atomic_write_csv(out / f"{prefix}per_class_ap.csv", rows)
    if pairs and pairs["true"]:
        from medshared.metrics import confusion_matrix
        from medshared.plots import plot_confusion_matrix

        from deepacc.config import CLASS_NAMES

        cm = confusion_matrix(pairs["true"], pairs["pred"], labels=list(range(1, 25)))
        plot_confusion_matrix(cm, list(CLASS_NAMES[1:]), out / f"{prefix}confusion_matrix.png",
                              title="matched chromosomes (rows true, cols predicted)")  # fmt: skip
