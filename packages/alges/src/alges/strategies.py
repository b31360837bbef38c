"""Acquisition strategies: one class per strategy, registered by name, each holding its needs, its per-image value
(computed from the head's input z and output logits, batch by batch, while the pool streams past) and its choice
rule (direction of a score, k-means++ on an embedding, greedy k-centre, ...).

Adding a strategy is one class here::

    @register_strategy
    class MeanMaxProb(TopKStrategy):
        "Lowest mean max-probability first."
        name = "mean-max-prob"
        largest = False

        def compute(self, h: HeadBatch) -> torch.Tensor:
            return h.probs.amax(dim=1).mean(dim=(1, 2))  # [B]

Built in: random, entropy, margin, least-confidence, coreset, deal, badge (BADGE-style), alges-img, alges-sem.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from medshared.registry import Registry
from torch import nn

from alges.config import AlgesConfig
from alges.embeddings import alges_img, alges_sem, channel_argmax
from alges.selection import KMEANS_PRESETS, check_budget, coreset_greedy, deal_scores, kmeans_pp, random_select, top_k

__all__ = [
    "HeadBatch",
    "Strategy",
    "TopKStrategy",
    "KMeansStrategy",
    "register_strategy",
    "get_strategy",
    "strategy_names",
    "parse_strategies",
    "select",
]


@dataclass
class HeadBatch:
    """One batch at the segmentation head: ``z`` fp32 [B, d, h, w] (the final conv's input), ``logits`` fp32
    [B, K, h, w] (its output, recomputed in fp32), the head's ``kernel_size``, the model (for DEAL's head) and the
    config (embedding variants)."""

    z: torch.Tensor
    logits: torch.Tensor
    kernel_size: int
    model: nn.Module
    cfg: AlgesConfig

    @cached_property
    def probs(self) -> torch.Tensor:
        """Softmax over classes [B, K, h, w]."""
        return self.logits.softmax(dim=1)

    @cached_property
    def pred(self) -> torch.Tensor:
        """Argmax class [B, h, w] int64."""
        return channel_argmax(self.logits)


class Strategy:
    """Base class. ``compute`` gives each image's value ([B] score or [B, D] embedding); ``choose`` picks positions.

    Class attributes: ``name`` (registry key), ``needs_model`` (False: no inference at all), ``needs_labeled``
    (``choose`` also gets the values of the labelled images), ``needs_deal_head`` (the model must carry DEAL's
    difficulty head), ``pool_fraction`` (score only a seeded random fraction of the unlabelled pool; 1 = all).
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True
    needs_labeled: ClassVar[bool] = False
    needs_deal_head: ClassVar[bool] = False

    def pool_fraction(self, cfg: AlgesConfig) -> float:
        return 1.0

    def compute(self, h: HeadBatch) -> torch.Tensor:
        raise NotImplementedError

    def choose(
        self,
        values: np.ndarray,
        budget: int,
        *,
        seed: int,
        cfg: AlgesConfig,
        labeled_values: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(positions into values [budget] in selection order, one score per pick)``."""
        raise NotImplementedError


class TopKStrategy(Strategy):
    """Score each image; keep the ``budget`` highest (``largest``) or lowest."""

    largest: ClassVar[bool] = True

    def choose(self, values, budget, *, seed, cfg, labeled_values=None):
        pos = top_k(values, budget, largest=self.largest)
        return pos, np.asarray(values[pos], dtype=np.float64)


class KMeansStrategy(Strategy):
    """k-means++ seeding on an embedding (``cfg.kmeans_preset``); the score is each pick's embedding norm."""

    def choose(self, values, budget, *, seed, cfg, labeled_values=None):
        preset = KMEANS_PRESETS[cfg.kmeans_preset]
        kseed = preset["fixed_seed"] if preset["fixed_seed"] is not None else seed
        pos = kmeans_pp(values, budget, seed=kseed, first=preset["first"], n_local_trials=preset["n_local_trials"])
        return pos, np.linalg.norm(np.asarray(values[pos], dtype=np.float64), axis=1)


_REGISTRY: Registry[Strategy] = Registry("strategy")


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"strategy class {cls.__name__} has no name")
    _REGISTRY.register(cls.name, cls())
    return cls


def get_strategy(name: str | Strategy) -> Strategy:
    """The registered strategy ``name`` (a ``Strategy`` instance passes through); unknown names raise."""
    return name if isinstance(name, Strategy) else _REGISTRY.get(name)


def strategy_names() -> list[str]:
    return _REGISTRY.names()


