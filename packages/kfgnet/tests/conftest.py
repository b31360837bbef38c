"""Fixtures of the kfgnet tests: one small synthetic cohort written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the manifest.json of a tiny synthetic cohort (procedural backgrounds, 64-px frames)."""
    from kfgnet.synthetic import SyntheticConfig, make_synthetic

    out = tmp_path_factory.mktemp("kfgnet_synth")
    return make_synthetic(out, SyntheticConfig(n_patients=6, num_frames=24, size=64, seed=1), None, layout="release")
