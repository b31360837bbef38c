from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from medshared.testing import shared_data_dir
from pocapnet.config import FeatureConfig
from pocapnet.data import load_operation, read_frame, read_wav
from pocapnet.extractors import (
    AudioExtractor,
    ChannelsLastFeatureEncoder,
    XrayExtractor,
    audio_windows,
    cast_wav2vec2_bf16,
    image_windows,
)
from pocapnet.features import extract_dataset, is_complete, load_feature_operation
from pocapnet.weights import load_densenet, load_wav2vec2

CFG = FeatureConfig(wav2vec2="tiny-random", xray_weights="tiny-random", bf16=False)


def test_window_alignment_second_t_sees_samples_up_to_t_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000 * 10).astype(np.float32)
    w = audio_windows(x, [0, 3, 9], CFG)
    assert w.shape == (3, 112000)
    y = x.copy()
    y[16000 * 4 + 1 :] = 0.0  # change everything after second 3 (the first sample of second 4 feeds pre-emphasis)
    w2 = audio_windows(y, [0, 3], CFG)
    np.testing.assert_array_equal(w[:2], w2)
    z = x.copy()
    z[16000 * 4 - 200] += 1.0  # a sample late in second 3 changes window 3 (Hann weight ~3e-6 there, not 0)
    assert np.abs(audio_windows(z, [3], CFG) - w[1:2]).max() > 1e-7
    # window 0 = 6 s of zeros, then second 0 under the newest part of the Hann window
    assert np.all(w[0, : 6 * 16000] == 0) and np.any(w[0, 6 * 16000 :] != 0)


def test_image_windows_repeat_first_frame():
    xray = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)  # (T=10, Di=4)
    win = image_windows(xray, np.array([0, 2, 9]))
    assert win.shape == (3, 7, 4)
    assert win[0, :, 0].tolist() == [0] * 7
    assert win[1, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 2]
    assert win[2, :, 0].tolist() == list(range(3, 10))


def test_tiny_wav2vec2_hook_is_last_layer_before_final_layernorm():
    model = load_wav2vec2("tiny-random")
    ext = AudioExtractor(model, CFG)
    x = torch.randn(2, 112000)
    feats = ext(x.numpy())
    assert feats.shape == (2, 349, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    ref = out.hidden_states[-1]
    if torch.allclose(ref, out.last_hidden_state):  # transformers 4.x semantics; recompute pre-LN state
        pytest.skip("this transformers version returns the post-LayerNorm state as hidden_states[-1]")
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(feats, out.last_hidden_state, atol=1e-3)
    pooled = AudioExtractor(model, dataclasses.replace(CFG, pooled=True))(x.numpy())
    torch.testing.assert_close(pooled[:, 0], feats.mean(1), rtol=1e-4, atol=1e-5)


def test_batched_equals_one_window_at_a_time():
    ext = AudioExtractor(load_wav2vec2("tiny-random"), CFG)
    x = np.random.default_rng(1).standard_normal((3, 112000)).astype(np.float32) * 0.3
    a = ext(x, bf16=False)
    b = torch.cat([ext(x[i : i + 1], bf16=False) for i in range(3)])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = ext(x, bf16=True)  # bf16 runs and stays correlated (its accuracy is measured in bench/extract.py)
    assert torch.nn.functional.cosine_similarity(c.flatten(1), b.flatten(1)).min().item() > 0.8


@pytest.mark.parametrize("samples", [112000, 16001, 400])
def test_channels_last_feature_encoder_equals_transformers(samples):
    model = load_wav2vec2("tiny-random")
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, samples)).astype(np.float32)) * 0.3
    with torch.no_grad():
        ref = model.feature_extractor(x)  # (B, C, L)
        out = ChannelsLastFeatureEncoder(model.feature_extractor)(x)
        out_slice = ChannelsLastFeatureEncoder(model.feature_extractor)(torch.cat([x, x])[2:])  # storage offset
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_slice, ref, rtol=1e-4, atol=1e-5)


def test_bf16_copy_close_to_fp32_and_leaves_the_fp32_model_alone():
    model = load_wav2vec2("tiny-random")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = cast_wav2vec2_bf16(model)
    assert isinstance(fast.feature_extractor, ChannelsLastFeatureEncoder)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ext = AudioExtractor(model, CFG)
    x = np.random.default_rng(3).standard_normal((3, 112000)).astype(np.float32) * 0.3
    ref, b16 = ext(x, bf16=False), ext(x, bf16=True)
    assert b16.dtype == torch.float32 and b16.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(b16.flatten(1).double(), ref.flatten(1).double())
    assert cos.min().item() > 0.9, cos  # tiny random model (0.947 measured); XLSR-53 size: bench/extract.py
    torch.testing.assert_close(ext(x, bf16=False), ref)  # the fp32 path is unchanged after the bf16 copy exists


def test_missing_weights_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("POCAPNET_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tiny-random"):
        load_wav2vec2("facebook/wav2vec2-large-xlsr-53")
    with pytest.raises(FileNotFoundError, match="--xray-weights random"):
        load_densenet("densenet121-res224-all")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_densenet(str(tmp_path / "nope.pt"))


