"""``alges simulate`` as a library function: split a dataset (video-wise for CholecSeg8k, case-disjoint for a folder
with ``cfg.case_pattern``, or explicit lists), load pool and test, run every (strategy, seed), add the chance baselines
(prior mask, majority class) and the Full line, and write the report (curves, Table-1-style tables, AUC)."""

from __future__ import annotations

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
    ctx: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the simulation into ``out`` and return ``results.json``'s dict.

    Sharding: the (strategy, seed) runs (and the Full seeds) are spread round-robin over ``shard = (i, n)``; each run
    writes its own state file. Under torchrun (``ctx`` enabled) rank 0 gathers every rank's rows and writes the
    report; with ``--shard i/n`` launched by hand each shard writes its states and returns ``{"shard": ...}``, and
    the same command without ``--shard`` then writes the report from the saved states (nothing is recomputed).
    """
    from medshared.distributed import all_gather_object, shard_items

    out = Path(out)
    pool = load_arrays(index, split["train"], cfg.image_size, empty_masks=cfg.empty_masks, progress=progress)
    test = load_arrays(index, split["test"], cfg.image_size, empty_masks=cfg.empty_masks, progress=progress)
    if len(pool) < cfg.n_init or len(test) == 0:
        raise ValueError(f"the split has {len(pool)} pool and {len(test)} test images; too few for n_init={cfg.n_init}")
    split_check = check_cholec_split_counts(index, split)
    atomic_write_json(out / "config.json", cfg.to_dict())
    atomic_write_json(out / "split.json", {"pool": pool.ids, "test": test.ids, "check": split_check})
    all_jobs = [(s, k) for k in cfg.seeds for s in strategies]
    i, n = shard
    order = {j: q for q, j in enumerate(all_jobs)}
    mine = shard_items(all_jobs, i, n)
    rows = simulate(
        pool,
        test,
        strategies,
        cfg.seeds,
        cfg,
        device,
        out,
        resume=resume,
        class_names=index.class_names,
        progress=progress,
        jobs=mine,
    )
    fulls = []
    if full:
        fcfg = dataclasses.replace(cfg, train_steps=full_steps) if full_steps is not None else cfg
        for k in shard_items(list(cfg.seeds), i, n):
            fulls.append(run_full(k, pool, test, fcfg, device, out))
    if ctx is not None and ctx.enabled:
        parts = all_gather_object({"rows": rows, "full": fulls}, ctx)
        if not ctx.is_main:
            return {"shard": [i, n], "jobs": mine}
        rows = [r for p in parts for r in p["rows"]]
        fulls = [f for p in parts for f in p["full"]]
    elif n > 1:
        return {"shard": [i, n], "jobs": mine}
    rows.sort(key=lambda r: (order[(r["strategy"], r["seed"])], r["round"]))
    fulls.sort(key=lambda f: f["seed"])
    return write_report_files(index, pool, test, cfg, rows, fulls, out, percentages, split_check)


def write_report_files(index, pool, test, cfg, rows, fulls, out, percentages, split_check) -> dict[str, Any]:
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
            "data": {"root": str(index.root), "pool": len(pool), "test": len(test), "split_check": split_check},
        },
        metrics=STUDY_METRICS,
        chance=chance,
        full=fulls,
        percentages=percentages,
    )
