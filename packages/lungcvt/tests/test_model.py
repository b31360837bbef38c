from __future__ import annotations

import dataclasses

import pytest
import torch
from lungcvt.config import LungCVTConfig, ModelConfig, get_config, list_configs, register_config
from lungcvt.model import AttentionBlock, BranchConv, LungCVT, SpatialGate, create_model, resolve_weights

TINY = get_config("lungcvt_tiny").model


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"use_cnn": False, "use_attention": False},  # Table II: DeiT alone
        {"use_attention": False},  # + CNN
        {"share_branch_conv": False},
        {"cbam_order": "standard"},
        {"global_pool": "token"},
    ],
)
def test_shapes(batch, switches):
    torch.manual_seed(0)
    m = LungCVT(dataclasses.replace(TINY, **switches)).eval()
    out = m(torch.randn(batch, 3, 64, 64))
    assert out.shape == (batch, 4) and torch.isfinite(out).all()


def test_ablation_switches_change_the_module():
    full = LungCVT(TINY)
    bare = LungCVT(dataclasses.replace(TINY, use_cnn=False, use_attention=False))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(full) - n(bare) == 9 + (3 * 16 * 9 + 2 * 49 + 2 + (16 + 1) + (1 * 16 + 16) + 16 * 3 * 9)
    sep = LungCVT(dataclasses.replace(TINY, share_branch_conv=False))
    assert n(sep) - n(full) == 3 * 9 - 9


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    m = LungCVT(TINY).train()
    # the code's channel MLP is 1 unit wide (16 // 16): its ReLU can start dead, which zeroes the gradient of the
    # first layer; open it so the test checks that the gradient path exists
    with torch.no_grad():
        m.attention.channel.mlp[0].bias.fill_(5.0)
    x = torch.randn(3, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 3]))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_wrong_input_shape():
    m = LungCVT(TINY)
    with pytest.raises(ValueError, match=r"expects input \[B, 3, 64, 64\].*got \(2, 3, 32, 32\)"):
        m(torch.randn(2, 3, 32, 32))


def test_branch_conv_shared_applies_one_kernel_per_channel():
    bc = BranchConv(shared=True)
    x = torch.randn(2, 3, 8, 8)
    y = bc(x)
    for c in range(3):
        torch.testing.assert_close(y[:, c : c + 1], bc.conv(x[:, c : c + 1]))


def test_official_spatial_gate_keeps_half():
    g = SpatialGate(relu=True).eval()
    x = torch.rand(2, 4, 8, 8) + 0.1
    ratio = g(x) / x
    assert (ratio >= 0.5 - 1e-6).all()  # ReLU before the sigmoid: scales in [0.5, 1]
    ratio_std = SpatialGate(relu=False).eval()(x) / x
    assert ratio_std.shape == x.shape


def test_attention_block_orders_differ():
    torch.manual_seed(0)
    a = AttentionBlock(order="official").eval()
    b = AttentionBlock(order="standard").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(a(x), b(x))


def test_registry():
    assert {"lungcvt_base", "lungcvt_tiny", "lungcvt_deit_small", "lungcvt_deit_base_cnn"} <= set(list_configs())
    with pytest.raises(ValueError, match="unknown config 'nope'; valid"):
        get_config("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_config(LungCVTConfig(name="lungcvt_tiny"))
    with pytest.raises(ValueError, match="must equal features.image_size"):
        LungCVTConfig(model=ModelConfig(img_size=64))
    base = get_config("lungcvt_base")
    assert (base.train.lr, base.train.batch_size, base.model.backbone) == (1e-4, 32, "deit_base_patch16_224")


def _fake_deit_file(tmp_path, name="deit_tiny_patch16_224-a1311bcf.pth"):
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / name
    torch.save({"model": ref.state_dict()}, path)  # the FB release wraps weights in 'model'
    return path, ref


def test_pretrained_from_local_file(tmp_path):
    path, ref = _fake_deit_file(tmp_path)
    cfg = ModelConfig(backbone="deit_tiny_patch16_224", backbone_depth=2, img_size=224, pretrained=True)
    m = LungCVT(cfg, weights=path)
    torch.testing.assert_close(m.backbone.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(m.backbone.pos_embed, ref.pos_embed)


def test_pretrained_env_dir_and_resampled_pos_embed(tmp_path, monkeypatch):
    path, ref = _fake_deit_file(tmp_path)
    monkeypatch.setenv("LUNGCVT_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights("deit_tiny_patch16_224") == path
    m = create_model(ModelConfig(backbone="deit_tiny_patch16_224", backbone_depth=2, img_size=64, pretrained=True))
    assert m.backbone.pos_embed.shape[1] == 1 + 4 * 4  # (14, 14) resampled to (4, 4) at load
    torch.testing.assert_close(m.backbone.blocks[0].mlp.fc1.weight, ref.blocks[0].mlp.fc1.weight)


def test_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGCVT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"deit_base_patch16_224-b5f2ef4d\.pth.*--pretrained none"):
        resolve_weights("deit_base_patch16_224")
    with pytest.raises(FileNotFoundError, match=r"not found: .*missing\.pth.*--pretrained none"):
        resolve_weights("deit_base_patch16_224", tmp_path / "missing.pth")


def test_identity_front_init_passes_features_through():
    m = LungCVT(dataclasses.replace(TINY, front_init="identity")).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m.branch(x), x)
    a = m.attention.conv_in(x)[:, :3]
    torch.testing.assert_close(a, x)
    default = LungCVT(dataclasses.replace(TINY, front_init="torch")).eval()
    assert not torch.allclose(default.branch(x), x)
