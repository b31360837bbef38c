"""Drawing helpers: detection overlays and karyograms (chromosomes cropped, rotated upright, arranged in 24 slots)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepacc.config import CLASS_NAMES, DENVER_GROUPS

__all__ = ["draw_detections", "karyogram", "save_png", "upright_crop"]

_GROUP_COLORS = {  # RGB per Denver group
    "A": (230, 25, 75), "B": (60, 180, 75), "C": (0, 130, 200), "D": (245, 130, 48),
    "E": (145, 30, 180), "F": (70, 160, 160), "G": (200, 40, 160),
}  # fmt: skip
_CLASS_GROUP = {c: g for g, members in DENVER_GROUPS.items() for c in members}
#: Karyogram rows (ISCN layout): 1-5 / 6-12, X / 13-18 / 19-22, Y.
KARYO_ROWS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11, 12, 23), (13, 14, 15, 16, 17, 18),
                                           (19, 20, 21, 22, 24))  # fmt: skip


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB ``uint8 [H, W, 3]`` image atomically as PNG."""
    import cv2
    from medshared.runtime import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"could not write {path}")
    return path


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None
) -> np.ndarray:
    """Overlay boxes coloured by Denver group with class names (and scores) on an RGB ``uint8 [H, W, 3]`` image."""
    import cv2

    out = image.copy()
    h = out.shape[0]
    thick = max(1, int(round(h / 600)))
    font = max(0.3, h / 1600)
    for i, (b, lab) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).ravel())):
        color = _GROUP_COLORS.get(_CLASS_GROUP.get(int(lab), "A"), (255, 0, 0))
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = CLASS_NAMES[int(lab)] if 0 <= int(lab) < len(CLASS_NAMES) else str(lab)
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        cv2.putText(out, text, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, font, color, thick, cv2.LINE_AA)
    return out


def upright_crop(gray: np.ndarray, box: np.ndarray, pad: int = 3) -> np.ndarray:
    """Crop a chromosome (dark on bright) from ``gray [H, W]`` and rotate its long axis to vertical.

    Returns a grey ``uint8`` crop with a white background.
    """
    import cv2

    h, w = gray.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w), min(y2 + pad, h)
    crop = gray[y1:y2, x1:x2]
    if crop.size == 0:
        return np.full((4, 4), 255, np.uint8)
    thr, _ = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    mask = crop < thr
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return crop
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    vx, vy = evecs[:, int(np.argmax(evals))]
    angle = math.degrees(math.atan2(vy, vx)) - 90.0  # rotate the long axis onto the vertical
    ch, cw = crop.shape
    rot = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = int(ch * sin + cw * cos) + 2, int(ch * cos + cw * sin) + 2
    rot[0, 2] += nw / 2 - cw / 2
    rot[1, 2] += nh / 2 - ch / 2
    masked = np.where(mask, crop, 255).astype(np.uint8)  # keep only this chromosome
    out = cv2.warpAffine(masked, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=255)
    ys, xs = np.nonzero(out < 250)
    if len(xs):
        out = out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return out


def karyogram(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None, cell: int = 96
) -> np.ndarray:
    """Arrange detected chromosomes in 24 class slots (rows 1-5 / 6-12, X / 13-18 / 19-22, Y).

    Args:
        image: RGB or grey ``uint8`` metaphase.
        boxes, labels: detections (labels 1..24); within a slot chromosomes are ordered by descending score.
        cell: slot height in pixels.

    Returns:
        RGB ``uint8`` karyogram.
    """
    import cv2

    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    boxes = np.asarray(boxes).reshape(-1, 4)
    labels = np.asarray(labels).ravel()
    order = np.argsort(-np.asarray(scores)) if scores is not None else np.arange(len(labels))
    crops: dict[int, list[np.ndarray]] = {c: [] for c in range(1, 25)}
    for i in order:
        if 1 <= int(labels[i]) <= 24:
            crops[int(labels[i])].append(upright_crop(gray, boxes[i]))
    tallest = max([c.shape[0] for cs in crops.values() for c in cs] + [1])
    scale = min(1.0, (cell - 18) / tallest) if tallest > 0 else 1.0
    slot_w = int(cell * 0.9)
    n_cols = max(len(r) for r in KARYO_ROWS)
    canvas = np.full((cell * len(KARYO_ROWS) + 10, slot_w * n_cols + 10, 3), 255, np.uint8)
    for r, row in enumerate(KARYO_ROWS):
        for j, cls in enumerate(row):
            x0 = 5 + j * slot_w
            y0 = 5 + r * cell
            base = y0 + cell - 16
            cv2.line(canvas, (x0 + 4, base + 2), (x0 + slot_w - 4, base + 2), (120, 120, 120), 1)
            cv2.putText(canvas, CLASS_NAMES[cls], (x0 + slot_w // 2 - 8, base + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
            items = crops[cls]
            if not items:
                continue
            avail = slot_w - 6
            widths = [max(1, int(c.shape[1] * scale)) for c in items]
            s2 = min(1.0, avail / max(sum(widths) + 2 * (len(items) - 1), 1))
            x = x0 + 3
            for c in items:
                ch, cw = max(1, int(c.shape[0] * scale * s2)), max(1, int(c.shape[1] * scale * s2))
                rc = cv2.resize(c, (cw, ch), interpolation=cv2.INTER_AREA)
                top = base - ch
                if top < y0 or x + cw > x0 + slot_w:
                    continue
                canvas[top:base, x : x + cw] = np.minimum(canvas[top:base, x : x + cw], rc[..., None])
                x += cw + 2
    return canvas
