"""The active-learning loop (ALGES Algorithm 1) and the query step.

Per (strategy, seed): draw the initial pool (``n_init`` images, seeded), then for each round r = 0..R-1 train on the
labelled set (from the seed's initial weights when ``retrain_from_init``, the official code; else continuing from the
previous round's model), evaluate the last-epoch weights on the test set, and (except after the last round) query
``n_query`` images. After every round the state (labelled indices, per-round metrics) is written atomically to
``out/state/<strategy>_seed<k>.json``; with ``retrain_from_init=False`` the round's model is saved first
(``state/<strategy>_seed<k>_round<r>.safetensors``), so a resumed run continues from the previous round's weights. A
rerun resumes after the last finished round and gives the same result, because model init, training order and
selection are all seeded by (seed, round) only.

Round 0 does not depend on the strategy (same initial pool, same init), so its trained weights are cached per seed
under ``out/cache`` and reused by the other strategies (DEAL, whose model has an extra head, has its own cache).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.checkpoint import load_checkpoint, save_checkpoint
from medshared.runtime import atomic_write_json, seed_everything
from tqdm.auto import tqdm

from alges.arrays import SegArrays
from alges.config import AlgesConfig
from alges.evaluate import evaluate_model
from alges.inference import infer
from alges.model import build_model
from alges.pool import ArraySource
from alges.precision import phase
from alges.selection import check_budget, random_select
from alges.strategies import get_strategy, parse_strategies
from alges.train import train_model

__all__ = ["select_batch", "run_strategy", "run_full", "simulate", "parse_strategies", "QueryResult"]


class QueryResult(tuple):
    """``(chosen, scores, failures)``: chosen positions into the pool source (selection order), one score per pick,
    and ``(position, path, reason)`` of every pool file that could not be read."""

    __slots__ = ()

    def __new__(cls, chosen: np.ndarray, scores: np.ndarray, failures: list) -> QueryResult:
        return super().__new__(cls, (chosen, scores, failures))


def select_batch(
    strategy: str,
    model: torch.nn.Module | None,
    source: Any,
    unlabeled: np.ndarray,
    labeled: np.ndarray,
    n: int,
    cfg: AlgesConfig,
    device: torch.device,
    *,
    seed: int = 0,
    workdir: str | Path | None = None,
    progress: bool = False,
    precision: Any = None,
) -> QueryResult:
    """Choose ``n`` of the ``unlabeled`` positions of ``source`` (an array of images or a pool source) with
    ``strategy``; the pool is streamed through the model once (plus the labelled images for core-set).

    Unreadable files (a :class:`~alges.pool.FileSource`) are left out and returned in ``failures``; the caller
    decides whether that is an error. ``precision``: :class:`alges.precision.AlgesPrecision` (its ``select`` part
    runs the pool forward); None: fp32 (or the config's old ``amp`` flag).
    """
    s = get_strategy(strategy)
    src = ArraySource(source) if isinstance(source, np.ndarray) else source
    unlabeled = np.asarray(unlabeled, dtype=np.int64)
    labeled = np.asarray(labeled, dtype=np.int64)
    check_budget(len(unlabeled), n)
    if not s.needs_model:
        pos = random_select(len(unlabeled), n, seed=seed)
        return QueryResult(unlabeled[pos], np.zeros(n), [])
    if model is None:
        raise ValueError(f"strategy {s.name} needs a model")
    cand = unlabeled
    frac = s.pool_fraction(cfg)
    if frac < 1.0:  # e.g. DEAL scores a seeded random subset of the pool
        k = min(len(unlabeled), max(n, math.ceil(frac * len(unlabeled))))
        cand = np.sort(np.random.default_rng([seed, 17]).choice(unlabeled, size=k, replace=False))
    sel = precision.select if precision is not None else None
    res = infer(model, src, cfg, device, (s,), positions=cand, workdir=workdir, progress=progress, precision=sel)
    failures = list(res.failures)
    if len(res.positions) < n:
        raise ValueError(f"only {len(res.positions)} pool images could be read; budget {n} cannot be met")
    lab_values = None
    if s.needs_labeled and len(labeled):
        lab = infer(model, src, cfg, device, (s,), positions=labeled, progress=progress, precision=sel)
        lab_values = lab.values[s.name]
        failures += lab.failures
    pos, scores = s.choose(res.values[s.name], n, seed=seed, cfg=cfg, labeled_values=lab_values)
    return QueryResult(res.positions[pos], np.asarray(scores, dtype=np.float64), failures)


def run_key(cfg: AlgesConfig, pool_ids: Sequence[str], test_ids: Sequence[str], precision: Any = None) -> str:
    """The resume key of a run: config, pool and test ids, and the precision names that are not fp32 (so runs
    trained in fp32 keep the keys they had before ``--precision``; a run resumed under another precision is
    refused)."""
    d = {
        "cfg": {k: v for k, v in cfg.to_dict().items() if k not in ("name", "seeds", "n_rounds")},
        "pool": list(pool_ids),
        "test": list(test_ids),
    }
    if precision is not None and precision.key():
        d["precision"] = precision.key()
    blob = json.dumps(d, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _round_seed(seed: int, r: int) -> int:
    return seed * 10_007 + r


def _round_model_path(out_dir: Path, strategy: str, seed: int, r: int) -> Path:
    return out_dir / "state" / f"{strategy}_seed{seed}_round{r}.safetensors"


def _key_and_train_precision(cfg: AlgesConfig, pool: SegArrays, test: SegArrays, precision: Any):
    """The resume key of a run (config + data ids + precision) and its training precision (None: fp32)."""
    return run_key(cfg, pool.ids, test.ids, precision), (precision.train if precision is not None else None)


def run_strategy(
    strategy: str,
    seed: int,
    pool: SegArrays,
    test: SegArrays,
    cfg: AlgesConfig,
    device: torch.device,
    out_dir: str | Path,
    *,
    resume: bool = True,
    class_names: Sequence[str] | None = None,
    max_rounds_this_call: int | None = None,
    save_model: bool = True,
    progress: bool = False,
    precision: Any = None,
) -> dict[str, Any]:
    """Run (or resume) one strategy for one seed; returns its state dict (with ``rounds``).

    ``precision``: :class:`alges.precision.AlgesPrecision` (training + evaluation in its ``train`` part, the
    selection forward in its ``select`` part); None: fp32.

    With ``save_model`` the last round's model is written to ``out/models/<strategy>_seed<k>.safetensors`` (a
    checkpoint ``alges evaluate`` / ``query`` / ``predict`` accept)."""
    s = get_strategy(strategy)
    out_dir = Path(out_dir)
    state_path = out_dir / "state" / f"{strategy}_seed{seed}.json"
    key, tp = _key_and_train_precision(cfg, pool, test, precision)
    m = len(pool)
    if cfg.n_init > m:
        raise ValueError(f"n_init {cfg.n_init} is larger than the pool ({m} images)")
    state: dict[str, Any]
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("key") != key:
            raise ValueError(
                f"{state_path} was written with a different config or data; use another --out or --no-resume"
            )
    else:
        init = np.random.default_rng(seed).choice(m, size=cfg.n_init, replace=False)
        state = {
            "strategy": strategy,
            "seed": seed,
            "key": key,
            "pool_size": m,
            "labeled": sorted(int(i) for i in init),
            "rounds": [],
        }
    if state["labeled"] and len(state["rounds"]) >= cfg.n_rounds:
        return state
    deal = s.needs_deal_head
    seed_everything(seed)
    model = build_model(cfg, deal_head=deal).to(device)
    init_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    done = len(state["rounds"])
    if done and not cfg.retrain_from_init:  # continue from the previous round's trained weights
        prev = _round_model_path(out_dir, strategy, seed, done - 1)
        if not prev.is_file():
            raise ValueError(
                f"{prev} (round {done - 1}'s model, needed to resume with retrain_from_init=False) is missing"
            )
        sd, _, _ = load_checkpoint(prev)
        model.load_state_dict(sd)
    source = ArraySource(pool.images, pool.ids)
    done_now = 0
    for r in range(done, cfg.n_rounds):
        if max_rounds_this_call is not None and done_now >= max_rounds_this_call:
            break
        t0 = time.perf_counter()
        labeled = np.asarray(state["labeled"], dtype=np.int64)
        cache = out_dir / "cache" / f"round0_seed{seed}{'_deal' if deal else ''}_{key}.safetensors"
        if r == 0 and cache.is_file():
            sd, _, _ = load_checkpoint(cache)
            model.load_state_dict(sd)
        else:
            if cfg.retrain_from_init or r == 0:
                model.load_state_dict(init_sd)
            seed_everything(_round_seed(seed, r))
            with phase(tp):
                train_model(
                    model,
                    pool.images[labeled],
                    pool.masks[labeled],
                    cfg,
                    device,
                    seed=_round_seed(seed, r),
                    progress=progress,
                    precision=tp,
                )
            if r == 0:
                save_checkpoint(cache, model.state_dict(), cfg.to_dict(), {"seed": seed})
        t_train = time.perf_counter() - t0
        metrics = evaluate_model(model, test, cfg, device, precision=tp)
        rec: dict[str, Any] = {"round": r, "n_labeled": len(labeled), "frac_labeled": len(labeled) / m, **metrics}
        t1 = time.perf_counter()
        if r < cfg.n_rounds - 1:
            unl = np.setdiff1d(np.arange(m), labeled)
            chosen, scores, _ = select_batch(
                strategy,
                model,
                source,
                unl,
                labeled,
                min(cfg.n_query, len(unl)),
                cfg,
                device,
                seed=_round_seed(seed, r),
                precision=precision,
            )
            rec["selected"] = [pool.ids[i] for i in chosen]
            state["labeled"] = sorted(set(state["labeled"]) | {int(i) for i in chosen})
        rec["seconds_train"] = round(t_train, 2)
        rec["seconds_select"] = round(time.perf_counter() - t1, 2)
        if r == cfg.n_rounds - 1 and save_model:
            save_checkpoint(
                out_dir / "models" / f"{strategy}_seed{seed}.safetensors",
                model.state_dict(),
                cfg.to_dict(),
                {
                    "deal_head": deal,
                    "class_names": list(class_names or []),
                    "strategy": strategy,
                    "labeled": [pool.ids[i] for i in labeled],
                },
            )
        if not cfg.retrain_from_init:
            save_checkpoint(
                _round_model_path(out_dir, strategy, seed, r), model.state_dict(), cfg.to_dict(), {"round": r}
            )
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        state["rounds"].append(rec)
        atomic_write_json(state_path, state)
        if not cfg.retrain_from_init and r > 0:
            _round_model_path(out_dir, strategy, seed, r - 1).unlink(missing_ok=True)
        done_now += 1
    return state


def run_full(
    seed: int,
    pool: SegArrays,
    test: SegArrays,
    cfg: AlgesConfig,
    device: torch.device,
    out_dir: str | Path,
    precision: Any = None,
) -> dict[str, Any]:
    """The "Full" line: train on every pool image (same recipe as a round), evaluate; cached in ``out/state``."""
    out_dir = Path(out_dir)
    path = out_dir / "state" / f"full_seed{seed}.json"
    key, tp = _key_and_train_precision(cfg, pool, test, precision)
    if path.is_file():
        rec = json.loads(path.read_text())
        if rec.get("key") == key:
            return rec
    t0 = time.perf_counter()
    seed_everything(seed)
    model = build_model(cfg).to(device)
    seed_everything(_round_seed(seed, 0))
    with phase(tp):
        train_model(model, pool.images, pool.masks, cfg, device, seed=_round_seed(seed, 0), precision=tp)
    rec = {
        "strategy": "full",
        "seed": seed,
        "key": key,
        "n_labeled": len(pool),
        "frac_labeled": 1.0,
        **evaluate_model(model, test, cfg, device, precision=tp),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(path, rec)
    return rec


def simulate(
    pool: SegArrays,
    test: SegArrays,
    strategies: Sequence[str],
    seeds: Sequence[int],
    cfg: AlgesConfig,
    device: torch.device,
    out_dir: str | Path,
    *,
    resume: bool = True,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    jobs: Sequence[tuple[str, int]] | None = None,
    precision: Any = None,
) -> list[dict[str, Any]]:
    """Run every (strategy, seed) (or the given ``jobs``) and return the flat list of per-round records."""
    rows: list[dict[str, Any]] = []
    jobs = list(jobs) if jobs is not None else [(s, k) for k in seeds for s in strategies]
    for strategy, seed in tqdm(jobs, desc="simulate", disable=not progress):
        st = run_strategy(
            strategy, seed, pool, test, cfg, device, out_dir, resume=resume, class_names=class_names,
            precision=precision,
        )  # fmt: skip
        for rec in st["rounds"]:
            rows.append({"strategy": strategy, "seed": seed, **rec})
    return rows
