"""Losses against hand-computed values."""

from __future__ import annotations

import math

import torch
from kfgnet.losses import keyframe_mse, kfgnet_loss, motion_loss


def test_motion_loss_hand_value() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    # cos = 1/sqrt(2) for row 0, 1 for row 1 -> mean(1 - cos) = (1 - 0.70711) / 2
    assert math.isclose(float(motion_loss(a, b)), (1 - 1 / math.sqrt(2)) / 2, rel_tol=1e-6)


def test_motion_loss_centred() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[10.0, 20.0, 30.0]])
    assert float(motion_loss(a, -b + 100, centred=True)) == 2.0 or math.isclose(
        float(motion_loss(a, -b + 100, centred=True)), 2.0, rel_tol=1e-6
    )
    assert math.isclose(float(motion_loss(a, b + 5, centred=True)), 0.0, abs_tol=1e-6)


def test_total_loss_is_ce_plus_motion() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([1])
    ce = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))
    vt, vm = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, parts = kfgnet_loss(logits, y, vt, vm, lambda_motion=0.5)
    assert math.isclose(float(loss), ce + 0.5 * 1.0, rel_tol=1e-6)
    assert math.isclose(parts["motion"], 1.0)
    loss2, _ = kfgnet_loss(logits, y, None, None)
    assert math.isclose(float(loss2), ce, rel_tol=1e-6)


def test_keyframe_mse_masked() -> None:
    pred = torch.tensor([[1.0, 0.0, 5.0]])
    tgt = torch.tensor([[0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert math.isclose(float(keyframe_mse(pred, tgt, mask)), 0.5)
    assert math.isclose(float(keyframe_mse(pred, tgt)), 26.0 / 3, rel_tol=1e-6)
