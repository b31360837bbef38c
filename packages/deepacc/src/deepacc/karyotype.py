"""Karyotype prior: class assignment of one spread's detections under "at most two of each autosome, XX or XY".

The paper's inference branch uses the pairing prior through templates (Sec. 2.3); this is the stricter, explicit form
a cytogeneticist applies when arranging a karyogram: an optimal assignment (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``) of detections to the 46 slots of a normal karyotype that maximises the sum
of log class probabilities, tried for 46,XX and 46,XY and the better one kept. Detections beyond the slots (more than
46, e.g. debris or split chromosomes) keep their top-1 class and are flagged. Abnormal karyotypes (trisomy 21,
45,X, ...) violate the prior by definition: use it only where a normal karyotype is expected, and measure it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KARYOTYPES", "assign_karyotype", "karyotype_slots"]

#: Sex-chromosome slots of the two normal karyotypes (23 = X, 24 = Y).
KARYOTYPES: dict[str, tuple[int, ...]] = {"XX": (23, 23), "XY": (23, 24)}


def karyotype_slots(sex: str) -> np.ndarray:
    """Class of each of the 46 slots: two of every autosome 1..22, then the sex chromosomes of ``sex``."""
    if sex not in KARYOTYPES:
        raise ValueError(f"sex must be one of {sorted(KARYOTYPES)}, got {sex!r}")
    return np.array([c for c in range(1, 23) for _ in range(2)] + list(KARYOTYPES[sex]), np.int64)


def assign_karyotype(probs: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray, str]:
    """Assign classes to a spread's detections under the karyotype prior.

    Args:
        probs: ``[N, 25]`` class probabilities of the detections (column 0 = background, 23 = X, 24 = Y).
        eps: floor of the probabilities before the log.

    Returns:
        labels ``[N]`` (1..24), ``assigned [N]`` bool (False: no slot left, the top-1 class is kept), and the
        karyotype chosen (``"XX"`` or ``"XY"``).
    """
    from scipy.optimize import linear_sum_assignment

    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != 25:
        raise ValueError(f"probs must be [N, 25] (background + 24 classes), got {probs.shape}")
    n = probs.shape[0]
    top1 = probs[:, 1:].argmax(1) + 1 if n else np.zeros(0, np.int64)
    if n == 0:
        return top1.astype(np.int64), np.zeros(0, bool), "XX"
    cost_all = -np.log(np.clip(probs, eps, 1.0))  # [N, 25]
    best: tuple[float, np.ndarray, np.ndarray, str] | None = None
    for sex in ("XX", "XY"):
        slots = karyotype_slots(sex)  # [46]
        rows, cols = linear_sum_assignment(cost_all[:, slots])  # [min(N, 46)]
        total = float(cost_all[rows, slots[cols]].sum())
        if best is None or total < best[0]:
            best = (total, rows, slots[cols], sex)
    assert best is not None
    _, rows, classes, sex = best
    labels = top1.astype(np.int64).copy()
    assigned = np.zeros(n, bool)
    labels[rows] = classes
    assigned[rows] = True
    return labels, assigned, sex
