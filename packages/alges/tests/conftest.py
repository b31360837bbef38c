"""Fixtures of the alges tests: a small synthetic CholecSeg8k-layout dataset written once per session."""

from __future__ import annotations

import pytest
from alges.data import cholec_split, load_arrays, scan_cholecseg8k
from alges.synthetic import generate_cholecseg8k


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cholec")
    generate_cholecseg8k(root, n_videos=3, frames_per_video=8, clip_len=4, width=96, height=54, seed=0)
    return root


@pytest.fixture(scope="session")
def arrays(syn_root):
    """(pool, test) arrays at 32 px: videos 1-2 as the pool, the first 4 frames of video 3 as the test set."""
    idx = scan_cholecseg8k(syn_root)
    sp = cholec_split(idx, {"train": ["video01", "video02"], "test": ["video03"]}, max_test_frames=4)
    return load_arrays(idx, sp["train"], 32, progress=False), load_arrays(idx, sp["test"], 32, progress=False)