def test_wav2vec2_local_folder_roundtrip(tmp_path):
    m = load_wav2vec2("tiny-random")
    m.save_pretrained(tmp_path / "w2v")
    m2 = load_wav2vec2(str(tmp_path / "w2v"))
    x = torch.randn(1, 112000)
    torch.testing.assert_close(AudioExtractor(m, CFG)(x), AudioExtractor(m2, CFG)(x))


def test_densenet_state_dict_file(tmp_path):
    import torchxrayvision as xrv

    torch.manual_seed(1)
    ref = xrv.models.DenseNet(weights=None)
    torch.save(ref, tmp_path / "all.pt")  # xrv releases a whole pickled model
    m = load_densenet(str(tmp_path / "all.pt"))
    assert not m.training
    torch.testing.assert_close(m.state_dict()["features.conv0.weight"], ref.state_dict()["features.conv0.weight"])


def test_extraction_layout_and_resume(syn_data, syn_feats, tiny_cfg):
    fop = load_feature_operation(syn_feats, "OP_001")
    T = len(fop)
    assert fop.xray.shape == (T, 32) and isinstance(fop.xray, np.memmap)
    assert fop.audio[0].shape == (T, 349, 32)
    assert fop.labels.shape == (T,)
    imgs, aud = fop.chunk(0, 5)
    assert imgs.shape == (5, 7, 32) and aud.shape == (5, 3, 349, 32)
    # the stored audio features equal a direct extraction of the same window (second 4, channel 2)
    fcfg = dataclasses.replace(tiny_cfg.features, bf16=False)
    op = load_operation(syn_data, "OP_001")
    direct = AudioExtractor(load_wav2vec2("tiny-random"), fcfg)(audio_windows(op.audio[1], [4], fcfg))
    np.testing.assert_allclose(fop.audio[1][4], direct[0].numpy(), rtol=1e-3, atol=1e-4)
    xr = XrayExtractor(load_densenet("tiny-random"), fcfg)([read_frame(op.frames[2])])
    np.testing.assert_allclose(fop.xray[2], xr[0].numpy(), rtol=1e-3, atol=1e-4)
    # resume: finished operations are skipped (the mtime does not change)
    assert is_complete(syn_feats / "OP_001", fcfg)
    before = (syn_feats / "OP_001" / "ch1.npy").stat().st_mtime_ns
    extract_dataset(syn_data, syn_feats, fcfg, progress=False)
    assert (syn_feats / "OP_001" / "ch1.npy").stat().st_mtime_ns == before


def _real(sub):
    d = shared_data_dir()
    if d is None or not (d / sub).is_dir():
        pytest.skip(f"real samples ../shared/data/{sub} not available (set MEDREPRO_SHARED_DATA)")
    return d / sub


def test_real_german_speech_through_audio_extractor():
    d = _real("speech_de")
    ext = AudioExtractor(load_wav2vec2("tiny-random"), CFG)
    for f in sorted(d.glob("*.wav")):
        x = read_wav(f)
        secs = len(x) // 16000
        feats = ext(audio_windows(x, np.arange(secs), CFG))
        assert feats.shape == (secs, 349, 32) and torch.isfinite(feats).all()
        # speech windows differ from each other (the extractor sees the signal)
        assert (feats[0] - feats[-1]).abs().mean() > 1e-3


def test_real_radiographs_through_xray_extractor():
    d = _real("chest_xray")
    ext = XrayExtractor(load_densenet("tiny-random"), CFG)
    frames = [read_frame(f) for f in sorted(d.iterdir())]
    x = ext.preprocess(frames)
    assert x.shape == (len(frames), 1, 224, 224) and x.min() >= -1024 and x.max() <= 1024
    feats = ext(frames)
    assert feats.shape == (len(frames), 32) and torch.isfinite(feats).all()
    assert torch.pdist(feats).min() > 0


def test_online_extractor_equals_offline_features(syn_data, syn_feats, tiny_cfg):
    from pocapnet.stream import OnlineExtractor

    fcfg = dataclasses.replace(tiny_cfg.features, bf16=False)
    op = load_operation(syn_data, "OP_002")
    fop = load_feature_operation(syn_feats, "OP_002")
    online = OnlineExtractor(
        AudioExtractor(load_wav2vec2("tiny-random"), fcfg), XrayExtractor(load_densenet("tiny-random"), fcfg), fcfg
    )
    for t in range(9):  # crosses the 7 s window length: from zero-padded to fully filled windows
        img, aud = online.step(op.audio[:, t * 16000 : (t + 1) * 16000], read_frame(op.frames[t]))
        np.testing.assert_allclose(img.numpy(), fop.xray[t], rtol=1e-3, atol=1e-4)
        for ch in range(3):
            np.testing.assert_allclose(aud[ch].numpy(), fop.audio[ch][t], rtol=1e-3, atol=2e-4)
