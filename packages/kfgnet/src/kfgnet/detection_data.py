"""Detector training data: annotated images from a folder of images + masks (DDTI layout) or from video manifests.

Only annotated frames are ever decoded, and none is kept in memory: a :class:`DetectionItem` names its image (a
file, or a frame of a video that :func:`extract_annotated_frames` wrote to a frame cache once) and its boxes, and
:class:`DetectionDataset` reads one image per ``__getitem__``. Peak memory is therefore flat in the number of videos
(``bench/detector_memory.py``).

Image folder layout (DDTI, ``../shared/data/ddti``)::

    DIR/image/100_1(2).png       # grey or RGB images (png/jpg/bmp/tif)
    DIR/mask/100_1(2).gif        # same stem: a binary mask (0 background, one non-zero value = nodule)
    DIR/boxes.csv                # alternative to masks: image,x1,y1,x2,y2 (several rows per image allowed)

The case (patient) of an image is the part of its name before the first ``_`` (``100_1(2)`` is case 100, image 1,
nodule 2); splits keep cases whole. A mask is read as stored: palette masks through their palette, and anything
but exactly two values (0 and one foreground value) is an error naming the file. An empty mask (no foreground
pixel) is an image without a nodule; what happens to it is the explicit ``empty_masks`` policy (``negative``: a
background-only image, the stored meaning; ``skip``: left out; ``error``), always logged.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.arrays import rgb8
from torch.utils.data import Dataset

from kfgnet.data import IMAGE_EXTS, DataError, VideoRecord
from kfgnet.video_io import frame_count_and_size, iter_frames

__all__ = [
    "DetectionItem",
    "DetectionDataset",
    "read_image_folder",
    "extract_annotated_frames",
    "case_of",
    "split_by_case",
    "median_box",
    "detection_targets",
    "load_detection_items",
    "make_detection_split",
    "select_split_part",
    "read_image_rgb",
]

log = logging.getLogger("kfgnet")

EMPTY_MASK_POLICIES = ("negative", "skip", "error")
MASK_EXTS = (".gif", ".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class DetectionItem:
    """One annotated image: ``path`` (an image file), ``boxes`` ``(N, 4)`` xyxy pixels (N = 0: background only),
    ``case`` (the patient / split group), ``source`` (the video or image it came from, for messages)."""

    path: Path
    boxes: np.ndarray
    case: str
    source: str = ""
    notes: list[str] = field(default_factory=list)


def case_of(stem: str, pattern: str = r"^([^_]+)_") -> str:
    """Case id of an image name: the first group of ``pattern`` (default: the text before the first ``_``), or the
    whole stem when the pattern does not match."""
    m = re.match(pattern, stem)
    return m.group(1) if m else stem


def _read_mask(path: Path) -> np.ndarray:
    """Binary mask as stored: ``(H, W)`` bool. Palette images go through their palette; RGB masks must be grey."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("RGB")
        a = np.asarray(im)
    if a.ndim == 3:
        if a.shape[2] == 4:
            a = a[..., :3]
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise DataError(
                f"mask {path} has coloured pixels; expected a grey or palette mask with 0 = background "
                f"and one foreground value (save it as a binary grey PNG)"
            )
        a = a[..., 0]
    values = np.unique(a)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0) or (len(values) == 1 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(
            f"mask {path} holds the values {shown}; expected 0 (background) and one foreground value. "
            f"Binarise it (e.g. mask > 127) or give boxes in DIR/boxes.csv instead"
        )
    return a > 0


def _mask_boxes(mask: np.ndarray, components: bool) -> np.ndarray:
    """``(N, 4)`` float32 boxes (x1, y1, x2 + 1, y2 + 1: pixel edges) of the foreground: one box around all of it,
    or one per 8-connected component."""
    if not mask.any():
        return np.zeros((0, 4), np.float32)
    if components:
        from scipy import ndimage

        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        sl = ndimage.find_objects(lab)
        return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in sl if s is not None], np.float32)
    ys, xs = np.nonzero(mask)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def _find_subdir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def read_image_folder(
    root: str | Path, empty_masks: str = "negative", mask_components: bool = False, case_pattern: str = r"^([^_]+)_"
) -> list[DetectionItem]:
    """Annotated images of a folder (``image/`` + ``mask/`` or ``boxes.csv``, see the module docstring).

    Args:
        root: the folder.
        empty_masks: ``negative`` | ``skip`` | ``error`` for masks without a foreground pixel (logged either way).
        mask_components: one box per 8-connected mask component instead of one box around the whole mask.
        case_pattern: regex whose first group is the case id of an image name.

    Returns:
        items sorted by image name. Raises :class:`DataError` naming the file for anything unreadable.
    """
    if empty_masks not in EMPTY_MASK_POLICIES:
        raise ValueError(f"empty_masks must be one of {EMPTY_MASK_POLICIES}, got {empty_masks!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} not found; expected DIR/image/*.png with DIR/mask/* or DIR/boxes.csv")
    img_dir = _find_subdir(root, ("image", "images", "img"))
    if img_dir is None:
        raise DataError(
            f"{root} has no image/ (or images/) folder; expected DIR/image/*.png with DIR/mask/* "
            f"(same names) or DIR/boxes.csv"
        )
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"{img_dir} holds no images ({', '.join(IMAGE_EXTS)})")
    boxes_csv = root / "boxes.csv"
    items: list[DetectionItem] = []
    if boxes_csv.is_file():
        table: dict[str, list[list[float]]] = {}
        with boxes_csv.open(newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                try:
                    b = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
                except (KeyError, TypeError, ValueError) as e:
                    raise DataError(f"{boxes_csv} row {i + 2}: expected columns image,x1,y1,x2,y2 ({e})") from e
                if not (b[2] > b[0] and b[3] > b[1]):
                    raise DataError(f"{boxes_csv} row {i + 2}: box {b} is empty or inverted (x1 < x2, y1 < y2)")
                table.setdefault(Path(row["image"]).stem, []).append(b)
        for p in images:
            if p.stem not in table:
                raise DataError(f"image {p.name} has no row in {boxes_csv}; add its box or remove the image")
            items.append(DetectionItem(p, np.asarray(table[p.stem], np.float32), case_of(p.stem, case_pattern), str(p)))
        return items
    mask_dir = _find_subdir(root, ("mask", "masks", "label", "labels"))
    if mask_dir is None:
        raise DataError(
            f"{root} has neither a mask/ folder nor boxes.csv; add masks with the images' names or a "
            f"boxes.csv (image,x1,y1,x2,y2)"
        )
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in MASK_EXTS}
    empty: list[str] = []
    for p in images:
        mp = masks.get(p.stem)
        if mp is None:
            raise DataError(f"image {p.name} has no mask in {mask_dir} (same name, any of {', '.join(MASK_EXTS)})")
        boxes = _mask_boxes(_read_mask(mp), mask_components)
        if len(boxes) == 0:
            empty.append(mp.name)
            if empty_masks == "error":
                raise DataError(
                    f"mask {mp} is empty (no nodule pixel); treat empty masks as background-only "
                    f"images with --empty-masks negative, or leave them out with --empty-masks skip"
                )
            if empty_masks == "skip":
                continue
        items.append(DetectionItem(p, boxes, case_of(p.stem, case_pattern), str(p)))
    if empty:
        what = "used as background-only images" if empty_masks == "negative" else "left out"
        log.warning(
            "%d empty mask(s) in %s %s (--empty-masks %s): %s",
            len(empty),
            mask_dir,
            what,
            empty_masks,
            ", ".join(empty),
        )
    return items


