"""deepacc: DeepACC: chromosome detection and 24-class classification on metaphase images (torchvision Faster R-CNN)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
