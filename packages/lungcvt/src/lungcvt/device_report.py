"""Per-device facts of a set of recordings, for the reports: which device a remapped recording is counted under
(:func:`device_notes`) and the recordings' sample rates, formats and durations by device (:func:`audio_summary`,
from the WAV headers). Re-exported by :mod:`lungcvt.data`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lungcvt.data import KNOWN_SPLIT_QUIRKS, Recording

__all__ = ["device_notes", "audio_summary"]


def device_notes(recs: Iterable[Recording]) -> list[str]:
    """One line per recording of :data:`KNOWN_SPLIT_QUIRKS` present, saying which device it is counted under.

    A recording's device is the one in its file name. The official split file lists ``226_1b1_Pl_sc_LittC2SE`` (the
    Kaggle copy's name) as ``226_1b1_Pl_sc_Meditron``; copies named as the split file count it under Meditron, the
    Kaggle copy under LittC2SE. Per-device reports (``metrics.json`` ``device_notes``, ``train.json``) carry the line.
    """
    out = []
    for r in recs:
        for listed, real in KNOWN_SPLIT_QUIRKS.items():
            if r.stem == real:
                out.append(
                    f"{r.stem}: listed in the split file as {listed}; counted under {r.info.device} (the device in "
                    "its file name)"
                )
            elif r.stem == listed:
                out.append(
                    f"{r.stem}: named as the split file lists it (the Kaggle copy names it {real}); counted under "
                    f"{r.info.device} (the device in its file name)"
                )
    return out


def audio_summary(recs: Iterable[Recording]) -> dict[str, dict]:
    """Per device: recordings, sample rates, sample formats and durations, read from the WAV headers.

    On the 183 training recordings this shows, e.g., that 18 Meditron recordings are 4 kHz like the Litt3200 (the
    band-limited features put every device on the same 2 kHz band). Unreadable headers are counted as such.
    """
    import soundfile as sf

    out: dict[str, dict] = {}
    for r in recs:
        d = out.setdefault(
            r.info.device, {"recordings": 0, "sample_rates": {}, "formats": {}, "duration_s": [None, None]}
        )
        d["recordings"] += 1
        try:
            info = sf.info(str(r.wav))
            rate, fmt, dur = str(info.samplerate), info.subtype, float(info.duration)
        except Exception:  # noqa: BLE001 - reported, the reader raises the real error later
            rate, fmt, dur = "unreadable", "unreadable", None
        d["sample_rates"][rate] = d["sample_rates"].get(rate, 0) + 1
        d["formats"][fmt] = d["formats"].get(fmt, 0) + 1
        if dur is not None:
            lo, hi = d["duration_s"]
            d["duration_s"] = [dur if lo is None else min(lo, dur), dur if hi is None else max(hi, dur)]
    return dict(sorted(out.items()))