def extract_annotated_frames(
    records: list[VideoRecord],
    cache_dir: str | Path,
    max_per_video: int = 16,
    negatives_per_video: int = 1,
    seed: int = 0,
    progress: bool = False,
    blackout: tuple[int, int, int, int] | None = None,
) -> list[DetectionItem]:
    """Write the annotated frames of each video (up to ``max_per_video``, spread over its boxes, plus
    ``negatives_per_video`` frames more than 3 frames from any box) as PNG files under ``cache_dir``, decoding each
    video once and keeping no frame after it is written. Frames already in the cache are not decoded again.

    Boxes outside the frame (beyond 1 px) raise :class:`DataError`; so do boxes on frames beyond the video's end.
    ``blackout`` (top, bottom, left, right pixels) is applied to the written frames (see
    :func:`kfgnet.video_io.blackout_frames`).
    """
    import cv2

    cache_dir = Path(cache_dir)
    rng = np.random.default_rng(seed)
    items: list[DetectionItem] = []
    it: Any = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="annotated frames", unit="video", leave=False)
    for r in it:
        if not r.boxes:
            continue
        keys = sorted(r.boxes)
        sel = np.linspace(0, len(keys) - 1, min(len(keys), max_per_video)).round().astype(int)
        pos = sorted({keys[i] for i in sel})
        tag = hashlib.sha1(f"{Path(r.path).resolve()}|{blackout}".encode()).hexdigest()[:10]
        sub = cache_dir / f"{r.name}-{tag}"
        n_frames, size = frame_count_and_size(r.path)
        w, h = size
        for k in keys:
            if k >= n_frames:
                raise DataError(f"box on frame {k} of {r.path}, which has only {n_frames} frames")
            x1, y1, x2, y2 = r.boxes[k]
            if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
                raise DataError(
                    f"box {r.boxes[k]} of frame {k} in {r.path} lies outside the {w}x{h} frame; fix the "
                    f"annotation (boxes are x1, y1, x2, y2 pixels)"
                )
        free = [i for i in range(n_frames) if all(abs(i - k) > 3 for k in keys)]
        neg = sorted(int(i) for i in rng.permutation(free)[:negatives_per_video])
        wanted = {k: np.asarray([r.boxes[k]], np.float32) for k in pos}
        wanted.update({k: np.zeros((0, 4), np.float32) for k in neg})
        paths = {k: sub / f"{k:06d}.png" for k in wanted}
        missing = {k for k, p in paths.items() if not p.is_file()}
        if missing:
            sub.mkdir(parents=True, exist_ok=True)
            from medshared.runtime import atomic_path

            from kfgnet.video_io import blackout_frames

            for k, frame in iter_frames(r.path, missing):
                if blackout is not None and any(blackout):
                    frame = blackout_frames(frame[None], blackout)[0]
                with atomic_path(paths[k]) as tmp:
                    ok, buf = cv2.imencode(".png", frame)
                    if not ok:
                        raise DataError(f"cannot encode frame {k} of {r.path}")
                    tmp.write_bytes(buf.tobytes())
        items.extend(DetectionItem(paths[k], b, r.patient_id, f"{r.path} frame {k}") for k, b in wanted.items())
    if not items:
        raise DataError("no annotated boxes in the manifest: the detector needs 'boxes' on some frames")
    return items


