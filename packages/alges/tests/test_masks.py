"""Masks read as stored (palette by index, grey through a class map, RGB only with a colour map) and classes taken
from the data (classes.json or binary masks), on constructed files and on the real DDTI GIF masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from alges.config import IGNORE_INDEX, adapt_to_classes, create_config
from alges.data import load_arrays, open_dataset, scan_folder
from alges.masks import ClassMap, read_mask_raw
from medshared.testing import shared_data_dir
from PIL import Image


def _labels():
    m = np.zeros((8, 8), np.uint8)
    m[1:3, 1:4] = 1
    m[5:8, 5:8] = 2
    return m


def _folder(root, masks: dict[str, Image.Image], classes: dict | None, unlabelled=()):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, im in masks.items():
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        im.save(root / "masks" / f"{name}.png" if not name.endswith("gif") else root / "masks" / name)
    for name in unlabelled:
        Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(root / "images" / f"{name}.png")
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))


def test_palette_mask_is_read_by_index(tmp_path):
    lab = _labels()
    im = Image.fromarray(lab, mode="P")
    im.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (256 * 3 - 9))  # classes drawn red and green
    raw, kind = read_mask_raw(_save(im, tmp_path / "p.png"))
    assert kind == "index" and (raw == lab).all()
    _folder(tmp_path / "d", {"a": im}, {"classes": ["bg", "x", "y"], "mask_values": [0, 1, 2]})
    arr = load_arrays(open_dataset(tmp_path / "d"), None, 8, progress=False)
    # before: cv2 read the palette colours and kept channel 0, so classes 1 and 2 were 200/30 -> errors or background
    assert sorted(np.unique(arr.masks).tolist()) == [0, 1, 2]
    assert (arr.masks[0][1:3, 1:4] == 1).all() and (arr.masks[0][5:8, 5:8] == 2).all()


def _save(im: Image.Image, path):
    im.save(path)
    return path


def test_grey_mask_through_class_map_and_wide_values(tmp_path):
    lab = _labels()
    grey = np.choose(lab, [0, 128, 255]).astype(np.uint8)
    cm = ClassMap(("bg", "a", "b"), (0, 128, 255), source="test")
    assert (cm.read(_save(Image.fromarray(grey), tmp_path / "g.png")) == lab).all()
    wide = np.choose(lab, [0, 1000, 2000]).astype(np.uint16)
    p16 = _save(Image.fromarray(wide), tmp_path / "w.png")
    assert read_mask_raw(p16)[1] == "grey"
    assert (ClassMap(("bg", "a", "b"), (0, 1000, 2000), source="t").read(p16) == lab).all()
    with pytest.raises(ValueError, match=r"w.png has values \[1000, 2000\] outside the class map"):
        cm.read(p16)
    # an ignore value becomes 255; an unknown value names the file
    cm_ign = ClassMap(("bg", "a"), (0, 128), ignore_values=(255,), source="t")
    out = cm_ign.read(tmp_path / "g.png")
    assert (out[lab == 2] == IGNORE_INDEX).all() and (out[lab == 1] == 1).all()
    with pytest.raises(ValueError, match=r"g.png has values \[255\]"):
        ClassMap(("bg", "a"), (0, 128), source="t").read(tmp_path / "g.png")


def test_rgb_mask_needs_a_colour_map(tmp_path):
    lab = _labels()
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    p = _save(Image.fromarray(colours[lab]), tmp_path / "rgb.png")
    grey_map = ClassMap(("bg", "a", "b"), (0, 1, 2), source="classes.json")
    with pytest.raises(ValueError, match=r"rgb.png is an RGB colour mask with 3 colours: \[0, 0, 0\] .*\[255, 0, 0\]"):
        grey_map.read(p)
    cm = ClassMap.from_dict({"classes": ["bg", "a", "b"], "colors": [[0, 0, 0], [255, 0, 0], [0, 0, 255]]}, "t")
    assert (cm.read(p) == lab).all()
    with pytest.raises(ValueError, match=r"colours \[\[0, 0, 255\]\] outside the colour map"):
        ClassMap.from_dict({"classes": ["bg", "a"], "colors": [[0, 0, 0], [255, 0, 0]]}, "t").read(p)
    # R = G = B masks (CholecSeg8k watershed) are grey, not colour
    g = np.repeat(np.choose(lab, [0, 9, 50]).astype(np.uint8)[..., None], 3, 2)
    assert read_mask_raw(_save(Image.fromarray(g), tmp_path / "rgbgrey.png"))[1] == "grey"
    # a folder of RGB masks without classes.json: the error lists the colours and the file to write
    _folder(tmp_path / "d", {"a": Image.fromarray(colours[lab])}, None)
    with pytest.raises(ValueError, match=r"RGB colour mask .*\[255, 0, 0\].*classes.json"):
        scan_folder(tmp_path / "d")


def test_alpha_and_multiframe_masks_are_errors(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert read_mask_raw(_save(Image.fromarray(rgba), tmp_path / "opaque.png"))[1] == "grey"
    rgba[0, 0, 3] = 10
    with pytest.raises(ValueError, match="translucent alpha"):
        read_mask_raw(_save(Image.fromarray(rgba), tmp_path / "alpha.png"))
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="anim.gif has 2 frames"):
        read_mask_raw(tmp_path / "anim.gif")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read mask .*bad.png"):
        read_mask_raw(tmp_path / "bad.png")


def test_classes_come_from_the_data(tmp_path):
    lab = _labels()
    bin_mask = Image.fromarray(((lab > 0) * 255).astype(np.uint8))
    _folder(tmp_path / "bin", {"a": bin_mask, "b": bin_mask}, None, unlabelled=["c"])
    idx = open_dataset(tmp_path / "bin")
    assert idx.class_map.names == ("background", "foreground") and idx.class_map.values == (0, 255)
    assert idx.ids == ("a", "b", "c") and idx.labeled_ids == ("a", "b")  # "c" has no mask: unlabelled, allowed
    cfg = adapt_to_classes(create_config("alges_paper"), idx.class_map)
    assert cfg.num_classes == 2 and cfg.scored_classes == (1,)
    with pytest.raises(ValueError, match="num_classes is 13 in your config but the dataset has 2"):
        adapt_to_classes(create_config("alges_paper"), idx.class_map, {"num_classes"})
    # classes.json wins, including its dice_classes
    _folder(
        tmp_path / "tri",
        {"a": Image.fromarray(lab)},
        {"classes": ["bg", "x", "y"], "mask_values": [0, 1, 2], "dice_classes": [2]},
    )
    cm = open_dataset(tmp_path / "tri").class_map
    cfg3 = adapt_to_classes(create_config("alges_paper"), cm)
    assert cfg3.num_classes == 3 and cfg3.scored_classes == (2,)
    # values other than 0/255 without classes.json: an error listing them
    _folder(tmp_path / "multi", {"a": Image.fromarray(lab)}, None)
    with pytest.raises(ValueError, match=r"values \[0, 1, 2\].*classes.json"):
        open_dataset(tmp_path / "multi")


def test_real_ddti_gif_masks():
    data = shared_data_dir()
    if data is None or not (data / "ddti" / "mask").is_dir():
        pytest.skip("real samples ../shared/data/ddti absent (set MEDREPRO_SHARED_DATA)")
    idx = open_dataset(data / "ddti")  # image/ + mask/ (singular), GIF masks, no classes.json
    assert len(idx.ids) == 535 and len(idx.labeled_ids) == 535
    assert idx.class_map.values == (0, 255) and idx.class_map.num_classes == 2
    raw, kind = read_mask_raw(idx.mask_path("100_1(1)"))
    assert kind == "grey" and raw.shape == (300, 300) and set(np.unique(raw).tolist()) == {0, 255}
    ids = ["100_1(1)", "337_3(1)", "384_1(2)", "101_1(1)"]
    keep = load_arrays(idx, ids, 64, progress=False)
    assert keep.empty_mask_ids() == ["337_3(1)", "384_1(2)"]  # annotated nodule missing in the mask
    frac = (keep.masks[0] == 1).mean()
    assert 0.2 < frac < 0.9  # a nodule-centred crop
    dropped = load_arrays(idx, ids, 64, empty_masks="drop", progress=False)
    assert dropped.ids == ["100_1(1)", "101_1(1)"] and dropped.orig_hw.tolist() == [[300, 300], [300, 300]]
    with pytest.raises(ValueError, match="have no foreground"):
        load_arrays(idx, ids, 64, empty_masks="error", progress=False)
