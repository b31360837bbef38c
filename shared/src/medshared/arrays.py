"""Array conversion shared by the metric modules."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a sequence, an array or a CPU/GPU torch tensor (bf16 tensors as float32)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)
