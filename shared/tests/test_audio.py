"""medshared.audio: a truncated WAV is refused with both byte counts; complete files read exactly as soundfile does."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from medshared.audio import TruncatedWavError, check_wav_complete, read_wav, wav_data_sizes
from medshared.testing import shared_data_dir

sf = pytest.importorskip("soundfile", reason="soundfile comes with the packages that read audio (lungcvt, pocapnet)")

ICBHI = (shared_data_dir() / "icbhi") if shared_data_dir() is not None else None
needs_icbhi = pytest.mark.skipif(ICBHI is None or not ICBHI.is_dir(), reason="../shared/data/icbhi absent")


@needs_icbhi
def test_real_file_cut_to_30kb_is_an_error_naming_both_lengths(tmp_path):
    src = ICBHI / "101_1b1_Al_sc_Meditron.wav"  # 24-bit 44.1 kHz, 20 s: 2,646,000 data bytes
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes()[:30_000])
    # soundfile alone reads the stump silently (the bug this module exists for)
    x, _ = sf.read(str(cut), dtype="float32", always_2d=True)
    assert 0 < x.shape[0] < 44100
    with pytest.raises(TruncatedWavError) as e:
        read_wav(cut)
    msg = str(e.value)
    assert str(cut) in msg and "2,646,000" in msg and "29,956" in msg
    assert isinstance(e.value, ValueError)


@needs_icbhi
@pytest.mark.parametrize(
    "name",
    ["101_1b1_Al_sc_Meditron.wav", "102_1b1_Ar_sc_Meditron.wav", "104_1b1_Ar_sc_Litt3200.wav"],
    ids=["24bit-44k", "16bit-44k", "16bit-4k"],
)
def test_real_files_read_identically_to_soundfile(name):
    path = ICBHI / name
    ref, sr_ref = sf.read(str(path), dtype="float32", always_2d=True)
    x, sr = read_wav(path)
    assert sr == sr_ref and x.dtype == np.float32 and x.shape == ref.shape
    assert np.array_equal(x, ref)
    declared, actual = wav_data_sizes(path)
    assert (
        declared
        == actual
        == ref.shape[0] * sf.info(str(path)).channels * {"PCM_16": 2, "PCM_24": 3}[sf.info(str(path)).subtype]
    )


def _wav(tmp_path, name="a.wav", n=1000, sr=8000, subtype="PCM_16", channels=1):
    p = tmp_path / name
    rng = np.random.default_rng(0)
    sf.write(str(p), rng.uniform(-0.5, 0.5, (n, channels)).astype(np.float32), sr, subtype=subtype)
    return p


def test_synthetic_cut_inside_data_and_before_data(tmp_path):
    p = _wav(tmp_path, n=1000, channels=2)  # 4,000 data bytes
    full = p.read_bytes()
    assert wav_data_sizes(p) == (4000, 4000)
    p.write_bytes(full[:-1])
    with pytest.raises(TruncatedWavError, match="4,000 data bytes.*3,999"):
        check_wav_complete(p)
    p.write_bytes(full[:20])  # inside the fmt chunk: no data chunk at all
    with pytest.raises(TruncatedWavError, match="before its data chunk"):
        read_wav(p)


def test_trailing_chunks_and_unknown_sizes_are_accepted(tmp_path):
    p = _wav(tmp_path, n=100)
    full = p.read_bytes()
    ref, _ = sf.read(str(p), dtype="float32", always_2d=True)
    p.write_bytes(full + b"LIST" + struct.pack("<I", 4) + b"INFO")  # a chunk after the data: more bytes than declared
    x, _ = read_wav(p)
    assert np.array_equal(x, ref)
    # a stream writer's 0xFFFFFFFF data size is not checked
    i = full.index(b"data")
    q = tmp_path / "stream.wav"
    q.write_bytes(full[: i + 4] + struct.pack("<I", 0xFFFFFFFF) + full[i + 8 :])
    assert wav_data_sizes(q) is None
    check_wav_complete(q)


def test_missing_and_non_wav_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    assert wav_data_sizes(junk) is None
    with pytest.raises(ValueError, match="junk.wav: unreadable audio file"):
        read_wav(junk)
    flac = tmp_path / "a.flac"
    sf.write(str(flac), np.zeros(100, dtype=np.float32), 8000)
    x, sr = read_wav(flac)
    assert x.shape == (100, 1) and sr == 8000
