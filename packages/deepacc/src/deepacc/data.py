"""Data for DeepACC: the torch ``Dataset`` with the paper's horizontal flip (Sec. 3.1) and ``collate``; and, re-exported
here as the package's data API, the loaders and their helpers from the modules that hold them:

- :mod:`deepacc.samples`: ``Sample``, ``DataError``, ``validate_samples``;
- :mod:`deepacc.labels`: ``normalize_label``, ``load_label_map``, ``INVALID_LABELS``;
- :mod:`deepacc.images`: ``read_image``, ``scan_images``, ``IMAGE_EXTS``;
- :mod:`deepacc.annotations`: ``load_coco``, ``load_voc``, ``load_labelme``, ``load_dataset``, ``LoadReport``,
  ``ON_INVALID``.

Internal target format (torchvision): ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in 1..24
(X = 23, Y = 24).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from deepacc.annotations import ON_INVALID, LoadReport, load_coco, load_dataset, load_labelme, load_voc
from deepacc.images import IMAGE_EXTS, read_image, scan_images
from deepacc.labels import INVALID_LABELS, load_label_map, normalize_label
from deepacc.samples import DataError, Sample, validate_samples

__all__ = [
    "IMAGE_EXTS",
    "ON_INVALID",
    "DataError",
    "DetectionDataset",
    "INVALID_LABELS",
    "LoadReport",
    "Sample",
    "collate",
    "load_coco",
    "load_dataset",
    "load_label_map",
    "load_labelme",
    "load_voc",
    "normalize_label",
    "read_image",
    "scan_images",
    "validate_samples",
]


# ------------------------------------------------------------------------------------------------------- Dataset
class DetectionDataset(Dataset):
    """Torch dataset of :class:`Sample` s: returns ``(image [3,H,W] float in [0,1], target)``.

    In training mode images are flipped horizontally with probability ``hflip_prob`` (Sec. 3.1), drawn from torch's
    global RNG (never from a generator held by the dataset, which every DataLoader worker would copy).
    ``rescale_16bit``: see :func:`deepacc.images.read_image` (callers log the rescaled files, e.g. through
    :func:`deepacc.images.scan_images`).
    """

    def __init__(
        self, samples: list[Sample], train: bool = False, hflip_prob: float = 0.5, rescale_16bit: bool = False
    ) -> None:
        self.samples = samples
        self.train = train
        self.hflip_prob = hflip_prob
        self.rescale_16bit = rescale_16bit  # images deeper than 8 bits: divided by their max (read_image)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[idx]
        img = read_image(s.image_path, self.rescale_16bit)  # [H, W, 3] uint8
        h, w = img.shape[:2]
        if s.width is not None and (s.width, s.height) != (w, h):
            raise DataError(f"{s.image_path}: image is {w}x{h} but annotations say {s.width}x{s.height}")
        boxes = s.boxes.astype(np.float32).copy()
        # torch's global RNG: seeded per DataLoader worker and epoch, and restored on resume
        if self.train and self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            img = img[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0  # [H,W,3] -> [3,H,W]
        target = {
            "boxes": torch.from_numpy(boxes).reshape(-1, 4),
            "labels": torch.from_numpy(s.labels.astype(np.int64)),
            "image_id": torch.tensor(idx),
        }
        return x, target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Keep images and targets as lists (torchvision detection convention)."""
    return [b[0] for b in batch], [b[1] for b in batch]
