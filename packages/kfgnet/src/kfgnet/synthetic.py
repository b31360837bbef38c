"""Synthetic thyroid ultrasound videos with real benign/malignant signal, written in the real data formats.

Each video is a transverse probe sweep over a thyroid nodule:

* background: a real thyroid B-mode frame from ``../shared/data/thyroid_us/image`` when present (else procedural
  tissue), translated as the probe drifts; multiplicative Rayleigh speckle redrawn every frame;
* the probe drifts fast, **slows down around the key frame** and speeds up again (so the motion index peaks there);
* the nodule is a slice through an ellipsoid: **largest and sharpest at the key frame**, shrinking and blurring away
  from it, invisible far from it;
* benign (TI-RADS-like cues): smooth oval margin, wider-than-tall, homogeneous, iso-/mildly hypo-echoic, thin halo;
* malignant: irregular/lobulated margin, taller-than-wide, markedly hypoechoic and heterogeneous, bright
  micro-calcification specks. A per-video ``typicality`` in [0.45, 1] blends the cues so classes overlap a little.

Written as ``videos/{vid}_{l|r}_t_{b|m}.avi`` (the authors' naming) plus ``manifest.json`` / ``manifest.csv`` with the
true key frame and a box on every frame where the nodule is visible; ``layout="release"`` additionally writes the
authors' release layout (``avi.csv`` key-frame table and LabelMe ``images/*.json`` outlines).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticConfig", "make_video", "make_synthetic", "load_backgrounds"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the synthetic cohort.

    Attributes:
        n_patients: patients; each has 1 or 2 videos of the same nodule (left/right sweep), so CV must group them.
        num_frames: frames per video (range ``num_frames`` .. ``1.25 num_frames``).
        size: frame height = width in pixels.
        malignant_fraction: share of malignant patients.
        fmt: ``"avi"`` (MJPG) or ``"frames"`` (a folder of PNGs per video).
    """

    n_patients: int = 24
    num_frames: int = 48
    size: int = 128
    malignant_fraction: float = 0.5
    fmt: str = "avi"
    seed: int = 0


def load_backgrounds(data_dir: Path | None, size: int) -> list[np.ndarray]:
    """Real thyroid frames (gray uint8, resized to ``2 size x 2 size``), or [] when the folder is absent."""
    import cv2

    if data_dir is None:
        return []
    folder = Path(data_dir) / "thyroid_us" / "image"
    out = []
    for p in sorted(folder.glob("*.jpg")):
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if im is not None:
            out.append(cv2.resize(im, (2 * size, 2 * size), interpolation=cv2.INTER_CUBIC))
    return out


