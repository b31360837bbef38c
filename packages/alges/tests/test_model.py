"""Model shapes, gradients, input checks, weights errors, losses against hand values, checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from alges.config import config_from_dict, create_config
from alges.losses import deal_difficulty_loss, segmentation_loss, soft_dice_loss
from alges.model import build_model, load_trained


@pytest.mark.parametrize(("ks", "batch", "deal"), [(1, 1, False), (3, 2, True)])
def test_shapes_tiny(ks, batch, deal):
    cfg = create_config("alges_tiny", head_kernel_size=ks)
    torch.manual_seed(0)
    m = build_model(cfg, deal_head=deal)
    out = m(torch.rand(batch, 3, 32, 64) * 255)
    assert out.logits.shape == (batch, 13, 32, 64)
    assert out.z.shape == (batch, cfg.feature_dim, 32, 64) and (out.z >= 0).all()  # after a ReLU
    assert (out.difficulty is not None) == deal
    assert m.head.weight.shape == (13, cfg.feature_dim, ks, ks)


def test_gradient_reaches_every_parameter():
    cfg = create_config("alges_tiny")
    torch.manual_seed(0)
    m = build_model(cfg, deal_head=True).train()
    x = torch.rand(2, 3, 32, 32) * 255
    y = torch.randint(0, 13, (2, 32, 32))
    out = m(x)
    loss = segmentation_loss(out.logits, y) + deal_difficulty_loss(out.difficulty, out.logits, y)
    # gamma starts at 0, so the attention branch only gets gradient through gamma itself
    loss.backward()
    missing = [
        n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, missing
    assert m.deal.gamma.grad.abs().item() > 0


def test_bad_input_size_and_missing_weights(tmp_path, monkeypatch):
    m = build_model(create_config("alges_tiny"))
    with pytest.raises(ValueError, match="not divisible by 8; resize or pad to 32x40"):
        m(torch.rand(1, 3, 30, 33))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m(torch.rand(1, 1, 32, 32))
    with pytest.raises(FileNotFoundError, match="encoder-weights none"):
        build_model(create_config("alges_tiny"), encoder_weights=str(tmp_path / "nope.pth"))
    monkeypatch.setenv("ALGES_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("MEDREPRO_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        build_model(create_config("alges_tiny", encoder_weights="imagenet"))


def test_local_imagenet_file_is_loaded(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    m = build_model(create_config("alges_tiny"), encoder_weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(m.net.encoder.conv1.weight, sd["conv1.weight"])
    bad = {"conv1.weight": torch.zeros(3)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match"):
        build_model(create_config("alges_tiny"), encoder_weights=str(tmp_path / "bad.pth"))


def test_losses_against_hand_values():
    # 2 classes, 2 pixels: logits (0, ln 3) -> p = (1/4, 3/4)
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), math.log(3)]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 0]]])
    ce = 0.5 * (-math.log(0.75) - math.log(0.25))
    assert segmentation_loss(logits, target).item() == pytest.approx(ce, rel=1e-6)
    ignore = torch.tensor([[[1, 255]]])
    assert segmentation_loss(logits, ignore).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # soft dice: class 0: p = (.25, .25), y = (0, 1): (2*.25 + 1)/(.5 + 1 + 1) = 0.6
    #            class 1: p = (.75, .75), y = (1, 0): (2*.75 + 1)/(1.5 + 1 + 1) = 2.5/3.5
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - (0.6 + 2.5 / 3.5) / 2, rel=1e-6)
    # DEAL: prediction is class 1 on both pixels; error mask = (0, 1); difficulty (0.5, 0.8)
    diff = torch.tensor([[[[0.5, 0.8]]]])
    expect = (-math.log(0.5) - math.log(0.8)) / 2
    assert deal_difficulty_loss(diff, logits, target).item() == pytest.approx(expect, rel=1e-5)
    assert deal_difficulty_loss(diff, logits, ignore).item() == pytest.approx(-math.log(0.5), rel=1e-5)


def test_checkpoint_round_trip_and_config_errors(tmp_path):
    from medshared.checkpoint import save_checkpoint

    cfg = create_config("alges_tiny", head_kernel_size=3)
    m = build_model(cfg, deal_head=True)
    save_checkpoint(tmp_path / "m.safetensors", m.state_dict(), cfg.to_dict(), {"deal_head": True})
    m2, cfg2, extra = load_trained(tmp_path / "m.safetensors")
    assert cfg2 == cfg and extra["deal_head"]
    x = torch.rand(1, 3, 32, 32) * 255
    torch.testing.assert_close(m.eval()(x).logits, m2(x).logits)
    with pytest.raises(FileNotFoundError):
        load_trained(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown config"):
        create_config("nope")
    with pytest.raises(ValueError, match="head_kernel_size"):
        create_config("alges_tiny", head_kernel_size=5)


def test_batchnorm_folded_for_inference_only_on_a_copy():
    import copy

    import numpy as np
    from alges.inference import infer
    from alges.model import fold_batchnorm

    cfg = create_config("alges_tiny", num_classes=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    model(torch.rand(4, 3, 32, 32) * 255)  # running statistics away from their init
    model.eval()
    x = torch.rand(3, 3, 32, 32) * 255
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(copy.deepcopy(model))
    assert n_bn > 10 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        a, b = model(x), folded(x)
    torch.testing.assert_close(b.z, a.z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = (x.numpy()).astype(np.uint8)
    fast = infer(model, images, cfg, "cpu", ("alges-img",)).values["alges-img"]
    with torch.no_grad():  # the plain model's closed form, for comparison
        from alges.embeddings import alges_img

        o = model(torch.from_numpy(images).float())
        ref = alges_img(o.logits, o.z).numpy()
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-6)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn  # the caller's model untouched
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model.head.weight.is_contiguous()
