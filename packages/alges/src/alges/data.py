"""Data: the CholecSeg8k layout and a generic ``images/`` + ``masks/`` folder dataset.

CholecSeg8k (Hong et al. 2020; Kaggle ``newslab/cholecseg8k``)::

    root/video01/video01_00080/frame_80_endo.png                  # RGB frame (854x480)
    root/video01/video01_00080/frame_80_endo_watershed_mask.png   # ground truth: grey value per class (R=G=B)

Grey values map to 13 class ids (``alges.config.GREY_TO_ID``); the stray values 255 (1-px border) and 0
(unannotated) become the ignore index 255; any other value is an error naming the file and the values. An image id is
the frame's path relative to the root without ``.png`` (``video01/video01_00080/frame_80_endo``).

Folder dataset::

    root/images/<stem>.png|jpg    root/masks/<stem>.png|jpg    root/classes.json

with ``classes.json`` = ``{"classes": ["background", "gland"], "mask_values": [0, 255], "ignore_values": [],
"tolerance": 0}``: mask value ``mask_values[c]`` is class ``c``; ``tolerance`` > 0 maps values within that distance
of a listed value to it (for JPEG masks). Image ids are the stems.

Everything is resized to ``size x size`` (image bilinear, mask nearest) and held in memory as uint8 arrays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from alges.config import CLASS_NAMES, GREY_TO_ID, IGNORE_INDEX

__all__ = [
    "DEFAULT_VIDEO_SPLIT",
    "SegArrays",
    "DatasetIndex",
    "read_image",
    "read_cholec_mask",
    "scan_cholecseg8k",
    "cholec_split",
    "scan_folder",
    "open_dataset",
    "load_arrays",
    "read_id_list",
    "scan_images",
    "load_images",
    "video_of",
]

# Documented default video assignment (8 train / 4 val / 5 test, paper section 4). The official lists are unpublished,
# so this assignment is ours; override it with explicit lists.
DEFAULT_VIDEO_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("video01", "video09", "video12", "video17", "video18", "video20", "video24", "video25"),
    "val": ("video26", "video27", "video28", "video35"),
    "test": ("video37", "video43", "video48", "video52", "video55"),
}
_IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as uint8 [H, W, 3]; raise ``ValueError`` naming the file when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path} (corrupt or not an image); fix or remove the file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_grey(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path} (corrupt or not an image); fix or remove the file")
    if m.ndim == 3:
        m = m[..., 0]  # CholecSeg8k watershed masks are R=G=B; channel 0 is the grey value
    return m


def _lookup(
    values: np.ndarray, table: dict[int, int], ignore: Sequence[int], path: Path, tolerance: int = 0
) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int32)
    listed = [(v, c) for v, c in table.items()] + [(v, IGNORE_INDEX) for v in ignore]
    for u in range(256):  # each grey value -> the class of the nearest listed value within ``tolerance``
        dist, cls = min((abs(u - v), c) for v, c in listed)
        if dist <= tolerance:
            lut[u] = cls
    if values.dtype != np.uint8:
        if values.max(initial=0) > 255:
            raise ValueError(f"mask {path} has values above 255 ({int(values.max())}); expected an 8-bit mask")
        values = values.astype(np.uint8)
    out = lut[values]
    if (out < 0).any():
        bad = sorted(np.unique(values[out < 0]).tolist())
        raise ValueError(
            f"mask {path} has values {bad[:20]} outside the class map (known values: {sorted(table)}, ignored: "
            f"{sorted(ignore)}); fix the mask or the class map"
        )
    return out.astype(np.uint8)


def read_cholec_mask(path: str | Path) -> np.ndarray:
    """CholecSeg8k watershed mask -> class ids uint8 [H, W] (255 = ignore: stray 255 and 0 values)."""
    path = Path(path)
    return _lookup(_read_grey(path), GREY_TO_ID, (0, 255), path)


@dataclass(frozen=True)
class DatasetIndex:
    """Where the images of a dataset are. ``kind`` is "cholecseg8k" or "folder"."""

    root: Path
    kind: str
    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    mask_values: tuple[int, ...] = ()
    ignore_values: tuple[int, ...] = ()
    tolerance: int = 0

    def image_path(self, image_id: str) -> Path:
        if self.kind == "cholecseg8k":
            return self.root / f"{image_id}.png"
        return _find_with_ext(self.root / "images", image_id)

    def mask_path(self, image_id: str) -> Path:
        if self.kind == "cholecseg8k":
            return self.root / f"{image_id}_watershed_mask.png"
        return _find_with_ext(self.root / "masks", image_id)

    def read_mask(self, image_id: str) -> np.ndarray:
        if self.kind == "cholecseg8k":
            return read_cholec_mask(self.mask_path(image_id))
        path = self.mask_path(image_id)
        table = {v: c for c, v in enumerate(self.mask_values)}
        return _lookup(_read_grey(path), table, self.ignore_values, path, self.tolerance)

    def subset(self, ids: Sequence[str]) -> DatasetIndex:
        """The same dataset restricted to ``ids`` (unknown ids raise ``ValueError`` listing a few)."""
        known = set(self.ids)
        bad = [i for i in ids if i not in known]
        if bad:
            raise ValueError(f"{len(bad)} image ids not found in {self.root}: {bad[:5]}; check the list")
        return DatasetIndex(
            self.root, self.kind, tuple(ids), self.class_names, self.mask_values, self.ignore_values, self.tolerance
        )


def _find_with_ext(folder: Path, stem: str) -> Path:
    for ext in _IMG_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image named {stem}.* in {folder}")


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def scan_cholecseg8k(root: str | Path) -> DatasetIndex:
    """Index every ``frame_N_endo.png`` that has a watershed mask, in natural (video, clip, frame) order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    ids = []
    missing = []
    for p in root.glob("video*/video*_*/frame_*_endo.png"):
        rel = p.relative_to(root).with_suffix("").as_posix()
        if (p.parent / f"{p.stem}_watershed_mask.png").is_file():
            ids.append(rel)
        else:
            missing.append(rel)
    if missing:
        raise ValueError(f"{len(missing)} frames have no _watershed_mask.png, e.g. {missing[0]}; the masks are needed")
    if not ids:
        raise ValueError(f"no CholecSeg8k frames (videoXX/videoXX_NNNNN/frame_N_endo.png) found under {root}")
    ids.sort(key=_natural_key)
    return DatasetIndex(root, "cholecseg8k", tuple(ids), CLASS_NAMES)


