"""Loaders on synthetic files (AVI, frame folders, the authors' release layout), real frames, clips, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from kfgnet.config import ClipConfig
from kfgnet.data import ClipDataset, DataError, clip_indices, read_manifest, read_release, read_video


def test_manifest_and_video_roundtrip(synth: Path) -> None:
    recs = read_manifest(synth)
    raw = json.loads(synth.read_text())["videos"]
    assert len(recs) == len(raw) >= 6
    for r, row in zip(recs, raw):
        frames = read_video(r.path)
        assert frames.ndim == 4 and frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
        assert len(frames) == row["num_frames"]
        assert r.key_frame == row["key_frame"] and r.key_frame in r.boxes
        assert r.label == (1 if row["label"] == "malignant" else 0)
        assert r.path.stem.endswith("_m" if r.label else "_b")
    csv_recs = read_manifest(synth.with_suffix(".csv"))
    assert [(r.path, r.label, r.key_frame, r.boxes) for r in csv_recs] == [
        (r.path, r.label, r.key_frame, r.boxes) for r in recs
    ]


def test_synthetic_signal_key_frame_is_largest(synth: Path) -> None:
    for r in read_manifest(synth):
        area = {k: (b[2] - b[0]) * (b[3] - b[1]) for k, b in r.boxes.items()}
        assert area[r.key_frame] >= 0.9 * max(area.values())
        b = r.boxes[r.key_frame]
        w, h = b[2] - b[0], b[3] - b[1]
        assert (h > w) == bool(r.label)  # malignant taller-than-wide, benign wider-than-tall


def test_release_layout_reader(synth: Path) -> None:
    recs = {r.path.name: r for r in read_manifest(synth)}
    rel = read_release(synth.parent)
    assert len(rel) == len(recs)
    for r in rel:
        m = recs[r.path.name]
        assert r.label == m.label and r.key_frame == m.key_frame
        kb, mb = r.boxes[r.key_frame], m.boxes[m.key_frame]
        assert np.allclose(kb[:2], mb[:2], atol=1.5) and np.allclose(kb[2:], mb[2:], atol=2.5)


def test_frame_folder_and_real_ultrasound(tmp_path: Path) -> None:
    from medshared.testing import shared_data_dir

    d = shared_data_dir()
    if d is None or not (d / "thyroid_us" / "image").is_dir():
        pytest.skip("../shared/data/thyroid_us absent (real frames only exist in the project's shared folder)")
    files = sorted((d / "thyroid_us" / "image").glob("*.jpg"))[:6]
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"{i:03d}.jpg")
    frames = read_video(folder)
    assert frames.shape == (6, 256, 256, 3)
    gray = read_video(folder, gray=True)
    assert gray.shape == (6, 256, 256)


@pytest.mark.parametrize(
    "n,key,t,start,pos", [(100, 50, 32, 34, 16), (100, 3, 32, 0, 3), (100, 98, 32, 68, 30), (32, 10, 32, 0, 10)]
)
def test_clip_indices_shift_to_fit(n: int, key: int, t: int, start: int, pos: int) -> None:
    idx, p = clip_indices(n, key, ClipConfig(num_frames=t))
    assert list(idx) == list(range(start, start + t)) and p == pos and idx[p] == key


def test_clip_indices_short_video_repeat_pads() -> None:
    idx, p = clip_indices(10, 4, ClipConfig(num_frames=16))
    assert len(idx) == 16 and p == 8 and idx[p] == 4 and idx[0] == 0 and idx[-1] == 9
    u, _ = clip_indices(100, 10, ClipConfig(num_frames=8, sampling="uniform"))
    assert u[0] == 0 and u[-1] == 99 and len(u) == 8


def test_clip_dataset_motion_cached_and_flipped(synth: Path) -> None:
    recs = read_manifest(synth)[:3]
    clip = ClipConfig(num_frames=16, size=32)
    ds = ClipDataset(recs, clip, 4, augment=True, flip_prob=1.0, intensity_prob=0.0)
    base = ClipDataset(recs, clip, 4)
    x, y, vm = ds[0]
    x0, _, vm0 = base[0]
    assert x.shape == (3, 16, 32, 32) and vm.shape == (4,)
    assert torch_equal(x, x0.flip(1).flip(2).flip(3)) and np.allclose(vm.numpy(), vm0.numpy()[::-1])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# ---- bad input -------------------------------------------------------------------------------------------------
def test_unreadable_video_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="broken.avi"):
        read_video(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_video(tmp_path / "missing.avi")


def _manifest(tmp_path: Path, synth: Path, **change) -> Path:
    rows = json.loads(synth.read_text())["videos"][:2]
    for k, v in change.items():
        rows[0][k] = v
    for r in rows:
        r["video"] = str(synth.parent / r["video"])
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"videos": rows}))
    return p


def test_unknown_label(tmp_path: Path, synth: Path) -> None:
    with pytest.raises(DataError, match="unknown label 'cancerous'"):
        read_manifest(_manifest(tmp_path, synth, label="cancerous"))


def test_key_frame_beyond_video(tmp_path: Path, synth: Path) -> None:
    recs = read_manifest(_manifest(tmp_path, synth, key_frame=999))
    with pytest.raises(DataError, match="key frame 999"):
        ClipDataset(recs, ClipConfig(num_frames=8, size=32), 2)


def test_video_shorter_than_clip(synth: Path) -> None:
    recs = read_manifest(synth)[:1]
    with pytest.raises(DataError, match="shorter than the 64-frame clip"):
        ClipDataset(recs, ClipConfig(num_frames=64, size=32), 16, allow_pad=False)
    assert len(ClipDataset(recs, ClipConfig(num_frames=64, size=32), 16, allow_pad=True)) == 1


def test_boxes_outside_frame(tmp_path: Path, synth: Path) -> None:
    from kfgnet.detection_data import extract_annotated_frames

    recs = read_manifest(_manifest(tmp_path, synth, boxes={"2": [10, 10, 500, 60]}))
    with pytest.raises(DataError, match="outside the 64x64 frame"):
        extract_annotated_frames(recs, tmp_path / "frames")
    with pytest.raises(DataError, match="empty or inverted"):
        read_manifest(_manifest(tmp_path, synth, boxes={"2": [30, 10, 20, 60]}))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="make-synthetic"):
        read_manifest(tmp_path / "nope.json")


def test_key_frame_optional_with_uniform_sampling(tmp_path: Path, synth: Path) -> None:
    rows = json.loads(synth.read_text())["videos"][:2]
    for r in rows:
        r["video"] = str(synth.parent / r["video"])
        del r["key_frame"]
    p = tmp_path / "nokey.json"
    p.write_text(json.dumps({"videos": rows}))
    recs = read_manifest(p)
    assert all(r.key_frame is None for r in recs)
    ds = ClipDataset(recs, ClipConfig(num_frames=8, size=32, sampling="uniform"), 2)
    assert len(ds) == 2 and ds.keys[0].box is not None  # the nodule crop still finds an annotated box
    with pytest.raises(DataError, match="has no key_frame"):
        ClipDataset(recs, ClipConfig(num_frames=8, size=32), 2)
