"""Fixtures of the alges tests: a small synthetic CholecSeg8k-layout dataset written once per session."""

from __future__ import annotations

import pytest
from alges.synthetic import generate_cholecseg8k


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cholec")
    generate_cholecseg8k(root, n_videos=3, frames_per_video=8, clip_len=4, width=96, height=54, seed=0)
    return root
