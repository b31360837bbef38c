"""X-ray monitor sources sampled at 1 fps on the audio clock: a video of the monitor, a DICOM series, a multi-frame
DICOM.

Every source is a list of images with their times (seconds from the source's start). Second ``t`` of the audio
(``[t, t+1)``) gets the image on screen at audio time ``t``: the last image with time ``<= t - offset_s``, where
``offset_s`` is the audio time at which the source's clock starts (``ingest --xray-offset``). A monitor keeps
showing the last image (last-image hold), so a DICOM series and a multi-frame DICOM cover the recording up to its
end; a video covers its duration only.

- Video (anything OpenCV's FFmpeg backend reads): each frame at its own presentation time, so a variable-frame-rate
  screen recording (a frame only when the screen changes) is placed right; whether the rate was constant or
  variable, and the times' range, go to ``XraySource.timing`` (:mod:`pocapnet.screenvideo`). A stream without any
  frame timestamp: frame ``k`` at ``k / fps`` (``--xray-fps``, else the stream's rate) with a warning; only some
  frames with timestamps: an error naming the file and the fix. The video covers up to its last frame's time plus
  the median frame interval.
- DICOM series (a folder of files): each image's time from ``AcquisitionDateTime``, ``AcquisitionTime`` or
  ``ContentTime`` relative to the first image; without times, ``InstanceNumber`` order at ``--xray-fps``.
- Multi-frame DICOM: ``FrameTimeVector``, ``FrameTime`` (ms), ``CineRate`` or ``RecommendedDisplayFrameRate``; else
  ``--xray-fps``; else an error naming the file.

DICOM pixels become 8-bit grey by min-max scaling (over all frames of a multi-frame file, so a cine keeps its
brightness; per image in a series), MONOCHROME1 inverted, as :func:`pocapnet.data.read_frame`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocapnet.data import DataError, dicom_frame_count, dicom_grey
from pocapnet.screenvideo import VideoFrames, frame_timing, video_frame_times

__all__ = ["XraySource", "open_xray_source", "sample_seconds"]


@dataclass
class XraySource:
    """Images with times; ``get(k)`` returns image ``k`` as uint8 ``(H, W)`` or ``(H, W, 3)``.

    Attributes:
        kind: ``video``, ``dicom-series`` or ``dicom-multiframe``.
        end_s: the last time the source covers (None: last-image hold to the end of the recording).
        timing: how a video's frame times were found (:func:`pocapnet.screenvideo.frame_timing`); None otherwise.
    """

    kind: str
    path: Path
    times: np.ndarray
    get: Callable[[int], np.ndarray]
    end_s: float | None
    fps: float | None = None
    timing: dict | None = None


def _video(path: Path, fps_flag: float | None) -> XraySource:
    ms, fps, _ = video_frame_times(path)
    times, timing = frame_timing(ms, fps, path, fps_flag)
    frames = VideoFrames(path, times, check_times=timing["source"] == "timestamps")
    return XraySource("video", path, times, frames, timing["end_s"], timing.get("fps", fps) or None, timing)


def _dicom_times(ds: object) -> float | None:
    for tag in ("AcquisitionDateTime", "AcquisitionTime", "ContentTime"):
        v = str(getattr(ds, tag, "") or "").strip()
        if not v:
            continue
        v = v.split("+")[0].split("-")[0]
        try:
            if tag == "AcquisitionDateTime":
                base = dt.datetime.strptime(v[:14], "%Y%m%d%H%M%S")
                frac = float("0" + v[14:]) if len(v) > 14 else 0.0
                return base.timestamp() + frac
            hh, mm, ss = int(v[:2]), int(v[2:4] or 0), float(v[4:] or 0)
            return hh * 3600 + mm * 60 + ss
        except ValueError:
            continue
    return None


def _multiframe_times(ds: object, n: int, fps: float | None, path: Path) -> np.ndarray:
    vec = getattr(ds, "FrameTimeVector", None)
    if vec is not None and len(vec) == n:
        return np.cumsum(np.asarray(vec, dtype=np.float64)) / 1000.0 - float(vec[0]) / 1000.0
    for tag, to_s in (
        ("FrameTime", lambda v: v / 1000.0),
        ("CineRate", lambda v: 1.0 / v),
        ("RecommendedDisplayFrameRate", lambda v: 1.0 / v),
    ):
        v = getattr(ds, tag, None)
        if v not in (None, "") and float(v) > 0:
            return np.arange(n) * to_s(float(v))
    if fps:
        return np.arange(n) / fps
    raise DataError(
        f"{path}: multi-frame DICOM without frame timing (FrameTime, FrameTimeVector, CineRate); pass "
        "--xray-fps with its frame rate"
    )


def _multiframe(path: Path, fps: float | None) -> XraySource:
    import pydicom

    ds = pydicom.dcmread(str(path))
    n = dicom_frame_count(ds)
    grey = dicom_grey(ds, ds.pixel_array if n > 1 else ds.pixel_array[None])  # (n, H, W) in [0, 255]
    imgs = np.round(grey).astype(np.uint8)
    return XraySource("dicom-multiframe", path, _multiframe_times(ds, n, fps, path), lambda k: imgs[k], None, fps)


def _series(folder: Path, fps: float | None) -> XraySource:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    heads = []
    for p in files:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # not a DICOM file (e.g. DICOMDIR leftovers, notes): skipped, listed in the error if none
            continue
        if dicom_frame_count(ds) > 1:
            raise DataError(f"{p}: a multi-frame DICOM inside a series folder; ingest it on its own with --xray {p}")
        heads.append((p, _dicom_times(ds), int(getattr(ds, "InstanceNumber", 0) or 0)))
    if not heads:
        raise DataError(f"{folder}: no DICOM files found (for a video or a multi-frame DICOM, pass the file itself)")
    if all(h[1] is not None for h in heads):
        heads.sort(key=lambda h: h[1])
        times = np.array([h[1] for h in heads], dtype=np.float64)
        times -= times[0]
    elif fps:
        heads.sort(key=lambda h: (h[2], h[0].name))
        times = np.arange(len(heads)) / fps
    else:
        missing = [h[0].name for h in heads if h[1] is None][:3]
        raise DataError(
            f"{folder}: images without acquisition/content time (e.g. {missing}); pass --xray-fps to "
            "order them by InstanceNumber at that rate"
        )

    def get(k: int) -> np.ndarray:
        ds = pydicom.dcmread(str(heads[k][0]))
        return np.round(dicom_grey(ds, ds.pixel_array)).astype(np.uint8)

    return XraySource("dicom-series", folder, times, get, None, fps)


def open_xray_source(path: str | Path, fps: float | None = None) -> XraySource:
    """A video file, a DICOM series folder or a (multi-frame) DICOM file."""
    path = Path(path)
    if path.is_dir():
        return _series(path, fps)
    if not path.is_file():
        raise FileNotFoundError(f"X-ray source not found: {path}")
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _multiframe(path, fps)
    return _video(path, fps)


def sample_seconds(src: XraySource, seconds: int, offset_s: float = 0.0) -> tuple[np.ndarray, int, int]:
    """Index of the image on screen at each audio second ``t`` (``-1`` before the source starts).

    Returns:
        ``(index (seconds,), n_before_start, first_uncovered_second)``; seconds ``>= first_uncovered_second`` are past
        the end of a video (``seconds`` when everything is covered).
    """
    tau = np.arange(seconds, dtype=np.float64) - offset_s
    idx = np.searchsorted(src.times, tau + 1e-6, side="right") - 1  # last image with time <= tau
    before = int(np.sum(idx < 0))
    uncovered = seconds
    if src.end_s is not None:
        past = np.flatnonzero(tau >= src.end_s - 1e-6)
        uncovered = int(past[0]) if past.size else seconds
    return idx, before, uncovered
