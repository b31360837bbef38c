from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from medshared.testing import shared_data_dir
from pocapnet.config import PHASES, TRANSITION
from pocapnet.data import (
    DataError,
    frame_paths,
    labels_from_ranges,
    list_operations,
    load_operation,
    phase_index,
    read_annotations,
    read_frame,
    read_label_csv,
    read_wav,
)
from pocapnet.synthetic import make_schedule, make_synthetic_dataset


def test_labels_from_ranges_inclusive_and_closing_runs_to_end():
    y = labels_from_ranges(["00:00-00:02", "00:03-00:03", "00:04-00:05"], ["Preparation", "Transition", "Closing"], 9)
    assert y.tolist() == [0, 0, 0, 8, 7, 7, 7, 7, 7]
    y = labels_from_ranges(["0:00:00-0:00:01", "00:02-00:02"], ["Preperation", "Positioning of the Guide Wire"], 3)
    assert y.tolist() == [0, 0, 2]


def test_unlabelled_seconds_and_unknown_phase():
    with pytest.raises(DataError, match="unlabelled seconds"):
        labels_from_ranges(["00:00-00:02", "00:05-00:06"], ["Preparation", "Puncture"], 7)
    with pytest.raises(DataError, match="unknown phase name 'Suturing'"):
        labels_from_ranges(["00:00-00:02"], ["Suturing"], 3)
    assert phase_index("cath control") == 6 and phase_index(8) == TRANSITION


def test_schedule_follows_phase_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = make_schedule(rng, 120)
        phases = [int(p) for i, p in enumerate(y) if p != TRANSITION and (i == 0 or p != y[i - 1])]
        dedup = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
        assert dedup[0] == 0 and dedup[-1] == 7
        assert set(dedup) == set(range(8))
        assert len(y) == 120


@pytest.fixture()
def one_op(tmp_path):
    make_synthetic_dataset(tmp_path, n_ops=1, seconds=(20, 20), seed=1, frame_size=32, progress=False)
    return tmp_path


def test_loader_on_synthetic_json_and_csv(syn_data, tmp_path):
    ops = list_operations(syn_data)
    op = load_operation(syn_data, ops[0])
    assert op.audio.shape == (3, op.seconds * 16000) and len(op.labels) == op.seconds
    ann = read_annotations(syn_data / "annotations.json")
    assert set(ann) == set(ops)
    make_synthetic_dataset(
        tmp_path,
        n_ops=1,
        seconds=(20, 20),
        seed=1,
        frame_size=32,
        labels_format="csv",
        frame_format="png",
        progress=False,
    )
    op2 = load_operation(tmp_path, "OP_001")
    assert op2.frames[0].suffix == ".png" and op2.labels.shape == (20,)
    assert set(op2.labels.tolist()) <= set(range(len(PHASES)))


def test_missing_channel(one_op):
    (one_op / "OP_001" / "Channel_2.wav").unlink()
    with pytest.raises(FileNotFoundError, match="Channel_2.wav"):
        load_operation(one_op, "OP_001")


def test_channel_length_mismatch(one_op):
    p = one_op / "OP_001" / "Channel_3.wav"
    x, sr = sf.read(p)
    sf.write(p, x[: 10 * sr], sr)
    with pytest.raises(
        DataError,
        match=r"lengths disagree \(Channel_1.wav 20 s, Channel_2.wav 20 s, Channel_3.wav "
        r"10 s, frames 20 s\).*--trim",
    ):
        load_operation(one_op, "OP_001")


def test_frames_mismatch_and_gap(one_op):
    d = one_op / "OP_001"
    for i in range(11, 21):
        (d / f"frame_{i:05d}.jpg").unlink()
    with pytest.raises(DataError, match="frames 10 s.*--trim to cut all to 10 s"):
        load_operation(one_op, "OP_001")
    (d / "frame_00005.jpg").unlink()
    with pytest.raises(DataError, match="without gaps"):
        frame_paths(d)


