from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from lungcvt.data import (
    KNOWN_SPLIT_QUIRKS,
    Cycle,
    DataError,
    check_cycles_within,
    load_audio,
    load_dataset,
    parse_stem,
    read_annotations,
    resolve_split,
)
from lungcvt.splits import validation_split


def _count_txt(path):
    """Independent count of cycles per class from the raw text (not via the loader)."""
    counts = [0, 0, 0, 0]
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) == 4:
            counts[int(f[2]) + 2 * int(f[3])] += 1
    return counts


def test_parse_stem():
    info = parse_stem("226_1b1_Pl_sc_LittC2SE")
    assert (info.patient, info.index, info.location, info.mode, info.device) == (226, "1b1", "Pl", "sc", "LittC2SE")
    with pytest.raises(DataError, match="not an ICBHI file name"):
        parse_stem("recording_01")


def test_read_annotations_labels(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("0.0\t1.5\t0\t0\n1.5\t3.0\t1\t0\n3.0\t4.0\t0\t1\n4.0\t5.2\t1\t1\n")
    cycles = read_annotations(p)
    assert [c.label for c in cycles] == [0, 1, 2, 3]
    assert cycles[3].duration == pytest.approx(1.2)


@pytest.mark.parametrize(
    "text,match",
    [
        ("0.0\t1.0\t0\n", r"a\.txt:1: expected 4 fields"),
        ("0.0\t1.0\t0\t0\n1.0\tx\t0\t0\n", r"a\.txt:2: non-numeric"),
        ("0.0\t1.0\t2\t0\n", r"a\.txt:1: crackles/wheezes must be 0 or 1"),
        ("2.0\t1.0\t0\t0\n", r"a\.txt:1: need 0 <= start < end"),
        ("\n\n", "no cycles"),
    ],
)
def test_malformed_annotations(tmp_path, text, match):
    p = tmp_path / "a.txt"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        read_annotations(p)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotations(tmp_path / "nope.txt")


def test_load_audio_stereo_24bit_resample(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    left, right = 0.5 * np.sin(2 * np.pi * 200 * t), -0.5 * np.sin(2 * np.pi * 200 * t) + 0.2
    p = tmp_path / "s.wav"
    sf.write(p, np.stack([left, right], 1), sr, subtype="PCM_24")
    with pytest.raises(DataError, match=r"s\.wav: 2 channels.*--mix-channels"):
        load_audio(p, 22050)  # never mixed silently
    y, out_sr = load_audio(p, 22050, channels="mix")
    assert out_sr == 22050 and y.dtype == np.float32 and abs(len(y) - 22050) <= 1
    # the two channels cancel except the 0.2 offset: mono fold = mean
    assert np.median(y) == pytest.approx(0.1, abs=0.01)


def test_unreadable_wav(tmp_path):
    p = tmp_path / "101_1b1_Al_sc_Meditron.wav"
    p.write_bytes(b"RIFF0000WAVEjunkjunk")  # a RIFF header that ends before any data chunk
    with pytest.raises(DataError, match="truncated WAV: the file ends after 20 bytes, before its data chunk"):
        load_audio(p, 22050)
    p.write_bytes(b"not a riff file at all")
    with pytest.raises(DataError, match="unreadable WAV"):
        load_audio(p, 22050)


def test_truncated_real_wav_is_an_error_naming_both_lengths(icbhi_real, tmp_path):
    """Issue 21: a held-out recording cut to 30 KB went through predict as a 0.23 s recording."""
    src = icbhi_real / "104_1b1_Ar_sc_Litt3200.wav"
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes()[:30_000])
    declared = src.stat().st_size - 44
    with pytest.raises(DataError, match=rf"{cut.name}: truncated WAV: its header declares {declared:,} data bytes, "
                       r"the file holds 29,956"):  # fmt: skip
        load_audio(cut, 22050)


def test_synthetic_layout_and_loader(syn_dir):
    recs, missing = load_dataset(syn_dir)
    assert missing == []
    assert len(recs) >= 8
    for r in recs:
        assert [c.label for c in r.cycles] == [c.label for c in read_annotations(r.txt)]
        assert np.bincount([c.label for c in r.cycles], minlength=4).tolist() == _count_txt(r.txt)
    subtypes = {sf.info(r.wav).subtype for r in recs}
    assert subtypes <= {"PCM_16", "PCM_24"}
    # the split file's naming quirk: listed as ..._Meditron, the file is ..._LittC2SE, mapped to 'train'
    split_text = (syn_dir / "ICBHI_challenge_train_test.txt").read_text()
    assert "226_1b1_Pl_sc_Meditron\ttrain" in split_text
    quirky = [r for r in recs if r.stem == "226_1b1_Pl_sc_LittC2SE"]
    assert quirky and quirky[0].split == "train"
    assert {r.split for r in recs} == {"train", "test"}


def test_synthetic_has_all_devices_and_rates(tmp_path):
    from lungcvt.synthetic import generate_icbhi

    s = generate_icbhi(tmp_path, n_patients=16, recordings_per_patient=(1, 1), cycles_per_recording=(1, 1), seed=3)
    rates = {sf.info(p).samplerate for p in tmp_path.glob("*.wav")}
    devices = {p.stem.split("_")[-1] for p in tmp_path.glob("*.wav")}
    assert rates == {4000, 44100}
    assert len(devices) >= 3
    assert s.n_cycles == 16


def test_resolve_split_errors():
    split = {"101_1b1_Al_sc_Meditron": "test", "102_1b1_Ar_sc_Meditron": "train", "226_1b1_Pl_sc_Meditron": "train"}
    stems = ["101_1b1_Al_sc_Meditron", "226_1b1_Pl_sc_LittC2SE"]
    with pytest.raises(DataError, match="without recordings.*--allow-partial"):
        resolve_split(split, stems)
    mapped, missing = resolve_split(split, stems, allow_partial=True)
    assert mapped == {"101_1b1_Al_sc_Meditron": "test", "226_1b1_Pl_sc_LittC2SE": "train"}
    assert missing == ["102_1b1_Ar_sc_Meditron"]
    with pytest.raises(DataError, match="no entry in the split file"):
        resolve_split({"101_1b1_Al_sc_Meditron": "test"}, stems + ["103_2b2_Ar_mc_LittC2SE"], allow_partial=True)
    assert KNOWN_SPLIT_QUIRKS["226_1b1_Pl_sc_Meditron"] == "226_1b1_Pl_sc_LittC2SE"


def test_cycle_beyond_end(syn_dir):
    recs, _ = load_dataset(syn_dir)
    r = recs[0]
    last = r.cycles[-1]
    assert check_cycles_within(r, last.end)[-1].end == pytest.approx(last.end)
    r.cycles.append(Cycle(last.end, last.end + 5.0, 0, 0))
    with pytest.raises(DataError, match=rf"{r.txt.name}:{len(r.cycles)}: cycle .* beyond the end"):
        check_cycles_within(r, last.end)


def test_validation_split_patient_disjoint(syn_dir):
    recs, _ = load_dataset(syn_dir)
    tr, va, info = validation_split(recs, 0.25, seed=0)
    assert tr and va
    assert not ({r.info.patient for r in tr} & {r.info.patient for r in va})
    assert all(r.split == "train" for r in tr + va)
    assert len(tr) + len(va) == sum(r.split == "train" for r in recs)


def test_real_icbhi_parses(icbhi_real):
    with pytest.raises(DataError, match="without recordings"):
        load_dataset(icbhi_real)  # 11 of 920 recordings: strict by default
    recs, missing = load_dataset(icbhi_real, allow_partial=True)
    wavs = sorted(icbhi_real.glob("*.wav"))
    assert len(recs) == len(wavs) == 11
    assert len(missing) == 920 - 11
    total = np.zeros(4, int)
    for r in recs:
        assert r.split in ("train", "test")
        counts = _count_txt(r.txt)
        assert np.bincount([c.label for c in r.cycles], minlength=4).tolist() == counts
        total += counts
        y, sr = load_audio(r.wav, None)
        assert sr in (4000, 44100)
        assert check_cycles_within(r, len(y) / sr)
    assert (total > 0).all(), "all four classes occur in the real samples"
    assert {r.info.device for r in recs} == {"AKGC417L", "LittC2SE", "Litt3200", "Meditron"}
