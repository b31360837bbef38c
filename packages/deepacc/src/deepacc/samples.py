"""The annotated-image record every loader returns (:class:`Sample`), the loaders' error type (:class:`DataError`)
and the empty-image policy applied before training or evaluation (:func:`validate_samples`).

Internal target format (torchvision): ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in 1..24
(X = 23, Y = 24).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataError", "Sample", "validate_samples"]


class DataError(ValueError):
    """A dataset file is malformed or inconsistent (message names the file and the fix)."""


@dataclass
class Sample:
    """One annotated image."""

    image_path: Path
    boxes: np.ndarray  # [N, 4] float32 xyxy pixels
    labels: np.ndarray  # [N] int64 in 1..24
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def validate_samples(samples: list[Sample], empty_images: str = "keep", purpose: str = "training") -> list[Sample]:
    """Apply the empty-image policy: ``keep`` images without annotations as negatives, or ``reject`` (DataError)."""
    if not samples:
        raise DataError(f"no images for {purpose}")
    empty = [s for s in samples if len(s.labels) == 0]
    if empty and empty_images == "reject":
        raise DataError(
            f"{len(empty)} image(s) without annotations for {purpose}, e.g. {empty[0].image_path}; remove them or set "
            "train.empty_images: keep (they are then used as negatives)"
        )
    if len(empty) == len(samples) and purpose == "training":
        raise DataError(f"none of the {len(samples)} {purpose} images has an annotation")
    return samples
