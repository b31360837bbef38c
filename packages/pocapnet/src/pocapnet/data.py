"""PoCaP-layout readers: operations, audio channels, X-ray frames, per-second phase labels, alignment checks.

Layout (the official preprocessing output, brief "Data layout")::

    data_root/
      annotations.json            # [[op, ch1_wearer, ch2_wearer, ["MM:SS-MM:SS", ...], [phase, ...]], ...]
      OP_001/
        Channel_1.wav             # physician headset, 16 kHz (other rates are resampled with a warning)
        Channel_2.wav             # assistant headset
        Channel_3.wav             # ambient (GoPro)
        frame_00001.jpg ...       # X-ray monitor at 1 fps (.jpg/.jpeg/.png/.dcm)
        labels.csv                # optional: per-second labels "second,phase" (overrides annotations.json)

One frame per audio second; second ``t`` (from 0) is labelled by the range containing ``t``.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocapnet.config import PHASES, TRANSITION

__all__ = [
    "DataError",
    "CHANNEL_FILES",
    "FRAME_SUFFIXES",
    "Operation",
    "list_operations",
    "read_wav",
    "read_frame",
    "frame_paths",
    "phase_index",
    "parse_time",
    "read_annotations",
    "labels_from_ranges",
    "read_label_csv",
    "load_operation",
    "transition_mask",
]

CHANNEL_FILES: tuple[str, ...] = ("Channel_1.wav", "Channel_2.wav", "Channel_3.wav")
FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".dcm")
_FRAME_RE = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png|dcm)$", re.IGNORECASE)


class DataError(ValueError):
    """Bad input data (the message names the file and the fix)."""


_ALIASES = {
    "preperation": 0,  # the official code's spelling
    "guidewire": 2, "positioningoftheguidewire": 2,
    "cathplacement": 3, "pouchpreparationandcatheterplacement": 3, "catheterplacement": 3,
    "cathpositioning": 4, "catheterpositioning": 4,
    "cathadjustment": 5, "catheteradjustment": 5,
    "cathcontrol": 6, "cathetercontrol": 6,
}


def phase_index(name: str | int) -> int:
    """Map a phase name (canonical, the paper's long form, or an index 0..8) to its class index."""
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.strip().isdigit()):
        i = int(name)
        if 0 <= i < len(PHASES):
            return i
        raise DataError(f"phase index {i} out of range 0..{len(PHASES) - 1}")
    key = re.sub(r"[^a-z]", "", str(name).lower())
    for i, p in enumerate(PHASES):
        if key == p.lower():
            return i
    if key in _ALIASES:
        return _ALIASES[key]
    raise DataError(f"unknown phase name {name!r}; valid names: {', '.join(PHASES)}")


def read_wav(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read a WAV file as mono float32 in [-1, 1] at ``sample_rate`` (resampled with a warning if needed)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing audio channel file: {path} (each operation needs {', '.join(CHANNEL_FILES)})")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError
        raise DataError(f"cannot read audio file {path}: {e}; re-export it as PCM WAV") from e
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]  # (N, ch) -> (N,)
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        warnings.warn(f"{path.name}: sample rate {sr} Hz resampled to {sample_rate} Hz", stacklevel=2)
        g = gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_frame(path: str | Path) -> np.ndarray:
    """Read an X-ray frame (PNG/JPEG/DICOM) as a float32 grey image in [0, 255], ``(H, W)``.

    RGB frames are averaged over channels (code: mean over RGB); 16-bit PNGs are scaled by 255/65535; DICOMs are
    min-max scaled to [0, 255] (MONOCHROME1 inverted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing X-ray frame: {path}")
    try:
        if path.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(str(path))
            img = ds.pixel_array.astype(np.float32)
            if img.ndim == 3 and img.shape[-1] in (3, 4):
                img = img[..., :3].mean(axis=-1)
            elif img.ndim == 3:
                img = img[0]  # multi-frame: first frame
            if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                img = img.max() - img
            lo, hi = float(img.min()), float(img.max())
            return ((img - lo) / max(hi - lo, 1e-6) * 255.0).astype(np.float32)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
        if arr.dtype == np.uint16 or arr.dtype == np.int32:
            arr = arr.astype(np.float32) * (255.0 / 65535.0)
        arr = arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=-1)  # (H, W, 3) -> (H, W)
        return arr
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataError(f"unreadable X-ray frame {path}: {type(e).__name__}: {e}; replace or re-export it") from e


def frame_paths(op_dir: str | Path) -> list[Path]:
    """Frames ``frame_#####.{jpg,jpeg,png,dcm}`` of an operation in number order (checked to be contiguous)."""
    op_dir = Path(op_dir)
    found: dict[int, Path] = {}
    for p in op_dir.iterdir():
        m = _FRAME_RE.match(p.name)
        if m:
            i = int(m.group(1))
            if i in found:
                raise DataError(f"{op_dir}: frame number {i} exists twice ({found[i].name}, {p.name})")
            found[i] = p
    if not found:
        raise DataError(f"{op_dir}: no X-ray frames named frame_00001.jpg (or .png/.dcm)")
    idx = sorted(found)
    if idx[0] != 1 or idx[-1] != len(idx):
        missing = sorted(set(range(1, idx[-1] + 1)) - set(idx))[:5]
        raise DataError(f"{op_dir}: frames must be numbered 1..N without gaps; missing e.g. {missing}")
    return [found[i] for i in idx]


