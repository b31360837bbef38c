"""Class-imbalance losses of PoCaPNet (paper §3.3, Table 2): CE, class-weighted CE, focal and LDAM.

Transition frames (class 8) are ignored everywhere (paper §3.1; code ``ignore_index=8``). The training loss is the
sum of the criterion over the MS-TCN stages (code), see :func:`stage_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocapnet.config import NUM_CLASSES, TRANSITION, ModelConfig, TrainConfig

__all__ = [
    "inverse_frequency_weights",
    "effective_number_weights",
    "ldam_margins",
    "FocalLoss",
    "WeightedCrossEntropy",
    "LDAMLoss",
    "build_criterion",
    "smoothing_loss",
    "stage_loss",
    "class_counts",
]


def class_counts(labels: Sequence[np.ndarray], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Seconds per class over the training operations, ``(num_classes,)`` int64."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for y in labels:
        counts += np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts


def _safe(counts: Sequence[float]) -> np.ndarray:
    n = np.asarray(counts, dtype=np.float64)
    if np.any(n < 0):
        raise ValueError(f"class counts must be >= 0, got {n.tolist()}")
    return np.maximum(n, 1.0)  # a class absent from training gets the weight of a single example


def inverse_frequency_weights(counts: Sequence[float]) -> torch.Tensor:
    """Class weights ``N / n_c`` (code: ``pos_weight``; "class-weighted CE", paper Table 2 row 2)."""
    n = _safe(counts)
    return torch.tensor(n.sum() / n, dtype=torch.float32)


def effective_number_weights(counts: Sequence[float], beta: float = 0.9999) -> torch.Tensor:
    """Effective-number weights ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to the class count (Cui et al.)."""
    n = _safe(counts)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    w = w / w.sum() * len(n)
    return torch.tensor(w, dtype=torch.float32)


def ldam_margins(counts: Sequence[float], max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins ``m_c ∝ n_c^(-1/4)`` scaled so that the largest is ``max_m`` (Cao et al. 2019)."""
    m = 1.0 / np.sqrt(np.sqrt(_safe(counts)))
    m = m * (max_m / m.max())
    return torch.tensor(m, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss ``-w_y (1 - p_y)^gamma log p_y`` averaged over non-ignored frames (Lin et al. 2017; gamma 2).

    The author's implementation averaged over all frames including ignored ones; here the mean runs over the
    frames that count (documented deviation: otherwise the loss scale depends on the share of transitions).
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, ignore_index: int = TRANSITION) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits``: ``(N, C)``; ``target``: ``(N,)`` int64. 0 when every frame is ignored.

        Masked rather than indexed (``logits[valid]``, ``valid.any()``): no host synchronisation per step."""
        valid = target != self.ignore_index
        t = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits.float(), dim=1).gather(1, t[:, None])[:, 0]  # (N,)
        loss = -((1.0 - logp.exp()) ** self.gamma) * logp
        if self.weight is not None:
            loss = loss * self.weight.to(loss)[t]
        v = valid.to(loss)
        return (loss * v).sum() / v.sum().clamp_min(1.0)


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss (Cao et al. 2019; kaidic/LDAM-DRW as used by the official code).

    ``CE(s * (z - m_y * onehot(y)), y; weight)`` with ``m_c ∝ n_c^(-1/4)`` (max ``max_m``), ``s = 30`` and the
    effective-number class weights applied from epoch 0 (no deferred re-weighting, as the code). Transition frames
    are ignored; as in the code, the transition count is replaced by twice the largest count before computing
    margins and weights.
    """

    def __init__(
        self,
        counts: Sequence[float],
        max_m: float = 0.5,
        s: float = 30.0,
        beta: float = 0.9999,
        ignore_index: int = TRANSITION,
        reweight: bool = True,
        input_scale: float = 1.0,
    ) -> None:
        """
        Args:
            reweight: apply the effective-number class weights (switch them on later with :meth:`set_reweight`
                for LDAM-DRW's deferred re-weighting).
            input_scale: the scale already in the logits: 1 for raw logits (the official code), ``cosine_scale``
                for a :class:`~pocapnet.model.CosineClassifier` (logits ``= scale * cos``), as LDAM-DRW's
                ``NormedLinear``: the loss is then ``CE(s * (cos - m_y))``.
        """
        super().__init__()
        n = np.asarray(counts, dtype=np.float64).copy()
        if 0 <= ignore_index < len(n):
            n[ignore_index] = 2 * np.max(np.delete(n, ignore_index))  # code: transition count -> 2x max
        self.register_buffer("margins", ldam_margins(n, max_m), persistent=False)
        self.register_buffer("class_weight", effective_number_weights(n, beta), persistent=False)
        self.reweight = reweight
        self.s = s
        self.input_scale = input_scale
        self.ignore_index = ignore_index

    def set_reweight(self, on: bool) -> None:
        """DRW (Cao et al. 2019): uniform weights (beta 0) before the deferral epoch, effective-number weights after."""
        self.reweight = on

    @property
    def weight(self) -> torch.Tensor | None:
        """The class weights in use (None while re-weighting is deferred)."""
        return self.class_weight if self.reweight else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits``: ``(N, C)``; ``target``: ``(N,)`` int64. 0 when every frame is ignored.

        The weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over the frames that count (what ``cross_entropy``
        with ``weight`` computes), masked rather than indexed: no host synchronisation per step."""
        valid = target != self.ignore_index
        t = torch.where(valid, target, torch.zeros_like(target))
        lg = logits.float() / self.input_scale
        margin = self.margins.to(lg)[t]  # (N,)
        adjusted = lg - F.one_hot(t, lg.shape[1]).to(lg) * margin[:, None]  # subtract m_y from the true logit
        w = self.weight
        w = None if w is None else w.to(lg)
        nll = F.cross_entropy(self.s * adjusted, target, weight=w, ignore_index=self.ignore_index, reduction="none")
        den = (w[t] if w is not None else torch.ones_like(nll)) * valid.to(lg)
        return nll.sum() / den.sum().clamp_min(torch.finfo(lg.dtype).tiny)


class WeightedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy whose weights follow the logits' dtype (the code computes the loss on float64
    logits; ``nn.CrossEntropyLoss`` with float32 weights refuses them)."""

    def __init__(self, weight: torch.Tensor, ignore_index: int = TRANSITION) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits``: ``(N, C)``; ``target``: ``(N,)`` int64."""
        return F.cross_entropy(logits, target, weight=self.weight.to(logits), ignore_index=self.ignore_index)


def build_criterion(cfg: TrainConfig, counts: Sequence[float], model_cfg: ModelConfig | None = None) -> nn.Module:
    """Criterion named by ``cfg.loss`` (ce, wce, focal, ldam) for the training class ``counts``.

    With ``model_cfg.cosine_classifier`` the LDAM loss reads the logits as ``cosine_scale * cos`` (LDAM-DRW); with
    ``cfg.ldam_drw_epoch > 0`` its class weights start switched off (:meth:`LDAMLoss.set_reweight`).
    """
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss(ignore_index=TRANSITION)
    if cfg.loss == "wce":
        return WeightedCrossEntropy(inverse_frequency_weights(counts), ignore_index=TRANSITION)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, ignore_index=TRANSITION)
    if cfg.loss == "ldam":
        scale = model_cfg.cosine_scale if model_cfg is not None and model_cfg.cosine_classifier else 1.0
        return LDAMLoss(
            counts,
            cfg.ldam_max_m,
            cfg.ldam_s,
            cfg.ldam_beta,
            ignore_index=TRANSITION,
            reweight=cfg.ldam_drw_epoch <= 0,
            input_scale=scale,
        )
    raise ValueError(f"unknown loss {cfg.loss!r}; choose one of ce, wce, focal, ldam")


def smoothing_loss(logits: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """MS-TCN's truncated mean squared error of one stage (Farha & Gall 2019, Eq. 8; code ``clamp(mse, 0, 16)``).

    ``mean_{t,c} min((log p_{t,c} - log p_{t-1,c})^2, tau^2)`` with ``p_{t-1}`` detached, over every pair of
    consecutive seconds (transitions included: it needs no label). ``logits``: ``(T, C)``; 0 for ``T < 2``.
    """
    if logits.shape[0] < 2:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1)  # (T, C)
    d = (logp[1:] - logp[:-1].detach()) ** 2
    return torch.clamp(d, 0, tau * tau).mean()


def stage_loss(
    criterion: nn.Module,
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth_weight: float = 0.0,
    smooth_tau: float = 4.0,
) -> torch.Tensor:
    """Sum over stages of the criterion (code), plus ``smooth_weight`` x :func:`smoothing_loss` per stage (MS-TCN).

    ``logits``: ``(S, T, C)``; ``target``: ``(T,)``.
    """
    total = logits.new_zeros(())
    for s in range(logits.shape[0]):
        total = total + criterion(logits[s], target)
        if smooth_weight > 0:
            total = total + smooth_weight * smoothing_loss(logits[s], smooth_tau).to(total)
    return total