def _procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    s = 2 * size
    base = np.zeros((s, s), np.float32)
    for scale, amp in ((4, 50.0), (16, 30.0), (48, 15.0)):
        n = rng.normal(0, 1, (s // scale + 2, s // scale + 2)).astype(np.float32)
        base += amp * cv2.resize(n, (s, s), interpolation=cv2.INTER_CUBIC)
    yy = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    base += 110 - 40 * yy  # depth attenuation
    return np.clip(base, 0, 255).astype(np.uint8)


def _nodule_mask(
    size: int, cx: float, cy: float, ax: float, ay: float, harmonics: np.ndarray, rough: float
) -> np.ndarray:
    """Soft-free binary mask of an (irregular) ellipse; ``harmonics`` (K, 2) = (amplitude, phase) for k = 3..K+2."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (xx - cx) / max(ax, 1e-3), (yy - cy) / max(ay, 1e-3)
    r = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx)
    edge = np.ones_like(r)
    for k, (amp, ph) in enumerate(harmonics, start=3):
        edge += rough * amp * np.sin(k * th + ph)
    return r <= edge


def make_video(
    rng: np.random.Generator,
    malignant: bool,
    num_frames: int,
    size: int,
    background: np.ndarray | None = None,
    nodule: dict | None = None,
) -> dict:
    """One synthetic sweep.

    Args:
        rng: random generator; malignant: class; num_frames: T; size: H = W.
        background: gray uint8 ``(2 size, 2 size)`` texture (a real frame) or None for procedural tissue.
        nodule: fixed nodule parameters (to re-use one nodule across a patient's videos); drawn when None.

    Returns:
        dict with ``frames`` uint8 ``(T, H, W)``, ``key_frame`` int, ``boxes`` {frame: [x1, y1, x2, y2]},
        ``outlines`` {frame: (N, 2) polygon at the key frame only}, ``nodule`` parameters.
    """
    import cv2

    if nodule is None:
        typ = rng.uniform(0.45, 1.0)
        base_r = rng.uniform(0.14, 0.2) * size
        if malignant:
            aspect = 1.0 + 0.45 * typ  # taller-than-wide
            rough = 0.28 * typ
            echo = 0.75 - 0.4 * typ  # markedly hypoechoic
            hetero = 0.35 * typ
            n_calc = int(round(rng.uniform(4, 9) * typ))
        else:
            aspect = 1.0 / (1.0 + 0.45 * typ)  # wider-than-tall
            rough = 0.03
            echo = 0.75 + 0.15 * (rng.uniform() - 0.5)
            hetero = 0.05
            n_calc = 0
        nodule = {
            "typicality": float(typ),
            "radius": float(base_r),
            "aspect": float(aspect),
            "rough": float(rough),
            "echo": float(echo),
            "hetero": float(hetero),
            "n_calc": n_calc,
            "harmonics": rng.uniform(0.3, 1.0, (5, 2)) * np.array([1.0, 2 * math.pi]),
            "calc": rng.uniform(-0.6, 0.6, (max(n_calc, 1), 2)),
            "halo": 0.0 if malignant else float(0.6 * typ),
        }
    if background is None:
        background = _procedural_background(rng, size)
    bg = background.astype(np.float32)
    t = num_frames
    key = int(rng.integers(int(0.2 * t), int(0.8 * t)))
    # probe speed: fast, slows near the key frame (pixels of drift per frame)
    tt = np.arange(t, dtype=np.float32)
    width = rng.uniform(0.08, 0.14) * t
    speed = rng.uniform(1.6, 2.6) * (0.1 + 0.9 * (1 - np.exp(-(((tt - key) / width) ** 2))))
    pos = np.cumsum(speed) - np.cumsum(speed)[key]  # probe position relative to the key frame
    half_len = rng.uniform(0.45, 0.65) * max(abs(pos[0]), abs(pos[-1]), 1.0)  # nodule extent along the sweep
    max_shift = bg.shape[1] - size
    x0 = float(rng.uniform(0.25, 0.75) * max_shift)
    y0 = int(rng.uniform(0.2, 0.8) * (bg.shape[0] - size))
    cx0, cy0 = size * rng.uniform(0.42, 0.58), size * rng.uniform(0.45, 0.6)
    frames = np.zeros((t, size, size), np.uint8)
    boxes: dict[int, list[float]] = {}
    outlines: dict[int, np.ndarray] = {}
    for i in range(t):
        sx = int(np.clip(x0 + 0.35 * pos[i], 0, max_shift))
        img = bg[y0 : y0 + size, sx : sx + size].copy()
        d = pos[i] / half_len
        scale = math.sqrt(max(0.0, 1.0 - d * d))
        if scale > 0.2:
            cx = cx0 - 0.35 * (pos[i] - 0.0) * 0.2
            cy = cy0 + rng.normal(0, 0.4)
            r = nodule["radius"] * scale
            ax, ay = r / math.sqrt(nodule["aspect"]), r * math.sqrt(nodule["aspect"])
            mask = _nodule_mask(size, cx, cy, ax, ay, nodule["harmonics"], nodule["rough"])
            if nodule["halo"] > 0:
                ring = _nodule_mask(size, cx, cy, ax + 2, ay + 2, nodule["harmonics"], nodule["rough"]) & ~mask
                img[ring] *= 1.0 - 0.5 * nodule["halo"]
            noise = rng.normal(0, 1, (size, size)).astype(np.float32)
            tex = 1.0 + nodule["hetero"] * cv2.GaussianBlur(noise, (0, 0), 2)
            inner = np.full((size, size), 105.0, np.float32) * nodule["echo"] * tex
            blur = 0.5 + 3.0 * abs(d)  # sharpest at the key frame
            soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur)
            img = img * (1 - soft) + inner * soft
            if nodule["n_calc"] and scale > 0.5:
                for k in range(nodule["n_calc"]):
                    px = int(cx + nodule["calc"][k, 0] * ax * 0.8)
                    py = int(cy + nodule["calc"][k, 1] * ay * 0.8)
                    if 1 <= px < size - 1 and 1 <= py < size - 1 and mask[py, px]:
                        img[py - 1 : py + 1, px - 1 : px + 1] = 240.0 * (1.2 - abs(d))
            ys, xs = np.nonzero(mask)
            if len(xs):
                boxes[i] = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
                if i == key:
                    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                    outlines[i] = max(cnts, key=len).reshape(-1, 2)
        speck = rng.rayleigh(0.8, (size, size)).astype(np.float32) / 1.0026  # mean 1
        img = cv2.GaussianBlur(img * speck, (3, 3), 0.6)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return {"frames": frames, "key_frame": key, "boxes": boxes, "outlines": outlines, "nodule": nodule}


def write_video(path: Path, frames: np.ndarray, fmt: str = "avi", fps: float = 15.0) -> None:
    """Write gray ``(T, H, W)`` uint8 frames as an MJPG ``.avi`` / ``mp4v`` ``.mp4`` or a folder of PNGs."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "frames":
        path.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(path / f"{i:05d}.png"), f)
        return
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if fmt == "avi" else "mp4v"))
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    w = cv2.VideoWriter(str(tmp), fourcc, fps, (frames.shape[2], frames.shape[1]))
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fmt} video {path}")
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    w.release()
    tmp.replace(path)


