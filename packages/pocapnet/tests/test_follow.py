"""predict --stream --follow: a recording read while a recorder is still appending to it."""

from __future__ import annotations

import shutil
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from pocapnet.data import DataError, load_operation
from pocapnet.follow import END_MARKER, GrowingWav, follow_seconds
from pocapnet.predict import load_extractors, operation_seconds, predict_stream


def _wav_header(sr: int = 16000) -> bytes:
    """A PCM16 mono header as a live recorder writes it: both size fields still 0."""
    return (
        b"RIFF"
        + struct.pack("<I", 0)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sr, 2 * sr, 2, 16)
        + b"data"
        + struct.pack("<I", 0)
    )


def _record(src, dst, seconds, started: threading.Event, log: list) -> None:
    """Append 0.5 s of every channel and each new frame (written then renamed), like a recorder."""
    waves = [sf.read(src / f"Channel_{k}.wav", dtype="int16")[0] for k in (1, 2, 3)]
    for k in (1, 2, 3):
        (dst / f"Channel_{k}.wav").write_bytes(_wav_header())
    started.set()
    for half in range(2 * seconds):
        for k, w in enumerate(waves, start=1):
            with (dst / f"Channel_{k}.wav").open("ab") as f:
                f.write(w[half * 8000 : (half + 1) * 8000].tobytes())
        if half % 2 == 1:
            t = half // 2
            shutil.copy(src / f"frame_{t + 1:05d}.jpg", dst / "tmp.jpg")
            (dst / "tmp.jpg").rename(dst / f"frame_{t + 1:05d}.jpg")
        log.append(time.monotonic())
        time.sleep(0.03)
    (dst / END_MARKER).write_text("")


def test_follow_predicts_while_the_recorder_appends(syn_data, syn_feats, tmp_path, tiny_cfg):
    import dataclasses

    from pocapnet.features import load_feature_operation
    from pocapnet.model import PoCaPNet
    from pocapnet.train import model_config_for_features

    cfg = model_config_for_features(tiny_cfg, load_feature_operation(syn_feats, "OP_001"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8))
    model = PoCaPNet(cfg.model).eval()
    extra = {"weights": load_feature_operation(syn_feats, "OP_001").meta["weights"]}
    ex = load_extractors(cfg, extra, "cpu")
    op = load_operation(syn_data, "OP_002")
    seconds = 12
    finished = predict_stream(model, cfg, ((t, a, f) for t, a, f in operation_seconds(op) if t < seconds), ex)
    live = tmp_path / "OP_live"
    live.mkdir()
    started, writes, emitted = threading.Event(), [], []
    rec = threading.Thread(target=_record, args=(syn_data / "OP_002", live, seconds, started, writes))
    rec.start()
    started.wait(5)
    r = predict_stream(
        model,
        cfg,
        follow_seconds(live, idle_timeout_s=20),
        ex,
        on_second=lambda t, p, q, lat: emitted.append(time.monotonic()),
    )
    rec.join()
    assert len(r["pred"]) == seconds  # one estimate per complete second, then the END marker stopped it
    np.testing.assert_array_equal(r["pred"], finished["pred"])
    np.testing.assert_allclose(r["prob"], finished["prob"], rtol=1e-4, atol=1e-5)
    assert emitted[0] < writes[-1]  # the first estimate came out while the recorder was still writing


def test_growing_wav_reads_what_is_there_and_refuses_stereo(tmp_path):
    p = tmp_path / "a.wav"
    p.write_bytes(_wav_header() + np.arange(100, dtype="<i2").tobytes())
    w = GrowingWav(p)
    assert w.available() == 100 and w.read(10, 3).tolist() == pytest.approx([10 / 32768, 11 / 32768, 12 / 32768])
    with p.open("ab") as f:
        f.write(np.arange(100, 150, dtype="<i2").tobytes())
    assert w.available() == 150
    with pytest.raises(EOFError):
        w.read(140, 20)
    sf.write(tmp_path / "s.wav", np.zeros((10, 2), np.float32), 16000)
    with pytest.raises(DataError, match="2 channels; the live path reads one microphone per file"):
        GrowingWav(tmp_path / "s.wav")
    sf.write(tmp_path / "f.wav", np.full(10, 0.5, np.float32), 16000, subtype="FLOAT")
    assert GrowingWav(tmp_path / "f.wav").read(0, 10).tolist() == [0.5] * 10
    with (tmp_path / "f.wav").open("ab") as f:  # a closed file with a chunk after its samples: not read as audio
        f.write(b"LIST" + struct.pack("<I", 8) + b"INFOabcd")
    assert GrowingWav(tmp_path / "f.wav").available() == 10


def test_follow_cli_on_a_finished_folder(syn_data, tiny_ckpt, tmp_path, capsys):
    from pocapnet.cli import main

    live = tmp_path / "OP_x"
    shutil.copytree(syn_data / "OP_001", live)
    (live / END_MARKER).write_text("")
    out = tmp_path / "p"
    assert (
        main(["predict", "--checkpoint", str(tiny_ckpt), "--op", str(live), "--stream", "--follow", "--out", str(out)])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    n = len(load_operation(syn_data, "OP_001").labels)
    assert len((out / "predictions.csv").read_text().splitlines()) == n + 1
    assert sum(" p=" in ln for ln in lines) == n  # one live line per second
    assert main(["predict", "--checkpoint", str(tiny_ckpt), "--op", str(live), "--follow", "--out", str(out)]) == 1
    assert "add --stream" in capsys.readouterr().err
    for k in (1, 2, 3):  # a recorder at 8 kHz: refused, a live stream is not resampled
        x, _ = sf.read(live / f"Channel_{k}.wav")
        sf.write(live / f"Channel_{k}.wav", x[::2], 8000)
    with pytest.raises(DataError, match="8000 Hz, but the model reads 16000 Hz"):
        next(follow_seconds(live, idle_timeout_s=1))
