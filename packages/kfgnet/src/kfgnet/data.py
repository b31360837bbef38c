"""Data: video / frame-folder reading, manifests, the authors' release layout, clip cutting, the clip dataset.

Manifest (JSON ``{"videos": [...]}`` or CSV with the same columns; ``boxes`` is a JSON object in the CSV)::

    {"video": "videos/0003_l_t_b.avi",   # path relative to the manifest (file .avi/.mp4 or a folder of frames)
     "patient_id": "p002",                # CV groups
     "label": "benign" | "malignant",
     "key_frame": 23,                     # annotated key frame (0-based)
     "boxes": {"23": [x1, y1, x2, y2]}}   # nodule boxes on annotated frames, pixels, optional

Authors' release (``data/videos/{vid}_{l|r}_{view}_{b|m}.avi`` + ``avi.xlsx`` key-frame table + LabelMe
``images/*.json``): :func:`read_release` turns it into the same records (``avi.xlsx`` needs ``openpyxl``; a CSV
export ``avi.csv`` with the video name first and key-frame indices after it is read without extra packages).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kfgnet.config import LABELS, ClipConfig, MotionConfig
from kfgnet.features import motion_vector
from kfgnet.video_io import IMAGE_EXTS, VIDEO_EXTS, DataError, read_video

__all__ = [
    "VideoRecord",
    "DataError",
    "read_video",
    "read_manifest",
    "write_manifest",
    "read_release",
    "clip_indices",
    "cut_clip",
    "ClipDataset",
    "KeyFrame",
    "record_keyframe",
    "load_clip",
    "check_clip_length",
    "FALLBACK",
    "LABELS",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
]

log = logging.getLogger("kfgnet")

RELEASE_NAME = re.compile(r"^(?P<vid>[^_]+)_(?P<side>[lr])_(?P<view>[^_]+)_(?P<cls>[bm])$")


@dataclass
class VideoRecord:
    """One video of a manifest. ``boxes`` maps frame index -> [x1, y1, x2, y2] pixels."""

    path: Path
    patient_id: str
    label: int
    key_frame: int | None
    boxes: dict[int, list[float]] = field(default_factory=dict)
    num_frames: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.path.suffix else self.path.name


def _label_index(value: Any, where: str) -> int:
    v = str(value).strip().lower()
    aliases = {"benign": 0, "b": 0, "0": 0, "malignant": 1, "m": 1, "1": 1}
    if v not in aliases:
        raise DataError(f"unknown label {value!r} in {where}; valid labels: benign / malignant (or b / m, 0 / 1)")
    return aliases[v]


def _parse_boxes(raw: Any, where: str) -> dict[int, list[float]]:
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f'boxes of {where} are not valid JSON ({e}); expected {{"frame": [x1, y1, x2, y2]}}') from e
    out = {}
    for k, b in dict(raw).items():
        if len(b) != 4:
            raise DataError(f"box of frame {k} in {where} has {len(b)} values; expected [x1, y1, x2, y2]")
        x1, y1, x2, y2 = map(float, b)
        if not (x2 > x1 and y2 > y1):
            raise DataError(f"box of frame {k} in {where} is empty or inverted: {b}; expected x1 < x2, y1 < y2")
        out[int(k)] = [x1, y1, x2, y2]
    return out


def read_manifest(path: str | Path) -> list[VideoRecord]:
    """Read a JSON or CSV manifest (see module docstring); video paths resolve relative to the manifest."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"manifest {p} not found; create one (see README 'Data format') or run 'kfgnet make-synthetic --out DIR'"
        )
    try:
        if p.suffix.lower() == ".json":
            obj = json.loads(p.read_text())
            rows = obj["videos"] if isinstance(obj, dict) else obj
        elif p.suffix.lower() == ".csv":
            with p.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        else:
            raise DataError(f"manifest {p} must be .json or .csv")
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise DataError(f'manifest {p} is corrupt ({e}); expected JSON {{"videos": [...]}} or a CSV') from e
    records = []
    for i, r in enumerate(rows):
        where = f"{p} entry {i}"
        missing = [k for k in ("video", "label") if k not in r or r[k] in (None, "")]
        if missing:
            raise DataError(
                f"{where} lacks {missing}; required columns: video, label (key_frame, patient_id, boxes "
                f"optional; key-frame sampling and stage-1 training need key_frame)"
            )
        key = None
        if r.get("key_frame") not in (None, ""):
            try:
                key = int(r["key_frame"])
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: key_frame {r['key_frame']!r} is not an integer") from e
            if key < 0:
                raise DataError(f"{where}: key_frame {key} is negative")
        vp = Path(r["video"])
        vp = vp if vp.is_absolute() else p.parent / vp
        n = r.get("num_frames")
        records.append(
            VideoRecord(
                vp,
                str(r.get("patient_id") or vp.stem),
                _label_index(r["label"], where),
                key,
                _parse_boxes(r.get("boxes"), where),
                int(n) if n not in (None, "") else None,
            )
        )
    if not records:
        raise DataError(f"manifest {p} lists no videos")
    return records


