"""CUDA paths at tiny sizes (``@pytest.mark.gpu``: skipped with a reason by the root conftest without CUDA; no GPU
was lent to the session that wrote them, so they were checked by reading and by the ``meta`` stand-ins in
``test_precision.py`` / ``test_resume_device.py`` only)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from pocapnet.evaluate import stream_operation
from pocapnet.features import extract_dataset, load_feature_operation
from pocapnet.loop import load_chunk, make_streams, train_step
from pocapnet.losses import build_criterion, class_counts
from pocapnet.model import DelayedMemory, PoCaPNet
from pocapnet.train import fit, load_model, model_config_for_features, run_operation

pytestmark = pytest.mark.gpu
SPLIT = {"train": ["OP_001", "OP_002"], "val": ["OP_003"], "test": ["OP_004"]}


def test_extract_train_and_resume_on_cuda(syn_data, syn_feats, tiny_cfg, tmp_path):
    """Tiny extraction on CUDA (fp32: equal to the CPU's features), training on CUDA, then the same command again
    into the same folder: resume (the first-GPU-run crash: the RNG state landed on the GPU)."""
    fcfg = dataclasses.replace(tiny_cfg.features, batch_windows=16, bf16=None)
    extract_dataset(syn_data, tmp_path / "f", fcfg, "cuda", ops=["OP_001"], progress=False, precision="fp32")
    gpu, cpu = load_feature_operation(tmp_path / "f", "OP_001"), load_feature_operation(syn_feats, "OP_001")
    np.testing.assert_allclose(np.asarray(gpu.xray), np.asarray(cpu.xray), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(gpu.audio[0]), np.asarray(cpu.audio[0]), rtol=1e-3, atol=1e-3)
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_epochs=1, batch_size=16))
    out = tmp_path / "run"
    fit(syn_feats, out, cfg, SPLIT, "cuda", progress=False, precision="auto")
    run = json.loads((out / "train.json").read_text())
    assert run["precision"]["device_type"] == "cuda" and run["precision"]["name"] in ("bf16", "tf32")
    first = json.loads((out / "history.json").read_text())
    st = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert "cuda" in st["rng_per_rank"][0]  # the CUDA generator is saved too
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=2))
    res = fit(syn_feats, out, cfg2, SPLIT, "cuda", progress=False)
    assert len(res["history"]) == 2 and res["history"][0] == first[0]  # continued, not restarted


def test_pinned_chunks_and_bf16_train_step_on_cuda(syn_feats, tiny_cfg):
    fop = load_feature_operation(syn_feats, "OP_001")
    cfg = model_config_for_features(tiny_cfg, fop)
    item = load_chunk((fop, 0, 16), cfg.model.num_images, True, pin=True)
    assert item[3].is_pinned() and item[4].is_pinned()
    net = PoCaPNet(cfg.model).cuda().train()
    crit = build_criterion(cfg.train, class_counts([fop.labels]), cfg.model).cuda()
    mem = [DelayedMemory(cfg.model.hidden_dim, "cuda")]

    def bf16():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    losses = train_step(net, [item], mem, crit, 1, torch.device("cuda"), autocast=bf16)
    assert losses[0].device.type == "cuda" and torch.isfinite(losses[0])
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)
    streams = make_streams([fop], 1, 16)
    assert len(streams[0]) == -(-len(fop) // 16)


def test_offline_and_streaming_on_cuda_equal_cpu(tiny_ckpt, syn_feats):
    """The offline chunk forward and the streaming step (folded copy + incremental MS-TCN) on CUDA in fp32 give the
    CPU's predictions (TF32 off: --precision fp32)."""
    from pocapnet.precision import resolve

    resolve("fp32", "cuda", "pocapnet.infer")  # TF32 off for matmuls and cuDNN
    m_cpu, cfg, _ = load_model(tiny_ckpt, "cpu")
    m_gpu, _, _ = load_model(tiny_ckpt, "cuda")
    fop = load_feature_operation(syn_feats, "OP_004")
    with torch.no_grad():
        a = run_operation(m_cpu, fop, cfg.train.batch_size, "cpu")
        b = run_operation(m_gpu, fop, cfg.train.batch_size, "cuda")
    np.testing.assert_allclose(a["prob"], b["prob"], rtol=1e-4, atol=1e-5)
    s_cpu = stream_operation(m_cpu, fop, cfg.train.batch_size, "cpu")
    s_gpu = stream_operation(m_gpu, fop, cfg.train.batch_size, "cuda")
    np.testing.assert_allclose(s_cpu["prob"], s_gpu["prob"], rtol=1e-4, atol=1e-5)
