"""Losses: classification CE, motion cosine loss (eq. 2), total loss (eq. 3), masked MSE of the key-frame scorer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["motion_loss", "kfgnet_loss", "keyframe_mse"]


def motion_loss(v_temp: torch.Tensor, v_motion: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """L_motion = 1 - cos(V_temp, V_motion), averaged over the batch [P eq. 2].

    Args:
        v_temp: ``(B, T')`` learned temporal weights.
        v_motion: ``(B, T')`` motion index per window.
        centred: subtract each vector's mean first (Pearson correlation), a documented deviation [brief §4].

    Returns:
        scalar in [0, 2].
    """
    if v_temp.shape != v_motion.shape:
        raise ValueError(f"V_temp {tuple(v_temp.shape)} and V_motion {tuple(v_motion.shape)} must have the same shape")
    a, b = v_temp.float(), v_motion.float()
    if centred:
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
    return (1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


def kfgnet_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    v_temp: torch.Tensor | None,
    v_motion: torch.Tensor | None,
    lambda_motion: float = 1.0,
    centred: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_cls + lambda * L_motion [P eq. 3]; L_cls is 2-logit cross-entropy [brief §10 #10].

    Args:
        logits: ``(B, 2)``; target: ``(B,)`` int64 (1 = malignant).
        v_temp, v_motion: ``(B, T')`` or None (no motion attention -> L = L_cls).

    Returns:
        (total loss, {"cls": 0-dim tensor, "motion": 0-dim tensor}): the parts detached, on the logits' device (no
        host sync per step; ``float()`` them when needed).
    """
    cls = F.cross_entropy(logits.float(), target)
    if v_temp is None or v_motion is None or lambda_motion == 0:
        return cls, {"cls": cls.detach(), "motion": torch.zeros((), device=cls.device)}
    mot = motion_loss(v_temp, v_motion, centred)
    return cls + lambda_motion * mot, {"cls": cls.detach(), "motion": mot.detach()}


def keyframe_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between predicted and generated frame scores [P §2].

    Args:
        pred, target: ``(B, L)`` padded sequences.
        mask: ``(B, L)`` bool, True on real entries; None = all positions (official, padding included [V]).
    """
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)
