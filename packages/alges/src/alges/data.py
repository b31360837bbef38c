"""Datasets: the CholecSeg8k layout and a team's own folder (recursive, masks optional), read without changing them.

CholecSeg8k (Hong et al. 2020; Kaggle ``newslab/cholecseg8k``)::

    root/video01/video01_00080/frame_80_endo.png                  # RGB frame (854x480)
    root/video01/video01_00080/frame_80_endo_watershed_mask.png   # ground truth: grey value per class (R=G=B)

Grey values map to 13 class ids (``alges.config.GREY_TO_ID``); the stray values 255 (1-px border) and 0
(unannotated) become the ignore index 255; any other value is an error naming the file and the values. An image id is
the frame's path relative to the root without ``.png`` (``video01/video01_00080/frame_80_endo``).

Folder dataset (a team's own data)::

    root/images/**/<name>.png|jpg|...     (or root/image/)
    root/masks/**/<name>.png|gif|...      (or root/mask/; same relative path and name; optional per image)
    root/classes.json                     (optional for binary 0/255 masks; see alges.masks)

Folders are scanned recursively; an image id is its path under ``images/`` without the suffix (``case1/frame_003``).
Images without a mask are the unlabelled part of the pool; a mask without an image is an error. Images are read as
8-bit RGB (grey images are replicated to three channels); other bit depths and translucent alpha are errors.
Arrays are resized to ``size x size`` (image bilinear, mask nearest); the original size is kept for boundary metrics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from alges.config import CLASS_NAMES, GREY_TO_ID, IGNORE_INDEX, OFFICIAL_DICE_CLASSES
from alges.masks import ClassMap, infer_binary_class_map, load_class_map

__all__ = [
    "DEFAULT_VIDEO_SPLIT",
    "CHOLEC_PAPER_COUNTS",
    "CHOLEC_CLASS_MAP",
    "IMAGE_EXTS",
    "SegArrays",
    "DatasetIndex",
    "read_image",
    "resize_image",
    "read_cholec_mask",
    "scan_cholecseg8k",
    "cholec_split",
    "check_cholec_split_counts",
    "scan_folder",
    "open_dataset",
    "load_arrays",
    "read_id_list",
    "scan_images",
    "video_of",
]

log = logging.getLogger("alges")

# Documented default video assignment (8 train / 4 val / 5 test, paper section 4). The official lists are unpublished,
# so this assignment is ours; override it with explicit lists.
DEFAULT_VIDEO_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("video01", "video09", "video12", "video17", "video18", "video20", "video24", "video25"),
    "val": ("video26", "video27", "video28", "video35"),
    "test": ("video37", "video43", "video48", "video52", "video55"),
}
# paper section 4: 4640 / 1600 frames, test 1640 after the official code's cut of (most likely) 1840 frames
CHOLEC_PAPER_COUNTS: dict[str, int] = {"train": 4640, "val": 1600, "test": 1840}
CHOLEC_FULL_FRAMES = 8080
CHOLEC_CLASS_MAP = ClassMap(
    CLASS_NAMES,
    tuple(g for g, _ in sorted(GREY_TO_ID.items(), key=lambda t: t[1])),
    ignore_values=(0, 255),
    dice_classes=OFFICIAL_DICE_CLASSES,
    source="CholecSeg8k watershed grey values (alges.config.GREY_TO_ID)",
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_IMAGE_DIRS = ("images", "image")
_MASK_DIRS = ("masks", "mask")


# ------------------------------------------------------------------------------------------------------------ images
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
    if img.dtype != np.uint8:
        raise ValueError(f"image {path} is {img.dtype}, not 8-bit; convert it to 8-bit (the model reads 0-255 pixels)")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        if (img[..., 3] != 255).any():
            raise ValueError(f"image {path} has a translucent alpha channel; save it without alpha")
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] != 3:
        raise ValueError(f"image {path} has {img.shape[2]} channels; expected grey or RGB")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """RGB [H, W, 3] -> CHW uint8 [3, size, size] (bilinear)."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)


def read_cholec_mask(path: str | Path) -> np.ndarray:
    """CholecSeg8k watershed mask -> class ids uint8 [H, W] (255 = ignore: stray 255 and 0 values)."""
    return CHOLEC_CLASS_MAP.read(path)


