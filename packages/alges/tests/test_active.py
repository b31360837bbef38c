"""The active-learning loop: resume equals an uninterrupted run; strategies select valid, distinct images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from alges.active import parse_strategies, run_strategy, select_batch
from alges.config import create_config
from alges.model import build_model

CPU = torch.device("cpu")


def test_resume_equals_uninterrupted(tmp_path, arrays):
    pool, test = arrays
    cfg = create_config("alges_tiny", n_rounds=3)
    full = run_strategy("alges-img", 0, pool, test, cfg, CPU, tmp_path / "a")
    part = run_strategy("alges-img", 0, pool, test, cfg, CPU, tmp_path / "b", max_rounds_this_call=1)
    assert len(part["rounds"]) == 1
    saved = json.loads((tmp_path / "b" / "state" / "alges-img_seed0.json").read_text())
    assert len(saved["rounds"]) == 1 and len(saved["labeled"]) == cfg.n_init + cfg.n_query
    resumed = run_strategy("alges-img", 0, pool, test, cfg, CPU, tmp_path / "b")
    assert [r["n_labeled"] for r in full["rounds"]] == [4, 7, 10]
    assert full["labeled"] == resumed["labeled"]
    for a, b in zip(full["rounds"], resumed["rounds"]):
        assert a.get("selected") == b.get("selected")
        assert a["dice_macro"] == pytest.approx(b["dice_macro"], abs=1e-9)
        assert a["dice_official"] == pytest.approx(b["dice_official"], abs=1e-9)
    assert (tmp_path / "a" / "models" / "alges-img_seed0.safetensors").is_file()
    # a different config in the same folder is refused rather than silently mixed
    with pytest.raises(ValueError, match="different config"):
        run_strategy("alges-img", 0, pool, test, create_config("alges_tiny", lr=0.5), CPU, tmp_path / "b")


@pytest.mark.parametrize(
    "strategy",
    ["random", "entropy", "margin", "least-confidence", "coreset", "deal", "badge", "alges-img", "alges-sem"],
)
def test_every_strategy_selects_distinct_unlabeled(strategy, arrays):
    pool, _ = arrays
    cfg = create_config("alges_tiny")
    torch.manual_seed(0)
    model = build_model(cfg, deal_head=strategy == "deal")
    labeled = np.array([0, 1, 2])
    unl = np.arange(3, len(pool))
    chosen, scores, failures = select_batch(strategy, model, pool.images, unl, labeled, 5, cfg, CPU, seed=1)
    assert failures == []
    assert len(set(chosen.tolist())) == 5 and set(chosen.tolist()) <= set(unl.tolist())
    assert len(scores) == 5 and np.isfinite(scores).all()
    again, _, _ = select_batch(strategy, model, pool.images, unl, labeled, 5, cfg, CPU, seed=1)
    np.testing.assert_array_equal(chosen, again)


def test_select_errors(arrays):
    pool, _ = arrays
    cfg = create_config("alges_tiny")
    with pytest.raises(ValueError, match="empty"):
        select_batch("random", None, pool.images, np.array([], int), np.array([0]), 1, cfg, CPU)
    with pytest.raises(ValueError, match="larger than the unlabeled pool"):
        select_batch("random", None, pool.images, np.arange(3), np.array([], int), 4, cfg, CPU)
    with pytest.raises(ValueError, match="valid"):
        parse_strategies("random,bogus")
    assert parse_strategies("random, alges-img") == ["random", "alges-img"]
