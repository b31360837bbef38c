"""Any segmentation model: the forward hook on the final conv, closed forms against autograd on smp FPN and
DeepLabV3+ (and smp's 3x3 U-Net head), the ``alges.embed`` / ``alges.select`` API, and a new strategy added as one
registered class."""

from __future__ import annotations

import alges
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from alges.active import select_batch
from alges.config import AlgesConfig
from alges.inference import find_head
from alges.strategies import TopKStrategy, get_strategy, register_strategy, strategy_names
from torch import nn

CFG = AlgesConfig(amp=False, channels_last=False)


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    kw = {"encoder_weights": None, "classes": 3}
    if arch == "fpn":
        return smp.FPN("resnet18", decoder_pyramid_channels=32, decoder_segmentation_channels=32, **kw).eval()
    if arch == "deeplab":
        return smp.DeepLabV3Plus("resnet18", decoder_channels=32, **kw).eval()
    return smp.Unet("resnet18", decoder_channels=(32, 16, 16, 8, 8), **kw).eval()  # smp's own 3x3 head


def _z_and_head(model, x):
    head = find_head(model)
    got = {}
    h = head.register_forward_hook(lambda m, i, o: got.setdefault("z", i[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["z"], head


@pytest.mark.parametrize("arch", ["fpn", "deeplab", "unet3x3"])
def test_closed_forms_match_autograd_on_smp_models(arch):
    model = _model(arch)
    x = torch.randn(2, 3, 64, 64)
    z, head = _z_and_head(model, x)
    ks = head.kernel_size[0]
    assert ks == (3 if arch == "unet3x3" else 1)
    emb_img = alges.embed(model, x, strategy="alges-img", cfg=CFG)
    emb_sem = alges.embed(model, x, strategy="alges-sem", cfg=CFG)
    k, d = head.out_channels, head.in_channels
    assert emb_img.shape == (2, k * d * ks * ks) and emb_sem.shape == (2, k)
    w = head.weight.detach().clone().double().requires_grad_(True)
    b = head.bias.detach().double()
    for i in range(2):
        zi = z[i : i + 1].double()
        logits = F.conv2d(zi, w, b, padding=ks // 2)
        (gw,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), [w])
        torch.testing.assert_close(torch.from_numpy(emb_img[i]).double(), gw.flatten(), rtol=2e-3, atol=1e-6)

        # sem: sum over pixels predicted as class c of the norm of that pixel's own CE gradient (Jacobian rows)
        def per_pixel_ce(weight, zi=zi):
            lg = F.conv2d(zi, weight, b, padding=ks // 2)  # [1, K, h, w]
            return F.cross_entropy(lg, lg.argmax(1).detach(), reduction="none").flatten()  # [N]

        jac = torch.func.jacrev(per_pixel_ce)(w.detach())  # [N, K, d, k, k]
        norms = jac.flatten(1).norm(dim=1)  # [N]
        pred = F.conv2d(zi, w.detach(), b, padding=ks // 2).argmax(1).flatten()
        ref = torch.zeros(k, dtype=torch.float64).scatter_add_(0, pred, norms)
        torch.testing.assert_close(torch.from_numpy(emb_sem[i]).double(), ref, rtol=2e-3, atol=1e-5)


def test_embed_from_a_loader_and_select():
    model = _model("fpn")
    x = torch.randn(6, 3, 64, 64)
    y = torch.zeros(6, 64, 64, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    a = alges.embed(model, x, strategy="badge", cfg=CFG)
    b = alges.embed(model, loader, strategy="badge", cfg=CFG)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert a.shape == (6, 3 * 32)  # BADGE-style: K x d of the pooled features
    picks, norms = alges.select("badge", a, 3)
    assert len(set(picks.tolist())) == 3 and picks[0] == int(np.argmax((a**2).sum(1)))  # max-norm first
    np.testing.assert_allclose(norms, np.linalg.norm(a[picks], axis=1))
    ent = alges.embed(model, loader, strategy="entropy", cfg=CFG)
    assert ent.shape == (6,)
    assert alges.select("entropy", ent, 2)[0].tolist() == np.argsort(-ent, kind="stable")[:2].tolist()
    rnd, _ = alges.select("random", None, 2, n_candidates=6, seed=1)
    assert len(set(rnd.tolist())) == 2
    with pytest.raises(ValueError, match="find the final conv"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="stride 1"):
        find_head(model, nn.Conv2d(4, 2, 3, stride=2, padding=1))
    assert find_head(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)), "1").out_channels == 2


@register_strategy
class _LowestMeanMaxProb(TopKStrategy):
    """A strategy added by a user: one class, nothing else to edit."""

    name = "test-lowest-mean-max-prob"
    largest = False

    def compute(self, h):
        return h.probs.amax(dim=1).mean(dim=(1, 2)).double()


def test_a_new_strategy_is_one_registered_class():
    assert "test-lowest-mean-max-prob" in strategy_names()
    model = _model("deeplab")
    imgs = torch.randn(8, 3, 64, 64)
    scores = alges.embed(model, imgs, strategy="test-lowest-mean-max-prob", cfg=CFG)
    chosen, sc, failures = select_batch(
        "test-lowest-mean-max-prob", model, imgs.numpy(), np.arange(2, 8), np.arange(2), 3, CFG, torch.device("cpu")
    )
    assert failures == [] and set(chosen.tolist()) <= set(range(2, 8))
    np.testing.assert_array_equal(chosen, 2 + np.argsort(scores[2:], kind="stable")[:3])
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(_LowestMeanMaxProb)
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("nope")
