"""Array conversions shared by the packages: metric inputs to NumPy, decoded images to 8-bit RGB."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rgb8", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a sequence, an array or a CPU/GPU torch tensor (bf16 tensors as float32)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def rgb8(img: np.ndarray, path: Any, *, bgr: bool = True, error: type[Exception] = ValueError) -> np.ndarray:
    """A decoded 8-bit image as ``uint8 (H, W, 3)`` RGB, read as it displays, never converted silently.

    Grey ``(H, W)`` is repeated over three channels; an alpha channel is dropped only when fully opaque. Anything else
    (not 8-bit, a translucent alpha, 2 or 5+ channels) raises ``error`` naming ``path`` and the fix.

    Args:
        img: the decoder's array (``cv2.imread(..., IMREAD_UNCHANGED)`` gives BGR / BGRA: ``bgr=True``).
        path: the file, for the message.
    """
    if img.dtype != np.uint8:
        raise error(f"image {path} is {img.dtype}, not 8-bit; convert it to 8-bit (the model reads 0-255 pixels)")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        if (img[..., 3] != 255).any():
            raise error(f"image {path} has a translucent alpha channel; save it without alpha (RGB or grey)")
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise error(f"image {path} has shape {img.shape}; expected grey or RGB")
    return np.ascontiguousarray(img[..., ::-1] if bgr else img)
