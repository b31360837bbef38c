"""Reading ultrasound videos: video files (OpenCV), folders of frames, and DICOM cine loops (multi-frame, pydicom),
and blacking out the scanner's burned-in text bands.

Every reader returns ``(T, H, W, 3)`` uint8 RGB (or ``(T, H, W)`` grey) and raises :class:`DataError` naming the file
and the fix for anything it cannot read as stored: nothing is rescaled, cropped or dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "iter_frames",
    "frame_count_and_size",
    "DataError",
    "read_video",
    "read_dicom",
    "is_dicom",
    "blackout_frames",
    "parse_blackout",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "DICOM_EXTS",
]

log = logging.getLogger("kfgnet")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv")
DICOM_EXTS = (".dcm", ".dicom")


class DataError(ValueError):
    """Expected bad-input error (unreadable video, bad key frame, unknown label, ...); the CLI prints it plainly."""


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` / ``.dicom`` name, or a file with the DICOM preamble magic ``DICM`` at byte 128."""
    p = Path(path)
    if p.suffix.lower() in DICOM_EXTS:
        return True
    if not p.is_file() or p.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS:
        return False
    with p.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom(path: str | Path) -> np.ndarray:
    """All frames of a DICOM file (a multi-frame ultrasound cine loop, or one frame) as ``(T, H, W, 3)`` uint8 RGB.

    Colour (RGB, or YBR converted to RGB by pydicom) is kept; MONOCHROME2 is repeated over three channels;
    MONOCHROME1 (inverted grey) is inverted to MONOCHROME2 as the standard defines, and logged. Pixels must be 8-bit
    as stored: deeper data raises an error (window it to 8 bits first), never a silent rescale.
    """
    try:
        import pydicom
        from pydicom.pixels import pixel_array
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading DICOM needs pydicom: pip install 'kfgnet[dicom]' (or pip install pydicom)") from e
    p = Path(path)
    try:
        ds = pydicom.dcmread(str(p))
        arr = pixel_array(ds, as_rgb=True)
    except Exception as e:  # pydicom raises many types for corrupt or compressed-without-plugin data
        raise DataError(
            f"cannot read the pixels of DICOM {p} ({type(e).__name__}: {e}); a compressed transfer "
            f"syntax may need a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg)"
        ) from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1))
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if frames == 1:
        arr = arr[None]  # (1, H, W[, 3])
    if spp == 1:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # (T, H, W) -> (T, H, W, 3)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(
            f"DICOM {p} has pixel shape {arr.shape} (frames {frames}, samples per pixel {spp}); "
            f"expected a grey or RGB image or cine loop"
        )
    if arr.dtype != np.uint8:
        if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)  # 8-bit values stored in a wider type: same numbers
        else:
            bits = getattr(ds, "BitsStored", "?")
            raise DataError(
                f"DICOM {p} stores {bits}-bit pixels ({arr.dtype}, range {arr.min()}..{arr.max()}); "
                f"kfgnet reads 8-bit ultrasound: export the loop as 8-bit (window it) first"
            )
    if photometric == "MONOCHROME1":
        log.warning("DICOM %s is MONOCHROME1 (white = 0): inverted to MONOCHROME2 as the standard defines", p)
        arr = 255 - arr
    return np.ascontiguousarray(arr)


