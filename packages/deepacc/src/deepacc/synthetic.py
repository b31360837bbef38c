"""Synthetic metaphase images for DeepACC, written as COCO JSON + PNG so the real loader is exercised.

Images are composed from the real BioImLab single-chromosome crops (``../shared/data/chromosome/single_chromosomes``,
file names ``<cell>_<class><copy>.bmp``, class 1-22, 23 = X, 24 = Y): a full 46,XX or 46,XY karyotype per image,
each chromosome placed at a random position with random rotation and scale, touching and overlapping at a set rate,
and per-image "batch effects" (thickness, length and contrast shifts; Sec. 2.3 of the paper: the motivation of the
siamese inference branch). Q-banded crops (bright on dark) are inverted to the dark-on-bright look of G-banded
spreads such as ``A.tif``. Boxes are the exact extents of each chromosome's mask and labels are exact.

When the crop folder is absent a procedural fallback renders banded rods with class-dependent length (ISCN relative
lengths), centromere position and a class-specific band pattern.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepacc.config import CLASS_NAMES

__all__ = [
    "RELATIVE_LENGTH",
    "CENTROMERE_INDEX",
    "SynthConfig",
    "compose_metaphase",
    "default_crop_dir",
    "place_chromosomes",
    "load_real_crops",
    "read_crop",
    "procedural_crops",
    "write_synthetic",
]

#: Approximate relative lengths (% of the haploid autosomal length, ISCN) of classes 1..24 (X = 23, Y = 24).
RELATIVE_LENGTH = (8.44, 8.02, 6.83, 6.30, 6.08, 5.90, 5.36, 4.93, 4.80, 4.59, 4.61, 4.66, 3.74, 3.56, 3.46, 3.36,
                   3.25, 2.93, 2.67, 2.56, 1.90, 2.04, 5.12, 2.15)  # fmt: skip
#: Approximate centromere index (short-arm fraction) of classes 1..24.
CENTROMERE_INDEX = (0.48, 0.39, 0.47, 0.29, 0.29, 0.39, 0.39, 0.34, 0.35, 0.32, 0.40, 0.30, 0.17, 0.18, 0.19, 0.41,
                    0.34, 0.31, 0.47, 0.45, 0.31, 0.30, 0.40, 0.27)  # fmt: skip
_CROP_RE = re.compile(r"^(\d+)_(\d+)([a-z]?)\.bmp$", re.IGNORECASE)


@dataclass(frozen=True)
class SynthConfig:
    """Composer settings (pixels refer to the output image)."""

    height: int = 384
    width: int = 384
    scale: float = 0.75  # crop pixels -> image pixels
    scale_jitter: float = 0.08  # per-chromosome relative jitter
    spread_radius: float = 0.42  # metaphase spread radius as a fraction of min(H, W)
    overlap_rate: float = 0.15  # fraction of chromosomes allowed to touch/overlap others
    max_overlap: float = 0.25  # overlap fraction allowed for those
    thickness_range: tuple[float, float] = (0.8, 1.25)  # per-image batch effect across the chromosome axis
    length_range: tuple[float, float] = (0.85, 1.15)  # per-image batch effect along the axis
    contrast_range: tuple[float, float] = (0.55, 0.95)  # per-image absorbance scale
    background_range: tuple[int, int] = (225, 252)
    noise_std: float = 3.0
    blur_prob: float = 0.5
    debris: int = 3  # unannotated specks per image
    karyotype: str = "random"  # random | XX | XY
    flip_prob: float = 0.0  # per-chromosome mirror image (the real-crop composer uses 0.5)
    illumination: float = 0.0  # amplitude of a smooth background gradient, as a fraction of the background level
    blur_range: tuple[float, float] = (0.4, 1.0)  # Gaussian sigma (output pixels) when an image is blurred
    antialias: bool = True  # Gaussian pre-filter of each crop before it is shrunk (sigma = (1/scale - 1) / 2)


def default_crop_dir() -> Path | None:
    """``<shared data>/chromosome/single_chromosomes`` when present, else None."""
    try:
        from medshared.testing import shared_data_dir

        root = shared_data_dir()
    except Exception:  # noqa: BLE001 - medshared missing or older
        root = None
    if root is None:
        return None
    d = Path(root) / "chromosome" / "single_chromosomes"
    return d if d.is_dir() else None


def read_crop(path: str | Path) -> np.ndarray:
    """A chromosome crop file as bright-on-dark ``uint8 [h, w]``, read as stored.

    Grey (``L``) files are returned as they are. A colour file (RGB, RGBA, palette, grey + alpha) is accepted only
    when it is a grey image saved as colour: its channels are equal everywhere and any alpha is fully opaque. Anything
    else (channels that differ, a translucent alpha, 16-bit or other modes) is a ``DataError`` naming the file: mixing
    colour channels into grey would change the banding silently.
    """
    from PIL import Image

    from deepacc.samples import DataError

    path = Path(path)
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "L":
            return np.asarray(im, dtype=np.uint8).copy()
        if mode not in ("RGB", "RGBA", "P", "LA", "PA"):
            raise DataError(f"crop {path} has image mode {mode!r}; save it as 8-bit grey (or RGB with equal channels)")
        a = np.asarray(im.convert("RGBA") if mode in ("P", "PA") else im, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] in (2, 4):  # grey + alpha, RGBA
        if (a[..., -1] != 255).any():
            raise DataError(f"crop {path} has a translucent alpha channel; save it without alpha (8-bit grey)")
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[2] == 3:
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
            raise DataError(
                f"crop {path} is a colour image (its channels differ); Q-banded crops are grey: save it as 8-bit grey "
                "with the conversion you want"
            )
        a = a[..., 0]
    return np.ascontiguousarray(a.reshape(a.shape[0], a.shape[1]))


def load_real_crops(folder: str | Path) -> dict[int, list[np.ndarray]]:
    """Read ``<cell>/<cell>_<class><copy>.bmp`` crops (:func:`read_crop`) as bright-on-dark ``uint8 [h, w]`` arrays
    keyed by class."""
    folder = Path(folder)
    crops: dict[int, list[np.ndarray]] = {}
    for f in sorted(folder.rglob("*.bmp")):
        m = _CROP_RE.match(f.name)
        if not m:
            continue
        cls = int(m.group(2))
        if not 1 <= cls <= 24:
            continue
        crops.setdefault(cls, []).append(read_crop(f))
    if not crops:
        raise FileNotFoundError(f"no chromosome crops (<cell>_<class><copy>.bmp) found under {folder}")
    return crops


def _render_rod(cls: int, rng: np.random.Generator, length_px: float, width_px: float) -> np.ndarray:
    """One procedural chromosome (bright on dark, vertical) of class ``cls`` in 1..24."""
    band_rng = np.random.default_rng(1000 + cls)  # class-specific band pattern
    n_bands = 4 + int(RELATIVE_LENGTH[cls - 1] * 1.6)
    pos = np.sort(band_rng.uniform(0.05, 0.95, n_bands))
    inten = band_rng.uniform(0.35, 1.0, n_bands)
    length = length_px * rng.uniform(0.93, 1.07)
    h = int(math.ceil(length)) + 6
    w = int(math.ceil(width_px)) + 6
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (yy - 3) / max(length, 1.0)  # 0..1 along the axis
    ci = CENTROMERE_INDEX[cls - 1]
    half = width_px / 2 * (1.0 - 0.35 * np.exp(-(((t - ci) / 0.03) ** 2)))  # constriction at the centromere
    half = half * np.clip(np.minimum(t, 1 - t) * 8 + 0.3, 0, 1) ** 0.5  # rounded telomeres
    inside = (np.abs(xx - w / 2) <= half) & (t >= 0) & (t <= 1)
    profile = np.full_like(t, 0.45)
    for p, a in zip(pos, inten):
        profile += (a - 0.45) * np.exp(-(((t - p) / 0.025) ** 2))
    img = np.clip(profile * 200 * rng.uniform(0.85, 1.1), 0, 255) * inside
    return img.astype(np.uint8)


def procedural_crops(seed: int = 0, n_per_class: int = 6, px_per_percent: float = 11.0) -> dict[int, list[np.ndarray]]:
    """Procedural crops keyed by class 1..24 (lengths in the ISCN ratios; chr1 about 93 px)."""
    rng = np.random.default_rng(seed)
    return {
        c: [_render_rod(c, rng, RELATIVE_LENGTH[c - 1] * px_per_percent, 14.0) for _ in range(n_per_class)]
        for c in range(1, 25)
    }


def _principal_angle(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return 0.0
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    vx, vy = evecs[:, int(np.argmax(evals))]
    return math.atan2(vy, vx)  # angle of the long axis


def _transform_crop(
    crop: np.ndarray, angle: float, sx: float, sy: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Align the crop's long axis with y, scale (thickness ``sx``, length ``sy``), rotate by ``angle`` (rad).

    ``antialias``: when shrinking, the crop is first low-pass filtered with a Gaussian of sigma ``(1/s - 1) / 2``
    crop pixels (``s = sqrt(sx * sy)``; scikit-image's ``rescale(anti_aliasing=True)`` rule), so bands finer than the
    output grid are averaged rather than aliased by the bilinear warp.

    Returns the warped intensity ``[h', w']`` float32 in [0, 1] and its mask (bool).
    """
    import cv2

    s_geo = math.sqrt(sx * sy)
    src = crop.astype(np.float32) / 255.0
    if antialias and s_geo < 1.0:
        sigma = (1.0 / s_geo - 1.0) / 2.0
        if sigma > 0.05:
            src = cv2.GaussianBlur(src, (0, 0), sigma)

    mask = crop > 12
    phi = _principal_angle(mask)
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean(), ys.mean()) if len(xs) else (crop.shape[1] / 2, crop.shape[0] / 2)
    # rotation taking the long axis to vertical, then scale, then the random rotation
    a0 = math.pi / 2 - phi
    r0 = np.array([[math.cos(a0), -math.sin(a0)], [math.sin(a0), math.cos(a0)]])
    s = np.diag([sx, sy])
    r1 = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    lin = r1 @ s @ r0  # [2, 2]
    h, w = crop.shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) - [cx, cy]  # [4, 2]
    tc = corners @ lin.T  # [4, 2]
    lo, hi = tc.min(0), tc.max(0)
    out_w, out_h = int(math.ceil(hi[0] - lo[0])) + 2, int(math.ceil(hi[1] - lo[1])) + 2
    offset = -lo + 1 - lin @ np.array([cx, cy])
    m = np.concatenate([lin, offset.reshape(2, 1)], axis=1).astype(np.float32)  # [2, 3]
    warped = cv2.warpAffine(src, m, (out_w, out_h), flags=cv2.INTER_LINEAR)
    wmask = cv2.warpAffine(mask.astype(np.float32), m, (out_w, out_h), flags=cv2.INTER_LINEAR) > 0.5
    return warped * wmask, wmask