# ----------------------------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class DatasetIndex:
    """Where the images (and masks) of a dataset are.

    ``kind`` is "cholecseg8k" or "folder"; ``ids`` are every image (natural order); ``labeled_ids`` those with a
    mask; ``class_map`` maps mask values to classes.
    """

    root: Path
    kind: str
    ids: tuple[str, ...]
    class_map: ClassMap
    images: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)
    masks: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.class_map.names

    @property
    def labeled_ids(self) -> tuple[str, ...]:
        if self.kind == "cholecseg8k":
            return self.ids
        return tuple(i for i in self.ids if i in self.masks)

    def image_path(self, image_id: str) -> Path:
        if self.kind == "cholecseg8k":
            return self.root / f"{image_id}.png"
        if image_id not in self.images:
            raise FileNotFoundError(f"no image {image_id!r} in {self.root}")
        return self.images[image_id]

    def has_mask(self, image_id: str) -> bool:
        return self.kind == "cholecseg8k" or image_id in self.masks

    def mask_path(self, image_id: str) -> Path:
        if self.kind == "cholecseg8k":
            return self.root / f"{image_id}_watershed_mask.png"
        if image_id not in self.masks:
            raise ValueError(
                f"image {image_id!r} of {self.root} has no mask (masks are looked up as <mask folder>/{image_id}.*); "
                "add the mask or leave the image out of the labelled list"
            )
        return self.masks[image_id]

    def read_mask(self, image_id: str) -> np.ndarray:
        return self.class_map.read(self.mask_path(image_id))

    def check_ids(self, ids: Sequence[str], *, need_masks: bool = False) -> None:
        """Raise ``ValueError`` for unknown ids (or, with ``need_masks``, ids without a mask), listing a few."""
        known = set(self.ids)
        bad = [i for i in ids if i not in known]
        if bad:
            raise ValueError(f"{len(bad)} image ids not found in {self.root}: {bad[:5]}; check the list")
        if need_masks:
            nomask = [i for i in ids if not self.has_mask(i)]
            if nomask:
                raise ValueError(
                    f"{len(nomask)} listed images of {self.root} have no mask: {nomask[:5]}; labelled images need masks"
                )


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
    return DatasetIndex(root, "cholecseg8k", tuple(ids), CHOLEC_CLASS_MAP)


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


def check_cholec_split_counts(index: DatasetIndex, split: dict[str, Sequence[str]]) -> dict[str, object]:
    """Compare a video split of the *full* CholecSeg8k (8080 frames) with the paper's 4640 / 1600 / 1840 frames.

    Returns ``{"checked", "counts", "expected", "match"}``; ``checked`` is False (and nothing is compared) when the
    index is not the full dataset (a subset or synthetic data). A mismatch is logged as a warning naming the counts:
    the official video lists are unpublished, so the check tells a user whether their lists reproduce the paper's.
    """
    counts = {k: len(v) for k, v in split.items()}
    full = index.kind == "cholecseg8k" and len(index.ids) == CHOLEC_FULL_FRAMES
    res: dict[str, object] = {"checked": full, "counts": counts, "expected": dict(CHOLEC_PAPER_COUNTS), "match": None}
    if not full:
        return res
    match = all(counts.get(k) == v for k, v in CHOLEC_PAPER_COUNTS.items() if k in counts)
    res["match"] = match
    if not match:
        log.warning(
            "alges: the CholecSeg8k split has %s frames, the paper %s (train / val / test before the 1640 cut); "
            "the official video lists are unpublished, pass --train-videos/--test-videos to change it",
            counts,
            CHOLEC_PAPER_COUNTS,
        )
    return res


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _scan_tree(folder: Path, what: str) -> dict[str, Path]:
    """Recursive ``{relative id without suffix: path}``; two files with one id (a.png, a.jpg) raise."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            key = p.relative_to(folder).with_suffix("").as_posix()
            if key in out:
                raise ValueError(f"two {what} files share the id {key!r}: {out[key].name} and {p.name} in {p.parent}")
            out[key] = p
    return out


def scan_folder(root: str | Path) -> DatasetIndex:
    """Index a folder dataset (see the module docstring): recursive, masks optional, class map from the data."""
    root = Path(root)
    img_dir = _find_dir(root, _IMAGE_DIRS)
    if img_dir is None:
        raise FileNotFoundError(f"no images/ (or image/) folder in {root}")
    images = _scan_tree(img_dir, "image")
    if not images:
        raise ValueError(f"no images (png/jpg/bmp/tif/gif) found under {img_dir}")
    mask_dir = _find_dir(root, _MASK_DIRS)
    masks = _scan_tree(mask_dir, "mask") if mask_dir is not None else {}
    orphans = sorted(set(masks) - set(images), key=_natural_key)
    if orphans:
        raise ValueError(
            f"{len(orphans)} masks in {mask_dir} have no image of the same name in {img_dir}: {orphans[:5]}; "
            "rename or remove them"
        )
    ids = tuple(sorted(images, key=_natural_key))
    cm_path = root / "classes.json"
    if cm_path.is_file():
        cmap = load_class_map(cm_path)
    elif masks:
        cmap = infer_binary_class_map((masks[i] for i in sorted(masks, key=_natural_key)), root)
    else:
        cmap = ClassMap(("background", "foreground"), (0, 255), source="none: an unlabelled pool")
    return DatasetIndex(root, "folder", ids, cmap, images, masks)


def open_dataset(root: str | Path) -> DatasetIndex:
    """A folder dataset when ``root/images`` (or ``root/image``) exists, else the CholecSeg8k layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return scan_folder(root) if _find_dir(root, _IMAGE_DIRS) else scan_cholecseg8k(root)


