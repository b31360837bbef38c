"""CUDA paths checked on the CPU: training runs on ``device="meta"`` under a guard (``conftest.DeviceGuard``) that
raises on an op mixing devices and counts host syncs, so a tensor built on the CPU beside GPU ones, or a per-step
``.item()``, fails here without a GPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from kfgnet.config import ClassifierTrainConfig, ClipConfig
from kfgnet.data import ClipDataset, read_manifest
from kfgnet.keyframe import train_keyframe
from kfgnet.presets import get_classifier_config, get_keyframe_config, get_keyframe_train_config
from kfgnet.train import train_classifier

CLIP = ClipConfig(num_frames=16, size=32)
CFG = get_classifier_config("kfgnet_tiny", size=32, dropout=0.0)


def test_classifier_training_on_a_device_syncs_once_per_epoch_and_resumes_without_syncs(
    synth: Path, tmp_path: Path, device_guard
) -> None:
    recs = read_manifest(synth)[:4]
    ds = ClipDataset(recs, CLIP, CFG.attention_steps, augment=True)
    tcfg = ClassifierTrainConfig(epochs=1, epochs2=1, batch_size=2, seed=3)  # 2 steps per epoch
    with device_guard() as g:
        train_classifier(ds, CFG, tcfg, "meta", progress=False, run_hash="h")
    assert g.syncs == ["tolist", "tolist"]  # one per epoch (the logged means), none per step
    # a state saved by a CPU run, resumed on the device: Adam's step counters must stay on the CPU (loaded onto the
    # GPU they cost one sync per parameter per step)
    state = tmp_path / "s.pt"
    train_classifier(ds, CFG, replace(tcfg, epochs2=0), "cpu", state_path=state, progress=False, run_hash="h")
    with device_guard() as g:
        train_classifier(ds, CFG, tcfg, "meta", state_path=state, progress=False, run_hash="h")
    assert g.syncs == ["tolist"]  # only epoch 2 trained


def test_keyframe_training_on_a_device_syncs_once_per_epoch(device_guard, keyframe_seqs) -> None:
    kc = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=8)
    kt = replace(get_keyframe_train_config("kfgnet_keyframe_tiny"), epochs=2, batch_size=2)
    seqs = keyframe_seqs(kc.geo_dim)
    with device_guard() as g:
        train_keyframe(seqs, kc, kt, "meta", progress=False)
    assert g.syncs == ["__float__", "__float__"]  # the epoch's mean MSE; the mask count comes from CPU lengths


def test_the_guard_catches_a_cpu_tensor_beside_a_device_one(device_guard) -> None:
    import pytest

    x = torch.ones(3, device="meta")
    with device_guard() as g:
        _ = x + torch.tensor(1.0)  # a CPU 0-dim tensor is allowed, as on CUDA
        with pytest.raises(RuntimeError, match="mixes tensors"):
            _ = x + torch.ones(3)
        float(x.sum())
    assert g.syncs == ["__float__"]


def test_loaders_pin_memory_and_take_workers_on_cuda_only() -> None:
    import pytest
    from kfgnet.devices import default_workers, loader_kwargs, resolve_workers

    assert loader_kwargs("cuda:0", 2)["pin_memory"] and not loader_kwargs("cpu", 2)["pin_memory"]
    assert default_workers("cpu") == 0 and 1 <= default_workers("cuda") <= 4
    assert default_workers("cuda", world_size=1000) == 1  # at least one per process
    assert resolve_workers(None, "cpu") == 0 and resolve_workers(3, "cuda") == 3
    with pytest.raises(ValueError, match="--workers -1"):
        resolve_workers(-1, "cpu")
