"""Reading segmentation masks exactly as they are stored, and mapping them to class ids through a class map.

How a mask file is read (Pillow, so GIF, PNG, BMP and TIFF all behave the same):

* **palette / indexed** (PIL mode ``P``): the palette *indices* are the values (a palette PNG with classes 1 and 2
  is read as 1 and 2, never as the colours they are drawn with);
* **grey** (``L``, 16-bit ``I;16``/``I``, bilevel ``1`` as 0/255, or RGB with R = G = B everywhere, as CholecSeg8k's
  watershed masks): the grey values;
* **RGB** (R, G, B not all equal): colours, which need ``colors`` in the class map; without it, an error lists the
  colours found;
* an alpha channel is accepted only when fully opaque; multi-frame files (animated GIF, multi-page TIFF) and other
  modes are errors naming the file.

A :class:`ClassMap` turns values (or colours) into class ids ``0..K-1``; ``ignore_values`` become
``IGNORE_INDEX`` (255); ``tolerance`` > 0 maps a grey value within that distance of a listed one to it (lossy JPEG
masks). A value or colour outside the map is an error naming the file, the values and the fix.

Class maps come from a dataset's ``classes.json``::

    {"classes": ["background", "gland"], "mask_values": [0, 255]}            # grey or palette-index masks
    {"classes": ["background", "tool"], "colors": [[0, 0, 0], [255, 0, 0]]}  # RGB masks
    optional: "ignore_values": [128], "ignore_colors": [[255, 255, 255]], "tolerance": 0, "dice_classes": [1]

or, when a folder has no ``classes.json`` and every mask holds only the values {0, 255} (or {0, 1}), from the masks
themselves: ``background`` / ``foreground`` (logged, with the file to write to change it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from alges.config import IGNORE_INDEX

__all__ = ["ClassMap", "read_mask_raw", "load_class_map", "infer_binary_class_map", "CLASSES_JSON_EXAMPLE"]

log = logging.getLogger("alges")

CLASSES_JSON_EXAMPLE = '{"classes": ["background", "organ"], "mask_values": [0, 255]}'


def read_mask_raw(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a mask file as stored: ``(values, kind)`` with kind "index" ([H, W] palette indices), "grey" ([H, W]
    grey values, uint8 or wider) or "rgb" ([H, W, 3] uint8 colours).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, unreadable, multi-frame, has a
    translucent alpha channel or an unsupported mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            n_frames = int(getattr(im, "n_frames", 1))
            if n_frames > 1:
                raise ValueError(f"mask {path} has {n_frames} frames; a mask must be a single image (save one frame)")
            mode = im.mode
            if mode == "P":  # palette transparency does not change the indices
                return np.array(im), "index"
            if mode == "1":
                return np.array(im.convert("L")), "grey"
            if mode in ("L", "I;16", "I;16B", "I;16L", "I"):
                return np.array(im), "grey"
            if mode in ("LA", "RGBA", "PA"):
                a = np.array(im.getchannel("A"))
                if (a != 255).any():
                    raise ValueError(
                        f"mask {path} has a translucent alpha channel ({int((a != 255).sum())} pixels); "
                        "save it without alpha"
                    )
                im = im.convert({"LA": "L", "RGBA": "RGB", "PA": "P"}[mode])
                mode = im.mode
                if mode == "L":
                    return np.array(im), "grey"
                if mode == "P":
                    return np.array(im), "index"
            if mode == "RGB":
                rgb = np.array(im)
                if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                    return rgb[..., 0].copy(), "grey"
                return rgb, "rgb"
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read mask {path} ({e}); fix or remove the file") from e
    raise ValueError(f"mask {path} has image mode {mode!r}; save it as palette, grey (8/16-bit) or RGB")


@dataclass(frozen=True)
class ClassMap:
    """Class names and how stored mask values (or colours) map to class ids ``0..K-1``."""

    names: tuple[str, ...]
    values: tuple[int, ...] = ()  # grey value / palette index of class c (empty: RGB-only map)
    colors: tuple[tuple[int, int, int], ...] = ()  # RGB colour of class c (empty: grey/index-only map)
    ignore_values: tuple[int, ...] = ()
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    tolerance: int = 0
    dice_classes: tuple[int, ...] | None = None  # None: [1] for two classes, else every class
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        k = len(self.names)
        if k < 2:
            raise ValueError(f"a class map needs at least 2 classes, got {list(self.names)} ({self.source})")
        if not self.values and not self.colors:
            raise ValueError(f"class map {self.source}: give 'mask_values' or 'colors' for the {k} classes")
        for what, seq in (("mask_values", self.values), ("colors", self.colors)):
            if seq and len(seq) != k:
                raise ValueError(f"class map {self.source}: {k} classes but {len(seq)} {what}")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"class map {self.source}: mask_values {list(self.values)} repeat a value")
        if len(set(self.colors)) != len(self.colors):
            raise ValueError(f"class map {self.source}: colors {list(self.colors)} repeat a colour")
        if self.tolerance < 0:
            raise ValueError(f"class map {self.source}: tolerance must be >= 0, got {self.tolerance}")
        for c in self.dice_classes or ():
            if not 0 <= c < k:
                raise ValueError(f"class map {self.source}: dice_classes has {c}, outside 0..{k - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def scored_classes(self) -> tuple[int, ...]:
        """Classes scored by Dice/HD95: ``dice_classes``, else the foreground of a binary map, else every class."""
        if self.dice_classes is not None:
            return tuple(self.dice_classes)
        return (1,) if self.num_classes == 2 else tuple(range(self.num_classes))

    def to_dict(self) -> dict:
        d: dict = {"classes": list(self.names)}
        if self.values:
            d["mask_values"] = list(self.values)
        if self.colors:
            d["colors"] = [list(c) for c in self.colors]
        if self.ignore_values:
            d["ignore_values"] = list(self.ignore_values)
        if self.ignore_colors:
            d["ignore_colors"] = [list(c) for c in self.ignore_colors]
        if self.tolerance:
            d["tolerance"] = self.tolerance
        if self.dice_classes is not None:
            d["dice_classes"] = list(self.dice_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> ClassMap:
        """Build from a ``classes.json``-style dict; malformed content raises ``ValueError`` naming ``source``."""
        try:
            names = tuple(str(n) for n in d["classes"])
            values = tuple(int(v) for v in d.get("mask_values", ()))
            colors = tuple(_rgb(c) for c in d.get("colors", ()))
            ignore_v = tuple(int(v) for v in d.get("ignore_values", ()))
            ignore_c = tuple(_rgb(c) for c in d.get("ignore_colors", ()))
            dice = d.get("dice_classes")
            dice = tuple(int(c) for c in dice) if dice is not None else None
            tol = int(d.get("tolerance", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"class map {source} is invalid ({e!r}); it needs 'classes' and 'mask_values' (or 'colors') lists, "
                f"e.g. {CLASSES_JSON_EXAMPLE}"
            ) from e
        unknown = sorted(
            set(d) - {"classes", "mask_values", "colors", "ignore_values", "ignore_colors", "tolerance", "dice_classes"}
        )
        if unknown:
            raise ValueError(f"class map {source} has unknown keys {unknown}")
        return cls(names, values, colors, ignore_v, ignore_c, tol, dice, source)

    # ------------------------------------------------------------------------------------------------ reading
    def read(self, path: str | Path) -> np.ndarray:
        """Read a mask file into class ids uint8 [H, W] (255 = ignore); values outside the map raise."""
        raw, kind = read_mask_raw(path)
        return self.apply(raw, kind, Path(path))

    def apply(self, raw: np.ndarray, kind: str, path: Path) -> np.ndarray:
        if kind == "rgb":
            return self._apply_rgb(raw, path)
        if not self.values:
            raise ValueError(
                f"mask {path} is {'an indexed' if kind == 'index' else 'a grey'} mask but the class map {self.source} "
                "only lists 'colors'; add 'mask_values' (one per class)"
            )
        return self._apply_values(raw, path)

    def _apply_values(self, values: np.ndarray, path: Path) -> np.ndarray:
        listed = [(v, c) for c, v in enumerate(self.values)] + [(v, IGNORE_INDEX) for v in self.ignore_values]
        if values.dtype != np.uint8:
            vmax, vmin = int(values.max(initial=0)), int(values.min(initial=0))
            if vmin < 0 or vmax > 255:  # wide masks: map the distinct values directly
                uniq, inv = np.unique(values, return_inverse=True)
                lut_u = np.array([self._lookup_one(int(u), listed) for u in uniq], dtype=np.int32)
                out = lut_u[inv.reshape(values.shape)]
                self._raise_unmapped(out, values, path)
                return out.astype(np.uint8)
            values = values.astype(np.uint8)
        lut = np.array([self._lookup_one(u, listed) for u in range(256)], dtype=np.int32)
        out = lut[values]
        self._raise_unmapped(out, values, path)
        return out.astype(np.uint8)

    def _lookup_one(self, u: int, listed: list[tuple[int, int]]) -> int:
        dist, cls = min((abs(u - v), c) for v, c in listed)
        return cls if dist <= self.tolerance else -1

    def _raise_unmapped(self, out: np.ndarray, values: np.ndarray, path: Path) -> None:
        if (out < 0).any():
            bad = sorted(np.unique(values[out < 0]).tolist())
            raise ValueError(
                f"mask {path} has values {bad[:20]} outside the class map (known values: {sorted(self.values)}, "
                f"ignored: {sorted(self.ignore_values)}; map from {self.source}); fix the mask or the class map"
            )

    def _apply_rgb(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        if not self.colors:
            found = _colour_counts(rgb)
            listing = ", ".join(f"{list(c)} ({n} px)" for c, n in found[:20])
            more = f" and {len(found) - 20} more" if len(found) > 20 else ""
            raise ValueError(
                f"mask {path} is an RGB colour mask with {len(found)} colours: {listing}{more}; "
                f'an RGB mask needs a colour map: add "colors": [[r, g, b], ...] (one per class) to {self.source}'
            )
        code = _rgb_code(rgb)  # [H, W] int32
        out = np.full(code.shape, -1, dtype=np.int32)
        for c, col in enumerate(self.colors):
            out[code == _rgb_code(np.asarray(col, dtype=np.uint8))] = c
        for col in self.ignore_colors:
            out[code == _rgb_code(np.asarray(col, dtype=np.uint8))] = IGNORE_INDEX
        if (out < 0).any():
            bad = _colour_counts(rgb[out < 0][:, None, :])
            raise ValueError(
                f"mask {path} has colours {[list(c) for c, _ in bad[:20]]} outside the colour map "
                f"{[list(c) for c in self.colors]} ({self.source}); fix the mask or the class map"
            )
        return out.astype(np.uint8)


def _rgb(c: Sequence[int]) -> tuple[int, int, int]:
    t = tuple(int(v) for v in c)
    if len(t) != 3 or any(not 0 <= v <= 255 for v in t):
        raise ValueError(f"colour {list(c)} is not [r, g, b] with 0-255 values")
    return t  # type: ignore[return-value]


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    a = rgb.astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def _colour_counts(rgb: np.ndarray) -> list[tuple[tuple[int, int, int], int]]:
    codes, counts = np.unique(_rgb_code(rgb).ravel(), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [
        (((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255), int(n)) for c, n in zip(codes[order], counts[order])
    ]


def load_class_map(path: str | Path) -> ClassMap:
    """Read a ``classes.json`` file (see the module docstring)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"class map {path} is not valid JSON ({e}); e.g. {CLASSES_JSON_EXAMPLE}") from e
    if not isinstance(d, dict):
        raise ValueError(f"class map {path} must be a JSON object, e.g. {CLASSES_JSON_EXAMPLE}")
    return ClassMap.from_dict(d, source=str(path))