def read_id_list(path: str | Path, index: DatasetIndex | None = None) -> list[str]:
    """Read image ids (one per line, ``#`` comments allowed); with ``index``, unknown ids raise ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    ids = [re.sub(r"\.(png|jpe?g|bmp|tiff?|gif)$", "", i, flags=re.IGNORECASE) for i in ids]
    if index is not None:
        index.check_ids(ids)
    return ids


# ----------------------------------------------------------------------------------------------------------- arrays
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
) -> SegArrays:
    """Load and resize (image bilinear, mask nearest) the given ids (default: every labelled image).

    ``empty_masks``: "keep" (an empty mask is a valid all-background label, the default), "drop" (images whose mask
    has no foreground are left out, and listed in a warning) or "error". Image/mask size mismatch raises.
    """
    if empty_masks not in ("keep", "drop", "error"):
        raise ValueError(f"empty_masks must be keep|drop|error, got {empty_masks!r}")
    ids = list(index.labeled_ids if ids is None and with_masks else index.ids if ids is None else ids)
    index.check_ids(ids, need_masks=with_masks)
    images = np.empty((len(ids), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(ids), size, size), dtype=np.uint8) if with_masks else None
    orig = np.empty((len(ids), 2), dtype=np.int64)
    errors: list[str] = []
    for j, i in enumerate(tqdm(ids, desc="loading", disable=not progress or len(ids) < 50, leave=False)):
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
            errors.append(str(e))
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


def scan_images(root: str | Path) -> list[tuple[str, Path]]:
    """Every image of a pool as ``(id, path)``, natural order: the ``images/`` tree of a folder dataset, the frames
    of a CholecSeg8k tree, else every image file under ``root`` (recursive). Masks are not needed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pool folder not found: {root}")
    img_dir = _find_dir(root, _IMAGE_DIRS)
    if img_dir is not None:
        items = _scan_tree(img_dir, "image")
    else:
        frames = list(root.glob("video*/video*_*/frame_*_endo.png"))
        if frames:
            items = {p.relative_to(root).with_suffix("").as_posix(): p for p in frames}
        else:
            items = {
                k: p
                for k, p in _scan_tree(root, "image").items()
                if not any(part in _MASK_DIRS for part in Path(k).parts[:-1])
            }
    if not items:
        raise ValueError(f"the pool {root} is empty: no images found (png/jpg/bmp/tif/gif, searched recursively)")
    return sorted(items.items(), key=lambda t: _natural_key(t[0]))