def parse_time(s: str) -> int:
    """``"MM:SS"`` or ``"HH:MM:SS"`` -> seconds."""
    parts = s.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
        raise DataError(f"bad time {s!r}; expected MM:SS or HH:MM:SS")
    v = 0
    for p in parts:
        v = v * 60 + int(p)
    return v


def read_annotations(path: str | Path) -> dict[str, tuple[list[str], list[str]]]:
    """Read the corpus's ``annotations.json``: ``{op: (ranges, phases)}``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataError(f"cannot parse {path}: {e}") from e
    out: dict[str, tuple[list[str], list[str]]] = {}
    for k, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == 5 and len(e[3]) == len(e[4])):
            raise DataError(f"{path}: entry {k} must be [op, ch1_wearer, ch2_wearer, [ranges], [phases]] with as "
                            "many ranges as phases")
        out[str(e[0])] = (list(e[3]), list(e[4]))
    return out


def labels_from_ranges(ranges: Sequence[str], phases: Sequence[str], n_seconds: int, op: str = "") -> np.ndarray:
    """Per-second labels from inclusive ``"start-end"`` ranges; Closing runs to the end of the recording (code).

    Raises:
        DataError: unknown phase name, or seconds that no range covers (the message lists them).
    """
    y = np.full(n_seconds, -1, dtype=np.int64)
    for r, ph in zip(ranges, phases, strict=True):
        a, _, b = r.partition("-")
        s, e = parse_time(a), parse_time(b)
        if e < s:
            raise DataError(f"{op}: range {r!r} ends before it starts")
        c = phase_index(ph)
        if c == phase_index("Closing"):
            e = max(e, n_seconds - 1)
        y[s : min(e, n_seconds - 1) + 1] = c
    missing = np.flatnonzero(y < 0)
    if missing.size:
        raise DataError(f"{op}: {missing.size} unlabelled seconds (first at {int(missing[0])} s, "
                        f"{missing[0] // 60:02d}:{missing[0] % 60:02d}); every second needs a phase or Transition")
    return y


def read_label_csv(path: str | Path, n_seconds: int) -> np.ndarray:
    """Per-second labels from a CSV with columns ``second,phase`` (name or index)."""
    path = Path(path)
    y = np.full(n_seconds, -1, dtype=np.int64)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"second", "phase"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs a header with columns 'second,phase'")
        for row in reader:
            t = int(row["second"])
            if 0 <= t < n_seconds:
                y[t] = phase_index(row["phase"])
    missing = np.flatnonzero(y < 0)
    if missing.size:
        raise DataError(f"{path}: {missing.size} unlabelled seconds (first at {int(missing[0])} s)")
    return y


@dataclass
class Operation:
    """One operation, loaded and aligned: ``audio`` ``(3, T*sr)`` float32, ``frames`` (T paths), ``labels`` ``(T,)``."""

    name: str
    audio: np.ndarray
    frames: list[Path]
    labels: np.ndarray | None
    sample_rate: int

    @property
    def seconds(self) -> int:
        """Aligned length in seconds (= frames)."""
        return len(self.frames)


def list_operations(data_root: str | Path) -> list[str]:
    """Sorted operation folder names (``OP_*``) under ``data_root``."""
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    ops = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("OP"))
    if not ops:
        raise DataError(f"{root}: no operation folders (OP_001/, ...) found")
    return ops


def load_operation(data_root: str | Path, op: str, sample_rate: int = 16000, tolerance_s: float = 2.0,
                   require_labels: bool = True, annotations: dict | None = None) -> Operation:
    """Load and align one operation.

    Channel lengths and the frame count may differ by at most ``tolerance_s`` seconds; the operation is trimmed to
    the shortest. Beyond that a :class:`DataError` names the files.
    """
    root = Path(data_root)
    op_dir = root / op
    if not op_dir.is_dir():
        raise FileNotFoundError(f"operation folder not found: {op_dir}")
    waves = [read_wav(op_dir / name, sample_rate) for name in CHANNEL_FILES]
    secs = [len(w) / sample_rate for w in waves]
    if max(secs) - min(secs) > tolerance_s:
        detail = ", ".join(f"{n}={s:.1f}s" for n, s in zip(CHANNEL_FILES, secs, strict=True))
        raise DataError(f"{op}: channel lengths disagree by more than {tolerance_s:g} s ({detail}); align the channels")
    frames = frame_paths(op_dir)
    if abs(len(frames) - min(secs)) > tolerance_s + 1:
        raise DataError(f"{op}: {len(frames)} frames but {min(secs):.1f} s of audio; expected one frame per second "
                        f"(tolerance {tolerance_s:g} s)")
    n = int(min(min(int(s) for s in secs), len(frames)))
    audio = np.stack([w[: n * sample_rate] for w in waves])  # (3, n*sr)
    labels = None
    csv_path = op_dir / "labels.csv"
    if csv_path.is_file():
        labels = read_label_csv(csv_path, n)
    else:
        ann = annotations
        if ann is None and (root / "annotations.json").is_file():
            ann = read_annotations(root / "annotations.json")
        if ann is not None and op in ann:
            labels = labels_from_ranges(*ann[op], n_seconds=n, op=op)
    if labels is None and require_labels:
        raise DataError(f"{op}: no labels; add {csv_path} (second,phase) or an entry in {root / 'annotations.json'}")
    return Operation(op, audio, frames[:n], labels, sample_rate)


def transition_mask(labels: np.ndarray) -> np.ndarray:
    """True where the second is NOT a transition (those are removed from the metrics)."""
    return np.asarray(labels) != TRANSITION
