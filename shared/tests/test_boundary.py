"""HD95 / Hausdorff / ASSD against worked examples and a brute-force pairwise reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medshared.boundary import assd, hausdorff_distance, hd95, mask_boundary, max_distance, surface_distances


def _mask(shape, pixels):
    m = np.zeros(shape, bool)
    for p in pixels:
        m[p] = True
    return m


def _brute_boundary(m: np.ndarray) -> list[tuple[int, ...]]:
    """Foreground pixels with a face neighbour that is background or outside the array (written out by hand)."""
    out = []
    for idx in zip(*np.nonzero(m)):
        for ax in range(m.ndim):
            for step in (-1, 1):
                j = list(idx)
                j[ax] += step
                if not 0 <= j[ax] < m.shape[ax] or not m[tuple(j)]:
                    out.append(tuple(int(i) for i in idx))
                    break
            else:
                continue
            break
    return out


def _brute_distances(a, b, spacing):
    pa = np.asarray(_brute_boundary(a), float) * spacing
    pb = np.asarray(_brute_boundary(b), float) * spacing
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))  # [|A|, |B|]
    return d.min(1), d.min(0)


def test_worked_examples():
    a = _mask((8, 8), [(0, 0)])
    b = _mask((8, 8), [(3, 4)])
    assert hd95(a, b) == pytest.approx(5.0)
    assert hausdorff_distance(a, b) == pytest.approx(5.0)
    assert assd(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6**2 + 4**2))
    assert hd95(a, b, spacing=0.5) == pytest.approx(2.5)
    # identical masks: 0
    sq = np.zeros((10, 10), bool)
    sq[0:3, 0:3] = True
    assert hd95(sq, sq) == 0.0 and assd(sq, sq) == 0.0
    # a 3x3 square and the same square shifted 2 columns: boundary distances {0 x3, 1 x2, 2 x3} each way
    sh = np.zeros((10, 10), bool)
    sh[0:3, 2:5] = True
    dab, dba = surface_distances(sq, sh)
    assert sorted(dab.tolist()) == [0, 0, 0, 1, 1, 2, 2, 2] == sorted(dba.tolist())
    assert hd95(sq, sh) == pytest.approx(2.0)
    assert assd(sq, sh) == pytest.approx(1.0)
    assert hausdorff_distance(sq, sh, percentile=50) == pytest.approx(1.0)
    # pooled (medpy) vs max (MONAI): one pixel vs two pixels 10 apart
    one = _mask((1, 11), [(0, 0)])
    two = _mask((1, 11), [(0, 0), (0, 10)])
    assert hd95(one, two) == pytest.approx(9.0)  # percentile 95 of [0, 0, 10]
    assert hd95(one, two, reduction="max") == pytest.approx(9.5)  # max(p95[0], p95[0, 10])
    assert assd(one, two) == pytest.approx((0.0 + 5.0) / 2)


def test_boundary_definition():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    b = mask_boundary(m)
    assert b.sum() == 8 and not b[2, 2]
    full = np.ones((3, 3), bool)  # the array border is background: every edge pixel is boundary
    assert mask_boundary(full).sum() == 8
    plus = np.zeros((5, 5), bool)
    plus[1:4, 1:4] = True
    plus[2, 2] = True
    assert mask_boundary(plus, connectivity=2).sum() == 8


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(12, 30)), int(rng.integers(12, 30)))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]

    def blob():
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(2, 8), rng.uniform(2, 8)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        m |= rng.random(shape) < 0.03  # scattered specks: many small boundaries
        return m

    a, b = blob(), blob()
    spacing = np.array([rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)])
    dab, dba = _brute_distances(a, b, spacing)
    pooled = np.concatenate([dab, dba])
    assert hd95(a, b, spacing=tuple(spacing)) == pytest.approx(np.percentile(pooled, 95), rel=1e-9)
    assert hd95(a, b, spacing=tuple(spacing), reduction="max") == pytest.approx(
        max(np.percentile(dab, 95), np.percentile(dba, 95)), rel=1e-9
    )
    assert hausdorff_distance(a, b, spacing=tuple(spacing)) == pytest.approx(pooled.max(), rel=1e-9)
    assert assd(a, b, spacing=tuple(spacing)) == pytest.approx((dab.mean() + dba.mean()) / 2, rel=1e-9)
    assert hd95(a, b) == hd95(b, a)  # symmetric


def test_three_dimensional_against_brute_force():
    rng = np.random.default_rng(7)
    a = rng.random((6, 7, 8)) < 0.2
    b = rng.random((6, 7, 8)) < 0.2
    dab, dba = _brute_distances(a, b, np.array([1.0, 1.0, 2.5]))
    assert hd95(a, b, spacing=(1.0, 1.0, 2.5)) == pytest.approx(np.percentile(np.concatenate([dab, dba]), 95))


def test_empty_masks_and_errors():
    e = np.zeros((4, 4), bool)
    f = _mask((4, 4), [(1, 1)])
    assert hd95(e, e) == 0.0 and assd(e, e) == 0.0
    assert hd95(e, f) == math.inf and hd95(f, e) == math.inf
    assert hd95(e, f, empty_value=max_distance((4, 4))) == pytest.approx(math.sqrt(32))
    assert assd(f, e, empty_value=-1.0) == -1.0
    assert max_distance((3, 4), spacing=(1.0, 2.0)) == pytest.approx(math.sqrt(9 + 64))
    with pytest.raises(ValueError, match="shape"):
        hd95(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(f, f, spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        hd95(f, f, spacing=0.0)
    with pytest.raises(ValueError, match="reduction"):
        hd95(f, f, reduction="mean")
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(e, f)
