"""Images and masks in memory: reading an 8-bit image as RGB, resizing, and :class:`SegArrays` loaded from an index.

Images are read as 8-bit RGB (grey images are replicated to three channels); other bit depths and translucent alpha
are errors. Arrays are resized to ``size x size`` (image bilinear, mask nearest); the original size is kept for
boundary metrics.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from medshared.arrays import rgb8
from tqdm.auto import tqdm

from alges.config import IGNORE_INDEX
from alges.index import DatasetIndex

__all__ = ["read_image", "resize_image", "SegArrays", "load_arrays"]

log = logging.getLogger("alges")


def read_image(path: str | Path) -> np.ndarray:
    """Read an 8-bit image as RGB uint8 [H, W, 3] (grey replicated to 3 channels; opaque alpha dropped).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, cannot be decoded, is not
    8-bit or has a translucent alpha channel.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path} (corrupt or not an image); fix or remove the file")
    return rgb8(img, path)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """RGB [H, W, 3] -> CHW uint8 [3, size, size] (bilinear)."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)


@dataclass
class SegArrays:
    """In-memory images uint8 [M, 3, S, S], masks uint8 [M, S, S] (255 = ignore; None for unlabelled images), their
    ids and original sizes ``orig_hw`` int [M, 2] (for boundary distances in original pixels)."""

    ids: list[str]
    images: np.ndarray
    masks: np.ndarray | None
    orig_hw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: Sequence[int] | np.ndarray) -> SegArrays:
        k = np.asarray(keep, dtype=np.int64)
        return SegArrays(
            [self.ids[i] for i in k],
            self.images[k],
            None if self.masks is None else self.masks[k],
            None if self.orig_hw is None else self.orig_hw[k],
        )

    def empty_mask_ids(self) -> list[str]:
        """Ids whose mask has no foreground (every labelled pixel is class 0)."""
        if self.masks is None:
            return []
        fg = ((self.masks != 0) & (self.masks != IGNORE_INDEX)).reshape(len(self), -1).any(1)
        return [i for i, f in zip(self.ids, fg) if not f]


def load_arrays(
    index: DatasetIndex,
    ids: Sequence[str] | None = None,
    size: int = 224,
    *,
    with_masks: bool = True,
    empty_masks: str = "keep",
    progress: bool = True,
    workers: int = 0,
) -> SegArrays:
    """Load and resize (image bilinear, mask nearest) the given ids (default: every labelled image).

    ``empty_masks``: "keep" (an empty mask is a valid all-background label, the default), "drop" (images whose mask
    has no foreground are left out, and listed in a warning) or "error". Image/mask size mismatch raises.
    ``workers`` > 0: decode in that many threads (``--workers``); the result is the same.
    """
    if empty_masks not in ("keep", "drop", "error"):
        raise ValueError(f"empty_masks must be keep|drop|error, got {empty_masks!r}")
    ids = list(index.labeled_ids if ids is None and with_masks else index.ids if ids is None else ids)
    index.check_ids(ids, need_masks=with_masks)
    images = np.empty((len(ids), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(ids), size, size), dtype=np.uint8) if with_masks else None
    orig = np.empty((len(ids), 2), dtype=np.int64)
    errors: list[str] = []

    def load_one(j: int) -> None:
        i = ids[j]
        try:
            img = read_image(index.image_path(i))
            orig[j] = img.shape[:2]
            images[j] = resize_image(img, size)
            if masks is not None:
                m = index.read_mask(i)
                if m.shape != img.shape[:2]:
                    raise ValueError(
                        f"image {index.image_path(i)} is {img.shape[1]}x{img.shape[0]} but its mask "
                        f"{index.mask_path(i)} is {m.shape[1]}x{m.shape[0]}; they must match"
                    )
                masks[j] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
        except (OSError, ValueError) as e:  # collect them all: one error naming every bad file
            errors.append((j, str(e)))

    bar = tqdm(total=len(ids), desc="loading", disable=not progress or len(ids) < 50, leave=False)
    if workers > 0:  # decoding (OpenCV / PIL) releases the GIL: threads, no copies between processes
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            for _ in ex.map(load_one, range(len(ids))):
                bar.update()
    else:
        for j in range(len(ids)):
            load_one(j)
            bar.update()
    bar.close()
    errors = [e for _, e in sorted(errors)]  # file order, whatever thread finished first
    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError(f"{len(errors)} images or masks of {index.root} cannot be used:\n  " + "\n  ".join(errors))
    arr = SegArrays(ids, images, masks, orig)
    empty = arr.empty_mask_ids() if empty_masks != "keep" else []
    if empty and empty_masks == "error":
        raise ValueError(
            f"{len(empty)} masks of {index.root} have no foreground: {empty[:10]}; fix them or use empty_masks: drop"
        )
    if empty:
        log.warning(
            "alges: leaving out %d images of %s whose masks are empty (empty_masks=drop): %s",
            len(empty),
            index.root,
            ", ".join(empty),
        )
        drop = set(empty)
        arr = arr.subset([j for j, i in enumerate(ids) if i not in drop])
    return arr
