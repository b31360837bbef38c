"""Session fixtures: a small synthetic PoCaP dataset on disk and its tiny-random features (built once)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from pocapnet.config import get_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_cfg():
    return get_config("pocapnet_tiny")


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory) -> Path:
    from pocapnet.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("pocap_data")
    make_synthetic_dataset(root, n_ops=4, seconds=(28, 34), seed=3, frame_size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def syn_feats(syn_data, tmp_path_factory, tiny_cfg) -> Path:
    from pocapnet.features import extract_dataset

    out = tmp_path_factory.mktemp("pocap_feats")
    fcfg = dataclasses.replace(tiny_cfg.features, batch_windows=16, bf16=False)
    extract_dataset(syn_data, out, fcfg, "cpu", progress=False, require_labels=True)
    return out
