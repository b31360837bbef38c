"""Metaphase spreads composed from real karyotyped cells (BioImLab Q-banded crops, Poletti et al. 2012), split by cell.

Each spread holds the chromosomes of ONE cell (its complete 46,XX or 46,XY karyotype; never a mix of cells), each
with a random rotation, mirror and position; some touch or lightly overlap as in real spreads. Q-banded crops (bright on
dark) are rendered as stain absorbance on a bright, slightly uneven background with blur and noise, the look of
``A.tif``. Boxes are the exact extents of the placed chromosome masks. Cells are split into parts (train / val / test)
before composing, so a cell (one patient's karyotype) is never in two parts: test spreads show chromosomes no model
saw in training.

Crop files: ``<cell>_<class><copy>.bmp`` (class 1..22, 23 = X, 24 = Y), either in one folder per cell
(``cells/<cell>/``) or all in one folder.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepacc.config import CLASS_NAMES
from deepacc.synthetic import SynthConfig, place_chromosomes, read_crop

__all__ = [
    "CELL_SPREAD",
    "CELL_SPREAD_CPU",
    "CellCrop",
    "cell_spread",
    "compose_cells",
    "compose_split",
    "index_cells",
    "parse_split",
    "read_crop",
    "split_cells",
]

_CROP_RE = re.compile(r"^(\d+)_(\d+)([a-z]?)\.bmp$", re.IGNORECASE)

#: Default look of real-crop spreads: 768 px with the crops at their native size; light grey chromosomes, soft blur, a
#: faint lamp gradient. Measured on A.tif (README "Spreads like A.tif"): chromosome optical density -ln(I / I_bg)
#: median 0.20 (5-95 %: 0.11-0.35), which contrast 0.25-0.5 spans (median OD 0.17-0.34 on the BioImLab crops);
#: edge blur sigma 1.6 px on chromosomes 22 px wide, i.e. about 1.0 px on the crops' 15 px width at 1x -> 0.6-1.4.
CELL_SPREAD = SynthConfig(
    height=768,
    width=768,
    scale=1.0,
    scale_jitter=0.05,
    spread_radius=0.42,
    overlap_rate=0.25,
    max_overlap=0.15,
    thickness_range=(0.9, 1.1),
    length_range=(0.9, 1.1),
    contrast_range=(0.25, 0.5),
    background_range=(235, 252),
    noise_std=2.0,
    blur_prob=1.0,
    debris=4,
    flip_prob=0.5,
    illumination=0.04,
    blur_range=(0.6, 1.4),
    antialias=True,
)
#: The same spreads at half size (384 px, crops at 0.5x, anti-aliased, blur halved) for CPU experiments and
#: ``deepacc demo --crops``.
CELL_SPREAD_CPU = replace(CELL_SPREAD, height=384, width=384, scale=0.5, blur_range=(0.3, 0.7))


def cell_spread(scale: float = 0.5) -> SynthConfig:
    """:data:`CELL_SPREAD` at ``scale`` (image side ``768 * scale``, blur scaled with it); 0.5 gives
    :data:`CELL_SPREAD_CPU`."""
    if not 0.1 <= scale <= 1.0:
        raise ValueError(f"spread scale must be in [0.1, 1], got {scale}")
    side = int(round(768 * scale / 32)) * 32
    b0, b1 = CELL_SPREAD.blur_range
    return replace(CELL_SPREAD, height=side, width=side, scale=scale, blur_range=(b0 * scale, b1 * scale))


@dataclass(frozen=True)
class CellCrop:
    """One real chromosome crop: its cell, class (1..24) and file."""

    cell: str
    cls: int
    path: Path


def index_cells(crops_dir: str | Path) -> dict[str, list[CellCrop]]:
    """Find ``<cell>_<class><copy>.bmp`` crops under ``crops_dir`` (recursively) and group them by cell.

    Raises:
        FileNotFoundError: the folder is missing or holds no crop files.
        ValueError: a class outside 1..24, or a cell whose files sit in two different folders.
    """
    root = Path(crops_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"crop folder not found: {root} (expected <cell>/<cell>_<class><copy>.bmp files)")
    cells: dict[str, list[CellCrop]] = {}
    folders: dict[str, Path] = {}
    for f in sorted(root.rglob("*.bmp")):
        m = _CROP_RE.match(f.name)
        if not m:
            continue
        cell, cls = m.group(1), int(m.group(2))
        if not 1 <= cls <= 24:
            raise ValueError(f"{f}: class {cls} outside 1..24 (23 = X, 24 = Y); rename or remove the file")
        if folders.setdefault(cell, f.parent) != f.parent:
            raise ValueError(f"cell {cell} has crops in two folders ({folders[cell]} and {f.parent}); merge them")
        cells.setdefault(cell, []).append(CellCrop(cell, cls, f))
    if not cells:
        raise FileNotFoundError(f"no chromosome crops (<cell>_<class><copy>.bmp) found under {root}")
    return dict(sorted(cells.items(), key=lambda kv: int(kv[0])))


def parse_split(text: str) -> dict[str, float]:
    """``"train:0.7,val:0.1,test:0.2"`` -> ``{"train": 0.7, ...}`` (fractions of the cells; they must sum to 1)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, frac = part.partition(":")
        name = name.strip()
        if not name or not frac:
            raise ValueError(f"--split {text!r}: expected name:fraction pairs like train:0.8,test:0.2")
        if name in out:
            raise ValueError(f"--split {text!r}: part {name!r} given twice")
        out[name] = float(frac)
    if any(v <= 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"--split {text!r}: fractions must be positive and sum to 1")
    return out


