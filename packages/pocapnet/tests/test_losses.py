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


def test_cosine_classifier_ldam_is_ce_of_s_times_cos_minus_margin():
    from pocapnet.config import ModelConfig
    from pocapnet.model import CosineClassifier

    counts = [16, 1, 16, 16, 16, 16, 16, 16, 3]
    head = CosineClassifier(4, 9, scale=30.0)
    x = torch.randn(1, 4, 5)  # (N, C_in, T)
    logits = head(x)[0].t()  # (T, 9)
    assert logits.abs().max() <= 30.0 + 1e-4  # scale * cosine
    cos = torch.nn.functional.normalize(x[0].t(), dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(logits, 30 * cos)
    target = torch.tensor([0, 1, 2, 1, 0])
    normed = build_criterion(TrainConfig(loss="ldam"), counts, ModelConfig(cosine_classifier=True, cosine_scale=30.0))
    raw = LDAMLoss(counts, max_m=0.5, s=30.0)
    # LDAM-DRW: CE(s * (cos - m_y)); the model already output s * cos, so the loss reads cos = logits / s
    assert normed(logits, target).item() == pytest.approx(raw(cos, target).item(), rel=1e-5)


def test_drw_defers_the_class_weights():
    counts = [100, 1, 100, 100, 100, 100, 100, 100, 3]
    crit = build_criterion(TrainConfig(loss="ldam", ldam_drw_epoch=3), counts)
    assert crit.weight is None  # before the deferral epoch: uniform weights (beta 0)
    logits, target = torch.randn(6, 9), torch.tensor([0, 1, 1, 2, 3, 1])
    before = crit(logits, target).item()
    crit.set_reweight(True)
    assert crit.weight is not None and crit.weight[1] > crit.weight[0]  # the rare class weighs more
    assert crit(logits, target).item() != pytest.approx(before)
    assert build_criterion(TrainConfig(loss="ldam"), counts).weight is not None  # the code: from epoch 0


def test_smoothing_loss_hand_value_and_truncation():
    from pocapnet.losses import smoothing_loss

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    lp = torch.log_softmax(logits, 1)
    d = ((lp[1:] - lp[:-1]) ** 2).mean().item()
    assert smoothing_loss(logits).item() == pytest.approx(d)  # tau 4: nothing truncated
    big = torch.tensor([[0.0, 0.0], [30.0, -30.0]])
    # log p jumps by ~60 for class 1: (60)^2 truncated to tau^2 = 16; class 0: (log 2)^2 untouched
    assert smoothing_loss(big).item() == pytest.approx((math.log(2) ** 2 + 16.0) / 2, rel=1e-4)
    assert smoothing_loss(logits[:1]).item() == 0.0
    # the previous second is detached: the gradient reaches only the later second's logits
    z = logits.clone().requires_grad_(True)
    smoothing_loss(z).backward()
    assert z.grad[0].abs().sum() == 0 and z.grad[1].abs().sum() > 0  # row 0 is only ever the detached "previous"
    ce = build_criterion(TrainConfig(loss="ce"), np.ones(9))
    two = torch.stack([LOGITS, LOGITS])
    with_smooth = stage_loss(ce, two, TARGET, smooth_weight=0.15)
    assert with_smooth.item() == pytest.approx(2 * (ce(LOGITS, TARGET).item() + 0.15 * smoothing_loss(LOGITS).item()))


@pytest.mark.parametrize("loss", ["ce", "wce", "focal", "ldam"])
def test_every_loss_takes_the_codes_float64_logits(loss):
    counts = np.array([10, 30, 1, 1, 1, 1, 1, 1, 5])
    crit = build_criterion(TrainConfig(loss=loss), counts)
    two = torch.stack([LOGITS, LOGITS]).double().requires_grad_(True)
    total = stage_loss(crit, two, TARGET)  # float64 logits, as in training (code)
    total.backward()
    assert torch.isfinite(total) and two.grad.abs().sum() > 0
    assert stage_loss(crit, two.detach().float(), TARGET).item() == pytest.approx(total.item(), rel=1e-5)
