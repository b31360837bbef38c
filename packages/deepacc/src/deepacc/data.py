"""Data loading for DeepACC: COCO JSON, Pascal VOC XML (Tseng et al. 2023 "24 chromosomes") and labelme JSON
(AutoKary2022), label normalisation, image reading and a torch ``Dataset`` with the paper's horizontal flip (Sec. 3.1).

Internal target format (torchvision): ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in 1..24
(X = 23, Y = 24).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "ON_INVALID",
    "DataError",
    "DetectionDataset",
    "INVALID_LABELS",
    "LoadReport",
    "Sample",
    "collate",
    "load_coco",
    "load_dataset",
    "load_label_map",
    "load_labelme",
    "load_voc",
    "normalize_label",
    "read_image",
    "scan_images",
    "validate_samples",
]

#: Known wrong labels of AutoKary2022 (README of the dataset): dropped with a warning.
INVALID_LABELS = frozenset({"-1", "119"})
_GROUP_OF = {  # Denver group letter of each autosome (Tseng et al. names like "A1", "C7", "G22")
    **{i: "A" for i in (1, 2, 3)},
    **{i: "B" for i in (4, 5)},
    **{i: "C" for i in range(6, 13)},
    **{i: "D" for i in (13, 14, 15)},
    **{i: "E" for i in (16, 17, 18)},
    **{i: "F" for i in (19, 20)},
    **{i: "G" for i in (21, 22)},
}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """A dataset file is malformed or inconsistent (message names the file and the fix)."""


@dataclass
class Sample:
    """One annotated image."""

    image_path: Path
    boxes: np.ndarray  # [N, 4] float32 xyxy pixels
    labels: np.ndarray  # [N] int64 in 1..24
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: What to do with a box outside its image, degenerate or non-finite: ``error`` (default; all of them reported at
#: once), ``clip`` (clip to the image; boxes that cannot be clipped into a valid box are skipped) or ``skip``.
ON_INVALID = ("error", "clip", "skip")


@dataclass
class LoadReport:
    """What a loader changed or refused; ``summary()`` is logged, and with ``on_invalid="error"`` raised."""

    on_invalid: str = "error"
    clipped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    dropped_labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {self.on_invalid!r}")

    def summary(self, examples: int = 3) -> str:
        """One line per kind of change, with the first ``examples`` cases."""
        lines = []
        for what, items in (
            ("invalid boxes", self.invalid),
            ("boxes clipped to the image", self.clipped),
            ("boxes skipped", self.skipped),
            ("annotations dropped by label", self.dropped_labels),
        ):
            if items:
                more = f" (+{len(items) - examples} more)" if len(items) > examples else ""
                lines.append(f"{len(items)} {what}: " + "; ".join(items[:examples]) + more)
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        if self.invalid:
            raise DataError(
                f"{self.summary()}\nfix the annotations, or pass --on-invalid clip (clip boxes to the image) or "
                "--on-invalid skip (drop them); either is logged"
            )


def load_label_map(path: str | Path) -> dict[str, Any]:
    """Read a ``--label-map`` file (YAML or JSON): ``{source label: target}``, target 1..22, "X"/23, "Y"/24, or
    ``null`` / "ignore" to drop that label (logged). Every target is checked here."""
    from medshared.config import load_config_file

    raw = load_config_file(path)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None or str(v).lower() == "ignore":
            out[str(k)] = None
            continue
        normalize_label(v, f"{path}: target of {k!r}")
        out[str(k)] = v
    if not out:
        raise DataError(f"{path}: the label map is empty; expected lines like 'chr_01: 1'")
    return out


def _label_map_lookup(name: str, label_map: dict[str, Any]) -> tuple[bool, Any]:
    if name in label_map:
        return True, label_map[name]
    low = {k.lower(): v for k, v in label_map.items()}
    if name.lower() in low:
        return True, low[name.lower()]
    return False, None


def normalize_label(name: Any, source: str = "", label_map: dict[str, Any] | None = None) -> int | None:
    """Map a label to 1..24 (X = 23, Y = 24).

    Accepts ``1``..``24``, ``"1"``..``"22"``, ``"23"``/``"X"``, ``"24"``/``"Y"``, ``"chr1"``/``"chrX"``,
    ``"chromosome1"``/``"Chromosome_X"``, and Tseng et al.'s ``"A1"``..``"G22"`` (the group letter must match).
    ``label_map`` is applied first (see :func:`load_label_map`); a label it maps to ``None`` returns ``None``. The known
    invalid AutoKary2022 labels ``-1`` and ``119`` return ``None`` with a warning; anything else raises
    :class:`DataError` naming ``source`` and the ``--label-map`` fix.
    """
    s = str(name).strip()
    if label_map:
        hit, target = _label_map_lookup(s, label_map)
        if hit:
            if target is None or str(target).lower() == "ignore":
                return None
            s = str(target).strip()
    if s in INVALID_LABELS:
        warnings.warn(f"{source}: dropping annotation with known-invalid label {s!r}", stacklevel=2)
        return None
    t = s.upper()
    t = t.removeprefix("CHROMOSOME").removeprefix("CHR").strip(" _-")  # the longer prefix first
    if t in ("X", "23"):
        return 23
    if t in ("Y", "24"):
        return 24
    if t.isdigit() and 1 <= int(t) <= 22:
        return int(t)
    mt = re.fullmatch(r"([A-G])\s*[-_]?\s*(\d{1,2})", t)
    if mt and int(mt.group(2)) in _GROUP_OF and _GROUP_OF[int(mt.group(2))] == mt.group(1):
        return int(mt.group(2))
    raise DataError(
        f"{source}: unknown chromosome label {s!r}; expected 1..22, 23/X, 24/Y, chr1/chromosome_1 or A1..G22. "
        "Map other names with --label-map FILE (YAML/JSON 'name: class', null to drop), or fix the annotation"
    )


def _norm(name: Any, source: str, label_map: dict[str, Any] | None, report: LoadReport | None) -> int | None:
    lab = normalize_label(name, source, label_map)
    if lab is None and report is not None:
        report.dropped_labels.append(f"{source}: {name!r}")
    return lab


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


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size  # (W, H)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {exc}") from None


def _check_boxes(
    boxes: np.ndarray, labels: list[int], width: int, height: int, source: str, report: LoadReport
) -> tuple[np.ndarray, np.ndarray]:
    """Validate xyxy boxes against the image size under ``report.on_invalid`` (default ``error``).

    Nothing is changed silently: every clipped or skipped box is recorded in ``report``; with ``error`` every invalid
    box is recorded and the caller raises once the whole dataset is read.
    """
    boxes = boxes.reshape(-1, 4).astype(np.float32)
    lab = np.asarray(labels, np.int64).reshape(-1)
    keep = np.ones(len(boxes), bool)
    out = boxes.copy()
    for i, b in enumerate(boxes):
        desc = f"{source} box {[round(float(v), 2) for v in b]} (image {width}x{height})"
        finite = bool(np.isfinite(b).all())
        degenerate = not finite or b[2] <= b[0] or b[3] <= b[1]
        outside = finite and (b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height)
        if not degenerate and not outside:
            continue
        reason = "non-finite" if not finite else ("degenerate (width/height <= 0)" if degenerate else "outside")
        if report.on_invalid == "error":
            report.invalid.append(f"{desc}: {reason}")
            continue
        if report.on_invalid == "clip" and not degenerate:
            c = np.array([min(max(b[0], 0), width), min(max(b[1], 0), height),
                          min(max(b[2], 0), width), min(max(b[3], 0), height)], np.float32)  # fmt: skip
            if c[2] > c[0] and c[3] > c[1]:
                out[i] = c
                report.clipped.append(f"{desc} -> {[round(float(v), 2) for v in c]}")
                continue
            reason = "empty after clipping"
        keep[i] = False
        report.skipped.append(f"{desc}: {reason}")
    return out[keep], lab[keep]


# --------------------------------------------------------------------------------------------------------- COCO
def load_coco(
    json_path: str | Path,
    image_root: str | Path | None = None,
    label_map: dict[str, Any] | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """Load a COCO detection JSON (categories 1..24 or named "1".."22"/"X"/"Y"/"A1"..).

    ``image_root`` defaults to the JSON's folder; ``file_name`` is resolved relative to it (then ``images/``).
    Images listed without annotations are returned with zero boxes. Invalid boxes follow ``report.on_invalid``.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {json_path}")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{json_path}: not a COCO detection file (needs 'images' and 'annotations')")
    root = Path(image_root) if image_root is not None else json_path.parent
    own_report = report is None
    report = report if report is not None else LoadReport()
    cat_map: dict[int, int | None] = {}
    for cat in data.get("categories", []):
        cid = int(cat["id"])
        name = cat.get("name") or cid  # unnamed categories: the id is the label
        cat_map[cid] = _norm(name, f"{json_path} category {cid}", label_map, report)
    anns: dict[Any, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    known = {i["id"] for i in data["images"]}
    orphans = sorted({str(k) for k in anns if k not in known})
    if orphans:
        raise DataError(f"{json_path}: annotations refer to missing image ids {orphans[:5]}; fix the 'images' list")
    samples: list[Sample] = []
    for img in data["images"]:
        fname = img["file_name"]
        path = root / fname
        if not path.is_file() and (root / "images" / fname).is_file():
            path = root / "images" / fname
        if not path.is_file():
            raise FileNotFoundError(f"{json_path}: image {fname!r} (id {img['id']}) not found under {root}")
        width, height = img.get("width"), img.get("height")
        if not width or not height:
            width, height = _image_size(path)
        boxes, labels = [], []
        for a in anns.get(img["id"], []):
            if a.get("iscrowd", 0):
                continue
            cid = int(a["category_id"])
            if cid in cat_map:
                lab = cat_map[cid]
            else:
                lab = _norm(cid, f"{json_path} annotation {a.get('id')}", label_map, report)
            if lab is None:
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(lab)
        b, lab_arr = _check_boxes(np.asarray(boxes, np.float32), labels, int(width), int(height),
                                  f"{json_path}:{fname}", report)  # fmt: skip
        samples.append(Sample(path, b, lab_arr, int(width), int(height), {"image_id": img["id"]}))
    if own_report:
        report.raise_if_invalid()
    return samples


# ---------------------------------------------------------------------------------------------------------- VOC
def _parse_voc_xml(xml_path: Path, image_dir: Path, label_map: dict[str, Any] | None, report: LoadReport) -> Sample:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml_path}: malformed XML ({exc})") from None
    fname = root.findtext("filename")
    if not fname:
        raise DataError(f"{xml_path}: missing <filename>")
    path = image_dir / fname
    if not path.is_file():
        stem_hits = [image_dir / (Path(fname).stem + e) for e in IMAGE_EXTS]
        hits = [p for p in stem_hits if p.is_file()]
        if not hits:
            raise FileNotFoundError(f"{xml_path}: image {fname!r} not found in {image_dir}")
        path = hits[0]
    size = root.find("size")
    if size is not None and size.findtext("width") and int(float(size.findtext("width") or 0)) > 0:
        width, height = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
    else:
        width, height = _image_size(path)
    boxes, labels = [], []
    for obj in root.iter("object"):
        lab = _norm(obj.findtext("name"), f"{xml_path}", label_map, report)
        if lab is None:
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{xml_path}: object without <bndbox>")
        boxes.append([float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(lab)
    b, lab_arr = _check_boxes(np.asarray(boxes, np.float32), labels, width, height, str(xml_path), report)
    return Sample(path, b, lab_arr, width, height, {"xml": str(xml_path)})


def load_voc(
    root: str | Path,
    split: str | None = None,
    label_map: dict[str, Any] | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """Load Pascal VOC XML (Tseng et al. 2023 layout: ``annotations/*.xml``, ``images/``, optional ``<split>.txt``).

    Also accepts the classic ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt`` layout.
    """
    root = Path(root)
    ann_dir = next((root / d for d in ("annotations", "Annotations") if (root / d).is_dir()), None)
    img_dir = next((root / d for d in ("images", "JPEGImages") if (root / d).is_dir()), None)
    if ann_dir is None or img_dir is None:
        raise DataError(f"{root}: VOC layout needs annotations/ (or Annotations/) and images/ (or JPEGImages/)")
    xmls = sorted(ann_dir.glob("*.xml"))
    if split is not None:
        lst = next(
            (p for p in (root / f"{split}.txt", root / "ImageSets" / "Main" / f"{split}.txt") if p.is_file()), None
        )
        if lst is None:
            raise FileNotFoundError(f"{root}: split list {split}.txt not found")
        stems = [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]
        xmls = [ann_dir / f"{Path(s).stem}.xml" for s in stems]
        missing = [str(x) for x in xmls if not x.is_file()]
        if missing:
            raise FileNotFoundError(f"{lst}: annotation files missing, e.g. {missing[0]}")
    if not xmls:
        raise DataError(f"{ann_dir}: no .xml annotation files")
    own_report = report is None
    report = report if report is not None else LoadReport()
    samples = [_parse_voc_xml(x, img_dir, label_map, report) for x in xmls]
    if own_report:
        report.raise_if_invalid()
    return samples


# ------------------------------------------------------------------------------------------------------- labelme
def _labelme_file(json_path: Path, label_map: dict[str, Any] | None, report: LoadReport) -> Sample:
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc})") from None
    if "shapes" not in data:
        raise DataError(f"{json_path}: not a labelme file (no 'shapes')")
    image_path = data.get("imagePath") or ""
    path = (json_path.parent / image_path) if image_path else json_path.with_suffix(".png")
    if not path.is_file():
        hits = [json_path.with_suffix(e) for e in IMAGE_EXTS if json_path.with_suffix(e).is_file()]
        if not hits:
            raise FileNotFoundError(f"{json_path}: image {image_path or json_path.stem!r} not found next to it")
        path = hits[0]
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if not width or not height:
        width, height = _image_size(path)
    boxes, labels = [], []
    for shp in data["shapes"]:
        lab = _norm(shp.get("label"), str(json_path), label_map, report)
        if lab is None:
            continue
        pts = np.asarray(shp.get("points", []), np.float32).reshape(-1, 2)
        if len(pts) < 2:
            raise DataError(f"{json_path}: shape with label {shp.get('label')!r} has fewer than 2 points")
        boxes.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])  # polygon extent
        labels.append(lab)
    b, lab_arr = _check_boxes(np.asarray(boxes, np.float32), labels, int(width), int(height), str(json_path), report)
    return Sample(path, b, lab_arr, int(width), int(height), {"labelme": str(json_path)})


