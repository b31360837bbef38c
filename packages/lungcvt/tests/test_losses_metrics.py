from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lungcvt.losses import ClassBalancedCE, class_balanced_weights, mixup_batch

OFFICIAL_TRAIN_COUNTS = [2063, 1215, 501, 363]


@pytest.mark.parametrize(
    "beta,expected",
    [
        (0.99, [0.992, 0.992, 0.998, 1.018]),
        (0.999, [0.546, 0.678, 1.21, 1.566]),
        (0.9999, [0.343, 0.558, 1.307, 1.792]),
    ],
)
def test_cb_weights_brief_values(beta, expected):
    w = class_balanced_weights(OFFICIAL_TRAIN_COUNTS, beta)
    np.testing.assert_allclose(w, expected, atol=2e-3)
    assert w.sum() == pytest.approx(4.0)


def test_cb_weights_beta_zero_uniform_and_empty_class():
    np.testing.assert_allclose(class_balanced_weights([10, 1, 5, 0], 0.0), [1, 1, 1, 1])
    assert np.isfinite(class_balanced_weights([10, 1, 5, 0], 0.999)).all()
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([1, 2], 1.0)


def test_cb_loss_hand_computed():
    counts, beta = [3, 1], 0.5
    # w_c = (1-b)/(1-b^n): n=3 -> 0.5/0.875 = 4/7, n=1 -> 1; normalised to sum 2: [8/11, 14/11]
    w = np.array([8 / 11, 14 / 11])
    np.testing.assert_allclose(class_balanced_weights(counts, beta), w, rtol=1e-12)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    nll = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    expected = (w[0] * nll[0] + w[1] * nll[1] + w[0] * nll[2]) / (w[0] + w[1] + w[0])
    loss = ClassBalancedCE(counts, beta)(logits, y)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    ya, yb, lam = y, torch.tensor([1, 1, 1]), 0.3
    mixed = ClassBalancedCE(counts, beta).mixed(logits, ya, yb, lam)
    nll_b = [math.log(1 + math.exp(2)), math.log(1 + math.exp(-1)), math.log(2)]
    exp_b = sum(nll_b) / 3  # all targets class 1: weights cancel
    assert float(mixed) == pytest.approx(lam * expected + (1 - lam) * exp_b, rel=1e-6)


def test_mixup_batch():
    x = torch.arange(4.0).view(4, 1)
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    xm, ya, yb, lam = mixup_batch(x, y, alpha=2.0, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= lam <= 1.0
    assert torch.equal(ya, y)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[yb])  # y == index here, so x[yb] is the partner
    assert mixup_batch(x, y, alpha=0.0)[3] == 1.0


def test_icbhi_scores_brief_confusion_matrix():
    """Brief section 5: the notebook's test confusion matrix scores 57.31 (macro-OvR) but 43.02 (ICBHI)."""
    from lungcvt.evaluate import score_predictions

    cm = np.array([[814, 390, 284, 91], [249, 264, 69, 67], [170, 63, 105, 47], [57, 24, 25, 37]])
    y_true, y_pred = [], []
    for i in range(4):
        for j in range(4):
            y_true += [i] * cm[i, j]
            y_pred += [j] * cm[i, j]
    s = score_predictions(y_true, y_pred)
    assert s["icbhi"]["sp"] == pytest.approx(0.5155, abs=1e-4)
    assert s["icbhi"]["se"] == pytest.approx(0.3449, abs=1e-4)
    assert s["icbhi"]["score"] == pytest.approx(0.4302, abs=1e-4)
    assert s["macro_ovr"]["se"] == pytest.approx(0.3634, abs=1e-4)
    assert s["macro_ovr"]["sp"] == pytest.approx(0.7828, abs=1e-4)
    assert s["macro_ovr"]["score"] == pytest.approx(0.5731, abs=1e-4)
    assert s["icbhi"]["accuracy"] == pytest.approx(0.4427, abs=1e-4)
    assert np.array_equal(np.array(s["confusion_matrix"]), cm)


def test_majority_chance_is_half():
    from lungcvt.evaluate import majority_chance

    c = majority_chance([0, 0, 0, 1, 2], [0, 1, 2, 3, 0])
    assert c["majority_class"] == "normal"
    assert c["icbhi"]["score"] == pytest.approx(0.5)


def test_lr_schedule():
    from lungcvt.config import TrainConfig
    from lungcvt.train import lr_at

    const = TrainConfig(lr=1e-3, warmup_steps=10)
    assert lr_at(const, 0, 100) == pytest.approx(1e-4)
    assert lr_at(const, 9, 100) == pytest.approx(1e-3) == lr_at(const, 99, 100)
    cos = TrainConfig(lr=1e-3, warmup_steps=0, lr_schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(1e-3)
    assert lr_at(cos, 50, 100) == pytest.approx(5e-4)
    assert lr_at(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_time_roll_augmentation_rotates_time_only():
    from lungcvt.dataset import CycleDataset, CycleSet

    rng = np.random.default_rng(0)
    cs = CycleSet(feats=[(rng.standard_normal((3, 96, 40)) * 20 - 40).astype(np.float16)], labels=[2])
    plain, y = CycleDataset(cs)[0]
    torch.manual_seed(3)
    rolled, y2 = CycleDataset(cs, time_roll=True)[0]
    assert y == y2 == 2
    shifts = [k for k in range(40) if torch.equal(torch.roll(plain, k, dims=-1), rolled)]
    assert len(shifts) == 1 and shifts[0] != 0  # a rotation along time, nothing else changed
