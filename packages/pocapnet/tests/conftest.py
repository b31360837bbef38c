"""Session fixtures: a small synthetic PoCaP dataset on disk and its tiny-random features (built once).

Every test runs with one intra-op torch thread (the workspace's root conftest.py); the session fixtures below build
their data under ``one_thread()`` too, since they may be set up before that per-test fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pocapnet.config import get_config


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
    with one_thread():
        make_synthetic_dataset(root, n_ops=4, seconds=(28, 34), seed=3, frame_size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def syn_feats(syn_data, tmp_path_factory, tiny_cfg) -> Path:
    from pocapnet.features import extract_dataset

    out = tmp_path_factory.mktemp("pocap_feats")
    fcfg = dataclasses.replace(tiny_cfg.features, batch_windows=16, bf16=False)
    with one_thread():
        extract_dataset(syn_data, out, fcfg, "cpu", progress=False, require_labels=True)
    return out


@pytest.fixture(scope="session")
def dicom_writer():
    """:func:`pocapnet.dicomwrite.write_dicom`."""
    from pocapnet.dicomwrite import write_dicom

    return write_dicom


@pytest.fixture(scope="session")
def tiny_ckpt(syn_feats, tmp_path_factory, tiny_cfg) -> Path:
    """A checkpoint of the tiny preset trained one epoch on ``syn_feats`` (chunks of 16 s)."""
    from pocapnet.train import fit

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_epochs=1, batch_size=16))
    split = {"train": ["OP_001", "OP_002"], "val": ["OP_003"], "test": ["OP_004"]}
    with one_thread():
        fit(syn_feats, out, cfg, split, "cpu", progress=False)
    return out / "best.safetensors"
