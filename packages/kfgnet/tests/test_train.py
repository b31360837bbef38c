"""Training: resume from the saved state, majority-rate chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from kfgnet.config import ClassifierTrainConfig, ClipConfig, get_classifier_config
from kfgnet.data import ClipDataset, read_manifest
from kfgnet.train import majority_chance, train_classifier


def test_training_resumes_from_state(synth: Path, tmp_path: Path) -> None:
    cfg = get_classifier_config("kfgnet_tiny", size=32)
    ds = ClipDataset(read_manifest(synth)[:4], ClipConfig(num_frames=16, size=32), cfg.attention_steps)
    state = tmp_path / "s.pt"
    log1: list[dict] = []
    train_classifier(ds, cfg, ClassifierTrainConfig(epochs=1, epochs2=0, batch_size=4), torch.device("cpu"),
                     state_path=state, progress=False, log=log1)
    assert state.is_file() and torch.load(state, weights_only=False)["epoch"] == 1
    log2: list[dict] = []
    train_classifier(ds, cfg, ClassifierTrainConfig(epochs=1, epochs2=1, batch_size=4), torch.device("cpu"),
                     state_path=state, progress=False, log=log2)
    assert [r["epoch"] for r in log1] == [1] and [r["epoch"] for r in log2] == [2]
    assert log2[0]["lr"] == 1e-4  # the second phase's learning rate


def test_majority_chance() -> None:
    assert majority_chance(np.array([1, 1, 0]), np.array([1, 0, 0, 0])) == 0.25
    assert majority_chance(np.array([0, 0, 1]), np.array([1, 0, 0, 0])) == 0.75
