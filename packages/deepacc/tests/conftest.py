"""Fixtures shared by deepacc's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def make_cells(root: Path, n_cells: int = 3) -> Path:
    """Fake BioImLab layout ``<cell>/<cell>_<class><copy>.bmp``: cell k's crops are bars of brightness 100 + 30 k,
    shorter for higher classes; odd cells are 46,XY, even cells 46,XX."""
    for k in range(1, n_cells + 1):
        d = root / str(k)
        d.mkdir(parents=True)
        classes = [c for c in range(1, 23) for _ in range(2)] + [23, 24 if k % 2 else 23]
        for j, c in enumerate(classes):
            a = np.zeros((40 - c + 8, 14), np.uint8)
            a[4:-4, 4:-4] = 100 + 30 * k
            Image.fromarray(a).save(d / f"{k}_{c}{'a' if j % 2 == 0 else 'b'}.bmp")
    return root


@pytest.fixture()
def fake_cells(tmp_path: Path) -> Callable[[int], Path]:
    """``fake_cells(n)`` writes ``n`` fake karyotyped cells under ``tmp_path/cells`` and returns that folder."""
    return lambda n=3: make_cells(tmp_path / "cells", n)


RawRois = list[tuple[list[float], dict[int, float]]]


def make_raw(rois: RawRois, n_classes: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head outputs ``(boxes (R, K, 4), scores (R, K))`` for RoIs given as ``(box, {class: prob})``; every class
    gets the same box, and the rest of the probability mass goes to background (class 0)."""
    boxes = torch.zeros(len(rois), n_classes, 4)
    scores = torch.zeros(len(rois), n_classes)
    for i, (b, probs) in enumerate(rois):
        boxes[i] = torch.tensor(b)
        for c, p in probs.items():
            scores[i, c] = p
        scores[i, 0] = 1.0 - sum(probs.values())
    return boxes, scores


@pytest.fixture()
def raw_rois() -> Callable[[RawRois], tuple[torch.Tensor, torch.Tensor]]:
    """``raw_rois(rois)``: see :func:`make_raw` (K = 25 classes incl. background)."""
    return make_raw
