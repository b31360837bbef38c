"""Loaders (COCO, VOC, labelme) on files the synthetic generator writes and on the real shared samples; bad inputs."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from deepacc.data import (
    DataError,
    DetectionDataset,
    load_coco,
    load_dataset,
    load_labelme,
    load_voc,
    normalize_label,
    read_image,
    validate_samples,
)
from deepacc.synthetic import SynthConfig, compose_metaphase, load_real_crops, procedural_crops, write_synthetic
from PIL import Image

SMALL = SynthConfig(height=160, width=160, scale=0.4)


def _shared() -> Path | None:
    from medshared.testing import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco")
    write_synthetic(out, 3, seed=5, cfg=SMALL, source="procedural")
    return out


# --------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("name", "expected"),
    [("1", 1), (22, 22), ("X", 23), ("x", 23), ("23", 23), ("Y", 24), ("24", 24), ("chr7", 7), ("chrX", 23),
     ("A1", 1), ("B5", 5), ("C12", 12), ("D13", 13), ("E18", 18), ("F20", 20), ("G22", 22)],
)  # fmt: skip
def test_normalize_label(name: object, expected: int) -> None:
    assert normalize_label(name) == expected


@pytest.mark.parametrize("bad", ["A4", "G1", "25", "0", "chrZ", "banana"])
def test_unknown_label_raises_with_name(bad: str) -> None:
    with pytest.raises(DataError, match="unknown chromosome label"):
        normalize_label(bad, "file.json")


@pytest.mark.parametrize("invalid", ["-1", "119", -1, 119])
def test_known_invalid_labels_dropped_with_warning(invalid: object) -> None:
    with pytest.warns(UserWarning, match="known-invalid"):
        assert normalize_label(invalid) is None


# ----------------------------------------------------------------------------------------------------- COCO
def test_coco_roundtrip_from_generator(coco_dir: Path) -> None:
    meta = json.loads((coco_dir / "annotations.json").read_text())
    samples = load_dataset(coco_dir / "annotations.json")
    assert len(samples) == 3
    for s, img in zip(samples, meta["images"]):
        assert len(s.labels) == 46 and set(s.labels.tolist()) <= set(range(1, 25))
        counts = np.bincount(s.labels, minlength=25)
        assert (counts[1:23] == 2).all() and counts[23] + counts[24] == 2  # a full 46,XX or 46,XY karyotype
        a = read_image(s.image_path)
        assert a.shape == (160, 160, 3) and a.dtype == np.uint8
        assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
        # boxes tightly enclose dark chromosome pixels: inside each box there is ink, the frame is bright
        x1, y1, x2, y2 = s.boxes[0].astype(int)
        assert a[y1:y2, x1:x2, 0].min() < 0.8 * np.median(a[..., 0])
        assert img["width"] == 160
    # folder form resolves annotations.json
    assert len(load_dataset(coco_dir)) == 3


def test_dataset_flip_and_grey_to_rgb(coco_dir: Path) -> None:
    s = load_dataset(coco_dir / "annotations.json")[:1]
    x, t = DetectionDataset(s, train=False)[0]
    assert x.shape == (3, 160, 160) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch_equal(x[0], x[1])
    xf, tf = DetectionDataset(s, train=True, hflip_prob=1.0)[0]
    assert np.allclose(xf.numpy(), x.numpy()[:, :, ::-1])
    assert np.allclose(tf["boxes"][:, 0].numpy(), 160 - t["boxes"][:, 2].numpy())


def torch_equal(a, b) -> bool:  # noqa: ANN001
    return bool((a == b).all())


def _coco(tmp_path: Path, coco_dir: Path, mutate) -> Path:  # noqa: ANN001
    d = tmp_path / "c"
    shutil.copytree(coco_dir, d)
    data = json.loads((d / "annotations.json").read_text())
    mutate(data, d)
    (d / "annotations.json").write_text(json.dumps(data))
    return d / "annotations.json"


def test_coco_missing_image(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: (d / data["images"][1]["file_name"]).unlink())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_coco(p)


def test_coco_annotation_referring_to_missing_image_id(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: data["annotations"][0].update(image_id=999))
    with pytest.raises(DataError, match="missing image ids"):
        load_coco(p)


def test_coco_box_outside_image(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: data["annotations"][0].update(bbox=[150.0, 10.0, 40.0, 20.0]))
    with pytest.raises(DataError, match="outside"):
        load_coco(p)


def test_coco_degenerate_box(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: data["annotations"][0].update(bbox=[10.0, 10.0, 0.0, 20.0]))
    with pytest.raises(DataError, match="degenerate"):
        load_coco(p)


def test_coco_unknown_category(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: data["categories"].append({"id": 99, "name": "Z9"}))
    with pytest.raises(DataError, match="Z9"):
        load_coco(p)


def test_corrupt_json_and_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(tmp_path / "a.json")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_empty_images_policy(tmp_path: Path, coco_dir: Path) -> None:
    p = _coco(tmp_path, coco_dir, lambda data, d: data.update(
        annotations=[a for a in data["annotations"] if a["image_id"] != 2]))  # fmt: skip
    samples = load_coco(p)
    assert [len(s.labels) for s in samples] == [46, 0, 46]
    assert validate_samples(samples, "keep") is samples  # kept as negatives
    with pytest.raises(DataError, match="without annotations"):
        validate_samples(samples, "reject")


# ------------------------------------------------------------------------------------------------ VOC, labelme
def _write_voc(root: Path, samples) -> None:  # noqa: ANN001
    from deepacc.config import CLASS_NAMES

    tseng = {c: f"{g}{c}" for g, members in
             {"A": (1, 2, 3), "B": (4, 5), "C": range(6, 13), "D": (13, 14, 15), "E": (16, 17, 18), "F": (19, 20),
              "G": (21, 22)}.items() for c in members}  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    stems = []
    for i, s in enumerate(samples):
        stem = f"img{i}"
        stems.append(stem)
        shutil.copy(s.image_path, root / "images" / f"{stem}.png")
        objs = "".join(
            f"<object><name>{tseng.get(int(lab), CLASS_NAMES[int(lab)])}</name><bndbox><xmin>{b[0]}</xmin>"
            f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b, lab in zip(s.boxes, s.labels)
        )
        size = "<size><width>160</width><height>160</height></size>"
        xml = f"<annotation><filename>{stem}.png</filename>{size}{objs}</annotation>"
        (root / "annotations" / f"{stem}.xml").write_text(xml)
    (root / "train.txt").write_text("\n".join(stems[:2]) + "\n")


def test_voc_loader(tmp_path: Path, coco_dir: Path) -> None:
    ref = load_coco(coco_dir / "annotations.json")
    _write_voc(tmp_path / "voc", ref)
    got = load_dataset(tmp_path / "voc")
    assert len(got) == 3
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()
    assert len(load_voc(tmp_path / "voc", split="train")) == 2
    xml = tmp_path / "voc" / "annotations" / "img0.xml"
    xml.write_text(xml.read_text().replace("<name>A1</name>", "<name>A7</name>", 1))
    with pytest.raises(DataError, match="A7"):
        load_voc(tmp_path / "voc")


def test_labelme_loader_polygon_extents(tmp_path: Path, coco_dir: Path) -> None:
    ref = load_coco(coco_dir / "annotations.json")[0]
    d = tmp_path / "test_labelme" / "patient01"
    d.mkdir(parents=True)
    shutil.copy(ref.image_path, d / "m1.png")
    shapes = []
    for b, lab in zip(ref.boxes, ref.labels):
        x1, y1, x2, y2 = (float(v) for v in b)
        poly = [[x1, (y1 + y2) / 2], [(x1 + x2) / 2, y1], [x2, (y1 + y2) / 2], [(x1 + x2) / 2, y2]]  # diamond
        shapes.append({"label": str(int(lab)) if lab <= 22 else ("X" if lab == 23 else "Y"), "points": poly,
                       "shape_type": "polygon"})  # fmt: skip
    shapes.append({"label": "-1", "points": [[1, 1], [5, 5], [1, 5]], "shape_type": "polygon"})
    shapes.append({"label": "119", "points": [[1, 1], [5, 5], [1, 5]], "shape_type": "polygon"})
    (d / "m1.json").write_text(json.dumps({"shapes": shapes, "imagePath": "m1.png", "imageWidth": 160,
                                           "imageHeight": 160}))  # fmt: skip
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = load_labelme(tmp_path / "test_labelme")
    assert sum("known-invalid" in str(x.message) for x in w) == 2
    assert len(got) == 1 and got[0].labels.tolist() == ref.labels.tolist()
    np.testing.assert_allclose(got[0].boxes, ref.boxes, atol=1e-4)


# ----------------------------------------------------------------------------------------------- real samples
def test_real_crops_and_composer() -> None:
    root = _shared()
    if root is None or not (root / "chromosome" / "single_chromosomes").is_dir():
        pytest.skip("../shared/data/chromosome/single_chromosomes absent (real BioImLab crops)")
    crops = load_real_crops(root / "chromosome" / "single_chromosomes")
    assert sorted(crops) == list(range(1, 25))
    assert sum(len(v) for v in crops.values()) == 138
    # real signal: chromosome 1 is much larger than chromosome 21 (ink area)
    area = {c: np.mean([(a > 12).sum() for a in v]) for c, v in crops.items()}
    assert area[1] > 2.5 * area[21]
    img, boxes, labels, fx = compose_metaphase(crops, np.random.default_rng(0), SynthConfig(karyotype="XY"))
    assert img.shape == (384, 384) and len(labels) == 46 and (labels == 24).sum() == 1
    assert set(fx) == {"thickness", "length", "contrast", "background"}
    big = np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b, c in zip(boxes, labels) if c <= 3])
    small = np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b, c in zip(boxes, labels) if c in (19, 20, 21, 22)])
    assert big > 1.8 * small


def test_real_metaphase_reads() -> None:
    root = _shared()
    if root is None or not (root / "chromosome" / "A.tif").is_file():
        pytest.skip("../shared/data/chromosome/A.tif absent")
    a = read_image(root / "chromosome" / "A.tif")
    assert a.shape == (1200, 1600, 3) and a.dtype == np.uint8
    assert np.median(a) > 200  # bright background, dark chromosomes (like the synthetic images)


def test_procedural_fallback_lengths() -> None:
    crops = procedural_crops(seed=0, n_per_class=2)
    length = {c: np.mean([(a > 12).any(1).sum() for a in v]) for c, v in crops.items()}
    assert length[1] > length[10] > length[21]

    # class-specific band pattern: same class profiles correlate more than different classes
    def prof(a: np.ndarray) -> np.ndarray:
        p = a.astype(float).sum(1)
        p = np.interp(np.linspace(0, len(p) - 1, 64), np.arange(len(p)), p)
        return (p - p.mean()) / (p.std() + 1e-6)

    same = np.corrcoef(prof(crops[7][0]), prof(crops[7][1]))[0, 1]
    diff = np.corrcoef(prof(crops[7][0]), prof(crops[9][0]))[0, 1]
    assert same > diff


def test_make_synthetic_real_source_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="crop folder"):
        write_synthetic(tmp_path / "x", 1, source="real", crop_dir=tmp_path / "nope")


# ------------------------------------------------------------------------------------- invalid boxes, label map
def test_on_invalid_error_lists_every_bad_box_at_once(tmp_path: Path, coco_dir: Path) -> None:
    def mutate(data, d) -> None:  # noqa: ANN001
        data["annotations"][0]["bbox"] = [150.0, 10.0, 11.5, 20.0]  # 1.5 px past the right edge (160 px image)
        data["annotations"][5]["bbox"] = [10.0, 10.0, 0.0, 20.0]  # degenerate
        data["annotations"][60]["bbox"] = [-3.0, 40.0, 10.0, 10.0]  # image 2: 3 px past the left edge

    p = _coco(tmp_path, coco_dir, mutate)
    with pytest.raises(DataError) as err:
        load_dataset(p)
    msg = str(err.value)
    assert msg.startswith("3 invalid boxes") and "outside" in msg and "degenerate" in msg
    assert "--on-invalid clip" in msg and "--on-invalid skip" in msg
    ref = load_dataset(coco_dir / "annotations.json")
    lines: list[str] = []
    clipped = load_dataset(p, on_invalid="clip", log=lines.append)
    assert [len(s.labels) for s in clipped] == [45, 46, 46]  # the degenerate box cannot be clipped: skipped
    assert clipped[0].boxes[0].tolist() == [150.0, 10.0, 160.0, 30.0]
    assert "2 boxes clipped to the image" in lines[0] and "1 boxes skipped" in lines[0]
    lines.clear()
    skipped = load_dataset(p, on_invalid="skip", log=lines.append)
    assert [len(s.labels) for s in skipped] == [44, 45, 46] and "3 boxes skipped" in lines[0]
    assert skipped[2].boxes.tolist() == ref[2].boxes.tolist()  # untouched images stay untouched
    with pytest.raises(ValueError, match="on_invalid"):
        load_dataset(p, on_invalid="ignore")


def test_valid_dataset_is_loaded_unchanged_and_silently(coco_dir: Path) -> None:
    lines: list[str] = []
    a = load_dataset(coco_dir / "annotations.json", on_invalid="clip", log=lines.append)
    b = load_dataset(coco_dir / "annotations.json")
    assert lines == [] and all(np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))


@pytest.mark.parametrize(("name", "expected"), [("chromosome1", 1), ("Chromosome_1", 1), ("CHROMOSOME-22", 22),
                                                ("chromosomeX", 23), ("CHR_Y", 24), ("chr 7", 7)])  # fmt: skip
def test_chromosome_prefixes(name: str, expected: int) -> None:
    assert normalize_label(name) == expected


def test_label_map_file(tmp_path: Path, coco_dir: Path) -> None:
    from deepacc.data import load_label_map

    lm = tmp_path / "labels.yaml"
    lm.write_text("Chr_01: 1\nsexX: X\nnucleus: null\n")
    mapping = load_label_map(lm)
    assert normalize_label("Chr_01", "f", mapping) == 1 and normalize_label("sexx", "f", mapping) == 23
    assert normalize_label("nucleus", "f", mapping) is None and normalize_label("7", "f", mapping) == 7
    with pytest.raises(DataError, match="--label-map"):
        normalize_label("nucleus", "f")

    def rename(data, d) -> None:  # noqa: ANN001
        data["categories"][0]["name"] = "Chr_01"
        data["categories"].append({"id": 30, "name": "nucleus"})
        data["annotations"][0]["category_id"] = 30

    p = _coco(tmp_path, coco_dir, rename)
    with pytest.raises(DataError, match="'nucleus'.*--label-map"):
        load_dataset(p)
    lines: list[str] = []
    got = load_dataset(p, label_map=lm, log=lines.append)
    ref = load_dataset(coco_dir / "annotations.json")
    assert len(got[0].labels) == len(ref[0].labels) - 1 and "dropped by label" in lines[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("foo: 99\n")
    with pytest.raises(DataError, match="target of 'foo'"):
        load_label_map(bad)


def test_scan_reports_all_bad_images_before_training(tmp_path: Path, coco_dir: Path) -> None:
    from deepacc.data import scan_images

    d = tmp_path / "c"
    shutil.copytree(coco_dir, d)
    samples = load_dataset(d / "annotations.json")
    raw = samples[0].image_path.read_bytes()
    samples[0].image_path.write_bytes(raw[: len(raw) // 2])  # truncated PNG: opens, fails to decode
    Image.new("L", (100, 80)).save(samples[2].image_path)  # wrong size for its annotation (160 x 160)
    with pytest.raises(DataError) as err:
        scan_images(samples)
    msg = str(err.value)
    assert msg.startswith("2 of 3 images cannot be used")
    assert f"{samples[0].image_path}: unreadable" in msg and "100x80 but its annotation says 160x160" in msg
    scan_images([samples[1]])  # a good image passes
