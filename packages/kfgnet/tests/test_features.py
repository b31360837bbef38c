"""Motion index: constructed clips and agreement with the scikit-image / OpenCV reference."""

from __future__ import annotations

import numpy as np
import pytest
from kfgnet.config import MotionConfig
from kfgnet.features import frame_motion_index, motion_index_reference, motion_vector, window_average


def test_identical_frames_give_one() -> None:
    rng = np.random.default_rng(0)
    f = np.repeat(rng.integers(0, 256, (1, 40, 40), dtype=np.uint8), 8, axis=0)
    assert np.allclose(frame_motion_index(f), 1.0)


def test_cut_gives_low_values_at_the_cut() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 120, (1, 48, 48)).astype(np.uint8)
    b = rng.integers(100, 256, (1, 48, 48)).astype(np.uint8)
    f = np.concatenate([np.repeat(a, 8, 0), np.repeat(b, 8, 0)])
    m = frame_motion_index(f)
    assert m[0] == pytest.approx(1.0) and m[-1] == pytest.approx(1.0)
    assert m[7] < 0.6 and m[8] < 0.6  # frames next to the cut
    v = motion_vector(f, 4)
    assert v.shape == (4,) and v[0] == pytest.approx(1.0) and v[1] < v[0]


def test_matches_reference_within_1e3() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 48, 3)).astype(np.float64)
    f = np.stack([np.clip(base + rng.normal(0, 10 * i, base.shape), 0, 255) for i in range(10)]).astype(np.uint8)
    cfg = MotionConfig(hist_bins=32)
    assert np.abs(frame_motion_index(f, cfg) - motion_index_reference(f, cfg)).max() < 1e-3


def test_window_average() -> None:
    np.testing.assert_allclose(window_average(np.arange(8.0), 4), [0.5, 2.5, 4.5, 6.5])


def test_motion_index_restores_torch_and_opencv_threads() -> None:
    import cv2
    import torch

    n, n_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(3)
    try:
        frame_motion_index(np.zeros((4, 16, 16), np.uint8))
        assert torch.get_num_threads() == 2
        assert cv2.getNumThreads() == 3
    finally:
        torch.set_num_threads(n)
        cv2.setNumThreads(n_cv)


def test_ssim_pairs_matches_skimage() -> None:
    import torch
    from kfgnet.features import ssim_pairs
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    a = rng.uniform(0, 255, (3, 30, 33))
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255)
    got = ssim_pairs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = [structural_similarity(a[k], b[k], win_size=7, data_range=255) for k in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("t", "neighbours"), [(19, (2, 1, 3)), (9, (1, 2)), (2, (1, 2)), (2, (2,))])
def test_blocks_and_offsets_match_reference(t: int, neighbours: tuple[int, ...]) -> None:
    """Clips longer than one 8-frame block, a last block shorter than an offset, unsorted offsets."""
    rng = np.random.default_rng(t)
    f = np.clip(rng.normal(120, 40, (1, 24, 28)) + rng.normal(0, 15, (t, 24, 28)), 0, 255).astype(np.uint8)
    cfg = MotionConfig(neighbours=neighbours)
    assert np.abs(frame_motion_index(f, cfg) - motion_index_reference(f, cfg)).max() < 1e-5


@pytest.mark.parametrize("bins", [64, 50, 256])
def test_uint8_histograms_equal_the_float_path(bins: int) -> None:
    import torch
    from kfgnet.features import _histograms, _histograms_u8

    x = np.random.default_rng(3).integers(0, 256, (5, 17, 23)).astype(np.uint8)
    x[0, 0, :4] = [0, 255, 4, 5]  # both ends of the range and a bin edge
    hu8 = _histograms_u8(x, bins)
    assert hu8.shape == (5, bins) and float(hu8.sum()) == x.size
    assert torch.equal(hu8, _histograms(torch.from_numpy(x).float(), bins))
