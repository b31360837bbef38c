"""Video reading: DICOM cine loops (multi-frame, pydicom), the text-band blackout, folders of videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kfgnet.data import DataError, read_video
from kfgnet.video_io import blackout_frames, is_dicom, parse_blackout

pydicom = pytest.importorskip("pydicom")


def write_dicom_cine(path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8) -> Path:
    """A minimal multi-frame ultrasound DICOM (uncompressed explicit VR little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    t, h, w = frames.shape[:3]
    ds.NumberOfFrames, ds.Rows, ds.Columns = t, h, w
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    ds.PhotometricInterpretation = photometric
    if frames.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.FrameTime = 33.3
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_cine_grey_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 20, 24), dtype=np.uint8)
    p = write_dicom_cine(tmp_path / "loop.dcm", grey)
    v = read_video(p)
    assert v.shape == (7, 20, 24, 3) and v.dtype == np.uint8
    np.testing.assert_array_equal(v[..., 0], grey)  # every frame, as stored
    np.testing.assert_array_equal(read_video(p, gray=True), grey)
    rgb = rng.integers(0, 256, (5, 10, 12, 3), dtype=np.uint8)
    q = write_dicom_cine(tmp_path / "IM0001", rgb, photometric="RGB")  # no extension: found by the DICM magic
    assert is_dicom(q)
    np.testing.assert_array_equal(read_video(q), rgb)


def test_dicom_monochrome1_is_inverted_and_deep_pixels_refused(tmp_path: Path) -> None:
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    v = read_video(write_dicom_cine(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(v[..., 0], 255 - grey)
    deep = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4) * 100
    with pytest.raises(DataError, match="16-bit pixels.*8-bit"):
        read_video(write_dicom_cine(tmp_path / "deep.dcm", deep, bits=16))
    small = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4)  # 8-bit values in 16-bit storage: same numbers
    np.testing.assert_array_equal(read_video(write_dicom_cine(tmp_path / "s.dcm", small, bits=16))[..., 0], small)


def test_real_dicom_is_one_frame_and_too_short_to_classify() -> None:
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    files = sorted((root / "chest_xray").glob("*.dcm")) if root else []
    if not files:
        pytest.skip("../shared/data/chest_xray/*.dcm absent (a user's clone has no shared data)")
    v = read_video(files[0])
    assert v.shape[0] == 1 and v.shape[-1] == 3 and v.dtype == np.uint8
    from kfgnet.config import ClipConfig
    from kfgnet.data import check_clip_length

    with pytest.raises(DataError, match="fewer than clip.min_frames"):
        check_clip_length(len(v), ClipConfig(), True, str(files[0]))


def test_blackout_bands(tmp_path: Path) -> None:
    assert parse_blackout("60") == (60, 0, 0, 0) and parse_blackout("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="non-negative"):
        parse_blackout("1,-2")
    f = np.full((2, 10, 12, 3), 200, np.uint8)
    b = blackout_frames(f, (3, 1, 2, 0))
    assert (b[:, :3] == 0).all() and (b[:, -1:] == 0).all() and (b[:, :, :2] == 0).all()
    assert (b[:, 3:9, 2:] == 200).all() and (f == 200).all()  # the input is untouched
    with pytest.raises(DataError, match="covers the whole"):
        blackout_frames(f, (6, 4, 0, 0))
    p = write_dicom_cine(tmp_path / "b.dcm", np.full((3, 10, 12), 90, np.uint8))
    assert (read_video(p, blackout=(2, 0, 0, 0))[:, :2] == 0).all()


def test_list_videos_folder_of_videos_vs_frame_folder(tmp_path: Path) -> None:
    import cv2
    from kfgnet.cmd_stage2 import list_videos

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.zeros((8, 8, 3), np.uint8))
    assert list_videos(frames) == [frames]  # a folder of frames is one video
    vids = tmp_path / "vids"
    vids.mkdir()
    write_dicom_cine(vids / "a.dcm", np.zeros((3, 8, 8), np.uint8))
    (vids / "sub").mkdir()
    cv2.imwrite(str(vids / "sub" / "000.png"), np.zeros((8, 8, 3), np.uint8))
    (vids / "notes.txt").write_text("x")
    assert list_videos(vids) == [vids / "a.dcm", vids / "sub"]
    with pytest.raises(DataError, match="holds no videos"):
        (tmp_path / "empty").mkdir()
        list_videos(tmp_path / "empty")


def test_iter_frames_decodes_only_wanted_frames_of_a_dicom_too(tmp_path: Path) -> None:
    from kfgnet.video_io import frame_count_and_size, iter_frames

    grey = np.arange(6 * 8 * 10, dtype=np.uint8).reshape(6, 8, 10)
    p = write_dicom_cine(tmp_path / "c.dcm", grey)
    assert frame_count_and_size(p) == (6, (10, 8))
    got = dict(iter_frames(p, {1, 4}))
    assert sorted(got) == [1, 4] and got[4].shape == (8, 10, 3)
    np.testing.assert_array_equal(got[4][..., 0], grey[4])
