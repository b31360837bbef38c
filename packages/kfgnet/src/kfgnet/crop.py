"""The nodule crop of stage 2 [P §3 "resize each nodule to 112 x 112"]: one square around the key frame's nodule box,
with a margin, cut at the same place from every frame of the clip and resized to ``size x size``.

A square keeps the nodule's height/width ratio (the taller-than-wide sign of malignancy); parts of the square outside
the frame are padded with 0 (the black background of B-mode). ``clip.crop: frame`` resizes the whole frame instead
(the official loader [V]; an ablation, and the fallback when no nodule box exists).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["square_around_box", "crop_square", "resize_frames"]


def square_around_box(box: np.ndarray | list[float], margin: float, min_side: int = 8) -> tuple[int, int, int]:
    """Integer square ``(x0, y0, side)`` centred on ``box`` (x1, y1, x2, y2 pixels).

    ``side = ceil(max(w, h) * (1 + 2 * margin))``: ``margin`` of the box's longer side is added on each side
    (0.25: the nodule fills 2/3 of the crop), at least ``min_side`` pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"crop box {list(box)} is empty or inverted (x1 < x2, y1 < y2)")
    side = max(min_side, int(math.ceil(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin))))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def crop_square(frames: np.ndarray, square: tuple[int, int, int]) -> np.ndarray:
    """Cut ``square = (x0, y0, side)`` from every frame, zero-padded where it leaves the frame.

    Args:
        frames: ``(T, H, W, C)`` or ``(T, H, W)``.

    Returns:
        ``(T, side, side[, C])`` of the same dtype.
    """
    x0, y0, side = square
    t, h, w = frames.shape[:3]
    out = np.zeros((t, side, side, *frames.shape[3:]), dtype=frames.dtype)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frames[:, sy0:sy1, sx0:sx1]
    return out


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Each frame of ``(T, H, W, C)`` resized to ``size x size`` (cubic, as the official loader [V])."""
    import cv2

    if frames.shape[1] == size and frames.shape[2] == size:
        return frames.copy()
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])
