"""Losses against hand computations: ArcFace (Eq. 1) both sides of the fallback, templates (Eq. 2), GIA (Eq. 3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from deepacc.losses import (
    aam_loss,
    arcface_logits,
    box_regression_loss,
    cosine,
    gia_loss,
    group_adjacency,
    select_templates,
)

M, S = 0.25, 64.0
TH = math.cos(math.pi - M)  # -0.9689


def test_fallback_constants() -> None:
    assert TH == pytest.approx(-0.96891, abs=1e-4)
    assert math.sin(math.pi - M) * M == pytest.approx(0.061851, abs=1e-5)


@pytest.mark.parametrize("c", [0.6, 0.0, -0.5, TH + 1e-3])
def test_arcface_target_above_threshold(c: float) -> None:
    cos = torch.tensor([[c, 0.1, -0.2]])
    out = arcface_logits(cos, torch.tensor([0]), M, S)
    theta = math.acos(c)
    assert out[0, 0].item() == pytest.approx(S * math.cos(theta + M), rel=1e-5, abs=1e-4)
    # non-target columns are s * cos, untouched
    assert out[0, 1:].tolist() == pytest.approx([S * 0.1, S * -0.2], abs=1e-5)


@pytest.mark.parametrize("c", [-0.98, -0.999, TH - 1e-3])
def test_arcface_target_fallback_below_threshold(c: float) -> None:
    cos = torch.tensor([[0.3, c]])
    out = arcface_logits(cos, torch.tensor([1]), M, S)
    expected = S * (c - math.sin(math.pi - M) * M)  # insightface easy_margin=False fallback
    assert out[0, 1].item() == pytest.approx(expected, rel=1e-5)
    # the naive cos(theta + m) would be larger (non-monotonic) here: the fallback must differ from it
    assert out[0, 1].item() != pytest.approx(S * math.cos(math.acos(c) + M), abs=1e-3)


def test_arcface_finite_gradients_at_unit_cosine() -> None:
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]], requires_grad=True)
    loss = F.cross_entropy(arcface_logits(cos, torch.tensor([0, 0]), M, S), torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(cos.grad).all()


def test_cosine_gradients_finite_for_parallel_vectors() -> None:
    w = torch.randn(5, 8, requires_grad=True)
    f = (w.detach()[2:3] * 3.0).clone().requires_grad_(True)  # exactly parallel to class 2: cos = 1
    loss = aam_loss(cosine(f, w), torch.tensor([2]), M, S)
    loss.backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(w.grad).all()


def test_aam_loss_hand_value() -> None:
    cos = torch.tensor([[0.8, 0.1], [0.2, 0.5]])
    labels = torch.tensor([0, 1])
    t0 = S * math.cos(math.acos(0.8) + M)
    t1 = S * math.cos(math.acos(0.5) + M)
    l0 = -t0 + math.log(math.exp(t0) + math.exp(S * 0.1))
    l1 = -t1 + math.log(math.exp(S * 0.2) + math.exp(t1))
    assert aam_loss(cos, labels, M, S).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # margin_on_bg=False: row 0 (label 0 = background) gets plain s*cos
    l0_plain = -S * 0.8 + math.log(math.exp(S * 0.8) + math.exp(S * 0.1))
    assert aam_loss(cos, labels, M, S, margin_on_bg=False).item() == pytest.approx((l0_plain + l1) / 2, rel=1e-5)


def test_aam_is_fp32_under_bf16_inputs() -> None:
    cos = torch.tensor([[0.8, 0.1]], dtype=torch.bfloat16)
    assert arcface_logits(cos, torch.tensor([0]), M, S).dtype == torch.float32


def test_select_templates_around_delta() -> None:
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])  # K = 3, D = 3
    feats = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    probs = torch.tensor([[0.1, 0.51, 0.39], [0.2, 0.30, 0.50], [0.9, 0.05, 0.05]])
    t, local = select_templates(probs, feats, w, delta=0.5)
    # class 1: best RoI 0 with 0.51 > 0.5 -> normalised feature of RoI 0
    assert t[1].tolist() == pytest.approx([0.6, 0.8, 0.0])
    # class 2: best 0.50, not > 0.5 -> normalised W[2]
    assert t[2].tolist() == pytest.approx([0.0, 0.0, 1.0])
    # background always uses W[0] even with p = 0.9
    assert t[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert local.tolist() == [False, True, False]
    t2, local2 = select_templates(probs, feats, w, delta=0.49)
    assert local2.tolist() == [False, True, True]
    assert t2[2].tolist() == pytest.approx([0.0, 0.0, 1.0])  # RoI 1 = (0, 0, 5) normalised
    # excluded candidates (e.g. GT boxes) cannot be templates
    _, local3 = select_templates(probs, feats, w, delta=0.49, candidate_mask=torch.tensor([False, True, True]))
    assert local3.tolist() == [False, False, True]


def test_group_adjacency() -> None:
    adj = group_adjacency()
    assert adj[1, 2] and adj[2, 3] and adj[6, 23] and adj[21, 24]
    assert not adj[1, 1] and not adj[1, 4] and not adj[23, 24] and not adj[0].any()
    assert adj.equal(adj.t())


def test_gia_hand_value() -> None:
    # classes 1, 2 (group A) and 4 (group B) in image 0; class 1 in image 1; one background RoI
    k = 25
    probs = torch.zeros(6, k)
    probs[0, [1, 2]] = torch.tensor([0.7, 0.3])  # RoI 0, label 1
    probs[1, [1, 2]] = torch.tensor([0.4, 0.6])  # RoI 1, label 2 (partner of class 2)
    probs[2, [1, 2]] = torch.tensor([0.5, 0.5])  # RoI 2, label 2 (lower p[2])
    probs[3, [4, 5]] = torch.tensor([0.9, 0.1])  # RoI 3, label 4, no group partner present
    probs[4, [1, 3]] = torch.tensor([0.2, 0.8])  # RoI 4, label 1, image 1 (alone)
    probs[5, 0] = 1.0  # background
    labels = torch.tensor([1, 2, 2, 4, 1, 0])
    img = torch.tensor([0, 0, 0, 0, 1, 0])
    # partners in image 0: class 1 -> RoI 0 (only one), class 2 -> RoI 1 (0.6 > 0.5)
    p = probs
    expected = (
        (
            float(p[0] @ p[1])  # RoI 0 (class 1) with class-2 partner
            + float(p[1] @ p[0])  # RoI 1 (class 2) with class-1 partner
            + float(p[2] @ p[0])  # RoI 2 (class 2) with class-1 partner
        )
        / 4
        / 2
    )  # image 0: N+ = 4 positives; image 1: one positive, no partner (0); mean over the 2 images
    got = gia_loss(probs, labels, img, group_adjacency())
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(((0.7 * 0.4 + 0.3 * 0.6) * 2 / 4 + (0.5 * 0.7 + 0.5 * 0.3) / 4) / 2)
    # a batch split into its images (DDP with one image per rank averages the per-image losses) gives the same loss
    per_image = [gia_loss(probs[img == i], labels[img == i], img[img == i] * 0, group_adjacency()) for i in (0, 1)]
    assert got.item() == pytest.approx(sum(v.item() for v in per_image) / 2, rel=1e-6)


def test_gia_gradients_and_detach() -> None:
    logits = torch.randn(4, 25, requires_grad=True)
    labels = torch.tensor([1, 2, 3, 0])
    img = torch.zeros(4, dtype=torch.long)
    loss = gia_loss(logits.softmax(1), labels, img, group_adjacency())
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(logits.grad).all() and logits.grad[:3].abs().sum() > 0
    assert gia_loss(torch.rand(3, 25), torch.zeros(3, dtype=torch.long), img[:3], group_adjacency()).item() == 0.0


def test_box_regression_loss_hand_value() -> None:
    k = 3
    reg = torch.zeros(3, 4 * k)
    reg[0, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # RoI 0, class 1 deltas
    targets = torch.zeros(3, 4)
    labels = torch.tensor([1, 0, 0])
    # smooth-L1 beta 1: 0.5*0.5^2/1 + (2 - 0.5) = 0.125 + 1.5; divided by 3 RoIs
    assert box_regression_loss(reg, labels, targets, beta=1.0).item() == pytest.approx((0.125 + 1.5) / 3)
    assert box_regression_loss(reg, torch.zeros(3, dtype=torch.long), targets).item() == 0.0


def test_centre_spread_loss_is_the_mean_pairwise_cosine_rescaled() -> None:
    """||mean n(w)||^2 = (1 + (K - 1) mean_{i != j} cos) / K: 1 for centres on one direction, 0 for centres that sum
    to zero, and its gradient moves every centre away from the shared direction."""
    from deepacc.losses import centre_spread_loss

    torch.manual_seed(0)
    w = torch.randn(24, 16) * torch.rand(24, 1)  # norms differ: only directions count
    n = torch.nn.functional.normalize(w, dim=1)
    c = n @ n.t()
    mean_pair = (c.sum() - 24) / (24 * 23)
    assert float(centre_spread_loss(w)) == pytest.approx(float((1 + 23 * mean_pair) / 24), abs=1e-6)
    one = torch.ones(24, 16) * torch.arange(1, 25).view(-1, 1)
    assert float(centre_spread_loss(one)) == pytest.approx(1.0, abs=1e-6)
    sym = torch.cat([torch.eye(8), -torch.eye(8)], 0)
    assert float(centre_spread_loss(sym)) == pytest.approx(0.0, abs=1e-7)
    cone = (torch.randn(24, 16) * 0.2 + torch.ones(16)).requires_grad_(True)  # a cone around (1, ..., 1)

    def pairwise(x: torch.Tensor) -> float:
        u = torch.nn.functional.normalize(x.detach(), dim=1)
        return float(((u @ u.t()).sum() - 24) / (24 * 23))

    before = pairwise(cone)
    opt = torch.optim.SGD([cone], lr=50.0)
    for _ in range(100):
        opt.zero_grad()
        centre_spread_loss(cone).backward()
        opt.step()
    assert before > 0.9 and pairwise(cone) == pytest.approx(-1 / 23, abs=1e-3)  # opened to centres summing to zero