def infer_binary_class_map(mask_paths: Iterable[Path], where: Path) -> ClassMap:
    """The class map of a folder without ``classes.json``: binary masks ({0, 255} or {0, 1}) only.

    Reads every mask once. Anything else (RGB colours, other values) raises ``ValueError`` listing what was found
    and the ``classes.json`` to write.
    """
    values: set[int] = set()
    n = 0
    for p in mask_paths:
        raw, kind = read_mask_raw(p)
        n += 1
        if kind == "rgb":
            found = _colour_counts(raw)
            raise ValueError(
                f"{where} has no classes.json and mask {p} is an RGB colour mask (colours "
                f'{[list(c) for c, _ in found[:10]]}); write {where / "classes.json"} with "classes" and '
                '"colors" (one [r, g, b] per class)'
            )
        values |= set(np.unique(raw).tolist())
        if len(values) > 2:
            break
    if n == 0:
        raise ValueError(f"{where} has no masks and no classes.json: the classes cannot be known")
    for fg in (255, 1):
        if values <= {0, fg}:
            cm = ClassMap(("background", "foreground"), (0, fg), source=f"inferred from the {n} masks in {where}")
            log.warning(
                "alges: %s has no classes.json; its masks hold only %s, read as background=0 / foreground=%d "
                "(write %s to change this)",
                where,
                sorted(values),
                fg,
                where / "classes.json",
            )
            return cm
    raise ValueError(
        f"{where} has no classes.json and its masks hold the values {sorted(values)[:20]} (not a 0/255 or 0/1 binary "
        f"mask); write {where / 'classes.json'}, e.g. {CLASSES_JSON_EXAMPLE}"
    )
