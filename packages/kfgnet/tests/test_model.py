"""Classifier shapes, gradients, presets and baselines."""

from __future__ import annotations

import pytest
import torch
from kfgnet.model import LightC3D, SPP3d, build_classifier, create_model, list_models
from kfgnet.presets import get_classifier_config

NARROW = {"widths": (4, 8, 16, 16), "attention_widths": (8, 4), "hidden": 16}


@pytest.mark.parametrize("t,size", [(16, 112), (32, 112), (64, 112), (32, 128)])
def test_light_c3d_shapes(t: int, size: int) -> None:
    m = build_classifier(get_classifier_config("kfgnet_light_c3d", num_frames=t, size=size, **NARROW)).eval()
    with torch.no_grad():
        logits, v_temp = m(torch.rand(2, 3, t, size, size))
    assert logits.shape == (2, 2)
    assert v_temp.shape == (2, t // 4)
    assert torch.isfinite(logits).all()


def test_paper_size_param_count_and_attention_steps() -> None:
    cfg = get_classifier_config("kfgnet_light_c3d")
    m = build_classifier(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 11.89e6) < 0.01e6  # brief §1: 11.89 M parameters, fc1 7.08 M
    assert m.fc1.in_features == 13824
    assert cfg.attention_steps == 8


def test_spp_official_matches_adaptive_global_level() -> None:
    x = torch.randn(2, 5, 2, 3, 3)
    a, o = SPP3d("adaptive")(x), SPP3d("official")(x)
    assert a.shape == o.shape == (2, 5 * (18 + 8 + 1))
    assert torch.equal(a[:, -5:], o[:, -5:])  # 1x1x1 level identical
    assert torch.equal(a[:, :90], x.flatten(1))
    with pytest.raises(ValueError, match="2x3x3"):
        SPP3d("official")(torch.randn(1, 5, 1, 3, 3))


def test_gradient_reaches_every_parameter() -> None:
    m = create_model("kfgnet_tiny").train()
    logits, v_temp = m(torch.rand(2, 3, 16, 64, 64))
    (logits.sum() + v_temp.sum()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


SWITCHES = [{"spp": False}, {"motion_attention": False}, {"spp": False, "motion_attention": False}]


@pytest.mark.parametrize("over", SWITCHES)
def test_table1_switches(over: dict) -> None:
    m = create_model("kfgnet_tiny", **over).eval()
    logits, v_temp = m(torch.rand(1, 3, 16, 64, 64))
    assert logits.shape == (1, 2)
    assert (v_temp is None) == (not m.attention)
    assert (m.spp is None) == (not over.get("spp", True))


def test_wrong_input_shape_is_reported() -> None:
    m = create_model("kfgnet_tiny")
    with pytest.raises(ValueError, match="built for 16 x 64 x 64"):
        m(torch.rand(1, 3, 8, 64, 64))


@pytest.mark.parametrize("arch", ["c3d", "r3d_18", "r2plus1d_18"])
def test_baselines_forward(arch: str) -> None:
    over = {"widths": (8, 16, 32, 64)} if arch == "c3d" else {}
    m = build_classifier(get_classifier_config(arch, **over)).eval()
    with torch.no_grad():
        logits, v = m(torch.rand(1, 3, 16, 32, 32))
    assert logits.shape == (1, 2) and v is None


def test_registry_errors_and_listing() -> None:
    assert "kfgnet_tiny" in list_models()
    with pytest.raises(KeyError, match="valid"):
        create_model("nope")
    with pytest.raises(ValueError, match="valid keys"):
        create_model("kfgnet_tiny", bogus=1)


def test_missing_baseline_weights_message(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="--pretrained none"):
        build_classifier(get_classifier_config("r3d_18", pretrained=str(tmp_path / "r3d_18.pth")))


def test_light_c3d_from_config() -> None:
    from kfgnet.config import ClassifierConfig

    m = LightC3D(ClassifierConfig(widths=(4, 8, 8, 8), attention_widths=(4, 2), num_frames=32, size=112, hidden=8))
    assert m(torch.rand(1, 3, 32, 112, 112))[1].shape == (1, 8)


def test_presets_stay_importable_from_config() -> None:
    import kfgnet.config as config
    import kfgnet.presets as presets

    assert config.get_classifier_config is presets.get_classifier_config
    assert config.DETECTOR_PRESETS is presets.DETECTOR_PRESETS
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        config.nope  # noqa: B018
