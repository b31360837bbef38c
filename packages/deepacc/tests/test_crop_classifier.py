"""The crop-classifier reference: crops keep their absolute size, the split must be by cell, a consistent report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deepacc.compose import index_cells
from deepacc.crop_classifier import crop_tensor, train_crop_classifier


def test_crop_tensor_keeps_absolute_length() -> None:
    long = np.zeros((80, 20), np.uint8)
    long[5:75, 5:15] = 200
    short = np.zeros((30, 20), np.uint8)
    short[5:25, 5:15] = 200
    a, b = crop_tensor(long, 64), crop_tensor(short, 64)
    assert a.shape == b.shape == (1, 64, 64)
    rows = lambda t: int((t[0] > 0.1).any(1).sum())  # noqa: E731
    assert abs(rows(a) - 35) <= 1 and abs(rows(b) - 10) <= 1  # both at 0.5x: the long one stays 3.5x longer
    huge = np.full((300, 40), 200, np.uint8)
    assert rows(crop_tensor(huge, 64)) == 64  # only crops larger than the canvas are shrunk further


def test_split_must_be_by_cell_and_the_report_is_consistent(fake_cells) -> None:  # noqa: ANN001
    cells = index_cells(fake_cells(4))
    crops = [c for v in cells.values() for c in v]
    with pytest.raises(ValueError, match="split by cell"):
        train_crop_classifier(crops[:60], crops[40:], epochs=1)
    torch.manual_seed(0)
    train = cells["1"]
    res = train_crop_classifier(train, cells["4"], epochs=1, size=32, batch_size=32, seed=0)
    assert res["n_train"] == 46 and res["n_test"] == 46
    assert set(res["per_class"]) == {str(c) for c in range(1, 23)} | {"X"}  # cell 4 is 46,XX
    counts = dict.fromkeys(res["per_class"], 2)  # two crops of every class in a 46,XX cell
    weighted = sum(res["per_class"][k] * n for k, n in counts.items()) / sum(counts.values())
    assert res["accuracy"] == pytest.approx(weighted)
