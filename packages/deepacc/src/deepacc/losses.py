"""Losses of DeepACC (Luo et al., ISBI 2021): AAM (Eq. 1), inference-branch templates (Eq. 2), GIA (Eq. 3).

All functions are pure and work on flat RoI tensors; the RoI heads in :mod:`deepacc.model` call them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deepacc.config import DENVER_GROUPS

__all__ = [
    "arcface_logits",
    "aam_loss",
    "box_regression_loss",
    "centre_spread_loss",
    "cosine",
    "gia_loss",
    "group_adjacency",
    "select_templates",
]

_EPS = 1e-7


def cosine(features: Tensor, weight: Tensor) -> Tensor:
    """Cosine similarity of every feature with every class centre, computed in fp32.

    Args:
        features: RoI embeddings ``[R, D]``.
        weight: class centres ``[K, D]`` (no bias).

    Returns:
        ``[R, K]`` cosines in [-1, 1].
    """
    f = F.normalize(features.float(), dim=1, eps=1e-12)  # [R, D]
    w = F.normalize(weight.float(), dim=1, eps=1e-12)  # [K, D]
    return (f @ w.t()).clamp(-1.0, 1.0)  # [R, K]


def arcface_logits(
    cos: Tensor,
    labels: Tensor,
    margin: float,
    scale: float,
    apply_mask: Tensor | None = None,
    easy_margin: bool = False,
) -> Tensor:
    """ArcFace logits (Eq. 1): ``s * cos(theta_y + m)`` on the target column, ``s * cos(theta_j)`` elsewhere.

    Uses the insightface convention (``easy_margin=False``): where ``theta_y + m > pi`` (``cos <= cos(pi - m)``) the
    target logit falls back to ``cos - sin(pi - m) * m`` so it stays monotonic. ``sin`` is ``sqrt(clamp(1 - cos^2,
    eps, 1))`` so gradients stay finite at ``|cos| = 1``. Always computed in fp32.

    Args:
        cos: ``[R, K]`` cosines.
        labels: ``[R]`` int64 target classes.
        margin: additive angular margin ``m`` (radians).
        scale: ``s``.
        apply_mask: optional ``[R]`` bool; rows where False get no margin (e.g. background when margin_on_bg=False).
        easy_margin: insightface's ``easy_margin``: no margin where ``cos <= 0`` (target logit ``cos`` there), so the
            loss has no second low minimum near ``theta = pi - m``.

    Returns:
        ``[R, K]`` fp32 logits.
    """
    cos = cos.float()
    idx = labels.long().view(-1, 1)  # [R, 1]
    cos_y = cos.gather(1, idx)  # [R, 1]
    sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(_EPS, 1.0))  # [R, 1]
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    target = cos_y * cos_m - sin_y * sin_m  # cos(theta + m), [R, 1]
    if easy_margin:
        target = torch.where(cos_y > 0, target, cos_y)
    else:
        target = torch.where(cos_y > th, target, cos_y - mm)  # safe fallback past pi - m
    if apply_mask is not None:
        target = torch.where(apply_mask.view(-1, 1), target, cos_y)
    out = cos.scatter(1, idx, target)  # [R, K]
    return out * scale


def aam_loss(
    cos: Tensor, labels: Tensor, margin: float, scale: float, margin_on_bg: bool = True, easy_margin: bool = False
) -> Tensor:
    """Additive Angular Margin loss (Eq. 1): mean cross-entropy over RoIs of the ArcFace logits (fp32)."""
    mask = None if margin_on_bg else labels > 0
    logits = arcface_logits(cos, labels, margin, scale, mask, easy_margin)
    return F.cross_entropy(logits, labels.long())


def centre_spread_loss(weight: Tensor) -> Tensor:
    """Squared norm of the mean unit class centre, ``||mean_c n(w_c)||^2`` (fp32; not in the paper).

    Equals ``(1 + (K - 1) * mean_{i != j} cos(w_i, w_j)) / K`` for ``K`` centres: 1 when every centre lies on one
    direction (the cone collapse of README "Margin branch health"), 0 when the centres sum to zero. It removes only
    the direction the centres share and leaves their relative arrangement to the AAM loss (cf. RegularFace's
    exclusive regularisation of class centres, Zhao et al., CVPR 2019, which penalises the nearest pair instead).

    Args:
        weight: class centres ``[K, D]`` (the foreground rows of W_M).

    Returns:
        scalar in [0, 1].
    """
    w = F.normalize(weight.float(), dim=1, eps=1e-12)  # [K, D]
    return w.mean(dim=0).pow(2).sum()


def select_templates(
    probs: Tensor,
    features: Tensor,
    weight: Tensor,
    delta: float,
    candidate_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image class templates of the siamese inference branch (Eq. 2).

    For each foreground class ``c``: ``j* = argmax_j probs[j, c]``; the template is ``normalize(features[j*])`` if
    ``probs[j*, c] > delta`` (local class centre), else ``normalize(weight[c])`` (global class centre). Background
    (class 0) always uses ``normalize(weight[0])``.

    Args:
        probs: ``[R, K]`` margin-branch softmax (no margin) of ONE image's RoIs.
        features: ``[R, D]`` embeddings of the same RoIs.
        weight: ``[K, D]`` margin-branch weights.
        delta: confidence threshold.
        candidate_mask: optional ``[R]`` bool of RoIs allowed as templates.

    Returns:
        templates ``[K, D]`` (unit norm) and ``[K]`` bool telling which classes use a local centre.
    """
    k = weight.shape[0]
    w_n = F.normalize(weight.float(), dim=1, eps=1e-12)  # [K, D]
    if probs.shape[0] == 0:
        return w_n, torch.zeros(k, dtype=torch.bool, device=weight.device)
    p = probs.float()
    if candidate_mask is not None:
        p = torch.where(candidate_mask.view(-1, 1), p, torch.full_like(p, -1.0))  # [R, K]
    best, j_star = p.max(dim=0)  # [K], [K]
    use_local = best > delta  # [K]
    use_local[0] = False
    f_n = F.normalize(features.float(), dim=1, eps=1e-12)[j_star]  # [K, D]
    templates = torch.where(use_local.view(-1, 1), f_n, w_n)  # [K, D]
    return templates, use_local


