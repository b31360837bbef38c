"""Pool sources: where inference reads its images from, one batch at a time.

* :class:`ArraySource` wraps images already in memory (uint8 [M, 3, S, S] for ``AlgesUnet``, or float tensors
  exactly as a custom model expects them); batches are slices, never a copy of the whole array.
* :class:`FileSource` streams image files from disk, decoding and resizing only the batch at hand. An unreadable
  file is recorded in ``failures`` and the pass continues, so one error message can name every unreadable file (or
  ``--skip-unreadable`` can leave them out and list them).
* :class:`IterableSource` takes any iterable of batches (a ``DataLoader``); it can be read once, in order.

Every source yields ``(positions, batch)`` with the positions (into the source) of the images that were read.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from alges.arrays import read_image, resize_image

__all__ = ["ArraySource", "FileSource", "IterableSource", "as_source"]


class ArraySource:
    """Images in memory: a NumPy array or tensor [M, C, H, W]."""

    def __init__(self, images: np.ndarray | torch.Tensor, ids: Sequence[str] | None = None) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be [M, C, H, W], got shape {tuple(images.shape)}")
        self.images = images
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        self.failures: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, positions: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        positions = np.asarray(positions, dtype=np.int64)
        for s in range(0, len(positions), batch_size):
            pos = positions[s : s + batch_size]
            contiguous = len(pos) and pos[-1] - pos[0] == len(pos) - 1 and (np.diff(pos) == 1).all()
            yield pos, (self.images[int(pos[0]) : int(pos[-1]) + 1] if contiguous else self.images[pos])


class FileSource:
    """Image files read and resized (bilinear, to ``size`` x ``size``) batch by batch; uint8 [B, 3, S, S]."""

    def __init__(
        self, paths: Sequence[str | Path], size: int, ids: Sequence[str] | None = None, workers: int = 0
    ) -> None:
        self.workers = int(workers)  # > 0: decode a batch in that many threads (decoding releases the GIL)
        self.paths = [Path(p) for p in paths]
        self.size = int(size)
        self.ids = list(ids) if ids is not None else [p.stem for p in self.paths]
        self.failures: list[tuple[int, str, str]] = []  # (position, path, reason)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, positions: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        positions = np.asarray(positions, dtype=np.int64)

        def read(p: int) -> np.ndarray | Exception:
            try:
                return resize_image(read_image(self.paths[p]), self.size)
            except (OSError, ValueError) as e:
                return e

        ex = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers) if self.workers > 0 else None
        try:
            for s in range(0, len(positions), batch_size):
                ok: list[int] = []
                part = [int(p) for p in positions[s : s + batch_size]]
                buf = np.empty((len(part), 3, self.size, self.size), dtype=np.uint8)
                for p, img in zip(part, ex.map(read, part) if ex is not None else map(read, part)):
                    if isinstance(img, Exception):
                        self.failures.append((p, str(self.paths[p]), str(img)))
                        continue
                    buf[len(ok)] = img
                    ok.append(p)
                if ok:
                    yield np.asarray(ok, dtype=np.int64), buf[: len(ok)]
        finally:
            if ex is not None:
                ex.shutdown()

    def failure_report(self) -> str:
        return "\n".join(f"  {path}: {why}" for _, path, why in self.failures)


class IterableSource:
    """Any iterable of batches (tensor [B, C, H, W], or a tuple/list/dict whose first item / "image" is one)."""

    def __init__(self, batches: Iterable) -> None:
        self._it = batches
        self.ids: list[str] = []
        self.failures: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        """The number of images when known (a ``DataLoader``'s dataset, a list of batches), else -1."""
        ds = getattr(self._it, "dataset", None)
        if ds is not None and hasattr(ds, "__len__"):
            return len(ds)
        if isinstance(self._it, list | tuple):
            return sum(len(self._first(b)) for b in self._it)
        return -1

    @staticmethod
    def _first(b):
        return b["image"] if isinstance(b, dict) else b[0] if isinstance(b, tuple | list) else b

    def batches(self, positions: np.ndarray | None, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        n = 0
        for b in self._it:
            x = self._first(b)
            pos = np.arange(n, n + len(x), dtype=np.int64)
            n += len(x)
            yield pos, x


def as_source(images) -> ArraySource | FileSource | IterableSource:
    """Array/tensor -> :class:`ArraySource`; a source passes through; other iterables -> :class:`IterableSource`."""
    if isinstance(images, ArraySource | FileSource | IterableSource):
        return images
    if isinstance(images, np.ndarray | torch.Tensor):
        return ArraySource(images)
    return IterableSource(images)
