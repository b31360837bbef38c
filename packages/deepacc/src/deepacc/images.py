"""Image files: reading as ``uint8 [H, W, 3]`` RGB, the size from the header, and the up-front scan that decodes every
image once before training so that bad files are reported together.

Pixels are read as stored. Images deeper than 8 bits (16-bit TIFF/PNG microscopy images) are an error unless the
caller asks for ``rescale_16bit`` (the ``--rescale-16bit`` flag): then each such image is divided by its own maximum
and scaled to 0-255, and the callers log which files were rescaled (:func:`rescale_summary`). An alpha channel is
dropped when it is fully opaque; a translucent one is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from deepacc.samples import DataError, Sample

__all__ = [
    "IMAGE_EXTS",
    "RESCALE_FLAG",
    "image_size",
    "read_image",
    "read_image_and_depth",
    "rescale_summary",
    "scan_images",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: The command-line flag that allows rescaling of non-8-bit images (named in error messages and logs).
RESCALE_FLAG = "--rescale-16bit"

_REFUSED_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # PIL modes whose arrays are not RGB: refused, never converted


def _decode_pil(path: Path) -> np.ndarray:
    """Pixels via PIL: palette expanded, 1-bit as 0/255, other colour spaces refused; the stored dtype kept."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _REFUSED_MODES:
                raise DataError(f"image {path} is stored as {im.mode}; save it as RGB or grey")
            if im.mode in ("P", "PA"):  # palette indices -> the colours they stand for
                im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            bits = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample: PIL reads 48-bit RGB as 8-bit RGB
            arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {exc} (is it a valid PNG/JPEG/TIFF/BMP?)") from None
    if arr.dtype == np.uint8 and bits is not None and max(np.atleast_1d(bits)) > 8:
        import cv2

        full = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # full bit depth (PIL would keep the high byte only)
        if full is None or full.dtype == np.uint8:
            raise DataError(f"image {path} is stored with {max(np.atleast_1d(bits))} bits per sample but cannot be "
                            "decoded at that depth; convert it to 8-bit")  # fmt: skip
        arr = _bgr_to_rgb(full)
    return arr


def _bgr_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # BGR(A) -> RGB(A)
    return arr


def _decode(path: Path) -> np.ndarray:
    """The pixels as stored: ``[H, W]`` or ``[H, W, C]`` in RGB(A) / grey(+alpha) order, in the file's dtype."""
    import cv2

    arr: np.ndarray | None = None
    if path.suffix.lower() not in (".tif", ".tiff"):  # OpenCV warns on private TIFF tags: PIL reads those
        try:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except Exception:  # noqa: BLE001 - fall back to PIL
            arr = None
    return _decode_pil(path) if arr is None else _bgr_to_rgb(arr)


def _depth_name(dtype: np.dtype) -> str:
    return f"{dtype.itemsize * 8}-bit ({dtype.name})"


#: Fixes of the per-image problems found by :func:`_problem`, as the scan lists them (once per kind).
_FIXES = {
    "alpha": "save images with a translucent alpha channel without alpha (RGB or grey)",
    "depth": f"convert images that are not 8-bit to 8-bit, or pass {RESCALE_FLAG} (each such image divided by its own "
    "maximum and scaled to 0-255, logged)",
    "float": f"convert floating-point images to 8-bit ({RESCALE_FLAG} rescales integer images only)",
    "negative": "convert images with negative values to 8-bit",
}


def _problem(arr: np.ndarray, rescale_16bit: bool) -> tuple[str, str] | None:
    """``(kind, what)`` of the first reason ``arr`` cannot be used as stored, or None."""
    if arr.ndim == 3 and arr.shape[2] in (2, 4):  # grey + alpha, RGB + alpha
        opaque = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0
        n = int((arr[..., -1] != opaque).sum())
        if n:
            return "alpha", f"has a translucent alpha channel ({n} of {arr[..., -1].size} pixels not opaque)"
    if arr.dtype in (np.uint8, np.bool_):
        return None
    depth = f"{arr.dtype.itemsize * 8}-bit ({arr.dtype.name})"
    if arr.dtype.kind not in "ui":
        return "float", f"is {depth} floating point"
    if not rescale_16bit:
        return "depth", f"is {depth}, not 8-bit"
    if arr.size and int(arr.min()) < 0:
        return "negative", f"is {depth} with negative values"
    return None


