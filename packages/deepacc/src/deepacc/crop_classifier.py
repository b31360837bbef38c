"""Reference for the 24-class task: a CNN classifying single chromosome crops (no detection).

How much of the 24-class problem does the banding of these crops allow, with the same cell split and no
localisation error? The detector's class accuracy on matched boxes is read against this number. Crops are placed
upright in a canvas at the detector's scale (0.5x, anti-aliased like the composed spreads; aspect and absolute length
kept, zero padding like the Q-banded crops' own background), and trained from random init with random flips.

``arch="small_cnn"`` (default): four stride-1 3x3 conv blocks with BatchNorm (16-32-64-128 channels, 2x2 max-pool
between blocks, global average pool, linear), so a chromosome 7.5 px wide keeps its width through the first block.
``arch="resnet18"``: torchvision's stock ResNet-18, whose stride-2 stem and max-pool cut resolution 4x before the
first block (a 7.5 px chromosome becomes < 2 px): the earlier, weaker reference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepacc.compose import CellCrop, read_crop

__all__ = ["CropDataset", "SmallCNN", "crop_tensor", "train_crop_classifier"]


def crop_tensor(crop: np.ndarray, size: int | tuple[int, int], scale: float = 0.5) -> torch.Tensor:
    """``uint8 [h, w]`` bright-on-dark crop -> ``float [1, H, W]`` in [0, 1], zero padded (``size``: ``H = W`` or
    ``(H, W)``).

    The crop is resized by ``scale`` (the detector's view of the crops: ``CELL_SPREAD_CPU`` uses 0.5), so absolute
    length, a class cue, is kept; only crops too large for the canvas are shrunk further to fit.
    """
    import cv2

    hh, ww = (size, size) if isinstance(size, int) else size
    h, w = crop.shape
    s = min(scale, hh / h, ww / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((hh, ww), np.uint8)
    y0, x0 = (hh - nh) // 2, (ww - nw) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = small
    return torch.from_numpy(canvas).float().div(255.0)[None]


class CropDataset(Dataset):
    """Crops as ``([1, size, size], class 0..23)``; random horizontal / vertical flips when ``train``."""

    def __init__(self, crops: Sequence[CellCrop], size: int | tuple[int, int] = 64, train: bool = False) -> None:
        self.x = torch.stack([crop_tensor(read_crop(c.path), size) for c in crops])  # [N, 1, H, W]
        self.y = torch.tensor([c.cls - 1 for c in crops], dtype=torch.long)  # [N]
        self.train = train

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.train:
            if float(torch.rand(())) < 0.5:
                x = x.flip(-1)
            if float(torch.rand(())) < 0.5:
                x = x.flip(-2)
        return x, self.y[i]


def _resnet18(num_classes: int = 24) -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


class SmallCNN(nn.Module):
    """Four stride-1 conv blocks (conv3x3-BN-ReLU x2, 2x2 max-pool after the first three), global average pool,
    linear: ``[B, 1, H, W]`` -> ``[B, num_classes]`` logits. Full resolution in the first block."""

    def __init__(self, num_classes: int = 24, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            for j in range(2):
                layers += [nn.Conv2d(cin if j == 0 else w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]  # fmt: skip
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def train_crop_classifier(
    train_crops: Sequence[CellCrop],
    test_crops: Sequence[CellCrop],
    epochs: int = 12,
    size: int | tuple[int, int] = 64,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
    arch: str = "small_cnn",
) -> dict[str, Any]:
    """Train ``arch`` (``small_cnn`` | ``resnet18``) on ``train_crops`` and report top-1 accuracy on ``test_crops``
    (cells must not overlap). The small CNN is the reference; ``size`` ``(80, 40)`` fits chromosome 1 at 0.5x.

    SGD with momentum 0.9, weight decay 5e-4, cosine lr decay. Returns accuracy, per-class accuracy, the
    within-Denver-group share of the errors and timing.
    """
    from deepacc.config import CLASS_NAMES, DENVER_GROUPS

    shared = {c.cell for c in train_crops} & {c.cell for c in test_crops}
    if shared:
        raise ValueError(f"cells {sorted(shared)[:5]} are in both the training and the test crops; split by cell")
    torch.manual_seed(seed)
    tr, te = CropDataset(train_crops, size, train=True), CropDataset(test_crops, size)
    if arch not in ("small_cnn", "resnet18"):
        raise ValueError(f"arch must be small_cnn|resnet18, got {arch!r}")
    model = (SmallCNN() if arch == "small_cnn" else _resnet18()).to(device)
    channels = 1 if arch == "small_cnn" else 3
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(tr, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    t0 = time.time()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x.expand(-1, channels, -1, -1).to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(te.x[i : i + 256].expand(-1, channels, -1, -1).to(device)).argmax(1).cpu()
                          for i in range(0, len(te), 256)])  # fmt: skip
    y = te.y
    group = {c: g for g, members in DENVER_GROUPS.items() for c in members}
    wrong = (pred != y).nonzero().flatten().tolist()
    same_group = sum(group[int(y[i]) + 1] == group[int(pred[i]) + 1] for i in wrong)
    per_class = {CLASS_NAMES[c + 1]: float((pred[y == c] == c).float().mean()) for c in range(24) if (y == c).any()}
    return {"accuracy": float((pred == y).float().mean()), "n_train": len(tr), "n_test": len(te),
            "errors_within_group": same_group / max(1, len(wrong)), "per_class": per_class,
            "train_seconds": time.time() - t0, "epochs": epochs, "size": size, "seed": seed, "arch": arch}  # fmt: skip
