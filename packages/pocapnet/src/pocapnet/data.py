"""PoCaP-layout readers: operations, audio channels, X-ray frames, per-second phase labels, alignment checks.

Layout (the official preprocessing output, brief "Data layout"; ``pocapnet ingest`` writes it from raw recordings)::

    data_root/
      annotations.json            # [[op, ch1_wearer, ch2_wearer, ["MM:SS-MM:SS", ...], [phase, ...]], ...]
      OP_001/
        Channel_1.wav             # physician headset, 16 kHz mono (other rates are resampled, logged)
        Channel_2.wav             # assistant headset
        Channel_3.wav             # ambient (GoPro)   (any number of channels: FeatureConfig.channels)
        frame_00001.jpg ...       # X-ray monitor at 1 fps (.jpg/.jpeg/.png/.dcm), frame k = second k-1
        labels.csv                # optional: "second,phase" or "start,end,phase" (overrides annotations.json)

Second ``t`` (from 0) covers audio samples ``[t*sr, (t+1)*sr)`` and frame ``t+1``, and is labelled by the range
containing ``t``.

**No silent changes.** A multi-channel WAV, a multi-frame DICOM, channels or frames of different lengths, and labels
that run past the recording are errors naming the file and the flag that allows the change
(:class:`InputPolicy`: ``mix_to_mono``, ``dicom_first_frame``, ``trim``); with the flag, the change is logged as a
warning and recorded in :attr:`Operation.changes` (and in the features' ``meta.json``). Audio after the last whole
second (< 1 s) has no frame and no label and is not used; that is logged at INFO level.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocapnet.config import TRANSITION
from pocapnet.errors import DataError
from pocapnet.labels import (
    Annotation,
    labels_from_ranges,
    parse_time,
    phase_index,
    read_annotations,
    read_label_csv,
)

__all__ = [
    "DataError",
    "InputPolicy",
    "CHANNEL_FILES",
    "FRAME_SUFFIXES",
    "Annotation",
    "Operation",
    "channel_file",
    "list_operations",
    "read_audio",
    "read_wav",
    "resample",
    "read_frame",
    "dicom_grey",
    "dicom_frame_count",
    "frame_paths",
    "phase_index",
    "parse_time",
    "read_annotations",
    "labels_from_ranges",
    "read_label_csv",
    "check_lengths",
    "load_operation",
    "transition_mask",
]

log = logging.getLogger("pocapnet")

CHANNEL_FILES: tuple[str, ...] = ("Channel_1.wav", "Channel_2.wav", "Channel_3.wav")
FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".dcm")
_FRAME_RE = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png|dcm)$", re.IGNORECASE)


@dataclass(frozen=True)
class InputPolicy:
    """Explicit permissions to change input data (each change is logged and recorded).

    Attributes:
        mix_to_mono: average the channels of a multi-channel WAV (otherwise an error: pick a channel with
            ``pocapnet ingest --channel NAME=FILE:INDEX``).
        dicom_first_frame: read only the first frame of a multi-frame DICOM frame file (otherwise an error: split it
            into one frame per second with ``pocapnet ingest --xray FILE.dcm``).
        trim: cut channels, frames and labels to the shortest of them (otherwise any length mismatch is an error).
    """

    mix_to_mono: bool = False
    dicom_first_frame: bool = False
    trim: bool = False


def channel_file(k: int) -> str:
    """File name of channel ``k`` (1-based): ``Channel_k.wav``."""
    return f"Channel_{int(k)}.wav"


# ----------------------------------------------------------------------------------------------------------- audio
def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as it is stored: ``(channels, samples)`` float32 in [-1, 1] and its sample rate."""
    from medshared.audio import TruncatedWavError, read_wav

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing audio file: {path}")
    try:
        x, sr = read_wav(path)  # soundfile's decoding; a WAV shorter than its header declares is refused
    except TruncatedWavError as e:
        raise DataError(str(e)) from None
    except ValueError as e:
        raise DataError(f"cannot read audio file {path}: {e.__cause__ or e}; re-export it as PCM WAV") from e
    return np.ascontiguousarray(x.T), int(sr)  # (N, C) -> (C, N)


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy ``resample_poly``), float32."""
    if sr == target:
        return np.asarray(x, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), int(target))
    return resample_poly(x, target // g, int(sr) // g, axis=-1).astype(np.float32)


def read_wav(
    path: str | Path, sample_rate: int = 16000, *, channel: int | None = None, mix_to_mono: bool = False
) -> np.ndarray:
    """Read one microphone as mono float32 in [-1, 1] at ``sample_rate``.

    Args:
        channel: the channel of a multi-channel file to use (0-based).
        mix_to_mono: average all channels of a multi-channel file (logged).

    Raises:
        DataError: a multi-channel file without ``channel`` or ``mix_to_mono``: averaging can cancel signals (an
            opposite-polarity pair becomes zeros), so it is never done silently.
    """
    path = Path(path)
    x, sr = read_audio(path)
    if channel is not None:
        if not 0 <= channel < x.shape[0]:
            raise DataError(f"{path} has {x.shape[0]} channel(s); channel index {channel} does not exist")
        x = x[channel]
    elif x.shape[0] > 1:
        if not mix_to_mono:
            raise DataError(
                f"{path} has {x.shape[0]} channels, but one microphone per file is expected; pick one "
                f"with `pocapnet ingest --channel NAME={path.name}:INDEX`, or pass --mix-to-mono to "
                "average them"
            )
        log.warning("%s: %d channels averaged to mono (--mix-to-mono)", path, x.shape[0])
        x = x.mean(axis=0)
    else:
        x = x[0]
    if sr != sample_rate:
        log.warning("%s: sample rate %d Hz resampled to %d Hz", path, sr, sample_rate)
        x = resample(x, sr, sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------- X-ray
def dicom_grey(ds: object, frames: np.ndarray) -> np.ndarray:
    """DICOM pixels ``(..., H, W[, 3])`` -> grey float32 in [0, 255] (min-max over all given frames; MONOCHROME1
    inverted)."""
    img = frames.astype(np.float32)
    if getattr(ds, "SamplesPerPixel", 1) > 1 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = img.max() - img
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / max(hi - lo, 1e-6) * 255.0).astype(np.float32)


def dicom_frame_count(ds: object) -> int:
    """Number of frames of a DICOM dataset (``NumberOfFrames``, 1 when absent)."""
    try:
        return int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def read_frame(path: str | Path, *, dicom_first_frame: bool = False) -> np.ndarray:
    """Read an X-ray frame (PNG/JPEG/DICOM) as a float32 grey image in [0, 255], ``(H, W)``.

    RGB frames are averaged over channels (code: mean over RGB); palette frames are read by their palette's colours;
    an opaque alpha channel is dropped; 16-bit PNGs are scaled by 255/65535; DICOMs are min-max scaled to [0, 255]
    (MONOCHROME1 inverted).

    Raises:
        DataError: unreadable file, a translucent alpha channel, or a multi-frame DICOM without
            ``dicom_first_frame`` (one file is one second).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing X-ray frame: {path}")
    try:
        if path.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(str(path))
            n = dicom_frame_count(ds)
            arr = ds.pixel_array
            if n > 1:
                if not dicom_first_frame:
                    raise DataError(
                        f"{path} is a multi-frame DICOM ({n} frames) but a frame file holds one second; "
                        f"split it with `pocapnet ingest --xray {path.name}` (sampled at 1 fps), or pass "
                        "--dicom-first-frame to use its first frame only"
                    )
                log.warning("%s: multi-frame DICOM (%d frames), only the first is used (--dicom-first-frame)", path, n)
                arr = arr[0]
            return dicom_grey(ds, arr)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):  # a palette image shows its palette's colours, not its indices
                im = im.convert("RGBA")
            arr = np.asarray(im)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey + alpha, RGBA
            if (arr[..., -1] != 255).any():
                raise DataError(f"X-ray frame {path} has a translucent alpha channel; save it without alpha")
            arr = arr[..., :-1]
        if arr.dtype == np.uint16 or arr.dtype == np.int32:
            arr = arr.astype(np.float32) * (255.0 / 65535.0)
        arr = arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=-1)  # (H, W, 3) -> (H, W), as the code (mean over RGB)
        return arr
    except (FileNotFoundError, DataError):
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


