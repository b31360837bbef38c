"""Losses: pixel cross-entropy (the paper's / official code's training loss), an optional soft Dice term, and DEAL's
difficulty loss (BCE of the difficulty map against the error mask, Xie et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alges.config import IGNORE_INDEX

__all__ = ["segmentation_loss", "soft_dice_loss", "deal_difficulty_loss"]


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes of (2 sum p*y + eps) / (sum p + sum y + eps), over the batch's valid pixels.

    logits [B, K, H, W]; target [B, H, W] int64 (``ignore_index`` pixels excluded). Returns a scalar.
    """
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)  # [B, 1, H, W]
    p = logits.softmax(dim=1) * valid
    y = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).to(logits.dtype) * valid  # [B, K, H, W]
    inter = (p * y).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + y.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, dice_weight: float = 0.0
) -> torch.Tensor:
    """Mean pixel CE over non-ignored pixels (+ ``dice_weight`` * soft Dice). logits [B,K,H,W], target [B,H,W]."""
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, target, ignore_index)
    return loss


def deal_difficulty_loss(
    difficulty: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """DEAL: BCE between the difficulty map [B, 1, H, W] in (0, 1) and the error mask (argmax logits != target),
    averaged over non-ignored pixels. Returns a scalar (0 when no pixel is valid)."""
    valid = target != ignore_index  # [B, H, W]
    err = (logits.detach().argmax(dim=1) != target).to(difficulty.dtype)  # [B, H, W]
    d = difficulty[:, 0].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(d, err, reduction="none")
    return (bce * valid).sum() / valid.sum().clamp_min(1)