def split_cells(cells: list[str], fractions: dict[str, float], seed: int = 0) -> dict[str, list[str]]:
    """Split cell ids into disjoint parts by ``fractions`` (shuffled with ``seed``; every part gets >= 1 cell)."""
    if len(cells) < len(fractions):
        raise ValueError(f"{len(cells)} cells cannot fill {len(fractions)} parts {list(fractions)}")
    order = [cells[i] for i in np.random.default_rng(seed).permutation(len(cells))]
    names = list(fractions)
    counts = [max(1, int(round(fractions[n] * len(cells)))) for n in names]
    while sum(counts) > len(cells):  # rounding overshoot: take from the largest part
        counts[int(np.argmax(counts))] -= 1
    counts[int(np.argmax(counts))] += len(cells) - sum(counts)
    out, start = {}, 0
    for n, c in zip(names, counts):
        out[n] = sorted(order[start : start + c], key=int)
        start += c
    return out


def compose_cells(
    cells: dict[str, list[CellCrop]],
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    cfg: SynthConfig = CELL_SPREAD,
    progress: bool = False,
) -> Path:
    """Write ``n_images`` spreads, each from one cell of ``cells`` (cycled in a seeded order), as COCO JSON + PNG.

    ``out_dir/images/*.png`` + ``out_dir/annotations.json``; every image records its ``cell``, every annotation its
    source ``crop`` file. Written atomically (images first, the JSON last).

    Returns:
        path of ``annotations.json``.
    """
    from medshared.runtime import atomic_path, atomic_write_json
    from PIL import Image
    from tqdm.auto import tqdm

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not cells:
        raise ValueError("no cells to compose from")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    ids = list(cells)
    order = [ids[i] for i in rng.permutation(len(ids))]
    cache: dict[Path, np.ndarray] = {}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    written: list[Path] = []
    try:
        for i in tqdm(range(n_images), desc=f"compose {out_dir.name}", disable=not progress, leave=False):
            cell = order[i % len(order)]
            crops = cells[cell]
            items = [(c.cls, cache.setdefault(c.path, read_crop(c.path))) for c in crops]
            img, boxes, labels, effects, src = place_chromosomes(items, rng, cfg)
            fname = f"cell{cell}_{i:05d}.png"
            with atomic_path(out_dir / "images" / fname) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            written.append(out_dir / "images" / fname)
            images.append({"id": i + 1, "file_name": f"images/{fname}", "width": cfg.width, "height": cfg.height,
                           "cell": cell, "batch_effects": effects})  # fmt: skip
            for b, lab, j in zip(boxes, labels, src):
                x1, y1, x2, y2 = (float(v) for v in b)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(lab),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                                    "crop": crops[j].path.name})  # fmt: skip
    except BaseException:
        for f in written:  # no half-written dataset: images without their annotations.json are removed
            f.unlink(missing_ok=True)
        raise
    coco = {
        "info": {"description": "DeepACC metaphases composed from real karyotyped cells (one cell per image)",
                 "source": "real cells", "seed": seed, "cells": sorted(cells, key=int), "config": asdict(cfg)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": CLASS_NAMES[c], "supercategory": "chromosome"} for c in range(1, 25)],
    }  # fmt: skip
    path = out_dir / "annotations.json"
    atomic_write_json(path, coco, indent=0)
    return path


def compose_split(
    crops_dir: str | Path,
    out_dir: str | Path,
    split: dict[str, float] | None = None,
    n_images: dict[str, int] | int = 100,
    seed: int = 0,
    cfg: SynthConfig = CELL_SPREAD,
    cells: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Split the cells of ``crops_dir`` by ``split`` and compose each part into ``out_dir/<part>/``.

    Args:
        split: ``{part: fraction of cells}``; None: one part ``all`` with every cell.
        n_images: images per part (one int for every part, or per part).
        cells: restrict to these cell ids (unknown ids raise).

    Returns:
        ``{part: annotations.json}``; ``out_dir/split.json`` lists the cells of every part.
    """
    from medshared.runtime import atomic_write_json

    index = index_cells(crops_dir)
    if cells is not None:
        unknown = sorted(set(cells) - set(index), key=str)
        if unknown:
            raise ValueError(f"cells {unknown[:10]} not found under {crops_dir} (it has {len(index)} cells)")
        index = {c: index[c] for c in sorted(set(cells), key=int)}
    parts = split_cells(list(index), split or {"all": 1.0}, seed)
    counts = n_images if isinstance(n_images, dict) else {p: int(n_images) for p in parts}
    missing = sorted(set(parts) - set(counts))
    if missing:
        raise ValueError(f"no image count for part(s) {missing}; give --n-images as one number or part:N pairs")
    out_dir = Path(out_dir)
    paths = {}
    for k, (name, ids) in enumerate(parts.items()):
        paths[name] = compose_cells({c: index[c] for c in ids}, out_dir / name, counts[name], seed * 1000 + k, cfg,
                                    progress)  # fmt: skip
    atomic_write_json(out_dir / "split.json", {"seed": seed, "crops": str(crops_dir), "parts": parts,
                                               "n_images": {p: counts[p] for p in parts}})  # fmt: skip
    return paths
