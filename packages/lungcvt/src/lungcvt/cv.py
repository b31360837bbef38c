"""``lungcvt cv``: train and evaluate every (fold, seed) of a protocol grid, resumably, and aggregate mean ± std.

The field reports the official 60/40 split and the patient-wise 5-fold protocol (RespireNet, Patch-Mix), each as mean
± std over seeds. Each run lives in ``OUT/<protocol>/seed<S>/`` (``train`` output, ``eval/metrics.json``); a finished
run is read back, an interrupted one resumes from its ``last_state.pt``. ``OUT/cv.json`` (every run and the summary),
``OUT/cv.csv`` (one row per run, then the mean and std rows) and ``OUT/cv.md`` (the table) are rewritten after every
run. The standard deviation is the population one (ddof 0, ``medshared.metrics.aggregate``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungcvt.config import LungCVTConfig
from lungcvt.data import find_recordings
from lungcvt.splits import PROTOCOLS, DataOptions, parse_protocol

__all__ = ["parse_folds", "parse_seeds", "run_cv", "run_row", "summarise", "cv_table", "device_table", "write_summary"]

log = logging.getLogger(__name__)

VARIANTS = ("icbhi", "macro_ovr", "two_class")
AUROCS = ("auroc_macro_ovr", "auroc_abnormal")
_NAMES = {"icbhi": "ICBHI (official)", "macro_ovr": "macro one-vs-rest (paper code)", "two_class": "2-class"}


def _int_list(spec: str, what: str) -> list[int]:
    out: list[int] = []
    try:
        for part in str(spec).split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"{what} {spec!r}: expected integers like 0-4 or 0,1,2") from None
    if not out:
        raise ValueError(f"{what} {spec!r} is empty")
    return list(dict.fromkeys(out))


def parse_folds(spec: str) -> list[str]:
    """``"0-4"`` -> fold0..fold4; ``"0,2"``; ``"official"`` or ``"random80-20"`` (one protocol, seeds vary)."""
    if spec in ("official", "random80-20"):
        return [spec]
    protocols = [f"fold{k}" for k in _int_list(spec, "--folds")]
    for p in protocols:
        parse_protocol(p)
    return protocols


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> [0, 1, 2]."""
    return _int_list(spec, "--seeds")


def run_row(protocol: str, seed: int, metrics: dict, best_epoch: int | list[int]) -> dict:
    row: dict[str, Any] = {"protocol": protocol, "seed": seed}
    for v in VARIANTS:
        for m in ("se", "sp", "score"):
            row[f"{v}_{m}"] = metrics[v][m]
    row["accuracy"] = metrics["icbhi"]["accuracy"]
    for k in AUROCS:
        row[k] = metrics.get(k)  # None in runs evaluated before the AUROCs existed, or for a one-class test part
    row["n_test"] = metrics["n"]
    # an independently trained ensemble has one best epoch per member (lungcvt.members)
    row["best_epoch"] = best_epoch if isinstance(best_epoch, int) else "/".join(str(e) for e in best_epoch)
    return row


