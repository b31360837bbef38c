"""--precision: aliases, what bf16 runs (autocast forward, losses from float64 logits; bf16 extractor copies), what
is recorded, the probes' keys, and the CUDA paths' device placement checked on the ``meta`` device."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from medshared.testing import strict_devices
from pocapnet.cli_args import build_parser
from pocapnet.config import ModelConfig
from pocapnet.extractors import AudioExtractor, XrayExtractor, audio_windows
from pocapnet.losses import build_criterion, stage_loss
from pocapnet.model import DelayedMemory, PoCaPNet
from pocapnet.precision import resolve, size_tag, spec_from_aliases
from pocapnet.stream import StreamingPredictor
from pocapnet.train import fit
from pocapnet.weights import load_densenet, load_wav2vec2


def test_aliases_map_onto_precision():
    assert spec_from_aliases("auto") == "auto"
    assert spec_from_aliases("auto", bf16=True) == "bf16"
    assert spec_from_aliases("auto", bf16=False) == "fp32"  # config features.bf16: false
    assert spec_from_aliases("auto", fp32=True) == "fp32"  # extract / predict --fp32
    assert spec_from_aliases("bf16", bf16=False) == "bf16"  # an explicit --precision wins
    p = build_parser()
    a = p.parse_args("extract --data d --out o --bf16".split())
    assert a.precision == "auto" and a.bf16 and a.workers == 1 and a.device == "auto"
    a = p.parse_args("train --features f --out o --precision tf32 --workers 0 --device cuda:1".split())
    assert (a.precision, a.workers, a.device) == ("tf32", 0, "cuda:1")
    with pytest.raises(SystemExit):
        p.parse_args("evaluate --checkpoint c --features f --out o --precision fp16".split())
    with pytest.raises(SystemExit):
        p.parse_args("extract --data d --out o --fp32 --bf16".split())


def test_probe_keys_name_the_model_size(monkeypatch):
    tiny = PoCaPNet(dataclasses.replace(ModelConfig(), audio_frames=5, audio_dim=8, image_dim=8, hidden_dim=8)).cfg
    assert size_tag(tiny) != size_tag(None) and size_tag(None).startswith("3x349x1024")
    monkeypatch.setenv("MEDREPRO_PRECISION", "bf16")
    prec = resolve("auto", "cpu", "pocapnet.train", tiny)
    assert prec.name == "bf16" and "MEDREPRO_PRECISION" in prec.reason
    assert resolve("tf32", "cpu", "pocapnet.infer").name == "fp32"  # no TF32 on a CPU
    with pytest.raises(ValueError, match="unknown precision key"):
        resolve("auto", "cpu", "pocapnet.nope")


def test_bf16_training_runs_the_forward_in_bf16_and_the_loss_in_float64(syn_feats, tiny_cfg, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_epochs=1, batch_size=16))
    split = {"train": ["OP_001", "OP_002"], "val": ["OP_003"], "test": ["OP_004"]}
    seen: dict[str, set] = {"forward": set(), "loss": set()}
    orig_fwd, orig_loss = PoCaPNet.forward_temporal, stage_loss

    def fwd(self, feats, *a, **k):
        seen["forward"].add(self.linear(torch.zeros(1, self.linear.in_features)).dtype)
        return orig_fwd(self, feats, *a, **k)

    def loss(criterion, logits, *a, **k):
        seen["loss"].add((logits.dtype, torch.is_autocast_enabled("cpu")))
        return orig_loss(criterion, logits, *a, **k)

    monkeypatch.setattr(PoCaPNet, "forward_temporal", fwd)
    monkeypatch.setattr("pocapnet.loop.stage_loss", loss)
    res = fit(syn_feats, tmp_path, cfg, split, "cpu", progress=False, precision="bf16", workers=2)
    assert seen["forward"] == {torch.bfloat16}  # the linear layers ran under bf16 autocast
    assert seen["loss"] == {(torch.float64, False)}  # the loss: float64 logits, outside autocast
    run = json.loads((tmp_path / "train.json").read_text())
    assert run["precision"]["name"] == "bf16" and run["precision"]["requested"] == "bf16" and run["workers"] == 2
    assert np.isfinite(res["history"][0]["train_loss"]) and np.isfinite(res["best_val_loss"])


def test_bf16_extractor_copies_are_close_to_fp32(tiny_cfg):
    fcfg = dataclasses.replace(tiny_cfg.features, bf16=None)
    w = audio_windows(np.sin(np.linspace(0, 900, 16000 * 9)).astype(np.float32) * 0.3, [2, 5, 8], fcfg)
    audio = AudioExtractor(load_wav2vec2("tiny-random"), fcfg)
    assert audio.bf16 is False  # no flag rule any more: fp32 unless the precision says bf16
    a32, a16 = audio(w), audio(w, bf16=True)
    xray = XrayExtractor(load_densenet("tiny-random"), fcfg, bf16=True)
    frames = [np.full((40, 50), v, np.uint8) for v in (10, 120, 250)]
    x32, x16 = xray(frames, bf16=False), xray(frames)
    assert next(xray.bf16_model().parameters()).dtype == torch.bfloat16
    assert next(xray.model.parameters()).dtype == torch.float32  # the fp32 model is left alone
    # the tiny random wav2vec2 loses more to bf16 (0.94) than the XLSR-53 architecture (0.9998, bench/extract.py)
    for ref, got, least in ((a32, a16, 0.9), (x32, x16, 0.99)):
        assert got.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(ref.flatten(1), got.flatten(1))
        assert cos.min() > least, cos


def test_extract_records_the_precision(syn_data, tiny_cfg, tmp_path):
    from pocapnet.features import extract_dataset

    fcfg = dataclasses.replace(tiny_cfg.features, bf16=True, chunk_s=8)  # the old field, an alias of bf16
    extract_dataset(syn_data, tmp_path, fcfg, "cpu", ops=["OP_001"], progress=False, workers=2)
    meta = json.loads((tmp_path / "OP_001" / "meta.json").read_text())
    assert meta["precision"]["name"] == "bf16"
    fcfg32 = dataclasses.replace(fcfg, bf16=None)
    extract_dataset(syn_data, tmp_path / "f32", fcfg32, "cpu", ops=["OP_001"], progress=False, precision="fp32")
    a = np.load(tmp_path / "OP_001" / "ch1.npy")
    b = np.load(tmp_path / "f32" / "OP_001" / "ch1.npy")
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    assert 0.9 < cos.min() and not np.array_equal(a, b)  # bf16 ran (tiny wav2vec2: cosine ~0.94 to fp32)


def _meta_model(tiny_cfg, **kw):
    cfg = dataclasses.replace(
        tiny_cfg.model, audio_frames=5, audio_dim=8, image_dim=8, hidden_dim=8, num_f_maps=4, num_layers=3, **kw
    )
    return PoCaPNet(cfg).to("meta")


@pytest.mark.parametrize("loss", ["ldam", "wce", "focal", "ce"])
def test_training_step_creates_nothing_on_the_cpu(tiny_cfg, loss):
    """A CUDA stand-in: the model, the positional encoding, the delayed-estimation memory and every loss on the
    ``meta`` device, under a mode that refuses any op mixing two devices (a CPU tensor created without device=)."""
    net = _meta_model(tiny_cfg, positional_encoding=True, delayed_estimation=True, cosine_classifier=loss == "ldam")
    c = net.cfg
    tc = dataclasses.replace(tiny_cfg.train, loss=loss, smooth_weight=0.15)
    crit = build_criterion(tc, [5, 3, 2, 4, 1, 1, 1, 1, 2], c).to("meta")
    T = 6
    with strict_devices():
        mem = DelayedMemory(c.hidden_dim, "meta")
        imgs = torch.zeros(T, c.num_images, c.image_dim, device="meta")
        aud = torch.zeros(T, c.num_mics, c.audio_frames, c.audio_dim, device="meta")
        out = net(imgs, aud, torch.arange(T, device="meta"), mem.vector)
        target = torch.zeros(T, dtype=torch.int64, device="meta")
        stage_loss(crit, out.logits.double(), target, 0.15).backward()
        mem.update(out.logits[-1].argmax(1))
        mem.reset()


@pytest.mark.parametrize("fast", [True, False])
def test_streaming_step_creates_nothing_on_the_cpu(tiny_cfg, fast):
    """The streaming predictor's per-second path (folded copy + incremental MS-TCN, or the reference) on ``meta``
    across a chunk boundary (the memory update), under the mode that refuses mixed devices."""
    net = _meta_model(tiny_cfg, positional_encoding=True, delayed_estimation=True).eval()
    c = net.cfg
    with strict_devices():
        sp = StreamingPredictor(net, batch_size=3, device="meta", fast=fast)
        for _ in range(5):
            img = torch.zeros(c.image_dim, device="meta")
            aud = torch.zeros(c.num_mics, c.audio_frames, c.audio_dim, device="meta")
            logits = sp.logits(img, aud)
            assert logits.shape == (c.num_classes,) and logits.device.type == "meta"
            sp.advance(0)  # step() reads the estimate on the host, which meta tensors do not have
    assert sp.memory.vector.device.type == "meta" and sp.t == 5
