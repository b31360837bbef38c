"""Simulation outputs: per-round CSV/JSON, the learning curve (Dice vs % labeled, mean +- std over seeds, one line per
strategy) and a table like the paper's Table 1 (mean Dice per strategy at chosen % labeled). All written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medshared.metrics import mean_std
from medshared.plots import plot_curves
from medshared.runtime import atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = ["summarize", "write_simulation_outputs", "table_markdown"]

CSV_FIELDS = ["strategy", "seed", "round", "n_labeled", "frac_labeled", "dice_macro", "dice_official", "seconds"]


def summarize(rows: Sequence[dict[str, Any]], metric: str = "dice_macro") -> dict[str, dict[str, list[float]]]:
    """{strategy: {"round", "pct_labeled", "mean", "std", "n_seeds"}} over seeds, per round."""
    out: dict[str, dict[str, list[float]]] = {}
    for s in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == s]
        rounds = sorted({r["round"] for r in rs})
        d: dict[str, list[float]] = {"round": [], "pct_labeled": [], "mean": [], "std": [], "n_seeds": []}
        for k in rounds:
            vals = [r[metric] for r in rs if r["round"] == k]
            m, sd = mean_std(vals)
            d["round"].append(k)
            d["pct_labeled"].append(100.0 * float(np.mean([r["frac_labeled"] for r in rs if r["round"] == k])))
            d["mean"].append(m)
            d["std"].append(sd)
            d["n_seeds"].append(len(vals))
        out[s] = d
    return out


def table_markdown(summary: dict[str, dict[str, list[float]]], max_cols: int = 5) -> str:
    """Markdown table: rows = strategies, columns = % labeled at up to ``max_cols`` evenly spaced rounds."""
    first = next(iter(summary.values()))
    n = len(first["round"])
    cols = sorted(set(np.linspace(0, n - 1, min(n, max_cols)).round().astype(int).tolist()))
    head = "| strategy | " + " | ".join(f"{first['pct_labeled'][c]:.2f}% labeled" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for s, d in summary.items():
        cells = [f"{d['mean'][c]:.3f} ± {d['std'][c]:.3f}" if c < len(d["mean"]) else "" for c in cols]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_simulation_outputs(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``rounds.csv``, ``results.json``, ``learning_curve.png`` (+ ``_official``) and ``table.md``."""
    out_dir = Path(out_dir)
    atomic_write_csv(out_dir / "rounds.csv", [{k: r.get(k) for k in CSV_FIELDS} for r in rows], CSV_FIELDS)
    summ = {m: summarize(rows, m) for m in ("dice_macro", "dice_official")}
    for metric, suffix in (("dice_macro", ""), ("dice_official", "_official")):
        sm = summ[metric]
        x = next(iter(sm.values()))["pct_labeled"]
        plot_curves(
            x,
            {s: (d["mean"], d["std"]) for s, d in sm.items()},
            out_dir / f"learning_curve{suffix}.png",
            xlabel="% of the training pool labeled",
            ylabel=f"test {metric.replace('_', ' ')}",
            title="Active learning curves (mean ± std over seeds)",
        )
    table = "### dataset-level macro Dice\n\n" + table_markdown(summ["dice_macro"])
    table += "\n### official per-image smoothed Dice (8 classes)\n\n" + table_markdown(summ["dice_official"])
    atomic_write_text(out_dir / "table.md", table)
    result = {"summary": summ, "rounds": list(rows), **(extra or {})}
    atomic_write_json(out_dir / "results.json", result)
    return result