def compose_metaphase(
    crops: dict[int, list[np.ndarray]], rng: np.random.Generator, cfg: SynthConfig = SynthConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Compose one grey metaphase image with a random 46,XX or 46,XY karyotype drawn from class-keyed crop pools.

    Returns:
        image ``uint8 [H, W]``, boxes ``float32 [N, 4]`` xyxy (exact mask extents), labels ``int64 [N]`` (1..24),
        and the image's batch-effect parameters.
    """
    karyo = cfg.karyotype if cfg.karyotype != "random" else ("XX" if rng.random() < 0.5 else "XY")
    classes = [c for c in range(1, 23) for _ in range(2)] + ([23, 23] if karyo == "XX" else [23, 24])
    items = []
    for cls in rng.permutation(classes):
        pool = crops.get(int(cls))
        if pool:
            items.append((int(cls), pool[int(rng.integers(len(pool)))]))
    img, boxes, labels, effects, _ = place_chromosomes(items, rng, cfg, shuffle=False)
    return img, boxes, labels, effects


def place_chromosomes(
    items: list[tuple[int, np.ndarray]],
    rng: np.random.Generator,
    cfg: SynthConfig = SynthConfig(),
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float], list[int]]:
    """Place the given chromosomes (``(class, bright-on-dark crop)``) into one spread.

    Each chromosome gets a random rotation, mirror (``cfg.flip_prob``) and scale; positions are drawn in a disc, with
    ``cfg.overlap_rate`` of them allowed to touch or overlap others by up to ``cfg.max_overlap``. The stain absorbs
    (Beer-Lambert) on a bright background with an optional smooth illumination gradient, blur and noise.

    Returns:
        image ``uint8 [H, W]``, boxes ``float32 [N, 4]`` xyxy (exact extents of each placed chromosome's mask), labels
        ``int64 [N]``, the image's batch-effect parameters, and for every box the index into ``items`` it came from
        (items too large for the image are left out, so N can be below ``len(items)``).
    """
    import cv2

    hgt, wid = cfg.height, cfg.width
    effects = {
        "thickness": float(rng.uniform(*cfg.thickness_range)),
        "length": float(rng.uniform(*cfg.length_range)),
        "contrast": float(rng.uniform(*cfg.contrast_range)),
        "background": float(rng.uniform(*cfg.background_range)),
    }
    absorb = np.zeros((hgt, wid), np.float32)  # optical density, sums where chromosomes overlap
    occupied = np.zeros((hgt, wid), bool)
    radius = cfg.spread_radius * min(hgt, wid)
    cy0 = hgt / 2 + rng.uniform(-0.05, 0.05) * hgt
    cx0 = wid / 2 + rng.uniform(-0.05, 0.05) * wid
    boxes, labels, sources = [], [], []
    order = rng.permutation(len(items)) if shuffle else np.arange(len(items))
    for idx in order:
        cls, crop = items[int(idx)]
        if cfg.flip_prob > 0 and rng.random() < cfg.flip_prob:
            crop = crop[:, ::-1]
        sc = cfg.scale * (1 + rng.uniform(-cfg.scale_jitter, cfg.scale_jitter))
        inten, mask = _transform_crop(
            crop, rng.uniform(0, 2 * math.pi), sc * effects["thickness"], sc * effects["length"], cfg.antialias
        )
        mh, mw = mask.shape
        if mh >= hgt or mw >= wid or not mask.any():
            continue
        allow = cfg.max_overlap if rng.random() < cfg.overlap_rate else 0.0
        best = None
        for _ in range(40):
            r = radius * math.sqrt(rng.random())
            th = rng.uniform(0, 2 * math.pi)
            y0 = int(np.clip(cy0 + r * math.sin(th) - mh / 2, 0, hgt - mh))
            x0 = int(np.clip(cx0 + r * math.cos(th) - mw / 2, 0, wid - mw))
            ov = (occupied[y0 : y0 + mh, x0 : x0 + mw] & mask).sum() / mask.sum()
            if best is None or ov < best[0]:
                best = (ov, y0, x0)
            if ov <= allow and (allow > 0 or ov == 0):
                break
        assert best is not None
        _, y0, x0 = best
        absorb[y0 : y0 + mh, x0 : x0 + mw] += inten
        occupied[y0 : y0 + mh, x0 : x0 + mw] |= mask
        ys, xs = np.nonzero(mask)
        boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        labels.append(int(cls))
        sources.append(int(idx))
    for _ in range(cfg.debris):  # unannotated specks
        y, x = int(rng.integers(hgt)), int(rng.integers(wid))
        cv2.circle(absorb, (x, y), int(rng.integers(1, 3)), float(rng.uniform(0.2, 0.5)), -1)
    trans = np.exp(-2.2 * effects["contrast"] * absorb)  # Beer-Lambert: dark where the stain absorbs
    background = np.full((hgt, wid), effects["background"], np.float32)
    if cfg.illumination > 0:  # smooth lamp gradient across the field
        yy, xx = np.mgrid[0:hgt, 0:wid].astype(np.float32)
        gx, gy = rng.normal(0, 1, 2)
        ramp = (gx * (xx / wid - 0.5) + gy * (yy / hgt - 0.5)) / max(math.hypot(gx, gy), 1e-6)
        background = background * (1 + cfg.illumination * ramp)
    img = background * trans
    if rng.random() < cfg.blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*cfg.blur_range)))
    if cfg.noise_std > 0:
        img = img + rng.normal(0, cfg.noise_std, img.shape)
    img8 = np.clip(img, 0, 255).astype(np.uint8)
    return img8, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), effects, sources


def write_synthetic(
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    cfg: SynthConfig = SynthConfig(),
    source: str = "auto",
    crop_dir: str | Path | None = None,
) -> Path:
    """Write ``n_images`` synthetic metaphases to ``out_dir/images/*.png`` + ``out_dir/annotations.json`` (COCO).

    Args:
        source: ``real`` (crops from ``crop_dir`` or the shared data folder; error when absent), ``procedural``, or
            ``auto`` (real when available, else procedural).

    Returns:
        path of ``annotations.json``.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    if source not in ("auto", "real", "procedural"):
        raise ValueError(f"source must be auto|real|procedural, got {source!r}")
    folder = Path(crop_dir) if crop_dir is not None else default_crop_dir()
    if source == "real" and (folder is None or not folder.is_dir()):
        raise FileNotFoundError(
            f"chromosome crop folder not found ({folder}); set MEDREPRO_SHARED_DATA or --crop-dir, "
            "or use --source procedural"
        )
    use_real = source == "real" or (source == "auto" and folder is not None and folder.is_dir())
    crops = load_real_crops(folder) if use_real else procedural_crops(seed)  # type: ignore[arg-type]
    if use_real:  # classes without a real crop (none in BioImLab, but be safe) fall back to procedural rods
        proc = procedural_crops(seed)
        for c in range(1, 25):
            crops.setdefault(c, proc[c])
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    ann_id = 1
    for i in range(n_images):
        img, boxes, labels, effects = compose_metaphase(crops, rng, cfg)
        fname = f"synth_{seed:04d}_{i:05d}.png"
        tmp = img_dir / f".{fname}.tmp.png"
        Image.fromarray(img).save(tmp)
        tmp.replace(img_dir / fname)
        images.append({"id": i + 1, "file_name": f"images/{fname}", "width": cfg.width, "height": cfg.height,
                       "batch_effects": effects})  # fmt: skip
        for b, lab in zip(boxes, labels):
            x1, y1, x2, y2 = (float(v) for v in b)
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": int(lab),
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})  # fmt: skip
            ann_id += 1
    coco = {
        "info": {
            "description": "DeepACC synthetic metaphases",
            "source": "real crops" if use_real else "procedural",
            "seed": seed,
            "config": asdict(cfg),
        },  # fmt: skip
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": CLASS_NAMES[c], "supercategory": "chromosome"} for c in range(1, 25)],
    }
    path = out_dir / "annotations.json"
    tmp = out_dir / ".annotations.json.tmp"
    tmp.write_text(json.dumps(coco))
    tmp.replace(path)
    return path