def video_of(image_id: str) -> str:
    """``video01/video01_00080/frame_80_endo`` -> ``video01``."""
    return image_id.split("/", 1)[0]


def cholec_split(
    index: DatasetIndex,
    videos: dict[str, Sequence[str]] | None = None,
    max_test_frames: int | None = None,
) -> dict[str, list[str]]:
    """Video-wise split. ``videos`` maps split name -> video names (default :data:`DEFAULT_VIDEO_SPLIT`);
    ``max_test_frames`` keeps the first frames of the test split in sorted order (official: 1640 frames)."""
    videos = videos or DEFAULT_VIDEO_SPLIT
    seen: dict[str, str] = {}
    for name, vids in videos.items():
        for v in vids:
            if v in seen:
                raise ValueError(f"video {v} is in both the {seen[v]} and the {name} split")
            seen[v] = name
    present = {video_of(i) for i in index.ids}
    absent = sorted(set(seen) - present)
    if absent and len(absent) == len(seen):
        raise ValueError(f"none of the split's videos {sorted(seen)} are in {index.root} (found {sorted(present)})")
    out: dict[str, list[str]] = {name: [] for name in videos}
    for i in index.ids:
        s = seen.get(video_of(i))
        if s is not None:
            out[s].append(i)
    if max_test_frames is not None and "test" in out:
        out["test"] = out["test"][:max_test_frames]
    return out