def read_video(path: str | Path, gray: bool = False, blackout: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Read all frames of a video file (OpenCV: avi, mp4, ...), a DICOM cine loop, or a folder of images (sorted by
    name).

    Args:
        path: video file, DICOM file or frame folder.
        gray: return ``(T, H, W)`` grey (ITU-R 601 luma) instead of ``(T, H, W, 3)`` RGB.
        blackout: pixels (top, bottom, left, right) set to 0 on every frame (see :func:`blackout_frames`).

    Returns:
        uint8 frames. Raises :class:`DataError` naming the file when it cannot be read.
    """
    import cv2

    p = Path(path)
    if not p.exists():
        raise DataError(
            f"video {p} does not exist; check the 'video' column of the manifest (paths are relative to the manifest)"
        )
    if not p.is_dir() and is_dicom(p):
        arr = read_dicom(p)
    else:
        frames: list[np.ndarray] = []
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise DataError(f"frame folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
            for f in files:
                im = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if im is None:
                    raise DataError(f"cannot read frame {f} (corrupt or not an image)")
                frames.append(im)
        else:
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise DataError(
                    f"cannot open video {p} (corrupt, or a codec OpenCV lacks); re-encode it, e.g. "
                    f"ffmpeg -i in -c:v mjpeg out.avi, or extract its frames into a folder"
                )
            while True:
                ok, im = cap.read()
                if not ok:
                    break
                frames.append(im)
            cap.release()
            if not frames:
                raise DataError(f"video {p} has no readable frames (corrupt or empty file)")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise DataError(f"frames of {p} differ in size: {sorted(shapes)}")
        arr = np.ascontiguousarray(np.stack(frames)[..., ::-1])  # (T, H, W, 3) BGR -> RGB
    if blackout is not None and any(blackout):
        arr = blackout_frames(arr, blackout)
    if gray:
        g = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114  # RGB -> luma
        return np.ascontiguousarray(g.round().astype(np.uint8))
    return arr


def parse_blackout(spec: str | tuple[int, ...] | list[int] | None) -> tuple[int, int, int, int]:
    """``"60"`` / ``"60,0,0,0"`` / ``(60, 0, 0, 0)`` -> (top, bottom, left, right) pixels; missing sides are 0."""
    if spec is None or spec == "":
        return (0, 0, 0, 0)
    vals = [int(v) for v in str(spec).split(",")] if isinstance(spec, str) else [int(v) for v in spec]
    if len(vals) > 4 or any(v < 0 for v in vals):
        raise ValueError(f"blackout {spec!r}: expected up to 4 non-negative pixel counts top,bottom,left,right")
    return tuple(vals + [0] * (4 - len(vals)))  # type: ignore[return-value]


def blackout_frames(frames: np.ndarray, blackout: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``frames`` (``(T, H, W[, C])``) with ``top`` / ``bottom`` rows and ``left`` / ``right`` columns set to
    0: the scanner's burned-in text bands (patient name, date, depth scale), which a network could otherwise learn.

    Raises:
        DataError: bands that would cover the whole frame.
    """
    top, bottom, left, right = blackout
    h, w = frames.shape[1:3]
    if top + bottom >= h or left + right >= w:
        raise DataError(
            f"blackout {blackout} covers the whole {w}x{h} frame; give smaller bands (top, bottom, left, right pixels)"
        )
    out = frames.copy()
    if top:
        out[:, :top] = 0
    if bottom:
        out[:, h - bottom :] = 0
    if left:
        out[:, :, :left] = 0
    if right:
        out[:, :, w - right :] = 0
    return out


def frame_count_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    """(number of frames, (W, H)) of a video file, DICOM or frame folder, counting frames by decoding (exact)."""
    import cv2

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"frame folder {p} holds no images")
        im = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if im is None:
            raise DataError(f"cannot read frame {files[0]}")
        return len(files), (im.shape[1], im.shape[0])
    n, size = 0, (0, 0)
    for _, f in iter_frames(p, None):
        n, size = n + 1, (f.shape[1], f.shape[0])
    return n, size


def iter_frames(path: Path, wanted: set[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, BGR frame)`` of the wanted frames (all when None), decoding the video once, front to back
    (video files skip unwanted frames without converting them to arrays)."""
    import cv2

    p = Path(path)
    if not p.exists():
        raise DataError(f"video {p} does not exist; check the 'video' column of the manifest")
    if not p.is_dir() and is_dicom(p):  # a cine loop is decoded whole by pydicom
        for i, f in enumerate(read_dicom(p)):
            if wanted is None or i in wanted:
                yield i, np.ascontiguousarray(f[..., ::-1])  # RGB -> BGR, as OpenCV's frames
        return
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        for i, f in enumerate(files):
            if wanted is None or i in wanted:
                im = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if im is None:
                    raise DataError(f"cannot read frame {f} (corrupt or not an image)")
                yield i, im
        return
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise DataError(
            f"cannot open video {p} (corrupt, or a codec OpenCV lacks); re-encode it or extract its "
            f"frames into a folder"
        )
    last = max(wanted) if wanted else None
    i = 0
    try:
        while last is None or i <= last:
            if wanted is not None and i not in wanted:
                if not cap.grab():  # skip without decoding into an array
                    break
            else:
                ok, im = cap.read()
                if not ok:
                    break
                yield i, im
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise DataError(f"video {p} has no readable frames (corrupt or empty file)")
