from __future__ import annotations

import dataclasses

import pytest
import torch
from pocapnet.config import get_config, list_configs
from pocapnet.model import (
    DelayedMemory,
    PoCaPNet,
    _expected_full_parameters,
    count_parameters,
    create_model,
    positional_encoding,
)


def _inputs(cfg, T):
    m = cfg.model
    return torch.randn(T, m.num_images, m.image_dim), torch.randn(T, m.num_mics, m.audio_frames, m.audio_dim)


def test_full_parameter_count_is_paper_2_8M():
    n = count_parameters(create_model("pocapnet"))
    assert n == 2_813_850 == _expected_full_parameters()
    assert abs(n - 2.8e6) / 2.8e6 < 0.01
    # the linear layer dominates (brief): 2048 -> 1024
    assert count_parameters(create_model("pocapnet").linear) == 2_098_176


@pytest.mark.parametrize("T", [1, 2, 37])
def test_shapes_tiny(tiny_cfg, T):
    model = create_model("pocapnet_tiny").eval()
    imgs, aud = _inputs(tiny_cfg, T)
    out = model(imgs, aud, torch.arange(T), torch.zeros(tiny_cfg.model.hidden_dim))
    assert out.logits.shape == (2, T, 9)
    assert out.features.shape == (T, tiny_cfg.model.hidden_dim)
    assert torch.isfinite(out.logits).all()


def test_bad_input_shape_names_expected(tiny_cfg):
    model = create_model("pocapnet_tiny")
    imgs, aud = _inputs(tiny_cfg, 4)
    with pytest.raises(ValueError, match="audio must be"):
        model(imgs, aud[:, :2])
    with pytest.raises(ValueError, match="images must be"):
        model(imgs[:, :5], aud)


def test_gradient_reaches_every_parameter(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg.model, positional_encoding=True, dropout=0.0)
    model = PoCaPNet(cfg).train()
    imgs, aud = _inputs(tiny_cfg, 16)
    out = model(imgs, aud, torch.arange(16), torch.rand(cfg.hidden_dim))
    out.logits.square().mean().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing, missing


def test_positional_encoding_values():
    pe = positional_encoding(torch.tensor([0, 3]), 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1]))
    # code variant: exponent t/d (not 2i/d): dim 2 -> sin(3 / 10000^(2/8)), dim 3 -> cos(3 / 10000^(3/8))
    assert pe[1, 2].item() == pytest.approx(torch.sin(torch.tensor(3 / 10000**0.25)).item(), abs=1e-6)
    assert pe[1, 3].item() == pytest.approx(torch.cos(torch.tensor(3 / 10000**0.375)).item(), abs=1e-6)


def test_delayed_memory_fifo_matches_code_roll():
    mem = DelayedMemory(6)
    mem.update(torch.tensor([1, 2]))
    assert mem.vector.tolist() == [1, 2, 0, 0, 0, 0]
    mem.update(torch.tensor([3, 4, 5]))
    # code: y_prev[-B:] = preds; y_prev = roll(y_prev, B)
    ref = torch.tensor([1.0, 2, 0, 0, 0, 0])
    ref[-3:] = torch.tensor([3.0, 4, 5])
    assert mem.vector.tolist() == torch.roll(ref, 3).tolist() == [3, 4, 5, 1, 2, 0]
    mem.update(torch.arange(10))
    assert mem.vector.tolist() == [4, 5, 6, 7, 8, 9]
    mem.reset()
    assert mem.vector.abs().sum() == 0


def test_table1_switches_change_what_the_model_sees(tiny_cfg):
    imgs, aud = _inputs(tiny_cfg, 12)
    hist = torch.full((tiny_cfg.model.hidden_dim,), 3.0)
    for pe, de in [(False, False), (True, False), (False, True)]:
        torch.manual_seed(0)
        model = PoCaPNet(dataclasses.replace(tiny_cfg.model, positional_encoding=pe, delayed_estimation=de)).eval()
        a = model(imgs, aud, torch.arange(12), hist).logits
        b = model(imgs, aud, torch.arange(100, 112), None).logits
        assert torch.allclose(a, b) == (not pe and not de)
    assert {"pocapnet_tcn", "pocapnet_pe", "pocapnet_de"} <= set(list_configs())
    assert not get_config("pocapnet_tcn").model.delayed_estimation
    assert get_config("pocapnet_pe").model.positional_encoding


@pytest.mark.parametrize("causal", [True, False])
def test_causal_option(tiny_cfg, causal):
    model = PoCaPNet(dataclasses.replace(tiny_cfg.model, causal_conv=causal)).eval()
    feats = torch.randn(20, tiny_cfg.model.hidden_dim)
    a = model.forward_temporal(feats)
    feats2 = feats.clone()
    feats2[15:] += 5.0  # change the future
    b = model.forward_temporal(feats2)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6) == causal


def test_unknown_config_name():
    with pytest.raises(ValueError, match="valid names"):
        create_model("nope")
