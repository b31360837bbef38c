"""Image files: reading as ``uint8 [H, W, 3]`` RGB, the size from the header, and the up-front scan that decodes every
image once before training so that bad files are reported together."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepacc.samples import DataError, Sample

__all__ = ["IMAGE_EXTS", "image_size", "read_image", "scan_images"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` (grey copied to 3 channels; 16-bit rescaled by its max).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file cannot be decoded.
    """
    import cv2
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    arr: np.ndarray | None = None
    if path.suffix.lower() not in (".tif", ".tiff"):  # OpenCV warns on private TIFF tags: PIL reads those
        try:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except Exception:  # noqa: BLE001 - fall back to PIL
            arr = None
    if arr is None:
        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read image {path}: {exc} (is it a valid PNG/JPEG/TIFF/BMP?)") from None
    elif arr.ndim == 3 and arr.shape[2] >= 3:
        arr = arr[..., 2::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0]]  # BGR(A) -> RGB
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        mx = float(a.max()) if a.size else 1.0
        arr = np.clip(a / (mx if mx > 0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)  # [H, W] -> [H, W, 3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(f"image {path} has unsupported shape {arr.shape}; expected grey or RGB")
    return np.ascontiguousarray(arr)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header (no full decode); :class:`DataError` if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size  # (W, H)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {exc}") from None


def scan_images(samples: list[Sample], progress: bool = False) -> None:
    """Decode every image once before training: unreadable, truncated or wrong-size images are reported together.

    Raises:
        DataError: listing every bad image (path and problem) and the fix.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    problems: list[str] = []
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
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DataError(
            f"{len(problems)} of {len(samples)} images cannot be used:\n  {shown}{more}\n"
            "replace or remove them (and their annotations), or fix the width/height in the annotation file"
        )