def read_image_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; grey images are repeated over the three channels (the detector's input); an opaque
    alpha channel is dropped, a translucent one is an error naming the file."""
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise DataError(f"cannot read image {path} (corrupt or not an image)")
    return rgb8(im, path, error=DataError)


class DetectionDataset(Dataset):
    """Images + targets for torchvision's detectors, read one at a time (no image is held by the dataset).

    Augmentation (``hflip`` probability) draws from torch's RNG, which DataLoader seeds per worker and per epoch.

    Items: ``(image (3, H, W) float 0..1, {"boxes": (N, 4) float32, "labels": (N,) int64})``.
    """

    def __init__(self, items: list[DetectionItem], hflip: float = 0.0):
        self.items, self.hflip = items, hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        it = self.items[i]
        img = read_image_rgb(it.path)
        h, w = img.shape[:2]
        boxes = it.boxes.copy()
        if len(boxes) and (boxes[:, :2].min() < -1 or boxes[:, 2].max() > w + 1 or boxes[:, 3].max() > h + 1):
            raise DataError(f"a box of {it.source} lies outside the {w}x{h} image: {boxes.tolist()}")
        x = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)  # (H, W, 3) -> (3, H, W)
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            x = x.flip(2)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        return x, detection_targets(boxes)


def detection_targets(boxes: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision target dict of ``(N, 4)`` boxes, one foreground class (label 1)."""
    b = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)
    return {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)}


def split_by_case(
    items: list[DetectionItem], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[DetectionItem]]:
    """Case-disjoint train / val / test split (``medshared.splits.ratio_split`` grouped by ``case``)."""
    from medshared.splits import ratio_split

    return ratio_split(items, fractions, seed=seed, groups=[it.case for it in items])


def median_box(items: list[DetectionItem]) -> np.ndarray:
    """Per-coordinate median (x1, y1, x2, y2) of all boxes of ``items``: the fixed-box baseline's prediction."""
    b = np.concatenate([it.boxes for it in items if len(it.boxes)], 0)
    if len(b) == 0:
        raise DataError("no boxes to take a median box from")
    return np.median(b, axis=0).astype(np.float32)


def load_detection_items(
    data: str | Path | None = None,
    records: list[VideoRecord] | None = None,
    cache_dir: str | Path | None = None,
    images_per_video: int = 16,
    empty_masks: str = "negative",
    mask_components: bool = False,
    seed: int = 0,
    progress: bool = False,
    blackout: tuple[int, int, int, int] | None = None,
) -> list[DetectionItem]:
    """Annotated images from an image folder (``data``) or from videos (``records``, frames cached in
    ``cache_dir``)."""
    if data is not None:
        return read_image_folder(data, empty_masks=empty_masks, mask_components=mask_components)
    if records is None or cache_dir is None:
        raise ValueError("give an image folder, or video records and a frame cache folder")
    return extract_annotated_frames(
        records, cache_dir, max_per_video=images_per_video, seed=seed, progress=progress, blackout=blackout
    )


def make_detection_split(
    items: list[DetectionItem], val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[DetectionItem]], dict[str, Any]]:
    """Case-disjoint train / val / test parts and a JSON record of them (cases per part, fractions, seed)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= --val-fraction, --test-fraction and their sum < 1, got {val_fraction}, {test_fraction}"
        )
    parts = split_by_case(items, (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed)
    record = {
        "seed": seed,
        "fractions": {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction},
        "cases": {k: sorted({it.case for it in v}) for k, v in parts.items()},
        "n_images": {k: len(v) for k, v in parts.items()},
    }
    return parts, record


def select_split_part(items: list[DetectionItem], split_file: str | Path, part: str) -> list[DetectionItem]:
    """The items whose case is in ``part`` of a ``split.json`` written by ``train-detector``."""
    import json

    p = Path(split_file)
    if not p.is_file():
        raise DataError(f"split file {p} not found; it is written by train-detector as RUN/split.json")
    cases = json.loads(p.read_text()).get("cases", {})
    if part not in cases:
        raise DataError(f"{p} has no part {part!r}; parts: {sorted(cases)}")
    keep = set(map(str, cases[part]))
    out = [it for it in items if it.case in keep]
    if not out:
        raise DataError(
            f"no image of the data belongs to the {len(keep)} {part} cases of {p}; is it the same data "
            f"folder train-detector used?"
        )
    return out
