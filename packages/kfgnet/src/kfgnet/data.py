"""Data: manifests and the authors' release layout as :class:`VideoRecord` s (videos are read by
:mod:`kfgnet.video_io`; clips are cut by :mod:`kfgnet.clips`, whose names are re-exported here).

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfgnet.config import LABELS
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


# clip cutting lives in kfgnet.clips; re-exported so ``from kfgnet.data import ClipDataset`` keeps working
from kfgnet.clips import (  # noqa: E402
    FALLBACK,
    ClipDataset,
    KeyFrame,
    check_clip_length,
    clip_indices,
    cut_clip,
    load_clip,
    record_keyframe,
)