def parse_strategies(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """ "random,alges-img" -> ["random", "alges-img"]; unknown names raise ``ValueError`` listing the valid ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in names if s not in _REGISTRY]
    if bad or not names:
        raise ValueError(f"unknown strategies {bad or spec!r}; valid: {', '.join(strategy_names())}")
    return names


def select(
    strategy: str | Strategy,
    values: np.ndarray | None,
    budget: int,
    *,
    seed: int = 0,
    cfg: AlgesConfig | None = None,
    labeled_values: np.ndarray | None = None,
    n_candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``budget`` images from per-image ``values`` (from :func:`alges.embed`) with ``strategy``.

    Returns ``(positions [budget] into values, in selection order; one score per pick)``. ``random`` takes
    ``values=None`` and ``n_candidates``. ``coreset`` takes ``labeled_values`` (features of the labelled images).
    """
    s = get_strategy(strategy)
    cfg = cfg or AlgesConfig()
    if not s.needs_model:
        m = n_candidates if values is None else len(values)
        if m is None:
            raise ValueError(f"strategy {s.name} needs n_candidates (or values) to know the pool size")
        return s.choose(np.zeros(m), budget, seed=seed, cfg=cfg)
    if values is None:
        raise ValueError(f"strategy {s.name} needs the per-image values from alges.embed")
    check_budget(len(values), budget)
    if s.needs_labeled:
        return s.choose(values, budget, seed=seed, cfg=cfg, labeled_values=labeled_values)
    return s.choose(values, budget, seed=seed, cfg=cfg)


# ---------------------------------------------------------------------------------------------------- strategies
@register_strategy
class Random(Strategy):
    """Uniform without replacement (seeded); no model needed."""

    name = "random"
    needs_model = False

    def choose(self, values, budget, *, seed, cfg, labeled_values=None):
        return random_select(len(values), budget, seed=seed), np.zeros(budget)


@register_strategy
class Entropy(TopKStrategy):
    """Max entropy: pixel sum of -sum_k p log p (official code), highest first."""

    name = "entropy"
    largest = True

    def compute(self, h):
        return (-torch.special.xlogy(h.probs, h.probs)).sum(dim=(1, 2, 3)).double()


@register_strategy
class Margin(TopKStrategy):
    """Margin: pixel sum of p(1) - p(2), lowest first."""

    name = "margin"
    largest = False

    def compute(self, h):
        top2 = h.probs.topk(2, dim=1).values
        return (top2[:, 0] - top2[:, 1]).sum(dim=(1, 2)).double()


@register_strategy
class LeastConfidence(TopKStrategy):
    """Least confidence: pixel sum of max_k p, lowest first."""

    name = "least-confidence"
    largest = False

    def compute(self, h):
        return h.probs.amax(dim=1).sum(dim=(1, 2)).double()


@register_strategy
class CoreSet(Strategy):
    """Core-set (Sener & Savarese 2018): greedy k-centre on z average-pooled to ``cfg.coreset_grid`` squared cells
    (official: the last 64-channel map pooled to 7x7), labelled images as the initial centres."""

    name = "coreset"
    needs_labeled = True

    def compute(self, h):
        return F.adaptive_avg_pool2d(h.z, h.cfg.coreset_grid).flatten(1)  # [B, d*g*g]

    def choose(self, values, budget, *, seed, cfg, labeled_values=None):
        return coreset_greedy(values, labeled_values, budget)


@register_strategy
class Deal(TopKStrategy):
    """DEAL (Xie et al. 2020), difficulty-entropy version: entropy of the difficulty map's histogram, highest
    first, over a seeded random ``cfg.deal_pool_fraction`` of the unlabelled pool (original: 50 %)."""

    name = "deal"
    largest = True
    needs_deal_head = True

    def pool_fraction(self, cfg):
        return cfg.deal_pool_fraction

    def compute(self, h):
        diff = h.model.deal(h.logits)  # [B, 1, H, W]
        return torch.from_numpy(deal_scores(diff.float().cpu().numpy(), h.cfg.deal_hard_levels))


@register_strategy
class BadgeStyle(KMeansStrategy):
    """BADGE (Ash et al. 2020) with the image as one classification sample: z average-pooled over pixels (z̄, d),
    the head applied to it (the mean pixel logit for a 1x1 head), pseudo-label y = argmax, embedding
    (softmax - e_y) ⊗ z̄ (K*d), k-means++. ALGES-img instead averages the per-pixel gradients."""

    name = "badge"

    def compute(self, h):
        zbar = h.z.mean(dim=(2, 3))  # [B, d]
        p = h.logits.mean(dim=(2, 3)).softmax(dim=1)  # [B, K]
        r = p.scatter_add(1, p.argmax(dim=1, keepdim=True), torch.full_like(p[:, :1], -1.0))  # p - e_y
        return (r[:, :, None] * zbar[:, None, :]).flatten(1)  # [B, K*d]


@register_strategy
class AlgesImg(KMeansStrategy):
    """ALGES-img (Eq. 4): the K*d mean per-pixel last-layer gradient, k-means++."""

    name = "alges-img"

    def compute(self, h):
        c = h.cfg
        return alges_img(h.logits, h.z, kernel_size=h.kernel_size, include_bias=c.include_bias, variant=c.img_variant)


@register_strategy
class AlgesSem(KMeansStrategy):
    """ALGES-sem (Eq. 6): per predicted class the summed per-pixel gradient norm (K numbers), k-means++."""

    name = "alges-sem"

    def compute(self, h):
        c = h.cfg
        return alges_sem(h.logits, h.z, kernel_size=h.kernel_size, include_bias=c.include_bias, variant=c.sem_variant)
