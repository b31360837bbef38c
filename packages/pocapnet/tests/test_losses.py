from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pocapnet.config import TrainConfig
from pocapnet.losses import (
    FocalLoss,
    LDAMLoss,
    build_criterion,
    effective_number_weights,
    inverse_frequency_weights,
    ldam_margins,
    stage_loss,
)

LOGITS = torch.tensor(
    [[2.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0], [0.0, 1.0, 0.0, 0, 0, 0, 0, 0, 0], [0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 5.0]]
)
TARGET = torch.tensor([0, 0, 8])  # the transition frame is ignored


def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_ce_ignores_transition_hand_value():
    l0 = _lse([2.0] + [0.0] * 8) - 2.0
    l1 = _lse([0.0, 1.0] + [0.0] * 7) - 0.0
    crit = build_criterion(TrainConfig(loss="ce"), np.ones(9))
    assert crit(LOGITS, TARGET).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_weighted_ce_inverse_frequency_hand_value():
    counts = np.array([10, 30, 1, 1, 1, 1, 1, 1, 5])
    w = inverse_frequency_weights(counts)
    assert w[0].item() == pytest.approx(51 / 10) and w[1].item() == pytest.approx(51 / 30)
    crit = build_criterion(TrainConfig(loss="wce"), counts)
    l0 = _lse([2.0] + [0.0] * 8) - 2.0
    l1 = _lse([0.0, 1.0] + [0.0] * 7)
    logits = LOGITS.clone()
    target = torch.tensor([0, 1, 8])
    l1 = _lse([0.0, 1.0] + [0.0] * 7) - 1.0
    exp = (w[0] * l0 + w[1] * l1) / (w[0] + w[1])
    assert crit(logits, target).item() == pytest.approx(exp.item(), rel=1e-6)


def test_focal_hand_value_gamma2():
    p0 = math.exp(2.0) / (math.exp(2.0) + 8)
    p1 = 1.0 / (math.e + 8)
    exp = (-((1 - p0) ** 2) * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert FocalLoss(2.0)(LOGITS, TARGET).item() == pytest.approx(exp, rel=1e-6)
    # gamma 0 is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(LOGITS[:2], TARGET[:2]).item()
    assert FocalLoss(0.0)(LOGITS, TARGET).item() == pytest.approx(ce, rel=1e-6)


def test_ldam_margins_and_weights_hand_values():
    m = ldam_margins([16, 1], max_m=0.5)
    assert m.tolist() == pytest.approx([0.25, 0.5])  # 16^-1/4 = 0.5 of 1^-1/4
    w = effective_number_weights([1, 1], beta=0.9999)
    assert w.tolist() == pytest.approx([1.0, 1.0])
    w = effective_number_weights([1, 10000], beta=0.9999)
    e = [(1 - 0.9999) / (1 - 0.9999**n) for n in (1, 10000)]
    assert w.tolist() == pytest.approx([2 * e[0] / sum(e), 2 * e[1] / sum(e)], rel=1e-5)


def test_ldam_hand_value():
    counts = [16, 1, 16, 16, 16, 16, 16, 16, 3]  # transition count -> 2 * max = 32
    crit = LDAMLoss(counts, max_m=0.5, s=30.0, beta=0.9999)
    n = np.array(counts, float)
    n[8] = 32
    m = 1 / n**0.25
    m = m * 0.5 / m.max()
    e = (1 - 0.9999) / (1 - 0.9999**n)
    w = e / e.sum() * 9
    logits = torch.tensor([[0.3, 0.1, 0, 0, 0, 0, 0, 0, 0], [0.0, 0.2, 0, 0, 0, 0, 0, 0, 0]])
    target = torch.tensor([0, 1])
    losses = []
    for row, t in zip(logits.tolist(), target.tolist()):
        z = [30 * (v - (m[t] if k == t else 0.0)) for k, v in enumerate(row)]
        losses.append(w[t] * (_lse(z) - z[t]))
    exp = sum(losses) / (w[0] + w[1])
    assert crit(logits, target).item() == pytest.approx(exp, rel=1e-5)
    assert crit.margins[1].item() == pytest.approx(0.5)


def test_all_transition_batch_gives_zero_and_stage_sum():
    crit = build_criterion(TrainConfig(loss="ldam"), np.arange(1, 10))
    assert crit(LOGITS[2:], TARGET[2:]).item() == 0.0
    ce = build_criterion(TrainConfig(loss="ce"), np.ones(9))
    two = torch.stack([LOGITS, LOGITS])
    assert stage_loss(ce, two, TARGET).item() == pytest.approx(2 * ce(LOGITS, TARGET).item())
    with pytest.raises(ValueError, match="unknown loss"):
        build_criterion(TrainConfig(loss="dice"), np.ones(9))