def load_labelme(
    root: str | Path, label_map: dict[str, Any] | None = None, report: LoadReport | None = None
) -> list[Sample]:
    """Load every labelme JSON under ``root`` (AutoKary2022: ``{train,test}_labelme/<patient>/<img>.{png,json}``)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.json"))
    own_report = report is None
    report = report if report is not None else LoadReport()
    samples = []
    for f in files:
        try:
            head = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{f}: not valid JSON ({exc})") from None
        if isinstance(head, dict) and "shapes" in head:
            samples.append(_labelme_file(f, label_map, report))
    if not samples:
        raise DataError(f"{root}: no labelme JSON files (with 'shapes') found")
    if own_report:
        report.raise_if_invalid()
    return samples


# -------------------------------------------------------------------------------------------------------- dispatch
def load_dataset(
    path: str | Path,
    fmt: str = "auto",
    split: str | None = None,
    on_invalid: str = "error",
    label_map: dict[str, Any] | str | Path | None = None,
    report: LoadReport | None = None,
    log: Any = None,
) -> list[Sample]:
    """Load a dataset; ``fmt`` is ``auto`` | ``coco`` | ``voc`` | ``labelme``.

    auto: a ``.json`` file with ``images``/``annotations`` is COCO, one with ``shapes`` labelme; a folder with
    ``annotations/*.xml`` is VOC, a folder with ``annotations.json`` COCO, else labelme.

    Args:
        on_invalid: ``error`` | ``clip`` | ``skip`` for boxes outside the image, degenerate or non-finite. With
            ``error`` all of them are collected and raised at once (:class:`DataError` naming the files and the fix).
        label_map: a ``{name: class}`` mapping or a YAML/JSON file (:func:`load_label_map`).
        report: receives what was clipped, skipped or dropped (default: a fresh one with ``on_invalid``).
        log: called with the summary when anything was changed (default: ``logging`` warning).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    report = report if report is not None else LoadReport(on_invalid)  # a given report keeps its own policy
    lmap = load_label_map(label_map) if isinstance(label_map, (str, Path)) else label_map
    if fmt == "auto":
        if path.is_file():
            try:
                head = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: not valid JSON ({exc})") from None
            fmt = "coco" if isinstance(head, dict) and "annotations" in head else "labelme"
        elif any((path / d).is_dir() for d in ("annotations", "Annotations")) and any(
            (path / d).glob("*.xml") for d in ("annotations", "Annotations") if (path / d).is_dir()
        ):
            fmt = "voc"
        elif (path / "annotations.json").is_file():
            path, fmt = path / "annotations.json", "coco"
        else:
            fmt = "labelme"
    if fmt == "coco":
        samples = load_coco(path, label_map=lmap, report=report)
    elif fmt == "voc":
        samples = load_voc(path, split, label_map=lmap, report=report)
    elif fmt == "labelme":
        samples = load_labelme(path, label_map=lmap, report=report)
    else:
        raise ValueError(f"unknown dataset format {fmt!r}; use auto|coco|voc|labelme")
    report.raise_if_invalid()
    text = report.summary()
    if text:
        (log or logging.getLogger("deepacc").warning)(f"{path}: {text}")
    return samples


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


def validate_samples(samples: list[Sample], empty_images: str = "keep", purpose: str = "training") -> list[Sample]:
    """Apply the empty-image policy: ``keep`` images without annotations as negatives, or ``reject`` (DataError)."""
    if not samples:
        raise DataError(f"no images for {purpose}")
    empty = [s for s in samples if len(s.labels) == 0]
    if empty and empty_images == "reject":
        raise DataError(
            f"{len(empty)} image(s) without annotations for {purpose}, e.g. {empty[0].image_path}; remove them or set "
            "train.empty_images: keep (they are then used as negatives)"
        )
    if len(empty) == len(samples) and purpose == "training":
        raise DataError(f"none of the {len(samples)} {purpose} images has an annotation")
    return samples


# ------------------------------------------------------------------------------------------------------- Dataset
class DetectionDataset(Dataset):
    """Torch dataset of :class:`Sample` s: returns ``(image [3,H,W] float in [0,1], target)``.

    In training mode images are flipped horizontally with probability ``hflip_prob`` (Sec. 3.1), drawn from torch's
    global RNG (never from a generator held by the dataset, which every DataLoader worker would copy).
    """

    def __init__(self, samples: list[Sample], train: bool = False, hflip_prob: float = 0.5) -> None:
        self.samples = samples
        self.train = train
        self.hflip_prob = hflip_prob

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[idx]
        img = read_image(s.image_path)  # [H, W, 3] uint8
        h, w = img.shape[:2]
        if s.width is not None and (s.width, s.height) != (w, h):
            raise DataError(f"{s.image_path}: image is {w}x{h} but annotations say {s.width}x{s.height}")
        boxes = s.boxes.astype(np.float32).copy()
        # torch's global RNG: seeded per DataLoader worker and epoch, and restored on resume
        if self.train and self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            img = img[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0  # [H,W,3] -> [3,H,W]
        target = {
            "boxes": torch.from_numpy(boxes).reshape(-1, 4),
            "labels": torch.from_numpy(s.labels.astype(np.int64)),
            "image_id": torch.tensor(idx),
        }
        return x, target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Keep images and targets as lists (torchvision detection convention)."""
    return [b[0] for b in batch], [b[1] for b in batch]
