"""lungcvt: Convolution-Vision Transformer for ICBHI 2017 lung-sound classification."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
