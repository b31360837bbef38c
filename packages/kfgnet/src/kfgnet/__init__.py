"""kfgnet: KFGNet (MICCAI 2022): key-frame guided thyroid nodule recognition from ultrasound video."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
