"""Fixtures of the alges tests: a small synthetic CholecSeg8k-layout dataset written once per session."""

from __future__ import annotations

import pytest
from alges.data import cholec_split, load_arrays, scan_cholecseg8k
from alges.synthetic import generate_cholecseg8k


@pytest.fixture(autouse=True, scope="module")
def _fp32_unless_asked():
    """``--precision auto`` resolves to fp32 in these tests (the same numbers on every CPU, no probe timing),
    module fixtures included (module scope: set before them, undone after each module); the precision tests that
    measure clear it. A session-scoped one stayed set after the alges tests and turned every later package's
    ``auto`` into fp32 in a whole-suite run."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDREPRO_PRECISION", "fp32")
    yield
    mp.undo()


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


@pytest.fixture(scope="session")
def simulate_argv():
    """``alges simulate`` argv on the synthetic videos: pool videos 1-2, the first 4 frames of video 3 as test."""
    return _simulate_argv


def _simulate_argv(root, out, strategies: str, seeds: str, *extra: str) -> list[str]:
    return [
        "simulate", "--data", str(root), "--strategies", strategies, "--rounds", "2", "--seeds", seeds,
        "--train-videos", "video01,video02", "--test-videos", "video03", "--max-test-frames", "4",
        "--preset", "alges_tiny", "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip
