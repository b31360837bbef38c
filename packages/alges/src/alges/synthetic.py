"""Synthetic laparoscopy-like videos written in the CholecSeg8k layout (for the demo and the tests).

Each "video" is one scene: organ-like textured regions (abdominal wall, liver, fat, GI tract, gallbladder, and rarer
connective tissue, blood, cystic duct, hepatic vein, liver ligament) drawn from smooth random fields, inside the dark
endoscope vignette (class 0), with thin metal tools (grasper, L-hook) entering from the border in some videos. Frames of
one video pan slowly over the scene and move the tools a little, so consecutive frames are near-duplicates (the
redundancy active learning must avoid), while videos differ in tint, organ layout and which classes occur (so
diversity matters). Tools and blood are thin or small: strong class imbalance, as in the real data.

Classes differ the way real ones do: by colour (liver dark red, fat yellow, gallbladder green, tools grey) and by
texture (fat blobby, abdominal wall striated, liver finely speckled). Masks are written as CholecSeg8k watershed masks
(grey values of ``alges.config.GREY_TO_ID``, R=G=B, with the real 1-px 255 border), so the real loader reads them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from alges.config import GREY_TO_ID

__all__ = ["generate_cholecseg8k", "render_video", "BASE_COLORS", "PALETTE"]

ID_TO_GREY = {c: g for g, c in GREY_TO_ID.items()}
# per-class base colours (RGB)
BASE_COLORS = {
    0: (5, 5, 5),
    1: (200, 125, 115),  # abdominal wall: pink, striated
    2: (125, 40, 35),  # liver: dark red, speckled
    3: (215, 150, 140),  # GI tract: light pink, smooth folds
    4: (225, 195, 105),  # fat: yellow, blobby
    5: (70, 75, 80),  # grasper: dark metal
    6: (225, 210, 200),  # connective tissue: whitish
    7: (100, 5, 10),  # blood: very dark red
    8: (175, 165, 110),  # cystic duct: yellowish tube
    9: (185, 190, 195),  # L-hook: bright metal
    10: (95, 125, 60),  # gallbladder: green
    11: (70, 50, 110),  # hepatic vein: purple
    12: (205, 170, 150),  # liver ligament
}
# Kaggle colour-mask palette (visualisation only; never ground truth)
PALETTE = [
    (127, 127, 127),
    (210, 140, 140),
    (255, 114, 114),
    (231, 70, 156),
    (186, 183, 75),
    (170, 255, 0),
    (255, 85, 0),
    (255, 0, 0),
    (255, 255, 0),
    (169, 255, 184),
    (255, 160, 165),
    (0, 50, 128),
    (111, 74, 0),
]


def _smooth_field(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth random field in about [-1, 1] with blobs of roughly ``scale`` pixels."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    f = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC)


def _texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """Per-class texture in intensity units, [h, w]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if cls == 1:  # striated muscle wall
        ang = rng.uniform(0, np.pi)
        return 18 * np.sin((np.cos(ang) * xx + np.sin(ang) * yy) / 2.2)
    if cls == 2:  # liver: fine speckle
        return 14 * rng.standard_normal((h, w)).astype(np.float32)
    if cls == 4:  # fat: bright lobules
        return 30 * np.clip(_smooth_field(rng, h, w, 4), 0, None)
    if cls == 3:  # GI tract: soft folds
        return 20 * _smooth_field(rng, h, w, 10)
    if cls == 10:  # gallbladder: smooth with a broad highlight
        return 25 * np.clip(_smooth_field(rng, h, w, 20), -0.3, None)
    return 6 * rng.standard_normal((h, w)).astype(np.float32)


