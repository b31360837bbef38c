"""Batch selection: k-means++ seeding on gradient embeddings (ALGES section 3.2.3) and the paper's baselines.

* ``kmeans_pp``: seeded D^2 sampling. Presets: ``badge`` (Ash et al. 2020: largest-norm point first, then vanilla
  D^2 sampling, no local trials) and ``official`` (scikit-learn's ``kmeans_plusplus`` as the official ALGES code calls
  it: uniform first centre, greedy choice among 2 + floor(ln n) D^2-sampled candidates, ``random_state=0``).
* Uncertainty baselines on per-image pixel sums (official code): max entropy (highest), margin (lowest sum of
  p(1) - p(2)), least confidence (lowest sum of max p).
* Core-set (Sener & Savarese 2018): greedy k-centre over pooled decoder features of labeled + unlabeled images.
* DEAL (Xie et al. 2020): entropy of a ``hard_levels``-bin histogram of the difficulty map, highest first.

Every function returns indices into the candidate array, in selection order.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "kmeans_pp",
    "KMEANS_PRESETS",
    "top_k",
    "entropy_scores",
    "margin_scores",
    "least_confidence_scores",
    "deal_scores",
    "coreset_greedy",
    "random_select",
]

KMEANS_PRESETS: dict[str, dict] = {
    "badge": {"first": "max_norm", "n_local_trials": 1, "fixed_seed": None},
    "official": {"first": "random", "n_local_trials": None, "fixed_seed": 0},
}


def _check_budget(n_candidates: int, n: int) -> None:
    if n_candidates == 0:
        raise ValueError("the unlabeled pool is empty: there is nothing to select")
    if n <= 0:
        raise ValueError(f"budget must be positive, got {n}")
    if n > n_candidates:
        raise ValueError(f"budget {n} is larger than the unlabeled pool ({n_candidates} images); lower --budget")


def kmeans_pp(
    emb: np.ndarray,
    n: int,
    *,
    seed: int = 0,
    first: str = "max_norm",
    n_local_trials: int | None = 1,
) -> np.ndarray:
    """k-means++ seeding: pick ``n`` distinct rows of ``emb`` [M, D] that are far apart and of high norm.

    Args:
        emb: embeddings [M, D].
        n: number of centres (images to select), 1 <= n <= M.
        seed: RNG seed (the same seed gives the same indices).
        first: "max_norm" (BADGE) or "random" (k-means++ / scikit-learn).
        n_local_trials: candidates drawn per step, the one that lowers the total potential most wins;
            1 = vanilla k-means++ (BADGE); None = scikit-learn's 2 + floor(ln n).

    Returns:
        int64 indices [n] in selection order. Zero total potential (all remaining points duplicate a centre) falls
        back to uniform sampling among the unchosen points.
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [M, D], got shape {x.shape}")
    m = x.shape[0]
    _check_budget(m, n)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    rng = np.random.default_rng(seed)
    trials = 2 + int(math.log(n)) if n_local_trials is None else int(n_local_trials)
    sq = (x * x).sum(axis=1)  # [M]

    def dist2(i: int) -> np.ndarray:
        return np.maximum(sq + sq[i] - 2.0 * (x @ x[i]), 0.0)  # [M]

    first_idx = int(np.argmax(sq)) if first == "max_norm" else int(rng.integers(m))
    chosen = [first_idx]
    taken = np.zeros(m, dtype=bool)
    taken[first_idx] = True
    d2 = dist2(first_idx)
    d2[taken] = 0.0
    while len(chosen) < n:
        total = d2.sum()
        if total <= 0.0:  # every remaining point coincides with a centre: uniform over the unchosen
            cand = np.array([rng.choice(np.flatnonzero(~taken))])
        else:
            cand = rng.choice(m, size=trials, p=d2 / total)
        if len(cand) == 1:
            best = int(cand[0])
            new_d2 = np.minimum(d2, dist2(best))
        else:  # greedy: keep the candidate that lowers the potential most (scikit-learn)
            best, new_d2, best_pot = -1, d2, np.inf
            for c in cand:
                nd = np.minimum(d2, dist2(int(c)))
                pot = nd.sum()
                if pot < best_pot:
                    best, new_d2, best_pot = int(c), nd, pot
        assert not taken[best], "k-means++ drew an already chosen point"
        chosen.append(best)
        taken[best] = True
        d2 = new_d2
        d2[taken] = 0.0
    return np.asarray(chosen, dtype=np.int64)


