"""The CholecSeg8k dataset: its layout, grey-value masks, video-wise split and the paper's frame counts.

CholecSeg8k (Hong et al. 2020; Kaggle ``newslab/cholecseg8k``)::

    root/video01/video01_00080/frame_80_endo.png                  # RGB frame (854x480)
    root/video01/video01_00080/frame_80_endo_watershed_mask.png   # ground truth: grey value per class (R=G=B)

Grey values map to 13 class ids (``alges.config.GREY_TO_ID``); the stray values 255 (1-px border) and 0
(unannotated) become the ignore index 255; any other value is an error naming the file and the values. An image id is
the frame's path relative to the root without ``.png`` (``video01/video01_00080/frame_80_endo``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alges.config import CLASS_NAMES, GREY_TO_ID, OFFICIAL_DICE_CLASSES
from alges.index import DatasetIndex, natural_key
from alges.masks import ClassMap

__all__ = [
    "DEFAULT_VIDEO_SPLIT",
    "CHOLEC_PAPER_COUNTS",
    "CHOLEC_FULL_FRAMES",
    "CHOLEC_CLASS_MAP",
    "CHOLEC_FRAME_GLOB",
    "read_cholec_mask",
    "scan_cholecseg8k",
    "video_of",
    "cholec_split",
    "check_cholec_split_counts",
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
CHOLEC_FRAME_GLOB = "video*/video*_*/frame_*_endo.png"  # the RGB frames, relative to the root


def read_cholec_mask(path: str | Path) -> np.ndarray:
    """CholecSeg8k watershed mask -> class ids uint8 [H, W] (255 = ignore: stray 255 and 0 values)."""
    return CHOLEC_CLASS_MAP.read(path)


def scan_cholecseg8k(root: str | Path) -> DatasetIndex:
    """Index every ``frame_N_endo.png`` that has a watershed mask, in natural (video, clip, frame) order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    ids = []
    missing = []
    for p in root.glob(CHOLEC_FRAME_GLOB):
        rel = p.relative_to(root).with_suffix("").as_posix()
        if (p.parent / f"{p.stem}_watershed_mask.png").is_file():
            ids.append(rel)
        else:
            missing.append(rel)
    if missing:
        raise ValueError(f"{len(missing)} frames have no _watershed_mask.png, e.g. {missing[0]}; the masks are needed")
    if not ids:
        raise ValueError(f"no CholecSeg8k frames (videoXX/videoXX_NNNNN/frame_N_endo.png) found under {root}")
    ids.sort(key=natural_key)
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
