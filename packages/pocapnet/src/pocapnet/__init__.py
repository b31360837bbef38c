"""pocapnet: PoCaPNet (Interspeech 2023): surgical phase recognition from speech and X-ray with MS-TCN."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
