"""Datasets, read without changing them: opening either layout, and every image of a pool.

Two layouts build one :class:`DatasetIndex`:

- a team's own folder (``root/images/**``, optional ``root/masks/**``, ``classes.json``): :mod:`alges.index`;
- CholecSeg8k (``root/videoXX/videoXX_NNNNN/frame_N_endo.png`` + watershed masks): :mod:`alges.cholec`.

Images and masks in memory (:class:`SegArrays`, :func:`load_arrays`, :func:`read_image`) are in :mod:`alges.arrays`.
This module holds :func:`open_dataset` and :func:`scan_images`, which pick the layout, and re-exports the names above
so that ``from alges.data import ...`` keeps working.
"""

from __future__ import annotations

from pathlib import Path

from alges.arrays import SegArrays, load_arrays, read_image, resize_image
from alges.cholec import (
    CHOLEC_CLASS_MAP,
    CHOLEC_FRAME_GLOB,
    CHOLEC_FULL_FRAMES,
    CHOLEC_PAPER_COUNTS,
    DEFAULT_VIDEO_SPLIT,
    check_cholec_split_counts,
    cholec_split,
    read_cholec_mask,
    scan_cholecseg8k,
    video_of,
)
from alges.index import (
    IMAGE_DIRS,
    IMAGE_EXTS,
    MASK_DIRS,
    DatasetIndex,
    find_dir,
    natural_key,
    read_id_list,
    scan_folder,
    scan_tree,
)

__all__ = [
    "DEFAULT_VIDEO_SPLIT",
    "CHOLEC_PAPER_COUNTS",
    "CHOLEC_FULL_FRAMES",
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


def open_dataset(root: str | Path) -> DatasetIndex:
    """A folder dataset when ``root/images`` (or ``root/image``) exists, else the CholecSeg8k layout (``video*``
    folders); neither is a ``ValueError`` naming both layouts."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if find_dir(root, IMAGE_DIRS):
        return scan_folder(root)
    if not any(p.is_dir() for p in root.glob("video*")):
        raise ValueError(
            f"no dataset found under {root}: expected a folder dataset ({root}/images/ with masks in "
            f"{root}/masks/, same file names) or the CholecSeg8k layout (videoXX/videoXX_NNNNN/frame_N_endo.png)"
        )
    return scan_cholecseg8k(root)


def scan_images(root: str | Path) -> list[tuple[str, Path]]:
    """Every image of a pool as ``(id, path)``, natural order: the ``images/`` tree of a folder dataset, the frames
    of a CholecSeg8k tree, else every image file under ``root`` (recursive). Masks are not needed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pool folder not found: {root}")
    img_dir = find_dir(root, IMAGE_DIRS)
    if img_dir is not None:
        items = scan_tree(img_dir, "image")
    else:
        frames = list(root.glob(CHOLEC_FRAME_GLOB))
        if frames:
            items = {p.relative_to(root).with_suffix("").as_posix(): p for p in frames}
        else:
            items = {
                k: p
                for k, p in scan_tree(root, "image").items()
                if not any(part in MASK_DIRS for part in Path(k).parts[:-1])
            }
    if not items:
        raise ValueError(f"the pool {root} is empty: no images found (png/jpg/bmp/tif/gif, searched recursively)")
    return sorted(items.items(), key=lambda t: natural_key(t[0]))
