"""Synthetic ICBHI-layout dataset whose cycles carry the real classes' acoustic signatures.

Written in the real format (``{patient}_{index}_{loc}_{mode}_{device}.wav`` + ``.txt`` + the split file, including
the split file's naming quirk for ``226_1b1_Pl_sc_LittC2SE``, + a patient-wise 5-fold file), so the real loader is
exercised end to end.

Signatures (Sovijarvi et al. 2000, "Definition of terms for applications of respiratory sounds"):

- normal: breath-like band-limited noise (100-1000 Hz) under an inspiration/expiration envelope;
- crackle: short (5-20 ms) explosive transients (a sharp initial deflection decaying within the burst), several per
  cycle, on top of the breath;
- wheeze: a sustained tonal component (100-1000 Hz fundamental, slight glide, a weaker 2nd harmonic), >= 100 ms,
  dominating its frequency band (`WHEEZE_LEVEL`);
- both: crackles and a wheeze.

Devices and formats as in the database: Litt3200 at 4 kHz 16-bit, Meditron / LittC2SE / AKGC417L at 44.1 kHz 24-bit
(AKGC417L sometimes 16-bit); each device colours the sound differently (gain, low-pass, hum).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from lungcvt.data import LOCATIONS, SPLIT_FILE_NAME
from lungcvt.splits import FOLD_FILE_NAME

__all__ = ["DEVICE_FORMATS", "WHEEZE_LEVEL", "synth_cycle", "generate_icbhi", "SyntheticSummary"]

#: device -> (sample rate Hz, PCM subtypes to draw from, low-pass cutoff Hz, gain)
DEVICE_FORMATS: dict[str, tuple[int, tuple[str, ...], float, float]] = {
    "Litt3200": (4000, ("PCM_16",), 1800.0, 0.8),
    "Meditron": (44100, ("PCM_24",), 2500.0, 1.0),
    "LittC2SE": (44100, ("PCM_24",), 1500.0, 0.7),
    "AKGC417L": (44100, ("PCM_24", "PCM_16"), 4000.0, 1.2),
}
_CLASS_P = (0.53, 0.27, 0.13, 0.07)  # ICBHI proportions: 3642/1864/886/506 of 6898 cycles
#: wheeze tone peak amplitude relative to the breath's rms (about 1). At 1.5-3.0 the tone stands 18/26/34 dB
#: (10th/50th/90th percentile) above the breath in its own STFT bin; the earlier 0.8-1.6 (12/21/28 dB) left many
#: wheezes too faint for the tiny demo model after the 64 px resize (wheeze recall 0-0.17, README "Demo results").
WHEEZE_LEVEL = (1.5, 3.0)


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int, order: int = 4) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    sos = signal.butter(order, [lo, hi], btype="band", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _breath(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise with an inspiration (louder) / expiration envelope; rms about 1."""
    x = _bandpass(rng.standard_normal(n), 100.0, rng.uniform(600, 1000), sr)
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    split = rng.uniform(0.35, 0.5)  # inspiration fraction of the cycle
    env = np.where(t < split, np.sin(np.pi * t / split) ** 2, 0.6 * np.sin(np.pi * (t - split) / (1 - split)) ** 2)
    x = x * (0.15 + env)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _crackles(n: int, sr: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Several explosive transients (5-20 ms each): fast rise, damped oscillation 150-800 Hz."""
    out = np.zeros(n)
    k = rng.integers(4, 12)
    for _ in range(k):
        dur = rng.uniform(0.005, 0.020)
        m = max(int(dur * sr), 4)
        if m >= n:
            continue
        t = np.arange(m) / sr
        f = rng.uniform(150, 800)
        burst = np.sin(2 * np.pi * f * t) * np.exp(-t / (dur / 4))
        burst[: max(1, m // 20)] *= 2.0  # sharp initial deflection
        pos = rng.integers(0, n - m)
        out[pos : pos + m] += level * rng.uniform(0.6, 1.4) * burst / (np.abs(burst).max() + 1e-12)
    return out


def _wheeze(n: int, sr: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """One sustained tone (>= 100 ms, 100-1000 Hz fundamental, slight glide) with a weaker 2nd harmonic."""
    out = np.zeros(n)
    dur = min(rng.uniform(0.25, 0.8), 0.9 * n / sr)
    dur = max(dur, min(0.1, n / sr))
    m = int(dur * sr)
    f0 = rng.uniform(150, 900)
    f1 = f0 * rng.uniform(0.85, 1.15)
    freq = np.linspace(f0, f1, m)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    tone = np.sin(phase) + (0.3 * np.sin(2 * phase) if 2 * f1 < 0.45 * sr else 0.0)
    tone *= np.hanning(m) ** 0.5
    pos = rng.integers(0, max(1, n - m))
    out[pos : pos + m] += level * tone[: n - pos]
    return out


def synth_cycle(label: int, duration_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One cycle of class ``label`` (0 normal, 1 crackle, 2 wheeze, 3 both): float64 [round(duration_s*sr)]."""
    n = max(int(round(duration_s * sr)), 16)
    x = _breath(n, sr, rng)
    if label in (1, 3):
        x = x + _crackles(n, sr, rng, level=rng.uniform(2.5, 5.0))
    if label in (2, 3):
        x = x + _wheeze(n, sr, rng, level=rng.uniform(*WHEEZE_LEVEL))
    return x


@dataclass
class SyntheticSummary:
    """What :func:`generate_icbhi` wrote."""

    root: Path
    n_recordings: int
    n_cycles: int
    class_counts: list[int]
    split_file: Path


def generate_icbhi(
    out_dir: str | Path,
    n_patients: int = 24,
    recordings_per_patient: tuple[int, int] = (1, 2),
    cycles_per_recording: tuple[int, int] = (5, 9),
    test_fraction: float = 0.4,
    seed: int = 0,
    quirk: bool = True,
) -> SyntheticSummary:
    """Write a synthetic ICBHI-layout database to ``out_dir``.

    Args:
        out_dir: output folder (created).
        n_patients: number of patients (ids from 101; with ``quirk`` the last one is 226).
        recordings_per_patient: inclusive range of recordings per patient.
        cycles_per_recording: inclusive range of cycles per recording.
        test_fraction: fraction of patients in the official "test" split (ICBHI: 60/40).
        seed: random seed (the output is deterministic given the arguments).
        quirk: include ``226_1b1_Pl_sc_LittC2SE`` listed as ``..._Meditron`` in the split file, as in ICBHI.

    Returns:
        :class:`SyntheticSummary`.
    """
    import soundfile as sf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients = [101 + i for i in range(n_patients)]
    if quirk and n_patients >= 2:
        patients[-1] = 226
    n_test = max(1, int(round(test_fraction * n_patients)))
    perm = rng.permutation(n_patients)
    test_patients = {patients[i] for i in perm[:n_test]}
    if quirk:
        test_patients.discard(226)  # 226 is a training patient in the official split
    devices = list(DEVICE_FORMATS)
    split_lines: list[str] = []
    counts = [0, 0, 0, 0]
    n_rec = 0
    for p in patients:
        n_r = int(rng.integers(recordings_per_patient[0], recordings_per_patient[1] + 1))
        # patients differ: each has its own class mix (like diagnoses in ICBHI)
        mix = rng.dirichlet(np.array(_CLASS_P) * 6.0)
        mix = 0.5 * mix + 0.5 * np.array(_CLASS_P)
        device = devices[int(rng.integers(len(devices)))]
        for r in range(n_r):
            loc = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
            mode = "sc" if rng.random() < 0.5 else "mc"
            dev = device
            index = f"{r + 1}b1"
            if quirk and p == 226 and r == 0:
                index, loc, mode, dev = "1b1", "Pl", "sc", "LittC2SE"
            sr, subtypes, lp, gain = DEVICE_FORMATS[dev]
            stem = f"{p}_{index}_{loc}_{mode}_{dev}"
            n_c = int(rng.integers(cycles_per_recording[0], cycles_per_recording[1] + 1))
            t = rng.uniform(0.0, 0.3)
            pieces = [rng.standard_normal(int(t * sr)) * 0.05]
            lines = []
            for _ in range(n_c):
                label = int(rng.choice(4, p=mix))
                dur = float(np.clip(rng.gamma(8.0, 2.7 / 8.0), 0.8, 6.0))
                cyc = synth_cycle(label, dur, sr, rng)
                pieces.append(cyc)
                lines.append(f"{t:.3f}\t{t + len(cyc) / sr:.3f}\t{label & 1}\t{label >> 1}")
                t += len(cyc) / sr
                counts[label] += 1
            tail = rng.standard_normal(int(rng.uniform(0.1, 0.5) * sr)) * 0.05
            x = np.concatenate(pieces + [tail])
            # device colouring: low-pass, gain, mains hum, sensor noise
            sos = signal.butter(2, min(lp, 0.45 * sr), btype="low", fs=sr, output="sos")
            x = signal.sosfilt(sos, x) * gain
            tt = np.arange(len(x)) / sr
            x = x + 0.05 * np.sin(2 * np.pi * 50.0 * tt) + 0.02 * rng.standard_normal(len(x))
            x = 0.9 * x / (np.abs(x).max() + 1e-12)
            subtype = subtypes[int(rng.integers(len(subtypes)))]
            sf.write(str(out / f"{stem}.wav"), x.astype(np.float32), sr, subtype=subtype)
            (out / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            listed = "226_1b1_Pl_sc_Meditron" if stem == "226_1b1_Pl_sc_LittC2SE" else stem
            split_lines.append(f"{listed}\t{'test' if p in test_patients else 'train'}")
            n_rec += 1
    split_file = out / SPLIT_FILE_NAME
    split_file.write_text("\n".join(split_lines) + "\n")
    # the patient-wise 5-fold file (as RespireNet's patient_list_foldwise.txt): patients dealt round-robin in a
    # seeded order
    order = rng.permutation(n_patients)
    fold_lines = [f"{patients[i]}\t{k % 5}" for k, i in enumerate(order)]
    (out / FOLD_FILE_NAME).write_text("\n".join(sorted(fold_lines)) + "\n")
    return SyntheticSummary(out, n_rec, sum(counts), counts, split_file)
