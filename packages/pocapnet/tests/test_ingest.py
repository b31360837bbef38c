"""pocapnet ingest: raw recordings (screen recording, multi-frame DICOM, DICOM series, stereo and separate audio)
-> the layout extract reads, with every change explicit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from pocapnet.audioprep import align_to, estimate_lag, peak_normalize, zero_mic_off
from pocapnet.data import DataError, load_operation, resample
from pocapnet.ingest import IngestOptions, ingest_operation, parse_channel
from pocapnet.rawsynth import make_raw_operation, second_code
from pocapnet.xraysource import open_xray_source, sample_seconds


def _chans(raw, swap=False):
    ch = [f"physician={raw['headsets']}:0", f"assistant={raw['headsets']}:1", f"ambient={raw['ambient']}"]
    return [parse_channel(c) for c in ch]


def _codes(op_dir, n):
    return np.array([np.asarray(Image.open(op_dir / f"frame_{t + 1:05d}.png"))[:16, :16].mean() for t in range(n)])


@pytest.fixture(scope="module")
def raw_video(tmp_path_factory):
    return make_raw_operation(tmp_path_factory.mktemp("raw_video"), seconds=12, seed=4, xray="video")


def test_ingest_screen_recording_with_stereo_headsets_and_ambient(raw_video, tmp_path):
    opt = IngestOptions(align_to="physician", peak_normalize=True)
    rec = ingest_operation(tmp_path, "OP_901", _chans(raw_video), raw_video["xray"], raw_video["annotations"], opt)
    d = tmp_path / "OP_901"
    assert rec["seconds"] == 12 and not list(tmp_path.glob(".*partial"))
    for k in (1, 2, 3):
        info = sf.info(d / f"Channel_{k}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "FLOAT")
    # channel 1 is the stereo file's left channel, resampled and peak-normalised to -0.1 dBFS
    left = resample(sf.read(raw_video["headsets"], dtype="float32")[0][:, 0], 44100, 16000)
    ch1 = sf.read(d / "Channel_1.wav", dtype="float32")[0]
    assert np.abs(ch1).max() == pytest.approx(10 ** (-0.1 / 20), rel=1e-4)
    assert np.corrcoef(ch1[: len(left)], left[: len(ch1)])[0, 1] > 0.999
    # the ambient track started 0.25 s early: found by cross-correlation and shifted; the headsets (one file, one
    # clock) are not aligned to each other
    amb = rec["channels"][2]["alignment"]
    assert amb["lag_samples"] == 4000 and "alignment" not in rec["channels"][1]
    assert any("ambient shifted by -0.2500 s" in c for c in rec["changes"])
    # frame t is the screen at second t: the marker patch encodes t (MJPEG blurs it by a few grey levels)
    np.testing.assert_allclose(_codes(d, 12), [second_code(t) for t in range(12)], atol=3)
    assert Image.open(d / "frame_00001.png").mode == "RGB"
    op = load_operation(tmp_path, "OP_901")
    np.testing.assert_array_equal(op.labels, np.load(raw_video["labels"]))
    assert op.wearers == ("Dr Phys", "Dr Assist") and json.loads((d / "ingest.json").read_text())["xray"]["fps"] == 5


def test_ingest_refuses_an_unmapped_stereo_file_and_leaves_nothing(raw_video, tmp_path):
    chans = [parse_channel(f"headsets={raw_video['headsets']}"), parse_channel(f"ambient={raw_video['ambient']}")]
    with pytest.raises(DataError, match=r"headsets.wav has 2 channels; name one per microphone.*--mix-to-mono"):
        ingest_operation(tmp_path, "OP_901", chans, raw_video["xray"], raw_video["annotations"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="has 2 channel.*:5 does not exist"):
        ingest_operation(tmp_path, "OP_901", [parse_channel(f"a={raw_video['headsets']}:5")], None)


def test_ingest_video_shorter_than_audio_needs_trim(raw_video, tmp_path, caplog):
    opt = IngestOptions(xray_offset_s=-4.0)  # the monitor recording started 4 s before the audio: it ends at 8 s
    with pytest.raises(
        DataError,
        match=r"lengths disagree \(physician 12 s, assistant 12 s, ambient 12 s, X-ray 8 s\)"
        r".*--trim",
    ):
        ingest_operation(tmp_path, "OP_901", _chans(raw_video), raw_video["xray"], raw_video["annotations"], opt)
    with caplog.at_level("WARNING", logger="pocapnet"):
        rec = ingest_operation(
            tmp_path,
            "OP_901",
            _chans(raw_video),
            raw_video["xray"],
            raw_video["annotations"],
            IngestOptions(xray_offset_s=-4.0, trim=True),
        )
    assert rec["seconds"] == 8 and "cut to 8 s" in caplog.text
    assert any("labels after 8 s dropped" in c for c in rec["changes"])
    np.testing.assert_allclose(_codes(tmp_path / "OP_901", 8), [second_code(t + 4) for t in range(8)], atol=3)


def test_ingest_multiframe_dicom_at_one_fps(tmp_path):
    raw = make_raw_operation(tmp_path / "raw", seconds=10, seed=5, xray="dicom", dicom_fps=2.0)
    src = open_xray_source(raw["xray"])
    assert src.kind == "dicom-multiframe" and len(src.times) == 20 and src.times[1] == pytest.approx(0.5)
    opt = IngestOptions(xray_offset_s=2.0)  # the X-ray run started 2 s into the audio
    with pytest.raises(DataError, match="starts 2 s after the audio.*--fill-before-xray"):
        ingest_operation(tmp_path / "out", "OP_901", _chans(raw), raw["xray"], raw["annotations"], opt)
    rec = ingest_operation(
        tmp_path / "out",
        "OP_901",
        _chans(raw),
        raw["xray"],
        raw["annotations"],
        IngestOptions(xray_offset_s=2.0, fill_before_xray=True),
    )
    codes = _codes(tmp_path / "out" / "OP_901", 10)
    assert codes[0] == 0 and codes[1] == 0 and "2 s of black frames" in rec["changes"][0]
    # second t shows the image acquired at t - 2 (frame 2(t-2)); the 16-bit DICOM is min-max scaled to 8 bit
    want = np.array([second_code(t - 2) for t in range(2, 10)]) * 16 * 255 / 4080
    np.testing.assert_allclose(codes[2:], want, atol=1.01)


def test_dicom_series_last_image_hold(tmp_path, dicom_writer):
    d = tmp_path / "series"
    d.mkdir()
    for k, (hhmmss, v) in enumerate([("120000", 100), ("120003.5", 200), ("120007", 300)]):
        img = np.full((8, 8), v, np.uint16)
        img[0, 0] = 0
        dicom_writer(d / f"im{2 - k}.dcm", img, acq_time=hhmmss, instance=k + 1)  # file names out of order
    (d / "notes.txt").write_text("not a DICOM")
    src = open_xray_source(d)
    np.testing.assert_allclose(src.times, [0.0, 3.5, 7.0])
    idx, before, uncovered = sample_seconds(src, 10)
    assert idx.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2] and before == 0 and uncovered == 10
    assert src.get(1)[1, 1] == 255  # per-image min-max
    idx, before, _ = sample_seconds(src, 10, offset_s=1.0)
    assert idx.tolist()[:2] == [-1, 0] and before == 1


def test_physician_swap_by_wearer(raw_video, tmp_path):
    rec = ingest_operation(
        tmp_path, "OP_901", _chans(raw_video), None, raw_video["annotations"], IngestOptions(physician="Dr Assist")
    )
    right = resample(sf.read(raw_video["headsets"], dtype="float32")[0][:, 1], 44100, 16000)
    ch1 = sf.read(tmp_path / "OP_901" / "Channel_1.wav", dtype="float32")[0]
    np.testing.assert_allclose(ch1, right[: len(ch1)], atol=1e-6)  # the physician's headset is now Channel_1
    assert rec["wearer_swap"] and rec["channel_names"][0] == "assistant"
    with pytest.raises(DataError, match="wore neither headset"):
        ingest_operation(
            tmp_path,
            "OP_902",
            _chans(raw_video),
            None,
            raw_video["annotations"],
            IngestOptions(physician="Dr Who", labels_op="OP_901"),
        )


def test_audioprep_worked_examples():
    x = np.array([0.0, 0.25, -0.5, 0.1], np.float32)
    y, r = peak_normalize(x, headroom_db=0.1)
    assert np.abs(y).max() == pytest.approx(10 ** (-0.005)) and r["gain_db"] == pytest.approx(6.021 - 0.1, abs=1e-3)
    rng = np.random.default_rng(0)
    sr = 16000
    sig = 0.01 * rng.standard_normal(3 * sr).astype(np.float32)
    sig[sr : 2 * sr] = 0.9 * rng.standard_normal(sr).clip(-1, 1)  # one second of loud "mic off" noise
    z, r = zero_mic_off(sig, threshold=1e8)  # quiet frames sum to ~8e6 here, the loud ones to ~5e8
    assert np.all(z[sr + 512 : 2 * sr - 512] == 0) and r["frames"] > 25
    np.testing.assert_array_equal(z[: sr - 1024], sig[: sr - 1024])  # the quiet part is untouched
    ref = rng.standard_normal(4 * sr).astype(np.float32)
    late = np.concatenate([np.zeros(1234, np.float32), ref])[: 4 * sr]
    assert estimate_lag(late, ref, sr) == 1234 and estimate_lag(ref, late, sr) == -1234
    y, a = align_to(late, ref, sr)
    assert len(y) == len(ref) and a["end_padded_samples"] == 1234
    np.testing.assert_array_equal(y[: 4 * sr - 1234], ref[: 4 * sr - 1234])