def summarise(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and std (ddof 0) of every score column over the runs."""
    import numpy as np
    from medshared.metrics import aggregate

    keys = [f"{v}_{m}" for v in VARIANTS for m in ("se", "sp", "score")] + ["accuracy"]
    out = aggregate([{k: r[k] for k in keys} for r in rows])
    for k in AUROCS:  # over the runs where it is defined
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "runs": len(vals)}
    return out


def cv_table(summary: dict[str, dict[str, float]], n_runs: int, percent: bool = True) -> str:
    """Markdown table of mean ± std of Se, Sp, Score per variant."""
    f = 100.0 if percent else 1.0
    unit = " (%)" if percent else ""
    lines = [f"| metric{unit}, mean ± std over {n_runs} runs | Se | Sp | Score |", "|---|---|---|---|"]
    for v in VARIANTS:
        cells = [
            f"{f * summary[f'{v}_{m}']['mean']:.2f} ± {f * summary[f'{v}_{m}']['std']:.2f}"
            for m in ("se", "sp", "score")
        ]
        lines.append(f"| {_NAMES[v]} | " + " | ".join(cells) + " |")
    for k, name in (("auroc_abnormal", "AUROC abnormal vs normal"), ("auroc_macro_ovr", "AUROC macro one-vs-rest")):
        if k in summary:
            lines.append(f"| {name} | | | {f * summary[k]['mean']:.2f} ± {f * summary[k]['std']:.2f} |")
    return "\n".join(lines)


def _device_summary(per_run: Sequence[dict], key: str = "score") -> dict[str, dict]:
    """Mean ± std of each device's ``key`` (ICBHI ``score``, ``se``, ``sp``, ``auroc_abnormal``...) over the runs
    where it is defined."""
    import numpy as np

    scores: dict[str, list[float]] = {}
    for by in per_run:
        for dev, d in by.items():
            if d.get(key) is not None:
                scores.setdefault(dev, []).append(d[key])
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": len(v)} for k, v in sorted(scores.items())}


def device_table(result: dict) -> str:
    """Markdown table: per device, mean ± std over the runs (count) of Se, Sp, Score and the two AUROCs."""
    keys = ("se", "sp", "score", "auroc_abnormal", "auroc_macro_ovr")
    by = result.get("by_device", {})
    devices = sorted({d for k in keys for d in by.get(k, {})})
    lines = ["| device | Se | Sp | Score | AUROC abnormal | AUROC macro OvR |", "|---|---|---|---|---|---|"]
    for d in devices:
        cells = []
        for k in keys:
            v = by.get(k, {}).get(d)
            cells.append(f"{v['mean']:.3f} ± {v['std']:.3f} ({v['runs']})" if v else "n/a")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(
    out: Path,
    folds: Sequence[str],
    seeds: Sequence[int],
    rows: Sequence[dict],
    by_device: Sequence[dict],
    config: dict,
    write: bool = True,
) -> dict:
    """The ``cv.json`` content of the runs so far (every run, mean ± std, per device); with ``write``, writes
    ``cv.json``, ``cv.csv`` (runs, then mean and std rows) and ``cv.md`` (the tables) into ``out``."""
    from medshared.runtime import atomic_write_csv, atomic_write_json, atomic_write_text

    summary = summarise(rows)
    result = {
        "folds": list(folds),
        "seeds": [int(s) for s in seeds],
        "runs": list(rows),
        "summary": summary,
        "by_device_score": _device_summary(by_device),
        "by_device": {
            k: _device_summary(by_device, k) for k in ("se", "sp", "score", "auroc_abnormal", "auroc_macro_ovr")
        },
        "std": "population (ddof 0)",
        "config": config,
        "complete": len(rows) == len(folds) * len(seeds),
    }
    if not write:
        return result
    atomic_write_json(out / "cv.json", result)
    keys = [k for k in summary if k in rows[0]]
    summary_rows = [{"protocol": stat, "seed": "", **{k: summary[k][stat] for k in keys}} for stat in ("mean", "std")]
    atomic_write_csv(out / "cv.csv", list(rows) + summary_rows)
    atomic_write_text(
        out / "cv.md",
        cv_table(summary, len(rows))
        + "\n\n"
        + device_table(result)
        + f"\n\nFolds {', '.join(folds)}; seeds {', '.join(map(str, seeds))}; {len(rows)} runs"
        + ("" if result["complete"] else " so far")
        + ".\n",
    )
    return result


def run_cv(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    folds: Sequence[str],
    seeds: Sequence[int],
    data: DataOptions | None = None,
    device: str = "auto",
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
    offline: bool = False,
    precision: str = "auto",
) -> dict:
    """Train + evaluate every (protocol, seed); returns the ``cv.json`` content.

    Args:
        folds: protocols (``fold0``..., ``official``, ``random80-20``; see :func:`parse_folds`).
        seeds: ``train.seed`` of each run (model init, data order, validation draw, and the split for random80-20).
        data: data options (its ``protocol`` is replaced by each fold).
        cache_dir: feature cache shared by all runs (default ``OUT/feature_cache``).

    Raises:
        ValueError: ``OUT`` holds a CV with other settings (config, folds' data options); choose another ``--out``.
    """
    from medshared.distributed import init_distributed

    ctx = init_distributed(device)
    try:
        return _run_cv(cfg, data_dir, out_dir, folds, seeds, data or DataOptions(), weights, cache_dir, num_workers,
                       progress, offline, ctx, precision)  # fmt: skip
    finally:
        ctx.close()


def _run_cv(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    folds: Sequence[str],
    seeds: Sequence[int],
    data: DataOptions,
    weights: str | Path | None,
    cache_dir: str | Path | None,
    num_workers: int,
    progress: bool,
    offline: bool,
    ctx: Any,
    precision: str = "auto",
) -> dict:
    """The body of :func:`run_cv` inside its process group (under torchrun every rank trains, rank 0 evaluates and
    writes)."""
    from medshared.distributed import barrier, broadcast_object
    from medshared.runtime import atomic_write_json

    from lungcvt.evaluate import evaluate
    from lungcvt.train import train

    for p in folds:
        if p not in PROTOCOLS and parse_protocol(p)[0] != "fold":
            raise ValueError(f"unknown protocol {p!r}")
    find_recordings(data_dir)  # a wrong --data fails before OUT is created
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "feature_cache"
    settings = json.loads(
        json.dumps({"config": cfg.to_dict(), "data": {**data.to_dict(), "protocol": None}, "init_weights": None})
    )
    settings["config"]["train"].pop("seed")
    marker = out / "cv_settings.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old != settings:
            raise ValueError(
                f"{out} holds a cross-validation run with different settings ({marker}); choose another --out"
            )
    elif ctx.is_main:
        atomic_write_json(marker, settings)
    barrier(ctx)

    rows: list[dict] = []
    by_device: list[dict] = []
    result: dict = {}
    for protocol in folds:
        for seed in seeds:
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=int(seed)))
            run_data = dataclasses.replace(data, protocol=protocol)
            run_dir = out / protocol / f"seed{seed}"
            mpath, tpath = run_dir / "eval" / "metrics.json", run_dir / "train.json"
            done = mpath.is_file() and tpath.is_file()
            if done:
                tj = json.loads(tpath.read_text())
                done = tj.get("config") == json.loads(json.dumps(run_cfg.to_dict()))
            if done:
                log.info("cv: %s seed %d already done (%s)", protocol, seed, mpath)
                metrics = json.loads(mpath.read_text())
            else:
                if progress and ctx.is_main:
                    print(f"cv: {protocol} seed {seed} -> {run_dir}", flush=True)
                res = train(run_cfg, data_dir, run_dir, data=run_data, weights=weights, cache_dir=cache,
                            num_workers=num_workers, progress=progress, ctx=ctx, offline=offline,
                            precision=precision)  # fmt: skip
                metrics = None
                if ctx.is_main:
                    metrics = evaluate(res.best_checkpoint, data_dir, run_dir / "eval", "test", run_data,
                                       str(ctx.device), cache, progress=progress, precision=precision)  # fmt: skip
                metrics = broadcast_object(metrics, ctx)
                tj = json.loads(tpath.read_text())
            rows.append(run_row(protocol, int(seed), metrics, tj["best_epoch"]))
            by_device.append(metrics.get("by_device", {}))
            result = write_summary(out, folds, seeds, rows, by_device, cfg.to_dict(), write=ctx.is_main)
    return result