def top_k(scores: np.ndarray, n: int, *, largest: bool) -> np.ndarray:
    """Indices of the ``n`` largest (or smallest) scores, ties broken by index (stable)."""
    s = np.asarray(scores, dtype=np.float64)
    _check_budget(len(s), n)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s if largest else s, kind="stable")
    return order[:n].astype(np.int64)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Max-entropy score per image: sum over pixels of -sum_k p log p. probs [M, K, ...] -> [M]; 0 log 0 = 0
    (the official code has no epsilon and gives NaN there)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0)
    return ent.reshape(p.shape[0], -1).sum(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """Margin score per image: sum over pixels of p(1) - p(2); select the lowest. probs [M, K, ...] -> [M]."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return (p[:, -1] - p[:, -2]).reshape(p.shape[0], -1).sum(axis=1)


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """Least-confidence score per image: sum over pixels of max_k p; select the lowest. [M, K, ...] -> [M]."""
    p = np.asarray(probs, dtype=np.float64)
    return p.max(axis=1).reshape(p.shape[0], -1).sum(axis=1)


def deal_scores(difficulty: np.ndarray, hard_levels: int = 10) -> np.ndarray:
    """DEAL's ``diff_entropy``: entropy of the ``hard_levels``-bin histogram of each difficulty map in [0, 1].
    difficulty [M, ...] -> [M]; select the highest."""
    d = np.asarray(difficulty, dtype=np.float64).reshape(len(difficulty), -1)
    out = np.empty(len(d))
    for i, row in enumerate(d):
        hist, _ = np.histogram(row, bins=hard_levels, range=(0.0, 1.0))
        q = hist[hist > 0] / row.size
        out[i] = float(-(q * np.log(q)).sum())
    return out


def coreset_greedy(features: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Greedy k-centre (Sener & Savarese 2018): repeatedly take the candidate farthest from labeled + chosen.

    Args:
        features: [M, D] features of every image (labeled and unlabeled).
        labeled: indices into ``features`` of the labeled images (may be empty: the first pick is then the
            candidate farthest from the candidates' mean).
        candidates: indices into ``features`` of the unlabeled images.
        n: budget.

    Returns:
        positions into ``candidates`` [n], in selection order.
    """
    f = np.asarray(features, dtype=np.float64)
    cand = np.asarray(candidates, dtype=np.int64)
    _check_budget(len(cand), n)
    fc = f[cand]  # [C, D]
    sqc = (fc * fc).sum(1)

    def d2_to(rows: np.ndarray) -> np.ndarray:  # [C] squared distance of each candidate to the nearest row
        sqr = (rows * rows).sum(1)
        d2 = sqc[:, None] + sqr[None, :] - 2.0 * fc @ rows.T  # [C, R]
        return np.maximum(d2, 0.0).min(axis=1)

    lab = np.asarray(labeled, dtype=np.int64)
    mind = d2_to(f[lab]) if len(lab) else d2_to(fc.mean(axis=0, keepdims=True))
    chosen: list[int] = []
    for _ in range(n):
        mind_masked = mind.copy()
        mind_masked[chosen] = -1.0
        j = int(np.argmax(mind_masked))
        chosen.append(j)
        mind = np.minimum(mind, d2_to(fc[j : j + 1]))
    return np.asarray(chosen, dtype=np.int64)


def random_select(n_candidates: int, n: int, *, seed: int) -> np.ndarray:
    """``n`` distinct positions drawn uniformly without replacement (seeded)."""
    _check_budget(n_candidates, n)
    return np.random.default_rng(seed).choice(n_candidates, size=n, replace=False).astype(np.int64)
