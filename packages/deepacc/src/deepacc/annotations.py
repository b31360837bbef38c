"""Annotation formats: COCO JSON, Pascal VOC XML (Tseng et al. 2023 "24 chromosomes") and labelme JSON
(AutoKary2022), the ``auto`` dispatch, and the box checks behind ``--on-invalid`` (:class:`LoadReport` records every
box clipped or skipped and every annotation dropped by label).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepacc.images import IMAGE_EXTS, image_size
from deepacc.labels import load_label_map, normalize_label
from deepacc.samples import DataError, Sample

__all__ = ["ON_INVALID", "LoadReport", "load_coco", "load_dataset", "load_labelme", "load_voc"]

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


def _norm(name: Any, source: str, label_map: dict[str, Any] | None, report: LoadReport | None) -> int | None:
    lab = normalize_label(name, source, label_map)
    if lab is None and report is not None:
        report.dropped_labels.append(f"{source}: {name!r}")
    return lab


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
            width, height = image_size(path)
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
        width, height = image_size(path)
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
        width, height = image_size(path)
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
        raise FileNotFoundError(
            f"dataset not found: {path} (pass --data a COCO .json file, a VOC folder of .xml files or a labelme folder "
            "of .json files; `deepacc make-synthetic --out DIR` writes a small one to try)"
        )
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
