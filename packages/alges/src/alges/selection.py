"""Batch-selection algorithms on per-image values: k-means++ seeding (ALGES section 3.2.3), greedy k-centre
(core-set), top-k, random, and DEAL's difficulty-histogram entropy.

* ``kmeans_pp``: seeded D^2 sampling. Presets: ``badge`` (Ash et al. 2020: largest-norm point first, then vanilla
  D^2 sampling, no local trials) and ``official`` (scikit-learn's ``kmeans_plusplus`` as the official ALGES code calls
  it: uniform first centre, greedy choice among 2 + floor(ln n) D^2-sampled candidates, ``random_state=0``).
* ``coreset_greedy`` (Sener & Savarese 2018): repeatedly take the candidate farthest from labelled + chosen.
* ``deal_scores`` (Xie et al. 2020, ``diff_entropy``): entropy of a ``hard_levels``-bin histogram of each difficulty
  map over the map's own value range (``np.histogram``'s default, as the original DEAL), highest first.

Pools of any size: ``kmeans_pp`` and ``coreset_greedy`` read their embedding arrays (NumPy arrays or ``np.memmap``)
in row chunks of ``chunk`` rows, so only O(M) scalars (norms, distances) are ever held whole, never the embeddings.
Every function returns positions into the given arrays, in selection order.
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
    "CHUNK_ROWS",
]

KMEANS_PRESETS: dict[str, dict] = {
    "badge": {"first": "max_norm", "n_local_trials": 1, "fixed_seed": None},
    "official": {"first": "random", "n_local_trials": None, "fixed_seed": 0},
}
CHUNK_ROWS = 8192


def check_budget(n_candidates: int, n: int) -> None:
    """Raise ``ValueError`` for an empty pool, a non-positive budget or a budget larger than the pool."""
    if n_candidates == 0:
        raise ValueError("the unlabeled pool is empty: there is nothing to select")
    if n <= 0:
        raise ValueError(f"budget must be positive, got {n}")
    if n > n_candidates:
        raise ValueError(f"budget {n} is larger than the unlabeled pool ({n_candidates} images); lower --budget")


def _rows(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.asarray(x[start:stop], dtype=np.float64)


def _sq_norms(x: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], chunk):
        r = _rows(x, s, s + chunk)
        if not np.isfinite(r).all():
            raise ValueError("embeddings contain NaN or inf")
        out[s : s + chunk] = (r * r).sum(axis=1)
    return out


def _dist2_to(x: np.ndarray, sq: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
    """Squared distance of every row of ``x`` to the point ``c`` [D], chunked. [M]"""
    c = np.asarray(c, dtype=np.float64)
    cc = float(c @ c)
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = sq[s : s + chunk] + cc - 2.0 * (_rows(x, s, s + chunk) @ c)
    return np.maximum(out, 0.0)


def kmeans_pp(
    emb: np.ndarray,
    n: int,
    *,
    seed: int = 0,
    first: str = "max_norm",
    n_local_trials: int | None = 1,
    chunk: int = CHUNK_ROWS,
) -> np.ndarray:
    """k-means++ seeding: pick ``n`` distinct rows of ``emb`` [M, D] that are far apart and of high norm.

    Args:
        emb: embeddings [M, D] (array or memmap; read in chunks of ``chunk`` rows).
        n: number of centres (images to select), 1 <= n <= M.
        seed: RNG seed (the same seed gives the same indices).
        first: "max_norm" (BADGE) or "random" (k-means++ / scikit-learn).
        n_local_trials: candidates drawn per step, the one that lowers the total potential most wins;
            1 = vanilla k-means++ (BADGE); None = scikit-learn's 2 + floor(ln n).

    Returns:
        int64 indices [n] in selection order. Zero total potential (all remaining points duplicate a centre) falls
        back to uniform sampling among the unchosen points.
    """
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [M, D], got shape {emb.shape}")
    m = emb.shape[0]
    check_budget(m, n)
    rng = np.random.default_rng(seed)
    trials = 2 + int(math.log(n)) if n_local_trials is None else int(n_local_trials)
    sq = _sq_norms(emb, chunk)  # [M]

    def dist2(i: int) -> np.ndarray:
        return _dist2_to(emb, sq, np.asarray(emb[i], dtype=np.float64), chunk)

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
    check_budget(len(s), n)
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
    """DEAL's ``diff_entropy`` (original ``batch_diff_entropy``): the entropy of a ``hard_levels``-bin histogram of
    each difficulty map, the bins spanning that map's own [min, max] (``np.histogram``'s default range).

    difficulty [M, ...] -> [M]; select the highest. A constant map has one filled bin: entropy 0.
    """
    d = np.asarray(difficulty, dtype=np.float64).reshape(len(difficulty), -1)
    out = np.empty(len(d))
    for i, row in enumerate(d):
        hist, _ = np.histogram(row, bins=hard_levels)
        q = hist[hist > 0] / row.size
        out[i] = float(-(q * np.log(q)).sum())
    return out


def coreset_greedy(
    candidates: np.ndarray, labeled: np.ndarray | None, n: int, *, chunk: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-centre (Sener & Savarese 2018): repeatedly take the candidate farthest from labelled + chosen.

    Args:
        candidates: features [C, D] of the unlabelled images (array or memmap, read in chunks).
        labeled: features [L, D] of the labelled images, or None / empty: the first pick is then the candidate
            farthest from the candidates' mean.
        n: budget.

    Returns:
        ``(positions into candidates [n] in selection order, distance of each pick to its nearest centre at the
        time it was picked [n])``.
    """
    c = candidates.shape[0]
    check_budget(c, n)
    sqc = _sq_norms(candidates, chunk)

    def d2_to_rows(rows: np.ndarray) -> np.ndarray:  # [C] squared distance of each candidate to the nearest row
        rows = np.asarray(rows, dtype=np.float64)
        sqr = (rows * rows).sum(1)
        out = np.empty(c, dtype=np.float64)
        for s in range(0, c, chunk):
            block = _rows(candidates, s, s + chunk)
            d2 = sqc[s : s + chunk, None] + sqr[None, :] - 2.0 * block @ rows.T  # [chunk, R]
            out[s : s + chunk] = np.maximum(d2, 0.0).min(axis=1)
        return out

    if labeled is not None and len(labeled):
        mind = np.full(c, np.inf)
        for s in range(0, labeled.shape[0], chunk):
            mind = np.minimum(mind, d2_to_rows(labeled[s : s + chunk]))
    else:
        mean = np.zeros(candidates.shape[1], dtype=np.float64)
        for s in range(0, c, chunk):
            mean += _rows(candidates, s, s + chunk).sum(0)
        mind = d2_to_rows((mean / c)[None])
    chosen: list[int] = []
    dist: list[float] = []
    for _ in range(n):
        masked = mind.copy()
        masked[chosen] = -1.0
        j = int(np.argmax(masked))
        chosen.append(j)
        dist.append(float(np.sqrt(mind[j])))
        mind = np.minimum(mind, d2_to_rows(np.asarray(candidates[j : j + 1])))
    return np.asarray(chosen, dtype=np.int64), np.asarray(dist)


def random_select(n_candidates: int, n: int, *, seed: int) -> np.ndarray:
    """``n`` distinct positions drawn uniformly without replacement (seeded)."""
    check_budget(n_candidates, n)
    return np.random.default_rng(seed).choice(n_candidates, size=n, replace=False).astype(np.int64)