def write_manifest(records: list[VideoRecord], path: str | Path) -> None:
    """Write records as a JSON manifest (paths relative to its folder when possible), atomically."""
    from medshared.runtime import atomic_write_json

    p = Path(path)
    rows = []
    for r in records:
        try:
            vid = str(r.path.resolve().relative_to(p.parent.resolve()))
        except ValueError:
            vid = str(r.path)
        rows.append(
            {
                "video": vid,
                "patient_id": r.patient_id,
                "label": LABELS[r.label],
                "key_frame": r.key_frame,
                "boxes": {str(k): v for k, v in r.boxes.items()},
            }
        )
    atomic_write_json(p, {"videos": rows})


def _read_keyframe_table(root: Path) -> dict[str, list[int]]:
    xlsx, csv_path = root / "avi.xlsx", root / "avi.csv"
    if csv_path.is_file():
        with csv_path.open(newline="") as fh:
            rows = [row for row in csv.reader(fh) if row]
        body = rows[1:] if rows and not any(c.strip().lstrip("-").isdigit() for c in rows[0][1:]) else rows
        cells = [(row[0], row[1:]) for row in body]
    elif xlsx.is_file():
        try:
            import pandas as pd

            df = pd.read_excel(xlsx, header=None)
        except ImportError as e:
            raise DataError(f"reading {xlsx} needs openpyxl (pip install openpyxl), or save it as {csv_path}") from e
        cells = [(str(row.iloc[0]), [str(c) for c in row.iloc[1:]]) for _, row in df.iterrows()]
    else:
        raise DataError(f"key-frame table not found: {xlsx} or {csv_path} (video name, then key-frame indices)")
    table: dict[str, list[int]] = {}
    for name, rest in cells:
        keys = []
        for c in rest:
            c = str(c).strip()
            if re.fullmatch(r"\d+(\.0)?", c):
                keys.append(int(float(c)))
        if keys:
            table[Path(str(name).strip()).stem] = keys
    return table


def read_release(root: str | Path) -> list[VideoRecord]:
    """Records from the authors' release layout: ``videos/{vid}_{l|r}_{view}_{b|m}.avi``, ``avi.xlsx``/``avi.csv``
    key-frame table (first key frame used), LabelMe outlines ``images/*.json`` (6-field names ending in the frame
    index, first field the video id) as boxes. Patient id = video id (the release does not name patients)."""
    root = Path(root)
    vdir = root / "videos"
    if not vdir.is_dir():
        raise DataError(f"{vdir} not found; expected the release layout data/videos/*.avi + data/avi.xlsx")
    table = _read_keyframe_table(root)
    boxes: dict[str, dict[int, list[float]]] = {}
    for js in sorted((root / "images").glob("*.json")) if (root / "images").is_dir() else []:
        parts = js.stem.split("_")
        if len(parts) != 6 or not parts[-1].isdigit():
            continue
        obj = json.loads(js.read_text())
        pts = [pt for s in obj.get("shapes", []) for pt in s.get("points", [])]
        if pts:
            a = np.asarray(pts, dtype=float)
            key = f"{parts[0]}_{parts[2]}_{parts[3]}_{parts[4]}"
            boxes.setdefault(key, {})[int(parts[-1])] = [
                float(a[:, 0].min()),
                float(a[:, 1].min()),
                float(a[:, 0].max()),
                float(a[:, 1].max()),
            ]
    records = []
    for v in sorted(vdir.iterdir()):
        m = RELEASE_NAME.match(v.stem)
        if not m or (v.is_file() and v.suffix.lower() not in VIDEO_EXTS):
            continue
        if v.stem not in table:
            raise DataError(f"video {v.name} has no row in the key-frame table of {root}")
        records.append(VideoRecord(v, m["vid"], 1 if m["cls"] == "m" else 0, table[v.stem][0], boxes.get(v.stem, {})))
    if not records:
        raise DataError(f"no videos named {{vid}}_{{l|r}}_{{view}}_{{b|m}}.avi in {vdir}")
    return records