def make_synthetic(
    out_dir: str | Path,
    cfg: SyntheticConfig | None = None,
    data_dir: Path | None = None,
    layout: str = "manifest",
    progress: bool = False,
) -> Path:
    """Write a synthetic cohort and return the path of its ``manifest.json``.

    Args:
        out_dir: output folder (``videos/``, ``manifest.json``, ``manifest.csv``; ``release`` layout adds
            ``avi.csv`` and ``images/*.json``).
        cfg: cohort size; data_dir: the shared data folder for real background frames (None -> procedural).
        layout: ``"manifest"`` or ``"release"``.
    """
    import cv2
    from medshared.runtime import atomic_write_csv, atomic_write_json

    cfg = cfg or SyntheticConfig()
    if cfg.fmt not in ("avi", "mp4", "frames"):
        raise ValueError(f"fmt must be avi, mp4 or frames, got {cfg.fmt!r}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    bgs = load_backgrounds(data_dir, cfg.size)
    n_mal = int(round(cfg.n_patients * cfg.malignant_fraction))
    labels = np.array([1] * n_mal + [0] * (cfg.n_patients - n_mal))
    rng.shuffle(labels)
    records = []
    vid = 0
    it = range(cfg.n_patients)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synthetic videos", unit="patient")
    for p in it:
        mal = bool(labels[p])
        nodule = None
        n_vid = 1 + int(rng.uniform() < 0.5)
        for side in ("l", "r")[:n_vid]:
            bg = bgs[int(rng.integers(len(bgs)))] if bgs else None
            if bg is not None and rng.uniform() < 0.5:
                bg = bg[:, ::-1].copy()
            t = int(rng.integers(cfg.num_frames, int(cfg.num_frames * 1.25) + 1))
            v = make_video(rng, mal, t, cfg.size, bg, nodule)
            nodule = v["nodule"]
            name = f"{vid:04d}_{side}_t_{'m' if mal else 'b'}"
            ext = {"avi": ".avi", "mp4": ".mp4", "frames": ""}[cfg.fmt]
            rel = f"videos/{name}{ext}"
            write_video(out / rel, v["frames"], cfg.fmt)
            rec = {
                "video": rel,
                "patient_id": f"p{p:03d}",
                "label": "malignant" if mal else "benign",
                "key_frame": v["key_frame"],
                "num_frames": t,
                "boxes": {str(k): [round(c, 1) for c in b] for k, b in v["boxes"].items()},
            }
            records.append(rec)
            if layout == "release":
                (out / "images").mkdir(exist_ok=True)
                k = v["key_frame"]
                img_name = f"{vid:04d}_{k:04d}_{side}_t_{'m' if mal else 'b'}_{k}"
                cv2.imwrite(str(out / "images" / f"{img_name}.jpg"), v["frames"][k])
                pts = v["outlines"].get(k)
                shapes = (
                    []
                    if pts is None
                    else [{"label": "nodule", "shape_type": "polygon", "points": pts.astype(float).tolist()}]
                )
                atomic_write_json(
                    out / "images" / f"{img_name}.json",
                    {"shapes": shapes, "imagePath": f"{img_name}.jpg", "imageHeight": cfg.size, "imageWidth": cfg.size},
                )
            vid += 1
    atomic_write_json(out / "manifest.json", {"videos": records})
    atomic_write_csv(
        out / "manifest.csv",
        [
            {**{k: r[k] for k in ("video", "patient_id", "label", "key_frame")}, "boxes": json.dumps(r["boxes"])}
            for r in records
        ],
        fieldnames=["video", "patient_id", "label", "key_frame", "boxes"],
    )
    if layout == "release":
        atomic_write_csv(
            out / "avi.csv",
            [{"video": Path(r["video"]).stem, "key_frame_1": r["key_frame"]} for r in records],
            fieldnames=["video", "key_frame_1"],
        )
    return out / "manifest.json"
