"""medshared.arrays: decoded images to 8-bit RGB, never converted silently."""

from __future__ import annotations

import numpy as np
import pytest
from medshared.arrays import rgb8, to_numpy


class MyError(ValueError):
    pass


def test_rgb8_grey_bgr_and_opaque_alpha():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert rgb8(grey, "g.png").tolist() == np.repeat(grey[..., None], 3, 2).tolist()
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 10, 200  # blue 10, red 200
    assert rgb8(bgr, "c.png")[0, 0].tolist() == [200, 0, 10]
    assert rgb8(bgr, "c.png", bgr=False)[0, 0].tolist() == [10, 0, 200]
    bgra = np.dstack([bgr, np.full((2, 3), 255, np.uint8)])
    assert rgb8(bgra, "a.png")[0, 0].tolist() == [200, 0, 10]


@pytest.mark.parametrize(
    "img, message",
    [
        (np.zeros((2, 3), np.uint16), "x.png is uint16, not 8-bit"),
        (np.dstack([np.zeros((2, 3, 3), np.uint8), np.full((2, 3), 254, np.uint8)]), "translucent alpha"),
        (np.zeros((2, 3, 2), np.uint8), r"shape \(2, 3, 2\); expected grey or RGB"),
    ],
)
def test_rgb8_refuses_what_it_would_change(img, message):
    with pytest.raises(MyError, match=message):
        rgb8(img, "x.png", error=MyError)


def test_to_numpy_from_list():
    assert to_numpy([1, 2]).tolist() == [1, 2]
