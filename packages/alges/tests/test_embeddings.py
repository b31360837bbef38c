"""Closed-form ALGES embeddings against autograd (img) and brute-force per-pixel norms (sem), kernel 1 and 3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from alges.config import create_config
from alges.embeddings import alges_img, alges_sem, materialize_G
from alges.inference import infer
from alges.model import build_model


def _setup(ks: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, k, d, h, w = 2, 5, 4, 6, 7
    z = torch.relu(torch.randn(b, d, h, w, generator=g, dtype=torch.float64))
    weight = torch.randn(k, d, ks, ks, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)
    return z, weight, bias


@pytest.mark.parametrize("ks", [1, 3])
def test_img_equals_autograd_gradient_of_mean_pixel_ce(ks):
    z, weight, bias = _setup(ks)
    logits = F.conv2d(z, weight, bias, padding=ks // 2)
    emb = alges_img(logits.detach(), z, kernel_size=ks, include_bias=True)
    assert emb.shape == (2, 5 * 4 * ks * ks + 5)
    for i in range(2):
        li = F.conv2d(z[i : i + 1], weight, bias, padding=ks // 2)
        gw, gb = torch.autograd.grad(F.cross_entropy(li, li.argmax(1)), [weight, bias])
        ref = torch.cat([gw.flatten(), gb]).float()
        torch.testing.assert_close(emb[i], ref, rtol=1e-4, atol=1e-6)
    no_bias = alges_img(logits.detach(), z, kernel_size=ks)
    torch.testing.assert_close(no_bias, emb[:, : 5 * 4 * ks * ks])


@pytest.mark.parametrize("ks", [1, 3])
def test_sem_equals_brute_force_per_pixel_autograd_norms(ks):
    z, weight, bias = _setup(ks, seed=1)
    logits = F.conv2d(z, weight, bias, padding=ks // 2)
    emb = alges_sem(logits.detach(), z, kernel_size=ks)
    assert emb.shape == (2, 5)
    pred = logits.argmax(1)
    ref = torch.zeros(2, 5, dtype=torch.float64)
    for i in range(2):
        li = F.conv2d(z[i : i + 1], weight, bias, padding=ks // 2)
        lp = F.log_softmax(li, 1)
        for y in range(li.shape[2]):
            for x in range(li.shape[3]):
                c = int(pred[i, y, x])
                (gw,) = torch.autograd.grad(-lp[0, c, y, x], [weight], retain_graph=True)  # one pixel's CE
                ref[i, c] += gw.norm()
    torch.testing.assert_close(emb, ref.float(), rtol=1e-4, atol=1e-5)
    # squared variant and the bias option against the materialised per-pixel matrix G (Eq. 3)
    G = materialize_G(logits.detach(), z, kernel_size=ks)  # [B, N, K, d*k*k]
    n2 = G.flatten(2).pow(2).sum(-1)
    sq = torch.zeros(2, 5).scatter_add_(1, pred.flatten(1), n2)
    torch.testing.assert_close(
        alges_sem(logits.detach(), z, kernel_size=ks, variant="squared"), sq, rtol=1e-4, atol=1e-5
    )


def test_img_row_norm_and_official_sem_variants():
    z, weight, bias = _setup(1)
    logits = F.conv2d(z, weight, bias)
    flat = alges_img(logits, z).reshape(2, 5, 4)
    torch.testing.assert_close(alges_img(logits, z, variant="row_norm"), flat.norm(dim=-1))
    # official ALGESv2 formula: sum p^2 + K(1 - 2 p_max), negative for confident pixels
    confident = torch.zeros(1, 5, 2, 2)
    confident[:, 0] = 20.0
    zz = torch.ones(1, 3, 2, 2)
    assert (alges_sem(confident, zz, variant="official")[0, 0] < 0).item()
    assert alges_sem(confident, zz)[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="variant"):
        alges_sem(confident, zz, variant="bogus")


@pytest.mark.parametrize("ks", [1, 3])
def test_pool_inference_embeddings_match_model_autograd(ks):
    cfg = create_config("alges_tiny", head_kernel_size=ks)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.rand(3, 3, 32, 32) * 255
    out = infer(
        model,
        x.to(torch.uint8).numpy(),
        cfg,
        torch.device("cpu"),
        ("alges-img", "alges-sem"),
        amp=False,
        channels_last=False,
    ).values
    xi = x.to(torch.uint8).float()
    for i in range(3):
        o = model(xi[i : i + 1])
        (gw,) = torch.autograd.grad(F.cross_entropy(o.logits, o.logits.argmax(1)), [model.head.weight])
        torch.testing.assert_close(torch.from_numpy(out["alges-img"][i]), gw.flatten(), rtol=1e-3, atol=1e-6)
    assert out["alges-sem"].shape == (3, cfg.num_classes)
    # bf16 + channels-last path agrees with fp32 (cosine >= 0.99 per image)
    fast = infer(
        model, x.to(torch.uint8).numpy(), cfg, torch.device("cpu"), ("alges-img",), amp=True, channels_last=True
    ).values["alges-img"]
    cos = F.cosine_similarity(torch.from_numpy(fast), torch.from_numpy(out["alges-img"]), dim=1)
    assert (cos >= 0.99).all(), cos
