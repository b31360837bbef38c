"""CUDA paths at tiny sizes (``@pytest.mark.gpu``: skipped with a reason by the root conftest without CUDA).

They run what a first GPU session would: the detector trained with bf16 on its backbone, the classifier trained in
bf16 + channels_last_3d through the real DDP path with SyncBatchNorm (a one-process NCCL group forced by
``MEDREPRO_FORCE_DDP=1``), the key-frame LSTM, and ``train-classifier`` from the CLI with ``--sync-bn``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_detector_trains_on_cuda_with_bf16_backbone(tmp_path: Path, detection_items: list) -> None:
    from kfgnet.detector import detect_frames, load_detector
    from kfgnet.detector_train import train_detector
    from kfgnet.precision import detector_precision
    from kfgnet.presets import get_detector_config
    from medshared.distributed import DistContext
    from PIL import Image

    items = detection_items
    dev = torch.device("cuda")
    prec = detector_precision("auto", dev)
    prec.apply()
    assert prec.name in ("bf16", "tf32")
    cfg = get_detector_config("tiny", min_size=64, max_size=64, epochs=2, batch_size=2)
    res = train_detector(items[:3], items[3:], cfg, tmp_path / "run", DistContext(device=dev), seed=0,
                         progress=False, num_workers=1, precision=prec)  # fmt: skip
    assert all(np.isfinite(r["loss"]) for r in res["log"]) and "val_ap50" in res["log"][-1]
    again = train_detector(items[:3], items[3:], cfg, tmp_path / "run", DistContext(device=dev), seed=0,
                           progress=False, precision=prec)  # fmt: skip  # resume: a CUDA state read back on the CPU
    assert [r["epoch"] for r in again["log"]] == [1, 2]
    model, _ = load_detector(tmp_path / "run" / "detector_best.safetensors", dev)
    frames = np.stack([np.asarray(Image.open(it.path).convert("RGB")) for it in items])
    det = detect_frames(model, frames, dev, score_threshold=0.0, precision=prec)
    assert det.features.dtype == np.float32 and len(det.frame_num) == len(frames)


def test_classifier_ddp_sync_bn_bf16_on_cuda(synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfgnet.config import ClassifierTrainConfig, ClipConfig
    from kfgnet.data import ClipDataset, read_manifest
    from kfgnet.presets import get_classifier_config
    from kfgnet.train import predict_clips, train_classifier
    from medshared.distributed import init_distributed

    monkeypatch.setenv("MEDREPRO_FORCE_DDP", "1")
    clip = ClipConfig(num_frames=16, size=32)
    cfg = get_classifier_config("kfgnet_tiny", size=32)
    ds = ClipDataset(read_manifest(synth)[:4], clip, cfg.attention_steps, augment=True)
    tcfg = ClassifierTrainConfig(epochs=1, epochs2=1, batch_size=2, bf16=True, channels_last=True, sync_bn=True,
                                 num_workers=1)  # fmt: skip
    ctx = init_distributed("cuda")
    try:
        assert ctx.enabled and ctx.backend == "nccl"
        log: list[dict] = []
        model = train_classifier(ds, cfg, tcfg, ctx, state_path=tmp_path / "s.pt", progress=False, log=log)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        assert all(np.isfinite(r["loss"]) for r in log)
        p = predict_clips(model, ds, ctx.device, bf16=True, num_workers=1)
        assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    finally:
        ctx.close()


def test_keyframe_lstm_trains_on_cuda(keyframe_seqs) -> None:
    from kfgnet.keyframe import predict_keyframes, train_keyframe
    from kfgnet.presets import get_keyframe_config, get_keyframe_train_config

    kc = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=8)
    kt = replace(get_keyframe_train_config("kfgnet_keyframe_tiny"), epochs=3, batch_size=2)
    seqs = keyframe_seqs(kc.geo_dim)
    log: list[dict] = []
    model = train_keyframe(seqs, kc, kt, "cuda", progress=False, log=log)
    keys, curves = predict_keyframes(model, seqs, torch.device("cuda"))
    assert len(keys) == 4 and all(len(c) == len(s["feat"]) for c, s in zip(curves, seqs))
    assert all(np.isfinite(r["mse"]) for r in log)


def test_train_classifier_cli_on_cuda_with_sync_bn(synth: Path, tmp_path: Path) -> None:
    import json

    from kfgnet.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip: {num_frames: 16, size: 32}\ntrain: {epochs: 1, epochs2: 0, batch_size: 4, folds: 2}\n")
    rc = main(["train-classifier", "--manifest", str(synth), "--preset", "kfgnet_tiny", "--config", str(cfg),
               "--out", str(tmp_path / "cls"), "--device", "cuda", "--sync-bn", "--no-progress"])  # fmt: skip
    assert rc == 0
    m = json.loads((tmp_path / "cls" / "cv_metrics.json").read_text())
    assert m["precision"]["device_type"] == "cuda" and m["precision"]["name"] in ("bf16", "tf32")
    assert m["num_workers"] >= 1  # the CUDA default