def _to_rgb8(arr: np.ndarray, path: Path, rescale_16bit: bool) -> np.ndarray:
    """Drop an opaque alpha, rescale a deeper image (when allowed), copy grey to 3 channels."""
    problem = _problem(arr, rescale_16bit)
    if problem is not None:
        raise DataError(f"image {path} {problem[1]}; {_FIXES[problem[0]]}")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., :-1]  # opaque alpha
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        mx = float(arr.max()) if arr.size else 0.0
        arr = np.clip(arr.astype(np.float64) / (mx if mx > 0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)  # [H, W] -> [H, W, 3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(f"image {path} has unsupported shape {arr.shape}; expected grey or RGB")
    return np.ascontiguousarray(arr)


def read_image_and_depth(path: str | Path, rescale_16bit: bool = False) -> tuple[np.ndarray, str]:
    """:func:`read_image`, and the dtype the file stores (``"uint8"``; ``"uint16"`` etc. when it was rescaled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    arr = _decode(path)
    stored = "uint8" if arr.dtype == np.bool_ else arr.dtype.name
    return _to_rgb8(arr, path, rescale_16bit), stored


def read_image(path: str | Path, rescale_16bit: bool = False) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]``: grey copied to 3 channels, a fully opaque alpha channel dropped.

    Args:
        rescale_16bit: images deeper than 8 bits (16-bit, 32-bit integer) are divided by their own maximum and
            scaled to 0-255 (truncated); without it they are an error. The caller logs which files were rescaled.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file cannot be decoded; it is not 8-bit (without ``rescale_16bit``) or floating point; it has
            a translucent alpha channel; or it is not grey / RGB.
    """
    return read_image_and_depth(path, rescale_16bit)[0]


def rescale_summary(rescaled: Sequence[tuple[Path, str]], total: int, shown: int = 5) -> str:
    """One log line naming the rescaled images (the first ``shown`` of them) and their stored dtypes."""
    depths = ", ".join(sorted({d for _, d in rescaled}))
    names = ", ".join(str(p) for p, _ in rescaled[:shown])
    more = f" (+{len(rescaled) - shown} more)" if len(rescaled) > shown else ""
    return (f"{RESCALE_FLAG}: rescaled {len(rescaled)} of {total} images ({depths}) to 0-255, each by its own "
            f"maximum: {names}{more}")  # fmt: skip


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header (no full decode); :class:`DataError` if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size  # (W, H)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {exc}") from None


def scan_images(
    samples: list[Sample],
    progress: bool = False,
    rescale_16bit: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[tuple[Path, str]]:
    """Decode every image once before training: unreadable, truncated, wrong-size, non-8-bit (without
    ``rescale_16bit``) and translucent images are reported together.

    Returns:
        the rescaled images and their stored dtypes (empty without ``rescale_16bit``); a summary goes to ``log``.

    Raises:
        DataError: listing every bad image (path and problem) and the fixes.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    problems: list[str] = []
    kinds: list[str] = []
    rescaled: list[tuple[Path, str]] = []
    for s in tqdm(samples, desc="scan images", disable=not progress, leave=False):
        try:
            with Image.open(s.image_path) as im:
                im.load()  # full decode: a truncated file fails here, not in the middle of training
                w, h = im.size
        except FileNotFoundError:
            problems.append(f"{s.image_path}: missing")
            continue
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
            problems.append(f"{s.image_path}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if s.width is not None and (s.width, s.height) != (w, h):
            problems.append(f"{s.image_path}: image is {w}x{h} but its annotation says {s.width}x{s.height}")
            continue
        try:
            arr = _decode(s.image_path)  # as training reads it
        except DataError as exc:
            problems.append(f"{s.image_path}: {exc}")
            continue
        problem = _problem(arr, rescale_16bit)
        if problem is not None:
            problems.append(f"{s.image_path}: {problem[1]}")
            kinds.append(problem[0])
        elif arr.dtype not in (np.uint8, np.bool_):
            rescaled.append((s.image_path, arr.dtype.name))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        fixes = [_FIXES[k] for k in dict.fromkeys(kinds)]
        if len(kinds) < len(problems):  # missing, unreadable or wrong-size images
            fixes.append("replace or remove the other images (and their annotations), or fix the width/height in "
                         "the annotation file")  # fmt: skip
        raise DataError(f"{len(problems)} of {len(samples)} images cannot be used:\n  {shown}{more}\n"
                        + ";\n".join(fixes))  # fmt: skip
    if rescaled and log is not None:
        log(rescale_summary(rescaled, len(samples)))
    return rescaled
