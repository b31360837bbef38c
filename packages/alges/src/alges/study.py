"""``alges simulate`` as a library function: split a dataset (video-wise for CholecSeg8k, case-disjoint for a folder
with ``cfg.case_pattern``, or explicit lists), load pool and test, run every (strategy, seed), add the chance baselines
(prior mask, majority class) and the Full line, and write the report (curves, Table-1-style tables, AUC)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from medshared.runtime import atomic_write_json

from alges.active import run_full, simulate
from alges.arrays import load_arrays
from alges.cholec import check_cholec_split_counts, cholec_split
from alges.config import AlgesConfig
from alges.evaluate import majority_chance, prior_mask, prior_scores
from alges.index import DatasetIndex
from alges.report import PAPER_PERCENTAGES, write_simulation_outputs
from alges.splits import group_split

__all__ = ["default_split", "run_simulation", "STUDY_METRICS"]

STUDY_METRICS = ("dice_image", "hd95", "dice_macro", "dice_official")


def default_split(index: DatasetIndex, cfg: AlgesConfig, seed: int = 0) -> dict[str, list[str]]:
    """Pool/test ids: CholecSeg8k's documented video split, else a case-disjoint split of the labelled images."""
    if index.kind == "cholecseg8k":
        sp = cholec_split(index)
        return {"train": sp["train"], "test": sp["test"]}
    if not cfg.case_pattern:
        raise ValueError(
            "a folder dataset needs --pool-list and --test-list, or case_pattern in the config (a regex giving each "
            "image's case, e.g. '^(\\d+)_') for a case-disjoint split"
        )
    return group_split(list(index.labeled_ids), cfg.case_pattern, cfg.test_fraction, seed=seed)


