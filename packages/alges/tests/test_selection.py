"""k-means++ seeding and the baselines on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from alges.selection import (
    coreset_greedy,
    deal_scores,
    entropy_scores,
    kmeans_pp,
    least_confidence_scores,
    margin_scores,
    random_select,
    top_k,
)


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0], [-100.0, 0, 0]])
    pts = np.concatenate([c + 0.5 * rng.standard_normal((50, 3)) for c in centres])  # 4 tight far-apart clusters
    low = 0.01 * rng.standard_normal((3, 3))  # low-norm points near the origin (confident images)
    return np.concatenate([pts, low]), np.repeat(np.arange(4), 50)


@pytest.mark.parametrize(
    "preset", [{"first": "max_norm", "n_local_trials": 1}, {"first": "random", "n_local_trials": None}]
)
def test_kmeans_pp_distinct_deterministic_and_spread(preset):
    emb, cluster = _clusters()
    a = kmeans_pp(emb, 4, seed=3, **preset)
    b = kmeans_pp(emb, 4, seed=3, **preset)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 4
    big = kmeans_pp(emb, 30, seed=3, **preset)
    assert len(set(big.tolist())) == 30
    if preset["first"] == "max_norm":  # BADGE: first pick is the largest-norm point
        assert a[0] == int(np.argmax((emb**2).sum(1)))
    # the 4 picks fall in the 4 far-apart high-norm clusters, not among the low-norm points
    assert all(i < 200 for i in a)
    assert sorted(cluster[a].tolist()) == [0, 1, 2, 3]


def test_kmeans_pp_seed_changes_and_zero_potential_and_budget():
    emb, _ = _clusters()
    picks = {tuple(kmeans_pp(emb, 6, seed=s, first="random").tolist()) for s in range(5)}
    assert len(picks) > 1
    dup = np.ones((5, 2))  # all identical: zero potential -> uniform fallback, still distinct
    assert sorted(kmeans_pp(dup, 5, seed=0).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="larger than the unlabeled pool"):
        kmeans_pp(emb, 500)
    with pytest.raises(ValueError, match="empty"):
        kmeans_pp(np.zeros((0, 3)), 1)


def _probs():
    # 4 images, 3 classes, 2 pixels: image 0 confident, 1 uniform, 2 two-way tie, 3 fairly confident
    p = np.array(
        [
            [[0.98, 0.98], [0.01, 0.01], [0.01, 0.01]],
            [[1 / 3, 1 / 3], [1 / 3, 1 / 3], [1 / 3, 1 / 3]],
            [[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]],
            [[0.8, 0.8], [0.1, 0.1], [0.1, 0.1]],
        ]
    )
    return p  # [M=4, K=3, N=2]


def test_uncertainty_baselines_pick_expected_images():
    p = _probs()
    ent = entropy_scores(p)
    np.testing.assert_allclose(ent[1], 2 * np.log(3))
    np.testing.assert_allclose(ent[2], 2 * np.log(2))  # 0 log 0 = 0, not NaN
    assert top_k(ent, 2, largest=True).tolist() == [1, 2]
    marg = margin_scores(p)
    np.testing.assert_allclose(marg, [2 * 0.97, 0.0, 0.0, 2 * 0.7])
    assert top_k(marg, 2, largest=False).tolist() == [1, 2]  # ties broken by index
    lc = least_confidence_scores(p)
    np.testing.assert_allclose(lc, [1.96, 2 / 3, 1.0, 1.6])
    assert top_k(lc, 1, largest=False).tolist() == [1]


def test_coreset_and_deal_and_random():
    feats = np.array([[0.0, 0], [1, 0], [10, 0], [0, 10], [0.5, 0.2]])
    pos, dist = coreset_greedy(feats[[1, 2, 3, 4]], feats[[0]], 2)
    assert sorted(pos.tolist()) == [1, 2]  # candidates 2 and 3 (positions 1, 2) are far from 0 and each other
    assert dist[0] == pytest.approx(10.0)  # the first pick's distance to the labelled image
    first, _ = coreset_greedy(feats[[1, 2, 3, 4]], None, 1)  # no labelled images: farthest from the mean
    assert first.tolist() == [2]  # (0, 10) is 7.99 from the candidates' mean (2.875, 2.55), (10, 0) 7.57
    flat = np.full((1, 16), 0.05)
    spread = np.linspace(0, 0.999, 16)[None]
    s = deal_scores(np.concatenate([flat, spread]), hard_levels=8)
    assert s[0] == pytest.approx(0.0) and s[1] == pytest.approx(np.log(8))
    r = random_select(10, 4, seed=1)
    assert len(set(r.tolist())) == 4 and r.tolist() == random_select(10, 4, seed=1).tolist()