def _scene(rng: np.random.Generator, ch: int, cw: int) -> tuple[np.ndarray, np.ndarray]:
    """One video's organ canvas: labels uint8 [ch, cw] and RGB float [ch, cw, 3]."""
    organs = [1, 2, 4]
    for c, prob in ((3, 0.6), (10, 0.7), (6, 0.5), (12, 0.25), (11, 0.2)):
        if rng.random() < prob:
            organs.append(c)
    yy = np.linspace(-1, 1, ch, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, cw, dtype=np.float32)[None, :]
    prior = {  # rough anatomy: abdominal wall at the top, liver upper half, fat/GI lower, gallbladder central
        1: 1.3 * -yy - 0.4,
        2: 0.6 * -yy + 0.2 * xx,
        4: 0.5 * yy,
        3: 0.9 * yy - 0.2,
        10: 0.4 - 1.2 * (xx**2 + yy**2),
        6: -0.5 + 0 * xx,
        12: -0.6 + 0 * xx,
        11: -0.6 + 0 * xx,
    }
    pots = np.stack([prior[c] + 0.8 * _smooth_field(rng, ch, cw, 40) for c in organs])  # [C, ch, cw]
    labels = np.asarray(organs, dtype=np.uint8)[pots.argmax(0)]
    if rng.random() < 0.6:  # thin cystic duct: a bent line through the scene
        pts = np.stack([rng.uniform(0.2, 0.8, 3) * cw, rng.uniform(0.3, 0.8, 3) * ch], 1).astype(np.int32)
        cv2.polylines(labels, [pts.reshape(-1, 1, 2)], False, 8, thickness=int(rng.integers(3, 6)))
    for _ in range(int(rng.integers(0, 3))):  # small blood pools
        c = (int(rng.uniform(0.1, 0.9) * cw), int(rng.uniform(0.3, 0.9) * ch))
        cv2.ellipse(labels, c, (int(rng.integers(3, 9)), int(rng.integers(2, 6))), rng.uniform(0, 180), 0, 360, 7, -1)
    tint = rng.uniform(-18, 18, 3).astype(np.float32)
    rgb = np.zeros((ch, cw, 3), np.float32)
    for c in np.unique(labels):
        m = labels == c
        base = np.asarray(BASE_COLORS[int(c)], np.float32) + tint
        tex = _texture(rng, int(c), ch, cw)[m]
        rgb[m] = base[None, :] + tex[:, None]
    rgb *= 0.75 + 0.35 * (_smooth_field(rng, ch, cw, 40)[..., None] * 0.5 + 0.5)  # uneven lighting
    return labels, rgb


