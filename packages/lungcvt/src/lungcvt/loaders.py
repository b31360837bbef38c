"""The training DataLoader of :func:`lungcvt.train.train`: where the feature maps are resized (device or workers),
the loader with its ``DistributedSampler``, and the class-stratified subset of ``train.subset_fraction``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lungcvt.config import LungCVTConfig
from lungcvt.dataset import CycleDataset, CycleSet, make_loader

__all__ = ["resize_where", "build_train_loader", "stratified_subset"]


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Sorted indices of a class-stratified random ``fraction`` of the items (at least one per present class)."""
    if fraction >= 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    keep: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = max(1, int(round(fraction * len(idx))))
        keep += rng.choice(idx, size=n, replace=False).tolist()
    return sorted(keep)


def resize_where(device: torch.device, num_workers: int) -> str:
    """Where training resizes the feature maps: ``"device"`` (batched, :func:`~lungcvt.images.batch_to_image`) on a
    GPU or without workers, ``"workers"`` (per item in the DataLoader workers) on a CPU with workers, where the
    resize costs the same either way and the workers run it in parallel with the step (``bench/train_step.py``)."""
    return "workers" if device.type != "cuda" and num_workers > 0 else "device"


def build_train_loader(
    cycles: CycleSet,
    cfg: LungCVTConfig,
    ctx: Any,
    generator: torch.Generator,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.utils.data.DataLoader, Any]:
    """The training DataLoader and its ``DistributedSampler`` (``None`` in one process)."""
    from medshared.distributed import make_sampler

    tc = cfg.train
    dev = torch.device(device)
    image_cfg = cfg.features if resize_where(dev, num_workers) == "workers" else None
    augment = None
    if tc.device_aug > 0 or tc.device_noise > 0:
        from lungcvt.device_aug import DeviceAugment

        augment = DeviceAugment(cfg.features, p=tc.device_aug, noise=tc.device_noise)
    ds = CycleDataset(cycles, time_roll=tc.time_roll, image_cfg=image_cfg, augment=augment)
    sampler = make_sampler(ds, ctx, shuffle=tc.shuffle, seed=tc.seed) if ctx is not None else None
    per_rank = len(ds) if sampler is None else len(sampler)
    dl = make_loader(
        ds,
        tc.batch_size,
        shuffle=tc.shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        drop_last=per_rank > tc.batch_size,
        pin_memory=dev.type == "cuda",
    )
    return dl, sampler
