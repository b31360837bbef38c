"""The dataset index (where each image and mask is) and the folder layout of a team's own data.

Folder dataset::

    root/images/**/<name>.png|jpg|...     (or root/image/)
    root/masks/**/<name>.png|gif|...      (or root/mask/; same relative path and name; optional per image)
    root/classes.json                     (optional for binary 0/255 masks; see alges.masks)

Folders are scanned recursively; an image id is its path under ``images/`` without the suffix (``case1/frame_003``).
Images without a mask are the unlabelled part of the pool; a mask without an image is an error. The CholecSeg8k
layout (``alges.cholec``) builds the same :class:`DatasetIndex`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alges.masks import ClassMap, infer_binary_class_map, load_class_map

__all__ = [
    "IMAGE_EXTS",
    "IMAGE_DIRS",
    "MASK_DIRS",
    "DatasetIndex",
    "natural_key",
    "find_dir",
    "scan_tree",
    "scan_folder",
    "read_id_list",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
IMAGE_DIRS = ("images", "image")
MASK_DIRS = ("masks", "mask")


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


def natural_key(s: str) -> list:
    """Sort key that orders the digit runs of an id by value (``frame_9`` before ``frame_10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def find_dir(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``root/<name>`` that is a folder, or None."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def scan_tree(folder: Path, what: str) -> dict[str, Path]:
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
    img_dir = find_dir(root, IMAGE_DIRS)
    if img_dir is None:
        raise FileNotFoundError(f"no images/ (or image/) folder in {root}")
    images = scan_tree(img_dir, "image")
    if not images:
        raise ValueError(f"no images (png/jpg/bmp/tif/gif) found under {img_dir}")
    mask_dir = find_dir(root, MASK_DIRS)
    masks = scan_tree(mask_dir, "mask") if mask_dir is not None else {}
    orphans = sorted(set(masks) - set(images), key=natural_key)
    if orphans:
        raise ValueError(
            f"{len(orphans)} masks in {mask_dir} have no image of the same name in {img_dir}: {orphans[:5]}; "
            "rename or remove them"
        )
    ids = tuple(sorted(images, key=natural_key))
    cm_path = root / "classes.json"
    if cm_path.is_file():
        cmap = load_class_map(cm_path)
    elif masks:
        cmap = infer_binary_class_map((masks[i] for i in sorted(masks, key=natural_key)), root)
    else:
        cmap = ClassMap(("background", "foreground"), (0, 255), source="none: an unlabelled pool")
    return DatasetIndex(root, "folder", ids, cmap, images, masks)


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