def scan_folder(root: str | Path) -> DatasetIndex:
    """Index a ``images/`` + ``masks/`` + ``classes.json`` folder; stems must match one to one."""
    root = Path(root)
    cm_path = root / "classes.json"
    if not cm_path.is_file():
        raise FileNotFoundError(
            f"class map {cm_path} not found; write it as "
            '{"classes": ["background", "organ"], "mask_values": [0, 255]}'
        )
    try:
        cm = json.loads(cm_path.read_text())
        names = tuple(cm["classes"])
        values = tuple(int(v) for v in cm["mask_values"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"class map {cm_path} is invalid ({e}); it needs 'classes' and 'mask_values' lists") from e
    if len(names) != len(values):
        raise ValueError(f"class map {cm_path}: {len(names)} classes but {len(values)} mask_values")
    imgs = {p.stem: p for p in sorted((root / "images").glob("*")) if p.suffix.lower() in _IMG_EXTS}
    masks = {p.stem: p for p in sorted((root / "masks").glob("*")) if p.suffix.lower() in _IMG_EXTS}
    if not imgs:
        raise ValueError(f"no images found in {root / 'images'}")
    only_i, only_m = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
    if only_i or only_m:
        raise ValueError(
            f"image/mask stem mismatch in {root}: images without mask {only_i[:5]}, masks without image {only_m[:5]}"
        )
    ids = tuple(sorted(imgs, key=_natural_key))
    return DatasetIndex(
        root,
        "folder",
        ids,
        names,
        values,
        tuple(int(v) for v in cm.get("ignore_values", [])),
        int(cm.get("tolerance", 0)),
    )


def open_dataset(root: str | Path) -> DatasetIndex:
    """A folder dataset when ``root/images`` exists, else the CholecSeg8k layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return scan_folder(root) if (root / "images").is_dir() else scan_cholecseg8k(root)


def read_id_list(path: str | Path, index: DatasetIndex | None = None) -> list[str]:
    """Read image ids (one per line, ``#`` comments allowed); with ``index``, unknown ids raise ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    ids = [i.removesuffix(".png") for i in ids]
    if index is not None:
        index.subset(ids)
    return ids


@dataclass
class SegArrays:
    """In-memory images uint8 [M, 3, S, S] and masks uint8 [M, S, S] (255 = ignore), with their ids."""

    ids: list[str]
    images: np.ndarray
    masks: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


def load_arrays(
    index: DatasetIndex,
    ids: Sequence[str] | None = None,
    size: int = 224,
    *,
    with_masks: bool = True,
    progress: bool = True,
) -> SegArrays:
    """Load and resize (image bilinear, mask nearest) the given ids; image/mask size mismatch raises ``ValueError``."""
    ids = list(index.ids if ids is None else ids)
    index.subset(ids)
    images = np.empty((len(ids), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(ids), size, size), dtype=np.uint8) if with_masks else None
    for j, i in enumerate(tqdm(ids, desc="loading", disable=not progress or len(ids) < 50, leave=False)):
        img = read_image(index.image_path(i))
        images[j] = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)  # HWC -> CHW
        if masks is not None:
            m = index.read_mask(i)
            if m.shape != img.shape[:2]:
                raise ValueError(
                    f"image {index.image_path(i)} is {img.shape[1]}x{img.shape[0]} but its mask "
                    f"{index.mask_path(i)} is {m.shape[1]}x{m.shape[0]}; they must match"
                )
            masks[j] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return SegArrays(ids, images, masks)


def scan_images(root: str | Path) -> list[tuple[str, Path]]:
    """Unlabeled images of a pool folder as ``(id, path)``: ``root/images/*`` for a folder dataset, the frames of a
    CholecSeg8k tree, else every image directly in ``root``. Masks are not needed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pool folder not found: {root}")
    if (root / "images").is_dir():
        files = [p for p in (root / "images").iterdir() if p.suffix.lower() in _IMG_EXTS]
        out = [(p.stem, p) for p in files]
    else:
        frames = list(root.glob("video*/video*_*/frame_*_endo.png"))
        if frames:
            out = [(p.relative_to(root).with_suffix("").as_posix(), p) for p in frames]
        else:
            out = [(p.stem, p) for p in root.iterdir() if p.is_file() and p.suffix.lower() in _IMG_EXTS]
    if not out:
        raise ValueError(f"the pool {root} is empty: no images found (png/jpg/bmp/tif)")
    return sorted(out, key=lambda t: _natural_key(t[0]))


def load_images(paths: Sequence[Path], size: int, progress: bool = True) -> np.ndarray:
    """Read and resize images to uint8 [M, 3, size, size]; an unreadable file raises ``ValueError`` naming it."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for j, p in enumerate(tqdm(paths, desc="loading", disable=not progress or len(paths) < 50, leave=False)):
        out[j] = cv2.resize(read_image(p), (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    return out
