"""medshared.loader: DataLoader kwargs for a device, non_blocking copies."""

from __future__ import annotations

import collections

import pytest
import torch
from medshared.loader import loader_kwargs, to_device
from torch.utils.data import DataLoader, TensorDataset


def test_loader_kwargs_per_device():
    assert loader_kwargs(torch.device("cpu"), 0) == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_kwargs("cuda:1", 2) == {
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 2,
    }
    with pytest.raises(ValueError, match="workers must be 0 or more, got -1"):
        loader_kwargs("cpu", -1)


def test_loader_kwargs_are_accepted_by_dataloader():
    ds = TensorDataset(torch.arange(6.0).view(6, 1))
    for workers in (0, 1):
        dl = DataLoader(ds, batch_size=3, **loader_kwargs("cpu", workers))
        assert torch.cat([b[0] for b in dl]).flatten().tolist() == [0, 1, 2, 3, 4, 5]


def test_to_device_walks_containers():
    Pair = collections.namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "meta": ["id", 3], "pair": Pair(torch.zeros(1), (torch.ones(1),))}
    out = to_device(batch, "meta")
    assert out["x"].device.type == "meta" and out["meta"] == ["id", 3]
    assert isinstance(out["pair"], Pair) and out["pair"].a.is_meta and out["pair"].b[0].is_meta
