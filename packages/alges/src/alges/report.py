"""Simulation outputs: per-round CSV/JSON, learning curves (metric vs % labelled, mean ± std over seeds, one line per
strategy, with the chance and Full lines), a table like the paper's Table 1 (mean per strategy at chosen % labelled,
plus "Full"), and the area under each curve. All written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medshared.metrics import mean_std
from medshared.runtime import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = [
    "summarize",
    "write_simulation_outputs",
    "table_markdown",
    "auc_table",
    "curve_auc",
    "PAPER_PERCENTAGES",
    "METRIC_LABELS",
]

CSV_FIELDS = [
    "strategy",
    "seed",
    "round",
    "n_labeled",
    "frac_labeled",
    "dice_macro",
    "dice_official",
    "dice_image",
    "hd95",
    "seconds",
]
PAPER_PERCENTAGES = (0.43, 1.94, 3.02, 4.96)  # Table 1 columns (20, 90, 140, 230 of 4640 frames)
METRIC_LABELS = {
    "dice_macro": "Dice (dataset-level, macro over classes)",
    "dice_official": "Dice (official per-image smoothed)",
    "dice_image": "Dice (per image, scored classes)",
    "hd95": "HD95 (original pixels; lower is better)",
}


def summarize(rows: Sequence[dict[str, Any]], metric: str = "dice_macro") -> dict[str, dict[str, list[float]]]:
    """{strategy: {"round", "pct_labeled", "mean", "std", "n_seeds"}} over seeds, per round."""
    out: dict[str, dict[str, list[float]]] = {}
    for s in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == s and r.get(metric) is not None]
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


def _columns(first: dict[str, list[float]], percentages: Sequence[float] | None, max_cols: int) -> list[int]:
    pct = first["pct_labeled"]
    n = len(pct)
    if percentages:
        cols = []
        for p in percentages:  # the round whose % labelled is nearest (paper Table 1 columns)
            c = int(np.argmin([abs(x - p) for x in pct]))
            if c not in cols:
                cols.append(c)
        return cols
    return sorted(set(np.linspace(0, n - 1, min(n, max_cols)).round().astype(int).tolist()))


def table_markdown(
    summary: dict[str, dict[str, list[float]]],
    max_cols: int = 5,
    percentages: Sequence[float] | None = None,
    extra_rows: dict[str, tuple[float, float]] | None = None,
    digits: int = 3,
) -> str:
    """Markdown table: rows = strategies (+ ``extra_rows`` such as Full / chance, one value across), columns = %
    labelled at the rounds nearest ``percentages`` (paper Table 1), else up to ``max_cols`` evenly spaced rounds."""
    first = next(iter(summary.values()))
    cols = _columns(first, percentages, max_cols)
    head = "| strategy | " + " | ".join(f"{first['pct_labeled'][c]:.2f}% labeled" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for s, d in summary.items():
        cells = [f"{d['mean'][c]:.{digits}f} ± {d['std'][c]:.{digits}f}" if c < len(d["mean"]) else "" for c in cols]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for name, (m, sd) in (extra_rows or {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.{digits}f} ± {sd:.{digits}f}" for _ in cols) + " |")
    return "\n".join(lines) + "\n"


def curve_auc(pct: Sequence[float], values: Sequence[float]) -> float:
    """Normalised area under a curve: trapezoid over % labelled divided by the % range (= the curve's mean level)."""
    x, y = np.asarray(pct, float), np.asarray(values, float)
    if len(x) < 2:
        return float(y[0]) if len(y) else float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def auc_table(
    rows: Sequence[dict[str, Any]], metric: str, chance: float | None = None, digits: int = 3
) -> tuple[str, dict]:
    """Per strategy: normalised AUC of ``metric`` vs % labelled, per seed, as mean ± std (and minus chance)."""
    res: dict[str, dict[str, float]] = {}
    for s in dict.fromkeys(r["strategy"] for r in rows):
        per_seed = []
        for k in sorted({r["seed"] for r in rows if r["strategy"] == s}):
            rs = sorted((r for r in rows if r["strategy"] == s and r["seed"] == k), key=lambda r: r["round"])
            per_seed.append(curve_auc([100 * r["frac_labeled"] for r in rs], [r[metric] for r in rs]))
        m, sd = mean_std(per_seed)
        res[s] = {"mean": m, "std": sd, "n_seeds": len(per_seed), "per_seed": per_seed}
    head = f"| strategy | AUC of {metric} (mean ± std over seeds) |" + (
        " gain over chance |" if chance is not None else ""
    )
    lines = [head, "|---|---|" + ("---|" if chance is not None else "")]
    for s, d in res.items():
        cell = f"| {s} | {d['mean']:.{digits}f} ± {d['std']:.{digits}f} |"
        if chance is not None:
            cell += f" {d['mean'] - chance:+.{digits}f} |"
        lines.append(cell)
    return "\n".join(lines) + "\n", res


def _plot(summary, path: Path, metric: str, hlines: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, d in summary.items():
        x, mu, sd = (np.asarray(d[k], float) for k in ("pct_labeled", "mean", "std"))
        ax.plot(x, mu, marker="o", ms=3, label=name)
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.15)
    for (name, v), style in zip(hlines.items(), ("--", ":", "-.")):
        if v is not None and np.isfinite(v):
            ax.axhline(v, color="k", ls=style, lw=1, label=name)
    ax.set_xlabel("% of the training pool labelled")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("Active learning curves (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_simulation_outputs(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    metrics: Sequence[str] = ("dice_macro", "dice_official"),
    chance: dict[str, Any] | None = None,
    full: Sequence[dict[str, Any]] | None = None,
    percentages: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write ``rounds.csv``, ``results.json``, ``learning_curve[_<metric>].png`` and ``table.md`` (a Table-1-style
    table per metric with chance and Full rows, and the AUC table)."""
    out_dir = Path(out_dir)
    atomic_write_csv(out_dir / "rounds.csv", [{k: r.get(k) for k in CSV_FIELDS} for r in rows], CSV_FIELDS)
    summ = {m: summarize(rows, m) for m in metrics}
    full = list(full or [])
    tables = []
    aucs: dict[str, Any] = {}
    for i, metric in enumerate(metrics):
        sm = summ[metric]
        if not sm:
            continue
        ch = (chance or {}).get(metric)
        fl = mean_std([f[metric] for f in full]) if full else None
        suffix = "" if i == 0 else f"_{metric}"
        hl = {"chance": ch}
        if fl is not None:
            hl["full (100%)"] = fl[0]
        _plot(sm, out_dir / f"learning_curve{suffix}.png", metric, hl)
        extra_rows = {}
        if fl is not None:
            extra_rows["Full (100%)"] = fl
        if ch is not None:
            extra_rows["chance"] = (ch, 0.0)
        tables.append(f"### {METRIC_LABELS.get(metric, metric)}\n\n")
        tables.append(table_markdown(sm, percentages=percentages, max_cols=8, extra_rows=extra_rows))
        text, aucs[metric] = auc_table(rows, metric, ch)
        tables.append(f"\nArea under the curve (normalised by the % range):\n\n{text}\n")
    atomic_write_text(out_dir / "table.md", "".join(tables))
    result = {"summary": summ, "auc": aucs, "full": full, "rounds": list(rows), "chance": chance, **(extra or {})}
    atomic_write_json(out_dir / "results.json", result)
    return result
