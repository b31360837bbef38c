"""Streaming: the fast path derived from the module (BatchNorm folded, incremental MS-TCN) equals the module, and
streaming with causal convolutions equals offline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pocapnet.features import load_feature_operation
from pocapnet.model import PoCaPNet, fold_batchnorm
from pocapnet.stream import IncrementalMSTCN, StreamingPredictor
from pocapnet.train import model_config_for_features, run_operation


def _model(cfg, feats, **kw):
    cfg = model_config_for_features(cfg, load_feature_operation(feats, "OP_001"))
    return PoCaPNet(dataclasses.replace(cfg.model, **kw)).eval()


def _perturb_batchnorm(model: PoCaPNet) -> PoCaPNet:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):  # non-trivial eval statistics, so folding them is tested
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("pe", [False, True])
def test_streaming_matches_offline_with_causal_tcn(syn_feats, tiny_cfg, pe):
    model = _model(tiny_cfg, syn_feats, causal_conv=True, positional_encoding=pe)
    fop = load_feature_operation(syn_feats, "OP_003")
    with torch.no_grad():
        off = run_operation(model, fop, 8, "cpu")["pred"]
    sp = StreamingPredictor(model, 8)
    preds = []
    for t in range(len(fop)):
        _, aud = fop.chunk(t, t + 1)
        pred, _ = sp.step(torch.as_tensor(np.array(fop.xray[t], dtype=np.float32)), aud[0])
        preds.append(pred)
    assert sp.memory.vector.abs().sum() > 0  # the memory carried history across chunks
    np.testing.assert_array_equal(np.array(preds), off)


def test_layer_forward_from_equals_forward_tail(tiny_cfg):
    for causal in (False, True):
        model = PoCaPNet(dataclasses.replace(tiny_cfg.model, causal_conv=causal, num_layers=3)).eval()
        x = torch.randn(1, tiny_cfg.model.num_f_maps, 20)
        for layer in model.tcn.stage1.layers:
            for start in (0, 1, 3, 19):
                torch.testing.assert_close(layer.forward_from(x, start), layer(x)[..., start:])


@pytest.mark.parametrize(
    ("causal", "T", "cosine"), [(False, 40, False), (False, 12, False), (True, 40, False), (False, 24, True)]
)
def test_incremental_mstcn_equals_full_chunk_forward(tiny_cfg, causal, T, cosine):
    # 4 layers, reach 15 per stage: with 40-s chunks every stage-1 layer input and the acausal stage 2's input are
    # cached; with 12-s chunks the last stage-1 input and all of stage 2 change at every second (not cached); the
    # acausal last stage is evaluated column-restricted, so its 4 layer inputs are never cached
    cfg = dataclasses.replace(tiny_cfg.model, causal_conv=causal, num_layers=4, cosine_classifier=cosine)
    model = PoCaPNet(cfg).eval()
    x = torch.randn(T, cfg.hidden_dim)
    inc = IncrementalMSTCN(model.tcn, T)
    skipped = sum(b is None for bufs in inc.buffers for b in bufs)
    # reach of the 10 layer inputs: stage 1: 0 1 3 7 15, stage 2: 15 16 18 22 30; stored when < T - 1
    assert inc.last_only is not causal
    assert skipped == {(False, 40): 4, (False, 12): 6, (True, 40): 0, (False, 24): 4}[(causal, T)]
    steps = torch.stack([inc.step(x[t]) for t in range(T)])
    with torch.no_grad():  # row t of the step-wise result = last row of the forward over the first t+1 seconds
        want = torch.stack([model.forward_temporal(x[: t + 1])[-1, -1] for t in range(T)])
    torch.testing.assert_close(steps, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="chunk is full"):
        inc.step(x[0])
    inc.reset()
    torch.testing.assert_close(inc.step(x[0]), want[0], rtol=1e-4, atol=1e-5)
    other = IncrementalMSTCN(model.tcn, T, last_only=causal)  # the other way for the last stage: the same logits
    assert other.last_only is causal
    torch.testing.assert_close(torch.stack([other.step(x[t]) for t in range(T)]), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3, 4])
@pytest.mark.parametrize("T", [1, 2, 7, 8, 9, 16, 40])
def test_stage_forward_last_equals_last_column(tiny_cfg, causal, num_layers, T):
    # column-restricted evaluation of a stage: with T - 1 > reach (7 for 3 acausal layers, 14 causal) the columns
    # before the receptive field are cut (cutting one more column fails this test)
    cfg = dataclasses.replace(tiny_cfg.model, causal_conv=causal, num_layers=num_layers)
    stage = PoCaPNet(cfg).eval().tcn.stages[-1]
    x = torch.randn(2, cfg.num_classes, T)
    with torch.no_grad():
        got = stage.forward_last(stage.conv_1x1(x))
        want = stage(x)[..., -1]
        for layer in stage.layers:  # one layer at every other column of its dilation's subsequence
            h = torch.randn(1, cfg.num_f_maps, T)
            d = layer.dilation
            for c0, first in ((c0, f) for c0 in range(min(d, T)) for f in (0, 1) if c0 + f * d < T):
                sub = layer.forward_subsampled(h[..., c0::d], first)
                want_sub = layer(h)[..., c0 + first * d :: 2 * d]
                torch.testing.assert_close(sub, want_sub, rtol=1e-5, atol=1e-6)
    assert got.shape == (2, cfg.num_classes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_fast_streaming_equals_reference_past_the_receptive_field(syn_feats, tiny_cfg, causal):
    # the paper's and the causal preset's layout (2 stages, delayed estimation on) with 4 layers (reach 15 acausal)
    # and 20-s chunks: the acausal last stage is column-restricted and cut before its receptive field late in a
    # chunk; the causal one keeps its cached one-column update; the memory carries predictions across chunks
    model = _perturb_batchnorm(_model(tiny_cfg, syn_feats, causal_conv=causal, num_layers=4))
    assert model.cfg.delayed_estimation and model.cfg.num_stages == 2
    fop = load_feature_operation(syn_feats, "OP_002")
    fast, ref = StreamingPredictor(model, 20), StreamingPredictor(model, 20, fast=False)
    assert fast.tcn.last_only is not causal
    for t in range(len(fop)):
        img = torch.as_tensor(np.array(fop.xray[t], dtype=np.float32))
        _, aud = fop.chunk(t, t + 1)
        (pa, qa), (pb, qb) = fast.step(img, aud[0]), ref.step(img, aud[0])
        assert pa == pb, t
        np.testing.assert_allclose(qa, qb, rtol=1e-4, atol=1e-5)
    assert len(fop) > 20 and fast.memory.vector.abs().sum() > 0
    torch.testing.assert_close(fast.memory.vector, ref.memory.vector)


@pytest.mark.parametrize(
    "variant", [{}, {"causal_conv": True}, {"fusion": "gmu"}, {"modalities": ("audio",)}, {"modalities": ("xray",)}]
)
def test_fold_batchnorm_equals_module(tiny_cfg, variant):
    c = dataclasses.replace(tiny_cfg.model, **variant)
    model = _perturb_batchnorm(PoCaPNet(c))
    T = 9
    img = torch.randn(T, c.num_images, c.image_dim) if "xray" in c.modalities else None
    aud = torch.randn(T, c.num_mics, c.audio_frames, c.audio_dim) if "audio" in c.modalities else None
    with torch.no_grad():
        ref = model.forward_features(img, aud)
        folded = fold_batchnorm(model)
        out = folded.forward_features(img, aud)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())  # the original is untouched
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if aud is not None:
        with torch.no_grad():
            b16 = fold_batchnorm(model, audio_dtype=torch.bfloat16).forward_features(img, aud)
        assert torch.nn.functional.cosine_similarity(b16, ref).min() > 0.99


@pytest.mark.parametrize(
    "variant", [{"positional_encoding": True}, {"fusion": "gmu", "cosine_classifier": True}, {"modalities": ("audio",)}]
)
def test_fast_streaming_equals_reference_streaming(syn_feats, tiny_cfg, variant):
    model = _perturb_batchnorm(_model(tiny_cfg, syn_feats, **variant))  # acausal TCN (paper)
    fop = load_feature_operation(syn_feats, "OP_004")
    fast, ref = StreamingPredictor(model, 8), StreamingPredictor(model, 8, fast=False)
    for t in range(len(fop)):  # several chunks: the memory and the per-chunk cache are reset and refilled
        img = torch.as_tensor(np.array(fop.xray[t], dtype=np.float32))
        _, aud = fop.chunk(t, t + 1)
        (pa, qa), (pb, qb) = fast.step(img, aud[0]), ref.step(img, aud[0])
        assert pa == pb
        np.testing.assert_allclose(qa, qb, rtol=1e-4, atol=1e-5)
    assert fast.memory.vector.abs().sum() > 0
    torch.testing.assert_close(fast.memory.vector, ref.memory.vector)