# ------------------------------------------------------------------------------------------------------ operations
@dataclass
class Operation:
    """One operation, loaded and aligned.

    Attributes:
        audio: ``(M, T*sr)`` float32, one row per channel of ``channels``.
        frames: ``T`` frame paths (frame ``t`` for second ``t``).
        labels: ``(T,)`` int64 or None.
        channels: the channel numbers (``Channel_k.wav``) in ``audio``'s order.
        wearers: headset wearers from ``annotations.json`` (ch1, ch2), when given.
        changes: what was changed under an :class:`InputPolicy` flag (empty when nothing was).
    """

    name: str
    audio: np.ndarray
    frames: list[Path]
    labels: np.ndarray | None
    sample_rate: int
    channels: tuple[int, ...] = (1, 2, 3)
    wearers: tuple[str, ...] = ()
    changes: list[str] = field(default_factory=list)
    policy: InputPolicy = field(default_factory=InputPolicy)

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


def check_lengths(lengths: dict[str, int], trim: bool, where: str, fix: str, changes: list[str]) -> int:
    """The common length of inputs given in whole seconds: all equal, or (with ``trim``, logged and recorded in
    ``changes``) the shortest; otherwise a :class:`DataError` listing them, naming ``where`` and the ``fix``."""
    n = min(lengths.values())
    if max(lengths.values()) != n:
        detail = ", ".join(f"{k} {v} s" for k, v in lengths.items())
        if not trim:
            raise DataError(f"{where}: lengths disagree ({detail}); {fix}, or pass --trim to cut all to {n} s")
        log.warning("%s: lengths disagree (%s); cut to %d s (--trim)", where, detail, n)
        changes.append(f"cut to {n} s ({detail})")
    return n


