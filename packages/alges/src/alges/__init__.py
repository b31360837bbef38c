"""alges: ALGES (MLHC 2022): active learning with gradient embeddings for surgical segmentation."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
