"""Spreads composed from real karyotyped cells: exact boxes, one cell per image, cell-disjoint splits, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from deepacc.cli import main
from deepacc.compose import CELL_SPREAD_CPU, compose_cells, compose_split, index_cells, parse_split, split_cells
from deepacc.data import load_dataset, read_image
from deepacc.synthetic import place_chromosomes

CLEAN = dataclasses.replace(CELL_SPREAD_CPU, noise_std=0.0, blur_prob=0.0, debris=0, illumination=0.0,
                            overlap_rate=0.0, scale_jitter=0.0, thickness_range=(1.0, 1.0), length_range=(1.0, 1.0),
                            scale=1.0)  # fmt: skip


def test_box_is_exact_extent_of_a_rotated_bar() -> None:
    bar = np.zeros((60, 20), np.uint8)
    bar[5:55, 5:15] = 200  # a 10 x 50 px chromosome
    rng = np.random.default_rng(3)
    cfg = dataclasses.replace(CLEAN, height=160, width=160)
    for _ in range(5):
        img, boxes, labels, _, src = place_chromosomes([(7, bar)], rng, cfg)
        assert labels.tolist() == [7] and src == [0]
        x1, y1, x2, y2 = boxes[0].astype(int)
        ink = img < img.max() - 1  # background is flat (no noise, blur or gradient)
        assert not ink[:, :x1].any() and not ink[:, x2:].any() and not ink[:y1].any() and not ink[y2:].any()
        inside = ink[y1:y2, x1:x2]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight
        w, h = x2 - x1, y2 - y1  # a 10 x 50 bar rotated by theta spans 10|cos|+50|sin| by 10|sin|+50|cos|
        err = min(abs(w - (10 * math.cos(t) + 50 * math.sin(t))) + abs(h - (10 * math.sin(t) + 50 * math.cos(t)))
                  for t in np.linspace(0, math.pi / 2, 91))  # fmt: skip
        assert err < 4, (w, h)


def test_every_image_holds_one_whole_cell_and_all_ink_is_boxed(tmp_path: Path, fake_cells) -> None:  # noqa: ANN001
    cells = index_cells(fake_cells(3))
    assert sorted(cells) == ["1", "2", "3"] and all(len(v) == 46 for v in cells.values())
    cfg = dataclasses.replace(CLEAN, height=320, width=320, scale=0.8)
    path = compose_cells(cells, tmp_path / "out", 6, seed=0, cfg=cfg)
    coco = json.loads(path.read_text())
    by_img: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    assert sorted({im["cell"] for im in coco["images"]}) == ["1", "2", "3"]  # every cell used
    for im, s in zip(coco["images"], load_dataset(path)):
        anns = by_img[im["id"]]
        assert {a["crop"].split("_")[0] for a in anns} == {im["cell"]}  # never a crop of another cell
        assert len(anns) == 46 and len({a["crop"] for a in anns}) == 46  # the whole karyotype, each crop once
        img = read_image(s.image_path)[..., 0]
        covered = np.zeros(img.shape, bool)
        for x1, y1, x2, y2 in s.boxes.astype(int):
            covered[y1:y2, x1:x2] = True
        assert not (img < img.max() - 1)[~covered].any()  # no chromosome pixel outside the boxes


def test_split_by_cell_is_disjoint_and_complete() -> None:
    cells = [str(i) for i in range(1, 96)]
    parts = split_cells(cells, parse_split("train:0.7,val:0.1,test:0.2"), seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [66, 10, 19]
    assert sorted(sum(parts.values(), []), key=int) == cells  # each cell in exactly one part
    assert parts == split_cells(cells, parse_split("train:0.7,val:0.1,test:0.2"), seed=0)
    assert parts != split_cells(cells, parse_split("train:0.7,val:0.1,test:0.2"), seed=1)
    for bad in ("train:0.7", "train:0.5,train:0.5", "train", "a:-0.5,b:1.5"):
        with pytest.raises(ValueError, match="--split"):
            parse_split(bad)


def test_compose_cli_writes_split_parts(tmp_path: Path, fake_cells) -> None:  # noqa: ANN001
    root = fake_cells(4)
    out = tmp_path / "spreads"
    assert main(["compose", "--crops", str(root), "--out", str(out), "--split", "train:0.5,test:0.5",
                 "--n-images", "train:3,test:2", "--size", "256", "--seed", "1", "--quiet"]) == 0  # fmt: skip
    split = json.loads((out / "split.json").read_text())
    assert not set(split["parts"]["train"]) & set(split["parts"]["test"])
    for part, n in (("train", 3), ("test", 2)):
        coco = json.loads((out / part / "annotations.json").read_text())
        assert len(coco["images"]) == n and {im["cell"] for im in coco["images"]} <= set(split["parts"][part])
        assert {im["width"] for im in coco["images"]} == {256}
    assert main(["compose", "--crops", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert main(["compose", "--crops", str(root), "--out", str(out), "--cells", "1,99"]) == 1


def test_real_cells_index_and_one_spread() -> None:
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "chromosome" / "cells").is_dir():
        pytest.skip("../shared/data/chromosome/cells absent (a user's clone has no shared data)")
    cells = index_cells(root / "chromosome" / "cells")
    assert len(cells) == 95 and sum(len(v) for v in cells.values()) == 4370
    counts = np.bincount([c.cls for v in cells.values() for c in v], minlength=25)
    assert (counts[1:23] == 190).all() and (counts[23], counts[24]) == (154, 36)
    img, boxes, labels, _, _ = place_chromosomes([(c.cls, read_image(c.path)[..., 0]) for c in cells["1"]],
                                                 np.random.default_rng(0), CELL_SPREAD_CPU)  # fmt: skip
    assert img.shape == (384, 384) and len(labels) == 46 and 200 < np.median(img) < 255


def test_compose_split_restricted_cells(tmp_path: Path, fake_cells) -> None:  # noqa: ANN001
    root = fake_cells(3)
    paths = compose_split(root, tmp_path / "o", None, 2, seed=0, cfg=dataclasses.replace(CLEAN, height=256,
                          width=256, scale=0.6), cells=["2", "3"])  # fmt: skip
    coco = json.loads(paths["all"].read_text())
    assert {im["cell"] for im in coco["images"]} == {"2", "3"}


def test_failed_compose_leaves_no_images(tmp_path: Path, fake_cells) -> None:  # noqa: ANN001
    root = fake_cells(3)
    (root / "3" / "3_5a.bmp").write_bytes(b"not a bitmap")  # the third cell composed fails
    cells = index_cells(root)
    with pytest.raises(Exception, match="cannot identify image file"):
        compose_cells(cells, tmp_path / "out", 6, seed=0, cfg=dataclasses.replace(CLEAN, height=256, width=256))
    assert not (tmp_path / "out" / "annotations.json").exists()
    assert not list((tmp_path / "out").rglob("*.png"))