def _aligned_length(
    op_dir: Path,
    waves: list[np.ndarray],
    names: list[str],
    n_frames: int,
    sr: int,
    policy: InputPolicy,
    changes: list[str],
) -> int:
    """Whole seconds every channel and the frames share; a mismatch is an error unless ``policy.trim``."""
    lengths = {**{n: len(w) // sr for n, w in zip(names, waves, strict=True)}, "frames": n_frames}
    n = check_lengths(
        lengths,
        policy.trim,
        str(op_dir),
        "expected one frame per whole second of every channel; re-export with `pocapnet ingest`",
        changes,
    )
    tail = max(len(w) - n * sr for w in waves)
    if 0 < tail < sr:
        log.info("%s: %.2f s of audio after the last whole second not used", op_dir.name, tail / sr)
    return n


def load_operation(
    data_root: str | Path,
    op: str,
    sample_rate: int = 16000,
    *,
    channels: Sequence[int] = (1, 2, 3),
    require_labels: bool = True,
    annotations: dict[str, Annotation] | None = None,
    policy: InputPolicy | None = None,
) -> Operation:
    """Load and align one operation (see the module docstring for what is an error and what a flag allows).

    Args:
        channels: which ``Channel_k.wav`` files to read, in model order (paper: 1 physician, 2 assistant,
            3 ambient).
        policy: the explicit input-change permissions; default none.
    """
    policy = policy or InputPolicy()
    root = Path(data_root)
    op_dir = root / op
    if not op_dir.is_dir():
        raise FileNotFoundError(f"operation folder not found: {op_dir}")
    names = [channel_file(k) for k in channels]
    for name in names:
        if not (op_dir / name).is_file():
            raise FileNotFoundError(
                f"missing audio channel file: {op_dir / name} (this configuration reads {', '.join(names)})"
            )
    import soundfile as sf

    changes: list[str] = []
    for name in names:
        n_ch = sf.info(str(op_dir / name)).channels
        if n_ch > 1 and policy.mix_to_mono:
            changes.append(f"{name}: {n_ch} channels averaged to mono")
    waves = [read_wav(op_dir / name, sample_rate, mix_to_mono=policy.mix_to_mono) for name in names]
    frames = frame_paths(op_dir)
    n = _aligned_length(op_dir, waves, names, len(frames), sample_rate, policy, changes)
    audio = np.stack([w[: n * sample_rate] for w in waves])  # (M, n*sr)
    labels, wearers = None, ()
    csv_path = op_dir / "labels.csv"
    if csv_path.is_file():
        labels = read_label_csv(csv_path, n, trim=policy.trim, changes=changes)
        rec = op_dir / "ingest.json"  # written by `pocapnet ingest`: keeps the wearers of the annotations
        if rec.is_file():
            wearers = tuple(json.loads(rec.read_text()).get("wearers") or ())
    else:
        ann = annotations
        if ann is None and (root / "annotations.json").is_file():
            ann = read_annotations(root / "annotations.json")
        if ann is not None and op in ann:
            a = ann[op]
            labels = labels_from_ranges(a.ranges, a.phases, n_seconds=n, op=op, trim=policy.trim, changes=changes)
            wearers = a.wearers
    if labels is None and require_labels:
        raise DataError(f"{op}: no labels; add {csv_path} (second,phase) or an entry in {root / 'annotations.json'}")
    return Operation(op, audio, frames[:n], labels, sample_rate, tuple(channels), wearers, changes, policy)


def transition_mask(labels: np.ndarray) -> np.ndarray:
    """True where the second is NOT a transition (those are removed from the metrics)."""
    return np.asarray(labels) != TRANSITION