def run_simulation(
    index: DatasetIndex,
    split: dict[str, Sequence[str]],
    cfg: AlgesConfig,
    strategies: Sequence[str],
    device: torch.device,
    out: str | Path,
    *,
    resume: bool = True,
    full: bool = False,
    full_steps: int | None = None,
    percentages: Sequence[float] | None = None,
    shard: tuple[int, int] = (0, 1),
    ranked: bool = False,
    ctx: Any = None,
    progress: bool = True,
    precision: Any = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Run the simulation into ``out`` and return ``results.json``'s dict.

    Sharding: the (strategy, seed) runs (and the Full seeds) are spread round-robin over ``shard = (i, n)``; each run
    writes its own state file. ``ranked`` (torchrun; also set by an enabled ``ctx``): the shards are ranks of one
    launch; they never meet in a collective: each keeps a status file (:mod:`alges.ranks`), rank 0 waits for the
    others' files after its own share, then reads every run's saved state and writes the report. With
    ``--shard i/n`` launched by hand each shard writes its states and returns ``{"shard": ...}``, and the same
    command without ``--shard`` then writes the report from the saved states (nothing is recomputed).
    ``precision``: :class:`alges.precision.AlgesPrecision` (training / selection); default fp32 for both.
    """
    from medshared.distributed import shard_items

    from alges.ranks import RankStatus, wait_for_ranks

    out = Path(out)
    i, n = shard
    ranked = (ranked or (ctx is not None and ctx.enabled)) and n > 1
    all_jobs = [(s, k) for k in cfg.seeds for s in strategies]
    mine = shard_items(all_jobs, i, n)
    status = RankStatus(out, i, n, jobs=mine) if ranked else contextlib.nullcontext()
    with status:  # a rank's status file: running (heartbeat), then done or failed with the error
        load = dict(empty_masks=cfg.empty_masks, progress=progress, workers=workers)
        pool = load_arrays(index, split["train"], cfg.image_size, **load)
        test = load_arrays(index, split["test"], cfg.image_size, **load)
        if len(pool) < cfg.n_init or len(test) == 0:
            raise ValueError(
                f"the split has {len(pool)} pool and {len(test)} test images; too few for n_init={cfg.n_init}"
            )
        split_check = check_cholec_split_counts(index, split)
        atomic_write_json(out / "config.json", cfg.to_dict())
        atomic_write_json(out / "split.json", {"pool": pool.ids, "test": test.ids, "check": split_check})
        fcfg = dataclasses.replace(cfg, train_steps=full_steps) if full and full_steps is not None else cfg
        full_seeds = list(cfg.seeds) if full else []
        run = dict(class_names=index.class_names, progress=progress, precision=precision)
        rows = simulate(pool, test, strategies, cfg.seeds, cfg, device, out, resume=resume, jobs=mine, **run)
        fulls = [run_full(k, pool, test, fcfg, device, out, precision=precision) for k in shard_items(full_seeds, i, n)]
    if n > 1 and not (ranked and i == 0):
        return {"shard": [i, n], "jobs": mine}
    if ranked:  # rank 0: the other ranks' runs, read from their state files once they report done
        wait_for_ranks(out, n, since=status.started, progress=progress)
        check_saved(out, all_jobs, full_seeds, cfg, fcfg, pool, test, precision)
        rows = simulate(pool, test, strategies, cfg.seeds, cfg, device, out, resume=True, jobs=all_jobs, **run)
        fulls = [run_full(k, pool, test, fcfg, device, out, precision=precision) for k in full_seeds]
    order = {j: q for q, j in enumerate(all_jobs)}
    rows.sort(key=lambda r: (order[(r["strategy"], r["seed"])], r["round"]))
    fulls.sort(key=lambda f: f["seed"])
    return write_report_files(index, pool, test, cfg, rows, fulls, out, percentages, split_check, precision)


def check_saved(out: Path, jobs, full_seeds, cfg: AlgesConfig, fcfg: AlgesConfig, pool, test, precision=None) -> None:
    """Raise ``ValueError`` naming every run of ``jobs`` (and Full seed) whose state file is missing, unfinished or
    written under another config: rank 0 reads the other ranks' runs, it must never recompute them."""
    import json

    from alges.active import run_key

    bad = []
    for strategy, seed in jobs:
        p = out / "state" / f"{strategy}_seed{seed}.json"
        st = json.loads(p.read_text()) if p.is_file() else None
        key = run_key(cfg, pool.ids, test.ids, precision)
        if st is None or st.get("key") != key or len(st["rounds"]) < cfg.n_rounds:
            bad.append(str(p))
    for seed in full_seeds:
        p = out / "state" / f"full_seed{seed}.json"
        st = json.loads(p.read_text()) if p.is_file() else None
        if st is None or st.get("key") != run_key(fcfg, pool.ids, test.ids, precision):
            bad.append(str(p))
    if bad:
        raise ValueError(f"{len(bad)} runs reported done are missing or unfinished: {bad[:5]}; rerun the same command")


def write_report_files(
    index, pool, test, cfg, rows, fulls, out, percentages, split_check, precision=None
) -> dict[str, Any]:
    """Chance baselines + the report files (see :func:`alges.report.write_simulation_outputs`)."""
    prior, prior_info = prior_mask(pool.masks, cfg.num_classes)
    pri = prior_scores(prior, test, cfg)
    maj = majority_chance(pool.masks, test, cfg)
    chance = {m: pri.get(m) for m in STUDY_METRICS}
    if percentages is None and index.kind == "cholecseg8k":
        percentages = PAPER_PERCENTAGES
    return write_simulation_outputs(
        rows,
        out,
        {
            "prior_mask": {**pri, **prior_info},
            "majority_chance": maj,
            "config": cfg.to_dict(),
            "precision": precision.as_dict() if precision is not None else "fp32 (library default)",
            "data": {"root": str(index.root), "pool": len(pool), "test": len(test), "split_check": split_check},
        },
        metrics=STUDY_METRICS,
        chance=chance,
        full=fulls,
        percentages=percentages,
    )
