"""Class-balanced cross-entropy (paper Eq. 13; Cui et al., CVPR 2019) and mixup (official notebook).

w_c = (1 - beta) / (1 - beta ** n_c), normalised so that sum_c w_c = C, used as ``CrossEntropyLoss(weight=w)``
(official ``class_balanced_loss.py``). With the official training counts [2063, 1215, 501, 363]: beta=0.99 gives
[0.992, 0.992, 0.998, 1.018] (plain CE), 0.999 gives [0.546, 0.678, 1.21, 1.566] (brief section 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["class_balanced_weights", "ClassBalancedCE", "mixup_batch"]


def class_balanced_weights(counts: Sequence[int], beta: float) -> np.ndarray:
    """Effective-number class weights, normalised to sum to the number of classes.

    Args:
        counts: training samples per class (a class with 0 samples is counted as 1 to keep the weight finite).
        beta: in [0, 1); 0 gives uniform weights.

    Returns:
        float64 [C].
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    eff = 1.0 - np.power(beta, n)
    w = (1.0 - beta) / eff
    return w / w.sum() * len(n)


class ClassBalancedCE(nn.Module):
    """Weighted cross-entropy with class-balanced weights; mean reduction normalised by the summed weights (torch).

    Forward: logits [B, C], target int64 [B] -> scalar.
    """

    def __init__(self, counts: Sequence[int], beta: float = 0.999) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(class_balanced_weights(counts, beta), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, denom: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted CE: sum_i w[y_i] CE_i / sum_i w[y_i]; with ``denom``, sum_i w[y_i] CE_i / denom instead.

        Under DDP each rank passes ``denom`` = (sum of w[y] over the global batch) / world size, so that the averaged
        gradients equal those of one process with the whole batch (:func:`lungcvt.step.global_weight_denominator`).
        """
        if logits.dim() == 3:  # [M, B, K] from an ensemble in training: the mean of the members' own losses
            return torch.stack([self(m, target, denom) for m in logits]).mean()
        if denom is None:
            return F.cross_entropy(logits.float(), target, weight=self.weight)
        return F.cross_entropy(logits.float(), target, weight=self.weight, reduction="sum") / denom

    def mixed(
        self,
        logits: torch.Tensor,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        lam: float,
        denoms: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mixup loss lam * CE(y_a) + (1 - lam) * CE(y_b) (official notebook)."""
        da, db = denoms if denoms is not None else (None, None)
        return lam * self(logits, y_a, da) + (1.0 - lam) * self(logits, y_b, db)


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix a batch with a shuffled copy: x' = lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha).

    Returns:
        (mixed x [B, ...], y_a [B], y_b [B], lam).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam
