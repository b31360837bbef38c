"""Loaders on synthetic CholecSeg8k-layout files, on the real thyroid samples (folder dataset), and bad inputs."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from alges.config import GREY_TO_ID, IGNORE_INDEX
from alges.data import (
    cholec_split,
    load_arrays,
    open_dataset,
    read_cholec_mask,
    read_id_list,
    scan_cholecseg8k,
    scan_folder,
    scan_images,
)
from alges.synthetic import render_video
from medshared.testing import shared_data_dir


def test_synthetic_layout_and_loader(syn_root):
    idx = scan_cholecseg8k(syn_root)
    assert len(idx.ids) == 24
    assert idx.ids[0] == "video01/video01_00000/frame_0_endo"
    assert idx.ids[5] == "video01/video01_00004/frame_5_endo"  # clips of 4 frames, natural order
    arr = load_arrays(idx, idx.ids[:8], size=32, progress=False)
    assert arr.images.shape == (8, 3, 32, 32) and arr.images.dtype == np.uint8
    assert arr.masks.shape == (8, 32, 32)
    vals = set(np.unique(arr.masks).tolist())
    assert IGNORE_INDEX in vals  # the 1-px 255 border became ignore
    assert vals - {IGNORE_INDEX} <= set(range(13)) and len(vals) >= 4
    # the loader's class ids agree with the generator's (border aside)
    _, masks = render_video(0, 1, 96, 54)
    m = read_cholec_mask(idx.mask_path(idx.ids[0]))
    assert (m[1:-1, 1:-1] == masks[0][1:-1, 1:-1]).all()


def test_synthetic_has_signal_and_redundancy(syn_root):
    frames, masks = render_video(3, 6, 96, 54)
    # consecutive frames are near-duplicates, other videos are not
    other, _ = render_video(4, 1, 96, 54)
    d_next = np.abs(frames[1].astype(float) - frames[0]).mean()
    d_other = np.abs(other[0].astype(float) - frames[0]).mean()
    assert d_next < 0.5 * d_other
    # classes differ in colour: liver (2) is darker and redder than fat (4)
    liver, fat = frames[masks == 2], frames[masks == 4]
    if len(liver) and len(fat):
        assert liver.mean() < fat.mean()


def test_video_split_and_test_cut(syn_root):
    idx = scan_cholecseg8k(syn_root)
    sp = cholec_split(idx, {"train": ["video01", "video02"], "test": ["video03"]}, max_test_frames=5)
    assert len(sp["train"]) == 16 and len(sp["test"]) == 5
    assert all(i.startswith("video03/") for i in sp["test"])
    assert sp["test"] == sorted(sp["test"], key=lambda s: int(s.split("_")[-2]))
    with pytest.raises(ValueError, match="both"):
        cholec_split(idx, {"train": ["video01"], "test": ["video01"]})


def test_mask_values_outside_map(tmp_path, syn_root):
    src = scan_cholecseg8k(syn_root)
    shutil.copytree(syn_root / "video01", tmp_path / "video01")
    idx = scan_cholecseg8k(tmp_path)
    mp = idx.mask_path(idx.ids[0])
    m = cv2.imread(str(mp))
    m[5, 5] = 77
    cv2.imwrite(str(mp), m)
    with pytest.raises(ValueError, match=r"frame_0_endo_watershed_mask.png has values \[77\]"):
        load_arrays(idx, idx.ids[:1], 32, progress=False)
    assert src.ids  # the shared fixture was not touched


def test_unreadable_image_and_size_mismatch(tmp_path, syn_root):
    shutil.copytree(syn_root / "video02", tmp_path / "video02")
    idx = scan_cholecseg8k(tmp_path)
    idx.image_path(idx.ids[0]).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*frame_0_endo.png"):
        load_arrays(idx, idx.ids[:1], 32, progress=False)
    mp = idx.mask_path(idx.ids[1])
    cv2.imwrite(str(mp), np.full((10, 10, 3), GREY_TO_ID and 50, np.uint8))
    with pytest.raises(ValueError, match="must match"):
        load_arrays(idx, idx.ids[1:2], 32, progress=False)


def _folder(tmp_path, n=3):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(n):
        cv2.imwrite(str(tmp_path / "images" / f"im{i}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
        m = np.zeros((20, 30), np.uint8)
        m[5:10, 5:20] = 255
        cv2.imwrite(str(tmp_path / "masks" / f"im{i}.png"), m)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["bg", "organ"], "mask_values": [0, 255]}))


def test_folder_dataset_and_stem_mismatch(tmp_path):
    _folder(tmp_path)
    idx = open_dataset(tmp_path)
    assert idx.kind == "folder" and idx.ids == ("im0", "im1", "im2")
    arr = load_arrays(idx, None, 16, progress=False)
    assert set(np.unique(arr.masks).tolist()) == {0, 1}
    (tmp_path / "list.txt").write_text("im0\nim9\n")
    with pytest.raises(ValueError, match="im9"):
        read_id_list(tmp_path / "list.txt", idx)
    (tmp_path / "masks" / "im1.png").rename(tmp_path / "masks" / "other.png")
    with pytest.raises(ValueError, match=r"1 masks in .*masks have no image of the same name.*\['other'\]"):
        scan_folder(tmp_path)
    assert [i for i, _ in scan_images(tmp_path)] == ["im0", "im1", "im2"]
    (tmp_path / "masks" / "other.png").unlink()  # im1 without a mask: an unlabelled image, allowed
    idx = scan_folder(tmp_path)
    assert idx.ids == ("im0", "im1", "im2") and idx.labeled_ids == ("im0", "im2")
    with pytest.raises(ValueError, match="have no mask"):
        load_arrays(idx, ["im1"], 16, progress=False)


def test_real_thyroid_samples_through_folder_loader(tmp_path):
    data = shared_data_dir()
    if data is None or not (data / "thyroid_us" / "image").is_dir():
        pytest.skip("real samples ../shared/data/thyroid_us absent (set MEDREPRO_SHARED_DATA)")
    root = tmp_path / "thyroid"
    root.mkdir()
    (root / "images").symlink_to(data / "thyroid_us" / "image")
    (root / "masks").symlink_to(data / "thyroid_us" / "mask")
    # JPEG masks are lossy: map values near 0 / 255 with a tolerance
    (root / "classes.json").write_text(
        json.dumps({"classes": ["bg", "thyroid"], "mask_values": [0, 255], "tolerance": 127})
    )
    idx = open_dataset(root)
    assert len(idx.ids) == 40
    arr = load_arrays(idx, None, 64, progress=False)
    assert arr.images.shape == (40, 3, 64, 64)
    frac = (arr.masks == 1).mean()
    assert 0.01 < frac < 0.6  # a gland occupies part of each frame
    # without tolerance the lossy values are reported with the file name
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "thyroid"], "mask_values": [0, 255]}))
    with pytest.raises(ValueError, match="outside the class map"):
        load_arrays(open_dataset(root), None, 64, progress=False)


def test_every_bad_file_is_named(tmp_path):
    _folder(tmp_path, n=4)
    (tmp_path / "images" / "im1.png").write_bytes(b"broken")
    cv2.imwrite(str(tmp_path / "masks" / "im3.png"), np.full((20, 30), 7, np.uint8))
    with pytest.raises(ValueError, match=r"2 images or masks .*\n.*im1.png.*\n.*im3.png has values \[7\]"):
        load_arrays(open_dataset(tmp_path), None, 16, progress=False)


def test_open_dataset_on_a_folder_of_neither_layout_names_both(tmp_path):
    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no dataset found under .*images/.*CholecSeg8k layout"):
        open_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        open_dataset(tmp_path / "nope")