def test_unreadable_frame(one_op):
    (one_op / "OP_001" / "frame_00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="unreadable X-ray frame .*frame_00003.jpg"):
        read_frame(one_op / "OP_001" / "frame_00003.jpg")


def test_unknown_phase_in_annotations(one_op):
    ann = json.loads((one_op / "annotations.json").read_text())
    ann[0][4][1] = "Coffee break"
    (one_op / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="unknown phase name 'Coffee break'"):
        load_operation(one_op, "OP_001")


def test_no_labels(one_op):
    (one_op / "annotations.json").unlink()
    with pytest.raises(DataError, match="no labels"):
        load_operation(one_op, "OP_001")
    assert load_operation(one_op, "OP_001", require_labels=False).labels is None


def test_resampling_is_logged(tmp_path, caplog):
    x = np.sin(np.linspace(0, 100, 44100)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 44100)
    with caplog.at_level("WARNING", logger="pocapnet"):
        y = read_wav(tmp_path / "a.wav", 16000)
    assert len(y) == 16000 and "44100 Hz resampled to 16000 Hz" in caplog.text


def _real():
    d = shared_data_dir()
    if d is None or not (d / "chest_xray").is_dir():
        pytest.skip("real samples ../shared/data/chest_xray not available (set MEDREPRO_SHARED_DATA)")
    return d


def test_real_radiographs_png_jpeg_dicom():
    d = _real() / "chest_xray"
    files = sorted(d.iterdir())
    kinds = {f.suffix.lower() for f in files}
    assert {".png", ".jpg", ".dcm"} <= kinds
    for f in files:
        img = read_frame(f)
        assert img.ndim == 2 and img.min() >= 0 and img.max() <= 255 and img.std() > 5, f.name


def test_real_speech_reads(tmp_path):
    d = shared_data_dir()
    if d is None or not (d / "speech_de").is_dir():
        pytest.skip("real samples ../shared/data/speech_de not available")
    for f in sorted((d / "speech_de").glob("*.wav")):
        x = read_wav(f)
        assert x.ndim == 1 and len(x) > 16000 and np.abs(x).max() <= 1.0
    shutil.copy(next((d / "speech_de").glob("*.wav")), tmp_path / "x.wav")


# ------------------------------------------------------------------------------------- no silent input changes
def _policy(**kw):
    from pocapnet.data import InputPolicy

    return InputPolicy(**kw)


def test_stereo_channel_is_an_error_unless_mixing_is_asked_for(one_op, caplog):
    p = one_op / "OP_001" / "Channel_1.wav"
    x, sr = sf.read(p, dtype="float32")
    sf.write(p, np.stack([x, -x], axis=1), sr, subtype="FLOAT")  # an opposite-polarity pair: the mean is silence
    with pytest.raises(
        DataError,
        match=r"Channel_1.wav has 2 channels.*--channel NAME=Channel_1.wav:INDEX.*"
        r"--mix-to-mono",
    ):
        load_operation(one_op, "OP_001")
    with caplog.at_level("WARNING", logger="pocapnet"):
        op = load_operation(one_op, "OP_001", policy=_policy(mix_to_mono=True))
    assert "2 channels averaged to mono (--mix-to-mono)" in caplog.text
    assert op.changes == ["Channel_1.wav: 2 channels averaged to mono"]
    assert np.abs(op.audio[0]).max() == 0.0  # what the flag does is what it says: here it cancels the signal
    assert read_wav(p, channel=1)[100] == pytest.approx(-x[100])  # an explicit channel is read as stored


def test_multiframe_dicom_frame_is_an_error_unless_first_frame_is_asked_for(tmp_path, caplog, dicom_writer):
    frames = np.stack([np.full((8, 8), v, np.uint16) for v in (0, 1000, 2000)])
    frames[:, 0, 0] = 3000  # every frame has contrast
    p = dicom_writer(tmp_path / "frame_00001.dcm", frames, frame_time_ms=1000)
    with pytest.raises(DataError, match=r"multi-frame DICOM \(3 frames\).*pocapnet ingest --xray frame_00001.dcm"):
        read_frame(p)
    with caplog.at_level("WARNING", logger="pocapnet"):
        img = read_frame(p, dicom_first_frame=True)
    assert "only the first is used" in caplog.text
    assert img.shape == (8, 8) and img[1, 1] == 0 and img[0, 0] == 255  # frame 0 (value 0), min-max scaled


def test_issue_example_six_frames_for_nine_seconds(tmp_path, caplog):
    # the issue's case: 6 frames, 9 s of audio; Closing (from 5 s) must not vanish silently
    make_synthetic_dataset(tmp_path, n_ops=1, seconds=(9, 9), seed=2, frame_size=16, progress=False)
    d = tmp_path / "OP_001"
    for i in range(7, 10):
        (d / f"frame_{i:05d}.jpg").unlink()
    ann = [["OP_001", "Dr A", "Dr B", ["00:00-00:04", "00:05-00:08"], ["Preparation", "Closing"]]]
    (tmp_path / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="frames 6 s.*--trim to cut all to 6 s"):
        load_operation(tmp_path, "OP_001")
    with caplog.at_level("WARNING", logger="pocapnet"):
        op = load_operation(tmp_path, "OP_001", policy=_policy(trim=True))
    assert op.seconds == 6 and op.labels.tolist() == [0, 0, 0, 0, 0, 7]
    assert any("cut to 6 s" in c for c in op.changes) and any("labels after 6 s dropped" in c for c in op.changes)
    assert "(--trim)" in caplog.text
    assert op.wearers == ("Dr A", "Dr B")  # the wearer fields are kept


def test_labels_past_the_recording_are_an_error_unless_trimmed(tmp_path):
    with pytest.raises(DataError, match="labels run to 11 s but the recording has 10 s.*--trim"):
        labels_from_ranges(["00:00-00:11"], ["Puncture"], 10, "OP_X")
    y = labels_from_ranges(["00:00-00:11"], ["Puncture"], 10, "OP_X", trim=True)
    assert y.tolist() == [1] * 10
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("start,end,phase\n0,3,Preparation\n00:04,00:05,Closing\n")
    assert read_label_csv(csv_path, 6).tolist() == [0, 0, 0, 0, 7, 7]
    csv_path.write_text("second,phase\n0,Preparation\n1,Preparation\n2,Puncture\n")
    with pytest.raises(DataError, match="labels run to 2 s but the recording has 2 s"):
        read_label_csv(csv_path, 2)


def test_read_frame_palette_and_alpha(tmp_path):
    from PIL import Image

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    pal = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), "P")  # index k shows the grey 20 k
    pal.putpalette([int(v) for k in range(256) for v in [min(20 * k, 255)] * 3])
    pal.save(tmp_path / "frame_00001.png")
    assert np.allclose(read_frame(tmp_path / "frame_00001.png"), grey)  # the palette's colours, not the indices
    la = np.dstack([grey, np.full_like(grey, 255)])
    Image.fromarray(la, "LA").save(tmp_path / "frame_00002.png")
    assert np.allclose(read_frame(tmp_path / "frame_00002.png"), grey)  # opaque alpha dropped, not averaged in
    la[0, 0, 1] = 7
    Image.fromarray(la, "LA").save(tmp_path / "frame_00003.png")
    with pytest.raises(DataError, match="frame_00003.png has a translucent alpha"):
        read_frame(tmp_path / "frame_00003.png")
