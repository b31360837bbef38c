"""Screen recordings with a variable frame rate: every frame placed at its own timestamp, not at k / fps.

The videos are written with PyAV (``av``, FFmpeg bundled; a dev dependency): frames at irregular times, B-frames
(packets stored out of presentation order), each frame with its own grey level in the top-left 16 x 16 patch, so a
test reads back which frame a second got."""

from __future__ import annotations

import fractions
import json

import numpy as np
import pytest
from PIL import Image
from pocapnet.data import DataError
from pocapnet.ingest import IngestOptions, ingest_operation, parse_channel
from pocapnet.rawsynth import make_raw_operation, second_code
from pocapnet.screenvideo import VideoFrames, frame_timing
from pocapnet.xraysource import open_xray_source

av = pytest.importorskip("av", reason="PyAV (dev dependency) writes the test videos")

# A recorder writing a frame only when the screen changes: bursts, single frames off the second, a 2.4-s static gap;
# 26 frames over 12 s (the container's average rate is ~2.2 fps, so k / fps puts frame 20 near 9 s instead of 10.0)
TIMES = [0.0, 0.1, 0.15, 0.9, 1.0, 1.05, 2.7, 2.8, 3.3, 4.0, 4.01, 4.02, 4.03, 4.04, 6.45, 7.0, 7.02, 7.5]
TIMES += [8.0, 9.96, 10.0, 10.3, 10.6, 11.0, 11.2, 11.9]


def _frame_code(k: int) -> int:
    return second_code(k)  # frame k's own grey level (26 frames < 32 distinct codes)


def _write(path, times, codec="libx264", fmt=None, size=64):
    out = av.open(str(path), "w", format=fmt)
    s = out.add_stream(codec, rate=30)
    s.width = s.height = size
    s.pix_fmt = "yuv420p"
    s.time_base = s.codec_context.time_base = fractions.Fraction(1, 1000)
    s.options = {"bf": "2", "g": "8", "crf": "8"}
    for k, t in enumerate(times):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 2] = 120
        img[:16, :16] = _frame_code(k)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


def _on_screen(times, t):
    """The frame on screen at time t: the last one shown at or before t (None before the first)."""
    shown = [k for k, tk in enumerate(times) if tk <= t + 1e-9]
    return shown[-1] if shown else None


def _codes(op_dir, n):
    return np.array([np.asarray(Image.open(op_dir / f"frame_{t + 1:05d}.png"))[:16, :16].mean() for t in range(n)])


@pytest.fixture(scope="module")
def vfr_mp4(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("vfr") / "screen.mp4", TIMES)


def test_vfr_frames_sit_at_their_timestamps(vfr_mp4):
    src = open_xray_source(vfr_mp4)
    np.testing.assert_allclose(src.times, TIMES, atol=1e-6)
    t = src.timing
    assert t["source"] == "timestamps" and t["frame_rate"] == "variable" and t["frames"] == len(TIMES)
    assert (t["first_s"], t["last_s"]) == (0.0, 11.9) and t["interval_s"]["max"] == pytest.approx(2.41)
    assert t["max_shift_vs_k_over_fps_s"] > 1.0  # what k / fps would have done
    # forward, repeated, then backward (reopens and decodes forward again: a seek by frame number assumes CFR)
    for k in (3, 3, 20, 7):
        assert abs(int(src.get(k)[:16, :16].mean()) - _frame_code(k)) <= 3