def clip_indices(num_frames: int, key_frame: int | None, clip: ClipConfig) -> tuple[np.ndarray, int]:
    """Frame indices of a clip and the key frame's position in it.

    ``keyframe``: T consecutive frames with the key at ``T // 2`` when interior, the window shifted to fit at the
    ends, short videos repeat-padded with the edge frames [I, brief §7]. ``uniform``: T frames spread evenly.

    Returns:
        (``(T,)`` int indices into the video, position of the key frame in the clip or -1).
    """
    t = clip.num_frames
    if num_frames < 1:
        raise DataError("video has no frames")
    if clip.sampling == "uniform":
        idx = np.linspace(0, num_frames - 1, t).round().astype(int)
        pos = int(np.argmin(np.abs(idx - key_frame))) if key_frame is not None else -1
        return idx, pos
    if key_frame is None or not 0 <= key_frame < num_frames:
        raise DataError(f"key frame {key_frame} is outside the video (0..{num_frames - 1})")
    kp = t // 2 if clip.key_position is None else clip.key_position
    if num_frames >= t:
        start = min(max(0, key_frame - kp), num_frames - t)  # shift to fit at the ends
        idx = np.arange(start, start + t)
        return idx, int(key_frame - start)
    idx = np.clip(np.arange(key_frame - kp, key_frame - kp + t), 0, num_frames - 1)  # repeat-pad the edge frames
    return idx, kp


FALLBACK = "fallback_middle"  # source of a key frame when stage 1 detected no nodule anywhere in the video


@dataclass(frozen=True)
class KeyFrame:
    """Where a clip is centred and cropped.

    Attributes:
        frame: key frame index (None with uniform sampling and no key frame).
        box: nodule box (x1, y1, x2, y2 pixels) for ``crop: nodule``; None when there is none.
        source: ``"annotation"`` (the manifest), ``"stage1"`` (detector + LSTM) or ``"fallback_middle"`` (stage 1
            found no nodule in any frame: the middle frame and the whole-frame crop, the one fallback used by every
            command and stated in its outputs).
    """

    frame: int | None
    box: tuple[float, float, float, float] | None = None
    source: str = "annotation"


def record_keyframe(r: VideoRecord, clip: ClipConfig) -> KeyFrame:
    """The annotated key frame of ``r`` and its nodule box: the box on the key frame, else the box of the annotated
    frame nearest to it (the middle of the video when there is no key frame).

    Raises:
        DataError: ``crop: nodule`` and the video has no box at all, or key-frame sampling without a key frame.
    """
    if r.key_frame is None and clip.sampling == "keyframe":
        raise DataError(f"video {r.path} has no key_frame; key-frame sampling needs one (or use uniform sampling)")
    box = None
    if r.boxes:
        ref = r.key_frame if r.key_frame is not None else (r.num_frames or 0) // 2
        k = min(r.boxes, key=lambda f: (abs(f - ref), f))
        box = tuple(float(v) for v in r.boxes[k])
    elif clip.crop == "nodule":
        raise DataError(
            f"video {r.path} has no nodule box for the nodule crop; add 'boxes' on its key frame to the "
            f"manifest, or crop whole frames with clip.crop: frame"
        )
    return KeyFrame(r.key_frame, box, "annotation")


def cut_clip(frames: np.ndarray, idx: np.ndarray, size: int, box: Any = None, margin: float = 0.25) -> np.ndarray:
    """Select ``idx`` and make every frame ``size x size``: the nodule crop (a square around ``box`` with ``margin``,
    the same for all frames, zero-padded at the border, then resized) or, with ``box=None``, the whole frame resized
    (cubic, as the official loader [V]).

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB; idx: ``(T,)`` frame indices; box: x1, y1, x2, y2 pixels or None.

    Returns:
        ``(T, size, size, 3)`` uint8.
    """
    from kfgnet.crop import crop_square, resize_frames, square_around_box

    sel = frames[idx]
    if box is not None:
        sel = crop_square(sel, square_around_box(box, margin))
    return resize_frames(sel, size)


def check_clip_length(num_frames: int, clip: ClipConfig, allow_pad: bool, where: str) -> bool:
    """Short-video policy: below ``clip.min_frames`` refused; below ``clip.num_frames`` refused without
    ``allow_pad``, else True (the caller pads and warns)."""
    if num_frames < clip.min_frames:
        raise DataError(
            f"{where} has {num_frames} frame(s), fewer than clip.min_frames = {clip.min_frames}; it is "
            f"too short to classify (lower clip.min_frames only if a clip mostly of repeated frames is "
            f"acceptable)"
        )
    if num_frames < clip.num_frames:
        if not allow_pad:
            raise DataError(
                f"{where} has {num_frames} frames, shorter than the {clip.num_frames}-frame clip; use a "
                f"shorter clip (clip.num_frames) or allow repeat padding (drop --no-pad-short)"
            )
        return True
    return False


