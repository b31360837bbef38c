"""The active-learning loop (ALGES Algorithm 1) and the per-strategy query step.

Per (strategy, seed): draw the initial pool (``n_init`` images, seeded), then for each round r = 0..R-1 reset the
model to the seed's initial weights (official: deep copy of the initial model), train ``epochs`` epochs on the labeled
set, evaluate the last-epoch weights on the test set, and (except after the last round) query ``n_query`` images.
After every round the state (labeled indices, per-round metrics) is written atomically to
``out/state/<strategy>_seed<k>.json``; a rerun resumes after the last finished round and gives the same result,
because model init, training order and selection are all seeded by (seed, round) only.

Round 0 does not depend on the strategy (same initial pool, same init), so its trained weights are cached per seed
under ``out/cache`` and reused by the other strategies (DEAL, whose model has an extra head, has its own cache).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.checkpoint import load_checkpoint, save_checkpoint
from medshared.runtime import atomic_write_json, seed_everything
from tqdm.auto import tqdm

from alges.config import STRATEGIES, AlgesConfig
from alges.data import SegArrays
from alges.evaluate import evaluate_model, infer
from alges.model import AlgesUnet, build_model
from alges.selection import (
    KMEANS_PRESETS,
    coreset_greedy,
    kmeans_pp,
    random_select,
    top_k,
)
from alges.train import train_model

__all__ = ["select_batch", "run_strategy", "simulate", "parse_strategies", "STRATEGY_OUTPUTS"]

STRATEGY_OUTPUTS = {
    "random": (),
    "entropy": ("entropy",),
    "margin": ("margin",),
    "least-confidence": ("least_confidence",),
    "coreset": ("pooled",),
    "deal": ("deal",),
    "alges-img": ("alges_img",),
    "alges-sem": ("alges_sem",),
}


def parse_strategies(spec: str | Sequence[str]) -> list[str]:
    """ "random,alges-img" -> ["random", "alges-img"]; unknown names raise ``ValueError`` listing the valid ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise ValueError(f"unknown strategies {bad or spec!r}; valid: {', '.join(STRATEGIES)}")
    return names


def select_batch(
    strategy: str,
    model: AlgesUnet | None,
    images: np.ndarray,
    unlabeled: np.ndarray,
    labeled: np.ndarray,
    n: int,
    cfg: AlgesConfig,
    device: torch.device,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``n`` of the ``unlabeled`` indices (into ``images``) with ``strategy``.

    Returns ``(chosen, scores)``: chosen indices into ``images`` in selection order, and one score per chosen image
    (the strategy's uncertainty score, the embedding norm for ALGES, the distance to the nearest centre for core-set).
    """
    if strategy not in STRATEGY_OUTPUTS:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    unlabeled = np.asarray(unlabeled, dtype=np.int64)
    if len(unlabeled) == 0:
        raise ValueError("the unlabeled pool is empty: there is nothing to select")
    if n > len(unlabeled):
        raise ValueError(f"budget {n} is larger than the unlabeled pool ({len(unlabeled)} images); lower the budget")
    if strategy == "random":
        pos = random_select(len(unlabeled), n, seed=seed)
        return unlabeled[pos], np.zeros(n)
    assert model is not None, "model-based strategies need a model"
    outs = STRATEGY_OUTPUTS[strategy]
    if strategy == "coreset":
        both = np.concatenate([np.asarray(labeled, dtype=np.int64), unlabeled])
        feats = infer(model, images[both], cfg, device, outs, progress=progress)["pooled"]
        nl = len(labeled)
        pos = coreset_greedy(feats, np.arange(nl), np.arange(nl, len(both)), n)
        fc = feats[nl:].astype(np.float64)
        lab = feats[:nl].astype(np.float64)
        ref = lab if nl else fc.mean(0, keepdims=True)
        d = np.sqrt(((fc[pos, None, :] - ref[None]) ** 2).sum(-1).min(1))
        return unlabeled[pos], d
    res = infer(model, images[unlabeled], cfg, device, outs, progress=progress)
    if strategy in ("alges-img", "alges-sem"):
        emb = res[outs[0]]
        preset = KMEANS_PRESETS[cfg.kmeans_preset]
        kseed = preset["fixed_seed"] if preset["fixed_seed"] is not None else seed
        pos = kmeans_pp(emb, n, seed=kseed, first=preset["first"], n_local_trials=preset["n_local_trials"])
        return unlabeled[pos], np.linalg.norm(emb[pos].astype(np.float64), axis=1)
    scores = res[outs[0]]
    largest = strategy in ("entropy", "deal")
    pos = top_k(scores, n, largest=largest)
    return unlabeled[pos], scores[pos]


def _config_key(cfg: AlgesConfig, pool_ids: Sequence[str], test_ids: Sequence[str]) -> str:
    blob = json.dumps(
        {
            "cfg": {k: v for k, v in cfg.to_dict().items() if k not in ("name", "seeds", "n_rounds")},
            "pool": list(pool_ids),
            "test": list(test_ids),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _round_seed(seed: int, r: int) -> int:
    return seed * 10_007 + r


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
) -> dict[str, Any]:
    """Run (or resume) one strategy for one seed; returns its state dict (with ``rounds``).

    With ``save_model`` the last round's model is written to ``out/models/<strategy>_seed<k>.safetensors`` (a
    checkpoint ``alges evaluate`` / ``query`` / ``predict`` accept)."""
    out_dir = Path(out_dir)
    state_path = out_dir / "state" / f"{strategy}_seed{seed}.json"
    key = _config_key(cfg, pool.ids, test.ids)
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
    deal = strategy == "deal"
    seed_everything(seed)
    model = build_model(cfg, deal_head=deal).to(device)
    init_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    done_now = 0
    for r in range(len(state["rounds"]), cfg.n_rounds):
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
            train_model(
                model,
                pool.images[labeled],
                pool.masks[labeled],
                cfg,
                device,
                seed=_round_seed(seed, r),
                progress=progress,
            )
            if r == 0:
                save_checkpoint(cache, model.state_dict(), cfg.to_dict(), {"seed": seed})
        metrics = evaluate_model(model, test.images, test.masks, cfg, device)
        rec: dict[str, Any] = {"round": r, "n_labeled": len(labeled), "frac_labeled": len(labeled) / m, **metrics}
        if r < cfg.n_rounds - 1:
            unl = np.setdiff1d(np.arange(m), labeled)
            chosen, scores = select_batch(
                strategy,
                model,
                pool.images,
                unl,
                labeled,
                min(cfg.n_query, len(unl)),
                cfg,
                device,
                seed=_round_seed(seed, r),
            )
            rec["selected"] = [pool.ids[i] for i in chosen]
            state["labeled"] = sorted(set(state["labeled"]) | {int(i) for i in chosen})
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
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        state["rounds"].append(rec)
        atomic_write_json(state_path, state)
        done_now += 1
    return state


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
) -> list[dict[str, Any]]:
    """Run every (strategy, seed) and return the flat list of per-round records (with strategy and seed)."""
    rows: list[dict[str, Any]] = []
    jobs = [(s, k) for k in seeds for s in strategies]
    for strategy, seed in tqdm(jobs, desc="simulate", disable=not progress):
        st = run_strategy(strategy, seed, pool, test, cfg, device, out_dir, resume=resume, class_names=class_names)
        for rec in st["rounds"]:
            rows.append({"strategy": strategy, "seed": seed, **rec})
    return rows