def test_ingest_vfr_screen_recording_puts_each_second_on_the_frame_on_screen(vfr_mp4, tmp_path, caplog):
    raw = make_raw_operation(tmp_path / "raw", seconds=12, seed=1, xray="video")
    chans = [parse_channel(f"physician={raw['headsets']}:0"), parse_channel(f"ambient={raw['ambient']}")]
    with caplog.at_level("INFO", logger="pocapnet"):
        rec = ingest_operation(tmp_path / "out", "OP_901", chans, vfr_mp4)
    assert rec["seconds"] == 12 and "variable frame rate, 26 frames at 0.000-11.900 s" in caplog.text
    want = [_frame_code(_on_screen(TIMES, t)) for t in range(12)]
    assert len(set(want)) == 10  # held frames: 4.04 s's in seconds 5-6 (a static gap), 8.0 s's in seconds 8-9
    np.testing.assert_allclose(_codes(tmp_path / "out" / "OP_901", 12), want, atol=3)
    timing = json.loads((tmp_path / "out" / "OP_901" / "ingest.json").read_text())["xray"]["timing"]
    assert timing["frame_rate"] == "variable" and timing["last_s"] == 11.9
    # the X-ray clock starting 0.5 s before the audio: second t shows the frame on screen at t + 0.5
    rec = ingest_operation(tmp_path / "out", "OP_902", [], vfr_mp4, options=IngestOptions(xray_offset_s=-0.5))
    want = [_frame_code(_on_screen(TIMES, t + 0.5)) for t in range(rec["seconds"])]
    assert rec["seconds"] == 12  # second 11 is video time 11.5 s: covered (last frame 11.9 s + median interval 0.3 s)
    np.testing.assert_allclose(_codes(tmp_path / "out" / "OP_902", 12), want, atol=3)


def test_a_frame_decoding_at_another_time_than_its_packet_is_an_error(vfr_mp4):
    frames = VideoFrames(vfr_mp4, np.asarray(TIMES) + 0.25, check_times=True)  # as if the decoder dropped frames
    with pytest.raises(DataError, match=r"screen.mp4: frame 2 decodes at 0.150 s but its packet is at 0.400 s"):
        frames(2)


def test_cfr_recording_is_recorded_as_constant(tmp_path):
    raw = make_raw_operation(tmp_path, seconds=8, seed=2, xray="video", video_fps=5)
    src = open_xray_source(raw["xray"])
    assert src.timing["frame_rate"] == "constant" and src.timing["source"] == "timestamps"
    np.testing.assert_allclose(src.times, np.arange(40) / 5, atol=1e-6)
    assert src.end_s == pytest.approx(8.0) and "max_shift_vs_k_over_fps_s" not in src.timing


def test_stream_without_timestamps_falls_back_to_k_over_fps_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path / "screen.h264", [k / 4 for k in range(8)], fmt="h264")  # raw H.264: no container
    with caplog.at_level("WARNING", logger="pocapnet"):
        src = open_xray_source(path, fps=4.0)
    assert "no frame timestamps; frame k placed at k / 4" in caplog.text and "-fps_mode cfr" in caplog.text
    assert src.timing["source"] == "k/fps" and src.fps == 4.0
    np.testing.assert_allclose(src.times, np.arange(8) / 4)
    assert abs(int(src.get(6)[:16, :16].mean()) - _frame_code(6)) <= 3


def test_frame_timing_rules(tmp_path):
    p = tmp_path / "rec.mkv"
    # Matroska's 1-ms time base rounds 1/30 s to 33 / 34 ms: still constant; one dropped frame makes it variable
    ms = np.round(np.arange(90) * 1000 / 30)
    assert frame_timing(ms, 30.0, p)[1]["frame_rate"] == "constant"
    assert frame_timing(np.delete(ms, 40), 30.0, p)[1]["frame_rate"] == "variable"
    # some frames without a timestamp (OpenCV reports 0 ms) or two with one: error naming the file and the fixes
    for bad in (np.r_[0.0, 0.0, 0.0, ms[3:]], np.r_[ms[:10], ms[9], ms[11:]]):
        with pytest.raises(DataError, match=r"rec.mkv: \d+ of 90 frames without a timestamp.*fps_mode cfr.*--xray-fps"):
            frame_timing(bad, 30.0, p)
        times, rec = frame_timing(bad, 30.0, p, fps_flag=25.0)  # the explicit flag: k / 25, recorded
        np.testing.assert_allclose(times, np.arange(90) / 25)
        assert rec["source"] == "k/fps" and "k / 25 (--xray-fps)" in rec["note"]
    with pytest.raises(DataError, match="no frame timestamps and no frame rate.*--xray-fps"):
        frame_timing(np.zeros(5), 0.0, p)
    with pytest.raises(DataError, match="no video frames"):
        frame_timing(np.zeros(0), 30.0, p)