def _draw_tool(
    img: np.ndarray, lab: np.ndarray, cls: int, start: tuple[float, float], angle: float, length: float, width: int
) -> None:
    """A straight metal shaft from ``start`` (on the border) at ``angle`` (radians); the L-hook ends in a hook."""
    x0, y0 = start
    x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
    p0, p1 = (int(x0), int(y0)), (int(x1), int(y1))
    shade = BASE_COLORS[cls]
    cv2.line(lab, p0, p1, cls, width)
    cv2.line(img, p0, p1, tuple(float(s) for s in shade), width)
    hi = tuple(float(min(255, s + 50)) for s in shade)
    cv2.line(img, p0, p1, hi, max(1, width // 3))  # specular highlight along the shaft
    if cls == 5:  # grasper jaws
        for da in (-0.5, 0.5):
            q = (int(x1 + 0.18 * length * np.cos(angle + da)), int(y1 + 0.18 * length * np.sin(angle + da)))
            cv2.line(lab, p1, q, cls, max(2, width - 2))
            cv2.line(img, p1, q, tuple(float(s) for s in shade), max(2, width - 2))
    else:  # L-hook tip
        q = (int(x1 + 0.12 * length * np.cos(angle + 1.57)), int(y1 + 0.12 * length * np.sin(angle + 1.57)))
        cv2.line(lab, p1, q, cls, max(2, width - 1))
        cv2.line(img, p1, q, hi, max(2, width - 1))


def render_video(seed: int, n_frames: int, width: int = 192, height: int = 108) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic video: frames uint8 [T, height, width, 3] (RGB) and class ids uint8 [T, height, width]."""
    rng = np.random.default_rng(seed)
    margin = 48
    ch, cw = height + 2 * margin, width + 2 * margin
    labels, rgb = _scene(rng, ch, cw)
    tools = []
    for cls, prob in ((5, 0.75), (9, 0.5)):
        if rng.random() < prob:
            side = rng.integers(0, 2)
            start = (width * (0.05 if side == 0 else 0.95), height * rng.uniform(0.6, 1.0))
            base_angle = -0.6 if side == 0 else np.pi + 0.6
            tools.append(
                (
                    cls,
                    start,
                    base_angle + rng.uniform(-0.3, 0.3),
                    rng.uniform(0.35, 0.6) * width,
                    int(rng.integers(4, 8)) if cls == 5 else int(rng.integers(3, 5)),
                    rng.uniform(-0.02, 0.02),
                )
            )
    v = rng.uniform(-1.2, 1.2, 2)  # pan velocity, px/frame
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vignette = ((xx - width / 2) / (0.54 * width)) ** 2 + ((yy - height / 2) / (0.68 * height)) ** 2 > 1.0
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    masks = np.empty((n_frames, height, width), np.uint8)
    for t in range(n_frames):
        ox = int(np.clip(margin + v[0] * t + rng.normal(0, 0.3), 0, 2 * margin))
        oy = int(np.clip(margin + v[1] * t + rng.normal(0, 0.3), 0, 2 * margin))
        lab = labels[oy : oy + height, ox : ox + width].copy()
        img = rgb[oy : oy + height, ox : ox + width].copy()
        for cls, start, ang, length, wdt, dang in tools:
            _draw_tool(img, lab, cls, start, ang + dang * t, length * (1 + 0.1 * np.sin(0.2 * t)), wdt)
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        img[vignette] = rng.uniform(0, 12, (int(vignette.sum()), 3))
        lab[vignette] = 0
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        masks[t] = lab
    return frames, masks


def generate_cholecseg8k(
    root: str | Path,
    n_videos: int = 6,
    frames_per_video: int = 40,
    clip_len: int = 20,
    width: int = 192,
    height: int = 108,
    seed: int = 0,
    video_numbers: list[int] | None = None,
    color_masks: bool = True,
) -> list[str]:
    """Write ``n_videos`` synthetic videos under ``root`` in the CholecSeg8k layout; returns the video names.

    Layout: ``root/videoXX/videoXX_SSSSS/frame_N_endo.png``, ``..._endo_watershed_mask.png`` (grey, R=G=B, 1-px 255
    border like the real masks) and ``..._endo_color_mask.png`` (Kaggle palette, for viewing only).
    """
    root = Path(root)
    nums = video_numbers or list(range(1, n_videos + 1))
    names = []
    grey = np.zeros(256, np.uint8)
    for c, g in ID_TO_GREY.items():
        grey[c] = g
    pal = np.asarray(PALETTE, np.uint8)
    for vi, num in enumerate(nums[:n_videos]):
        name = f"video{num:02d}"
        names.append(name)
        frames, masks = render_video(seed * 1000 + vi, frames_per_video, width, height)
        for t in range(frames_per_video):
            clip_start = (t // clip_len) * clip_len
            d = root / name / f"{name}_{clip_start:05d}"
            d.mkdir(parents=True, exist_ok=True)
            stem = f"frame_{t}_endo"
            cv2.imwrite(str(d / f"{stem}.png"), cv2.cvtColor(frames[t], cv2.COLOR_RGB2BGR))
            g = grey[masks[t]]
            g[0, :] = g[-1, :] = g[:, 0] = g[:, -1] = 255  # the real masks' stray white border
            cv2.imwrite(str(d / f"{stem}_watershed_mask.png"), np.repeat(g[..., None], 3, axis=2))
            if color_masks:
                cv2.imwrite(str(d / f"{stem}_color_mask.png"), cv2.cvtColor(pal[masks[t]], cv2.COLOR_RGB2BGR))
    return names
