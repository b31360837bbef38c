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


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Empty weights dir, torch hub and Hugging Face caches; no offline variable set."""
    for var in ("LUNGCVT_WEIGHTS_DIR", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEDREPRO_OFFLINE", "LUNGCVT_WEIGHTS_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "empty"


def test_missing_weights_offline(no_weights, monkeypatch):
    """Offline (--offline or HF_HUB_OFFLINE=1): the error names the file, the URL, and both flags."""
    pattern = (
        r"deit_base_patch16_224-b5f2ef4d\.pth.*offline.*https://dl\.fbaipublicfiles\.com/deit/"
        r".*--pretrained PATH.*--pretrained none"
    )
    with pytest.raises(FileNotFoundError, match=pattern):
        resolve_weights("deit_base_patch16_224", offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=pattern):
        resolve_weights("deit_base_patch16_224")
    with pytest.raises(FileNotFoundError, match=r"not found: .*missing\.pth.*--pretrained none"):
        resolve_weights("deit_base_patch16_224", no_weights / "missing.pth")
    assert not (no_weights / "hub" / "checkpoints").exists() or not any((no_weights / "hub" / "checkpoints").iterdir())


def _publish_deit(folder, name=None):
    """A DeiT-tiny state dict (2 blocks) saved as torch.hub names files: <name>-<sha256 prefix>.pth."""
    import hashlib

    path, ref = _fake_deit_file(folder, "tmp.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    final = folder / (name or f"deit_tiny_patch16_224-{digest[:8]}.pth")
    path.rename(final)
    return final, ref


def test_pretrained_download_through_torch_hub_cache(no_weights, tmp_path):
    """--pretrained URL: downloaded from a server on 127.0.0.1 into torch.hub's cache, hash-checked, loaded into the
    model; the second call is served from the cache (no request)."""
    from medshared.testing import serve_files

    srv = tmp_path / "srv"
    srv.mkdir()
    path, ref = _publish_deit(srv)
    cfg = ModelConfig(backbone="deit_tiny_patch16_224", backbone_depth=2, img_size=224, pretrained=True)
    with serve_files(srv) as url:
        got = resolve_weights("deit_tiny_patch16_224", f"{url}/{path.name}")
        assert got == no_weights / "hub" / "checkpoints" / path.name and url.requests == [f"/{path.name}"]
        m = LungCVT(cfg, weights=f"{url}/{path.name}")
        assert url.requests == [f"/{path.name}"]  # from the cache
    torch.testing.assert_close(m.backbone.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)


def test_default_download_checks_the_release_hash(no_weights, tmp_path, monkeypatch):
    """The default path (no local file): the DeiT release name from $LUNGCVT_WEIGHTS_URL (here a loopback mirror).
    A file whose content does not match the sha256 prefix in its name is rejected and nothing stays in the cache;
    an unreachable mirror is a clear error naming the file and the flags."""
    from medshared.testing import serve_files

    srv = tmp_path / "srv"
    srv.mkdir()
    _publish_deit(srv, name="deit_tiny_patch16_224-a1311bcf.pth")  # the real name, other content
    with serve_files(srv) as url:
        monkeypatch.setenv("LUNGCVT_WEIGHTS_URL", url)
        with pytest.raises(ValueError, match="does not match its sha256"):
            resolve_weights("deit_tiny_patch16_224")
        assert url.requests == ["/deit_tiny_patch16_224-a1311bcf.pth"]
    ckpt = no_weights / "hub" / "checkpoints"
    assert not ckpt.exists() or list(ckpt.iterdir()) == []
    monkeypatch.setenv("LUNGCVT_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens there
    import huggingface_hub

    def unreachable(*a, **k):  # huggingface.co, as the test's socket guard would refuse it (without the retries)
        raise ConnectionError("huggingface.co unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(FileNotFoundError, match=r"a1311bcf\.pth.*download failed.*Hugging Face Hub.*--pretrained none"):
        resolve_weights("deit_tiny_patch16_224")


def test_identity_front_init_passes_features_through():
    m = LungCVT(dataclasses.replace(TINY, front_init="identity")).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m.branch(x), x)
    a = m.attention.conv_in(x)[:, :3]
    torch.testing.assert_close(a, x)
    default = LungCVT(dataclasses.replace(TINY, front_init="torch")).eval()
    assert not torch.allclose(default.branch(x), x)
