"""The 183 recordings of the official training split (issue 21), where present: counts, devices, the traps.

Set ``LUNGCVT_ICBHI183`` to the folder ``../shared/data/icbhi/subset/make_subset.sh`` wrote; skipped otherwise (a
clone has no copy). Reads the WAV headers and the annotations only (a few seconds).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lungcvt.data import audio_summary, device_notes, load_dataset

ROOT = os.environ.get("LUNGCVT_ICBHI183")
pytestmark = pytest.mark.skipif(
    not ROOT or not Path(ROOT).is_dir(), reason="LUNGCVT_ICBHI183 not set to the 183-recording folder (make_subset.sh)"
)


def test_183_recordings_counts_devices_and_traps():
    recs, missing = load_dataset(ROOT, allow_partial=True)
    assert len(recs) == 183 and len(missing) == 920 - 183
    assert {r.split for r in recs} == {"train"} and len({r.info.patient for r in recs}) == 55
    counts = [0, 0, 0, 0]
    for r in recs:
        for c in r.cycles:
            counts[c.label] += 1
    assert counts == [936, 392, 178, 98]
    audio = audio_summary(recs)
    assert {d: v["recordings"] for d, v in audio.items()} == {"AKGC417L": 68, "LittC2SE": 44, "Meditron": 71}
    assert audio["Meditron"]["sample_rates"] == {"44100": 53, "4000": 18}  # 4 kHz is not only the Litt3200
    assert sum(v["formats"].get("PCM_24", 0) for v in audio.values()) == 150
    notes = device_notes(recs)
    assert len(notes) == 1 and notes[0].startswith("226_1b1_Pl_sc_Meditron") and "counted under Meditron" in notes[0]


def test_no_cycle_ends_past_its_audio():
    import soundfile as sf

    recs, _ = load_dataset(ROOT, allow_partial=True)
    late = [(r.stem, c.end) for r in recs for c in r.cycles if c.end > sf.info(str(r.wav)).duration]
    assert late == []