class ClipDataset(Dataset):
    """Clips of the classifier with their V_motion, all decoded once and cached in memory.

    V_motion is computed once per clip at construction (never per batch) and flipped with any temporal flip.
    Augmentation draws from torch's RNG, which DataLoader seeds per worker and per epoch.

    Args:
        records: videos; clip: clip settings; steps: V_temp length (``ClassifierConfig.attention_steps``).
        motion: motion-index settings; augment: training augmentation (flips of T/H/W with ``flip_prob``,
            intensity shift with ``intensity_prob``) [V loader]; keys: per record the key frame and box to use
            (e.g. stage-1 predictions; default: the annotation); allow_pad: repeat-pad videos shorter than the clip
            (at least ``clip.min_frames`` long), with a warning.

    Items: ``(clip (3, T, S, S) float 0..1, label int64, v_motion (steps,) float32)``.
    """

    def __init__(
        self,
        records: list[VideoRecord],
        clip: ClipConfig,
        steps: int,
        motion: MotionConfig | None = None,
        augment: bool = False,
        flip_prob: float = 0.5,
        intensity_prob: float = 0.5,
        keys: list[KeyFrame] | None = None,
        allow_pad: bool = True,
        cache: dict[str, Any] | None = None,
        progress: bool = False,
    ):
        self.records, self.clip, self.steps = records, clip, steps
        self.motion = motion or MotionConfig()
        self.augment, self.flip_prob, self.intensity_prob = augment, flip_prob, intensity_prob
        if keys is not None and len(keys) != len(records):
            raise ValueError(f"{len(keys)} key frames for {len(records)} videos")
        self.keys = keys if keys is not None else [record_keyframe(r, clip) for r in records]
        self.clips: list[np.ndarray] = []
        self.v_motion: list[np.ndarray] = []
        self.padded: list[str] = []
        cache = {} if cache is None else cache
        it: Any = list(enumerate(records))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="clips + motion index", unit="video", leave=False)
        for i, r in it:
            c, vm, padded = load_clip(r, self.keys[i], clip, steps, self.motion, allow_pad, cache)
            if padded:
                self.padded.append(r.name)
            self.clips.append(c)
            self.v_motion.append(vm)
        if self.padded:
            log.warning(
                "%d video(s) shorter than the %d-frame clip repeat-padded with their edge frames: %s",
                len(self.padded),
                clip.num_frames,
                ", ".join(self.padded[:10]) + (" ..." if len(self.padded) > 10 else ""),
            )
        self.labels = np.array([r.label for r in records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.clips[i]).permute(3, 0, 1, 2).float().div_(255.0)  # (T,S,S,3) -> (3, T, S, S)
        vm = torch.from_numpy(self.v_motion[i].copy())
        if self.augment:
            # torch's RNG: DataLoader seeds it per worker and per epoch (a generator made in __init__ would repeat in
            # every worker), and training re-seeds it per epoch, so a resumed run draws what an uninterrupted one did
            u = torch.rand(6).tolist()
            if u[0] < self.flip_prob:  # temporal flip: V_motion flips with it
                x, vm = x.flip(1), vm.flip(0)
            if u[1] < self.flip_prob:
                x = x.flip(2)
            if u[2] < self.flip_prob:
                x = x.flip(3)
            if u[3] < self.intensity_prob:
                x = (x * (0.9 + 0.2 * u[4]) + (0.2 * u[5] - 0.1)).clamp_(0, 1)
        return x, torch.tensor(self.labels[i]), vm


def load_clip(
    r: VideoRecord,
    key: KeyFrame,
    clip: ClipConfig,
    steps: int,
    motion: MotionConfig,
    allow_pad: bool,
    cache: dict[str, Any] | None = None,
    frames: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One clip ``(T, S, S, 3)`` uint8, its V_motion ``(steps,)`` and whether it was padded (see
    :class:`ClipDataset`); ``frames`` skips reading the video again."""
    box = key.box if clip.crop == "nodule" else None
    if clip.crop == "nodule" and box is None and key.source != FALLBACK:
        raise DataError(
            f"no nodule box for the clip of {r.path} (key frame {key.frame}, from {key.source}); give "
            f"boxes, or crop whole frames with clip.crop: frame"
        )
    ck = f"{r.path}|{key}|{clip}|{motion}|{steps}"
    if cache is not None and ck in cache:
        return cache[ck]
    if frames is None:
        frames = read_video(r.path, blackout=clip.blackout)
    n = len(frames)
    padded = check_clip_length(n, clip, allow_pad, str(r.path))
    if clip.sampling == "keyframe" and not 0 <= (key.frame if key.frame is not None else -1) < n:
        raise DataError(f"key frame {key.frame} of {r.path} is beyond the video ({n} frames)")
    idx, _ = clip_indices(n, key.frame, clip)
    c = cut_clip(frames, idx, clip.size, box, clip.crop_margin)  # (T, S, S, 3)
    out = (c, motion_vector(c, steps, motion), padded)
    if cache is not None:
        cache[ck] = out
    return out