def group_adjacency(num_classes: int = 25, device: torch.device | None = None) -> Tensor:
    """``[K, K]`` bool matrix, True where two different classes are in the same Denver group (the set F of Eq. 3)."""
    adj = torch.zeros(num_classes, num_classes, dtype=torch.bool, device=device)
    for members in DENVER_GROUPS.values():
        for a in members:
            for b in members:
                if a != b and a < num_classes and b < num_classes:
                    adj[a, b] = True
    return adj


def gia_loss(
    probs: Tensor,
    labels: Tensor,
    image_index: Tensor,
    adjacency: Tensor,
    detach_partner: bool = False,
    num_images: int | None = None,
) -> Tensor:
    """Group Inner-Adjacency loss (Eq. 3), averaged over the images of the batch.

    For each positive RoI ``i`` (label ``y > 0``) and each other class ``c`` of ``y``'s Denver group present among the
    positive RoIs of the same image: add ``probs[i] . probs[k(c)]``, where ``k(c)`` is the RoI of that image with
    label ``c`` and the highest ``probs[:, c]``. Each image's sum is divided by its number of positives ``N+`` (Eq. 3
    for the paper's batch of one image) and the batch loss is the mean over images, so that a batch split across
    processes (DDP averages gradients) gives the same loss as one process with the whole batch.

    Args:
        probs: ``[R, K]`` margin-branch probabilities (softmax, no margin).
        labels: ``[R]`` int64 RoI labels (0 = background).
        image_index: ``[R]`` int64 image of each RoI.
        adjacency: ``[K, K]`` bool from :func:`group_adjacency`.
        detach_partner: stop gradients through ``probs[k(c)]``.
        num_images: images in the batch (default: those with at least one RoI).

    Returns:
        scalar loss (0 when there are no positives).
    """
    pos = labels > 0
    n_img = num_images if num_images is not None else int(torch.unique(image_index).numel())
    if int(pos.sum()) == 0 or n_img == 0:
        return probs.sum() * 0.0
    total = probs.new_zeros(())
    for img in torch.unique(image_index[pos]):
        sel = pos & (image_index == img)
        p = probs[sel]  # [n, K]
        y = labels[sel]  # [n]
        present = torch.unique(y)  # [C]
        # partner RoI of each present class: argmax of p[:, c] over RoIs labelled c
        score_c = torch.where(y.view(-1, 1) == present.view(1, -1), p[:, present], torch.full_like(p[:, present], -1))
        k_idx = score_c.argmax(dim=0)  # [C]
        partners = p[k_idx]  # [C, K]
        if detach_partner:
            partners = partners.detach()
        dots = p @ partners.t()  # [n, C]
        mask = adjacency[y][:, present]  # [n, C]: class of partner is adjacent (same group, different class)
        total = total + (dots * mask).sum() / len(y)
    return total / n_img


def box_regression_loss(
    box_regression: Tensor, labels: Tensor, regression_targets: Tensor, beta: float = 1.0
) -> Tensor:
    """Class-specific smooth-L1 box loss of Fast R-CNN, summed over positives and divided by the number of RoIs.

    Args:
        box_regression: ``[R, 4K]`` deltas.
        labels: ``[R]`` int64.
        regression_targets: ``[R, 4]`` encoded targets.
        beta: smooth-L1 beta (mmdet 2020 uses 1.0; torchvision 1/9).
    """
    pos = torch.where(labels > 0)[0]
    n = labels.numel()
    if pos.numel() == 0 or n == 0:
        return box_regression.sum() * 0.0
    reg = box_regression.reshape(n, -1, 4)  # [R, K, 4]
    pred = reg[pos, labels[pos]]  # [P, 4]
    return F.smooth_l1_loss(pred, regression_targets[pos], beta=beta, reduction="sum") / n
