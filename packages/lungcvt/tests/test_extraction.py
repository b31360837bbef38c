"""Feature extraction over a folder: one recording's audio in memory at a time, resumable through the cache."""

from __future__ import annotations

import weakref

import lungcvt.dataset as ds
from lungcvt.config import get_config
from lungcvt.data import load_dataset


def test_one_recording_decoded_at_a_time_and_an_interrupted_run_resumes(syn_dir, tmp_path, monkeypatch):
    recs, _ = load_dataset(syn_dir)
    cfg = get_config("lungcvt_icbhi_cpu").features
    refs: list[weakref.ref] = []
    seen_alive, loads = [], []
    real = ds.load_recording_audio

    def tracking(wav, fc):
        seen_alive.append(sum(r() is not None for r in refs))  # earlier recordings' audio still referenced
        audio, sr = real(wav, fc)
        refs.append(weakref.ref(audio))
        loads.append(wav.stem)
        if len(loads) == 3 and interrupt[0]:
            raise KeyboardInterrupt
        return audio, sr

    interrupt = [True]
    monkeypatch.setattr(ds, "load_recording_audio", tracking)
    try:
        ds.extract_cycles(recs, cfg, tmp_path / "cache", progress=False)
    except KeyboardInterrupt:
        pass
    assert len(loads) == 3 and max(seen_alive) == 0
    interrupt[0] = False
    loads.clear()
    seen_alive.clear()
    cs = ds.extract_cycles(recs, cfg, tmp_path / "cache", progress=False)
    # the two recordings finished before the interruption are read from the cache, the rest decoded one at a time
    assert len(loads) == len(recs) - 2 and max(seen_alive) == 0
    assert len(cs) == sum(len(r.cycles) for r in recs) and cs.feats[0].shape[:2] == (3, 96)
    loads.clear()
    again = ds.extract_cycles(recs, cfg, tmp_path / "cache", progress=False)
    assert loads == [] and all((a == b).all() for a, b in zip(again.feats, cs.feats))
