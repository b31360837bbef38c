"""``--precision``: training may use bf16 autocast (chosen by measurement on a CPU), selection stays fp32 under auto
(stated reason), the old ``amp`` key is an alias, TF32 switches are set per phase and restored, and the choice is
recorded and part of the resume key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from alges.cli import main
from alges.config import IGNORE_INDEX, create_config
from alges.model import build_model
from alges.precision import (
    SELECTION_FP32_REASON,
    phase,
    resolve_alges_precision,
    resolve_infer_precision,
    train_probe,
)
from alges.train import train_model
from medshared.precision import Precision


def test_auto_keeps_selection_in_fp32_with_the_reason():
    p = resolve_alges_precision("auto", "cpu")  # MEDREPRO_PRECISION=fp32 (conftest) for the training part
    assert p.select.name == "fp32" and SELECTION_FP32_REASON in p.select.reason and "k-means++" in p.select.reason
    assert p.train.name == "fp32" and "MEDREPRO_PRECISION" in p.train.reason
    assert p.key() == {}  # fp32 everywhere: the resume keys of older runs stay valid
    alias = resolve_alges_precision("auto", "cpu", amp=True)  # the old config key amp: true
    assert alias.select.name == "bf16" and "amp: true" in alias.select.reason
    explicit = resolve_alges_precision("bf16", "cpu")
    assert explicit.train.name == explicit.select.name == "bf16" and explicit.key() == {
        "train": "bf16",
        "select": "bf16",
    }
    assert resolve_alges_precision("tf32", "cpu").train.name == "fp32"  # no TF32 on a CPU
    with pytest.raises(ValueError, match="fp16.*auto, fp32, tf32, bf16"):
        resolve_alges_precision("fp16", "cpu")


def test_auto_on_cpu_measures_the_alges_probe_once(monkeypatch, tmp_path):
    from medshared.runtime import native_bf16

    monkeypatch.delenv("MEDREPRO_PRECISION")
    monkeypatch.setenv("MEDREPRO_CACHE_DIR", str(tmp_path))
    first = resolve_infer_precision("auto", "cpu")
    if not native_bf16("cpu"):
        assert first.name == "fp32" and "no native bf16" in first.reason
        return
    assert "alges.seg_infer" in first.reason and "(measured)" in first.reason
    again = resolve_infer_precision("auto", "cpu")
    assert again.name == first.name and "(cached)" in again.reason
    assert "alges.seg_infer" in next(iter(json.loads((tmp_path / "precision.json").read_text())))


def test_probe_is_a_training_step_that_runs_under_bf16_autocast():
    step = train_probe()
    seen: list[torch.dtype] = []

    def hook(module, _inp, out):
        if isinstance(module, torch.nn.Conv2d):
            seen.append(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step()  # no op without a bf16 kernel
        n_bf16 = len(seen)
        step()  # and under fp32
    finally:
        handle.remove()
    assert n_bf16 > 10 and set(seen[:n_bf16]) == {torch.bfloat16}  # the convolutions ran in bf16
    assert set(seen[n_bf16:]) == {torch.float32} and len(seen) == 2 * n_bf16


def test_phase_sets_tf32_for_its_block_and_restores_it():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # PyTorch's cuDNN default
        with phase(Precision("fp32", "auto", "cuda", "selection")):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with phase(Precision("fp32", "fp32", "cpu", "x")):  # CPU: nothing to switch
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bf16_training_runs_the_network_in_bf16_and_the_loss_in_fp32():
    cfg = create_config("alges_tiny", num_classes=3, epochs=1, batch_size=4, train_steps=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 32, 32)).astype(np.uint8)
    masks = rng.integers(0, 3, (8, 32, 32)).astype(np.uint8)
    masks[:, 0] = IGNORE_INDEX
    seen = []
    model = build_model(cfg)
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    hist = train_model(model, images, masks, cfg, torch.device("cpu"), precision=Precision("bf16", "bf16", "cpu", "t"))
    assert seen == [torch.bfloat16, torch.bfloat16] and np.isfinite(hist).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_train_records_precision_and_refuses_to_resume_under_another(syn_root, tmp_path, capsys):
    base = ["train", "--data", str(syn_root), "--out", str(tmp_path / "r"), "--preset", "alges_tiny", "--device", "cpu"]
    assert main([*base, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "precision (training): fp32" in out or "precision: fp32" in out
    log = json.loads((tmp_path / "r" / "train.json").read_text())
    assert log["precision"]["name"] == "fp32" and log["precision"]["requested"] == "auto"
    assert main([*base, "--epochs", "2", "--resume", "--precision", "bf16"]) == 1
    assert "another config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        main([*base, "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
