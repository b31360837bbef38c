"""Threshold-free scores and the validation-chosen decision bias.

- :func:`auroc_scores`: one-vs-rest AUROC of each class from the class probabilities, their macro mean
  (``auroc_macro_ovr``, over the classes present with at least one positive and one negative cycle) and the
  abnormal-vs-normal AUROC (``auroc_abnormal``: abnormal = crackle, wheeze or both, scored by 1 - p(normal)). Under a
  device shift a model's decision threshold moves while its ranking may hold; the AUROCs measure the ranking.
- :func:`tune_normal_bias`: the logit offset of the normal class that maximises the ICBHI Score on validation
  cycles (``train.tune_normal_bias``). The ICBHI Score rewards Se and Sp equally, and an always-normal model already
  scores 0.500, so where the model puts its threshold matters as much as how it ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auroc", "auroc_scores", "icbhi_score", "tune_normal_bias", "apply_normal_bias", "BIAS_GRID"]

#: candidate offsets (in logits) added to the normal class; 0 is the plain arg max
BIAS_GRID: np.ndarray = np.round(np.arange(-6.0, 6.0001, 0.1), 2)


def auroc(y: Sequence[int] | np.ndarray, s: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve of scores ``s`` for binary labels ``y`` (1 positive), ties counted as half
    (:func:`medshared.bootstrap.auroc`); ``None`` when one class is absent."""
    from medshared.bootstrap import auroc as shared_auroc

    y = np.asarray(y, dtype=bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    return float(shared_auroc(y, np.asarray(s, dtype=np.float64), positive=True))


def auroc_scores(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """``{"auroc_macro_ovr", "auroc_abnormal", "auroc_per_class": {class: auc or None}, "auroc_classes_used"}``.

    Args:
        labels: true class per cycle (0 = normal).
        probs: class probabilities [N, C].
        classes: class names in label order.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    per = {c: auroc(y == k, p[:, k]) if len(y) else None for k, c in enumerate(classes)}
    used = [c for c, v in per.items() if v is not None]
    return {
        "auroc_macro_ovr": float(np.mean([per[c] for c in used])) if used else None,
        "auroc_abnormal": auroc(y != 0, 1.0 - p[:, 0]) if len(y) else None,
        "auroc_per_class": per,
        "auroc_classes_used": used,
    }


def icbhi_score(labels: np.ndarray, pred: np.ndarray) -> float:
    """ICBHI Score (Se + Sp) / 2 with Se = exact-class hits over abnormal cycles, Sp = normal hits over normal
    cycles (a missing part counts as 0, as ``medshared.metrics.icbhi_scores``)."""
    normal = labels == 0
    sp = float((pred[normal] == 0).mean()) if normal.any() else 0.0
    se = float((pred[~normal] == labels[~normal]).mean()) if (~normal).any() else 0.0
    return (se + sp) / 2.0


def apply_normal_bias(logits: np.ndarray, bias: float) -> np.ndarray:
    """Logits with ``bias`` added to the normal class (column 0); a copy."""
    out = np.array(logits, dtype=np.float32, copy=True)
    out[:, 0] += bias
    return out


def tune_normal_bias(labels: Sequence[int], logits: np.ndarray, grid: np.ndarray = BIAS_GRID) -> tuple[float, float]:
    """The normal-class offset of ``grid`` with the highest validation ICBHI Score; ties go to the offset nearest 0.

    Returns:
        (bias, the Score at that bias).
    """
    y = np.asarray(labels, dtype=int)
    z = np.asarray(logits, dtype=np.float64)
    best = (-1.0, 0.0)
    for b in sorted(grid, key=lambda v: (abs(v), v)):
        zz = z.copy()
        zz[:, 0] += b
        sc = icbhi_score(y, zz.argmax(1))
        if sc > best[0] + 1e-12:
            best = (sc, float(b))
    return best[1], best[0]
