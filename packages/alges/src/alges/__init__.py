"""alges: ALGES (MLHC 2022): active learning with gradient embeddings for segmentation.

The Python API for any segmentation model (smp ``Unet`` / ``FPN`` / ``DeepLabV3Plus``, your own)::

    import alges
    emb = alges.embed(model, images_or_loader, strategy="alges-img")   # per-image values [M, D] (or [M] scores)
    picks, scores = alges.select("alges-img", emb, budget=10)          # positions of the images to label next

Strategies are registered classes (``alges.strategies``); ``alges.strategies.strategy_names()`` lists them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "embed", "select"]


def __getattr__(name: str) -> Any:  # lazy: ``import alges`` (the CLI) does not import torch
    if name == "embed":
        from alges.inference import embed

        return embed
    if name == "select":
        from alges.strategies import select

        return select
    raise AttributeError(f"module 'alges' has no attribute {name!r}")
