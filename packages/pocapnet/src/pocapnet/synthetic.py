"""Synthetic PoCaP-layout operations with learnable phase signatures (written in the real on-disk format).

Each operation follows the real phase order (Preparation -> Puncture -> GuideWire -> CathPlacement ->
CathPositioning -> CathAdjustment -> CathControl -> Closing) with recurrences (Puncture/GuideWire and
CathAdjustment/CathControl repeated, as OP_002), short Transition segments at some borders, and phase durations
proportional to the corpus statistics in the brief (seconds per class), scaled to minutes.

Signal per phase:
- audio: per channel a speech-like formant burst signature (phase-specific pitch, formants and syllable rate), tool
  noise (phase-specific band) or silence, plus background noise;
- X-ray: none (black monitor), chest only, needle, guide wire, catheter, or catheter + port.

Preparation and Closing share the same audio and X-ray signature, so only temporal context (position, previous
phases) separates them: the reason for the paper's temporal connections (paper §3.2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocapnet.config import PHASES, TRANSITION
from pocapnet.data import CHANNEL_FILES

__all__ = ["PHASE_SECONDS", "make_schedule", "synth_audio", "synth_frame", "make_synthetic_dataset"]

#: Seconds per class in the corpus (brief "Statistics"), used as duration proportions.
PHASE_SECONDS: tuple[int, ...] = (27018, 30312, 5349, 27101, 6751, 40845, 3528, 12906)

# (kind, a, b, c) per (phase, channel): speech=(f0, formant1, formant2, syllable rate Hz), tool=(centre Hz, width),
# silence=(). Phase 7 (Closing) reuses phase 0 (Preparation).
_AUDIO: dict[int, tuple[tuple, tuple, tuple]] = {
    0: (("speech", 120, 700, 1200, 4.0), ("speech", 210, 500, 1500, 3.0), ("tool", 300, 200)),
    1: (("speech", 110, 400, 900, 2.0), ("silence",), ("tool", 2000, 400)),
    2: (("speech", 130, 300, 2300, 6.0), ("speech", 230, 600, 1000, 5.0), ("tool", 4000, 600)),
    3: (("silence",), ("speech", 200, 400, 2000, 3.5), ("tool", 800, 200)),
    4: (("speech", 125, 500, 900, 5.0), ("speech", 220, 700, 1800, 2.5), ("silence",)),
    5: (("speech", 150, 600, 1400, 3.0), ("silence",), ("tool", 3000, 500)),
    6: (("speech", 115, 800, 1600, 7.0), ("speech", 240, 300, 2500, 6.0), ("tool", 5500, 300)),
}
_AUDIO[7] = _AUDIO[0]
_AUDIO[TRANSITION] = (("silence",), ("silence",), ("silence",))

# X-ray content per phase: none, chest, needle, wire, catheter, catheter+port. Closing = Preparation.
_XRAY = {
    0: "none",
    1: "needle",
    2: "wire",
    3: "none",
    4: "catheter",
    5: "chest",
    6: "port",
    7: "none",
    TRANSITION: "none",
}


def make_schedule(rng: np.random.Generator, total_s: int, min_phase_s: int = 8) -> np.ndarray:
    """Per-second labels ``(total_s,)`` for one operation (phase order, recurrences, transitions)."""
    min_phase_s = max(2, min(min_phase_s, total_s // 14))
    order = [0, 1, 2, 3, 4, 5, 6, 7]
    if rng.random() < 0.35:  # recurrence as in OP_002: Puncture -> GuideWire -> Puncture -> GuideWire
        order = [0, 1, 2, 1, 2, 3, 4, 5, 6, 7]
    elif rng.random() < 0.35:
        order = [0, 1, 2, 3, 4, 5, 6, 5, 6, 7]
    if total_s < 8:
        raise ValueError(f"an operation needs at least 8 s (one per phase), got {total_s}")
    if len(order) * min_phase_s > total_s:
        order = [0, 1, 2, 3, 4, 5, 6, 7]
        min_phase_s = max(1, min(min_phase_s, total_s // 8))
    share = np.array([PHASE_SECONDS[p] / order.count(p) for p in order], dtype=np.float64)
    share = share * rng.uniform(0.5, 1.5, size=len(order))
    spare = total_s - len(order) * min_phase_s  # >= 0 by construction
    dur = min_phase_s + np.floor(share / share.sum() * spare).astype(int)
    dur[-1] += total_s - dur.sum()  # Closing absorbs the rounding (runs to the end, as in the corpus)
    y = np.concatenate([np.full(d, p, dtype=np.int64) for p, d in zip(order, dur, strict=True)])
    starts = np.cumsum(dur)[:-1]
    for k, s in enumerate(starts):  # Transition segments of 1-3 s at some borders, never erasing a phase
        w = int(rng.integers(1, 4))
        if rng.random() < 0.6 and min(dur[k], dur[k + 1]) >= 2 * w + 1:
            y[s - w // 2 : s + (w - w // 2)] = TRANSITION
    return y[:total_s]


def _speech(rng: np.random.Generator, n: int, sr: int, f0: float, f1: float, f2: float, rate: float) -> np.ndarray:
    t = np.arange(n) / sr
    vib = 1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.28))
    phase = (2 * np.pi * np.cumsum(f0 * vib) / sr).astype(np.float32)
    sig = np.zeros(n, dtype=np.float32)
    for k in range(1, int(3000 // f0)):
        fk = k * f0
        amp = np.exp(-(((fk - f1) / 120.0) ** 2)) + 0.7 * np.exp(-(((fk - f2) / 180.0) ** 2)) + 0.02
        sig += amp * np.sin(k * phase)
    syll = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28)))  # syllable envelope
    words = np.repeat(rng.random(int(np.ceil(n / (0.5 * sr))) + 1) < 0.75, int(0.5 * sr))[:n]  # pauses
    return (sig / (np.abs(sig).max() + 1e-9) * syll * words).astype(np.float32)


def _tool(rng: np.random.Generator, n: int, sr: int, centre: float, width: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= np.exp(-(((f - centre) / width) ** 2))
    x = np.fft.irfft(spec, n)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def synth_audio(rng: np.random.Generator, labels: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Three channels ``(3, T*sr)`` float32 in [-1, 1] for per-second ``labels`` ``(T,)``."""
    n = len(labels) * sr
    out = 0.01 * rng.standard_normal((3, n)).astype(np.float32)  # background noise
    change = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], change, [len(labels)]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ph = int(labels[a])
        seg = (b - a) * sr
        for ch, sig in enumerate(_AUDIO[ph]):
            gain = rng.uniform(0.3, 0.6)
            if sig[0] == "speech":
                out[ch, a * sr : b * sr] += gain * _speech(rng, seg, sr, *sig[1:])
            elif sig[0] == "tool":
                out[ch, a * sr : b * sr] += 0.6 * gain * _tool(rng, seg, sr, *sig[1:])
    return np.clip(out, -1.0, 1.0)


def synth_frame(rng: np.random.Generator, phase: int, size: int = 128) -> np.ndarray:
    """One X-ray monitor frame ``(size, size)`` uint8 whose content depends on the phase."""
    from PIL import Image, ImageDraw

    kind = _XRAY[phase]
    s = size / 128.0
    if kind == "none":
        img = Image.new("L", (size, size), int(rng.integers(0, 12)))
    else:
        img = Image.new("L", (size, size), 40)
        d = ImageDraw.Draw(img)
        dx, dy = rng.integers(-5, 6, size=2) * s
        d.ellipse([16 * s + dx, 10 * s + dy, 112 * s + dx, 124 * s + dy], fill=150)  # thorax
        d.ellipse([26 * s + dx, 24 * s + dy, 60 * s + dx, 104 * s + dy], fill=70)  # lungs
        d.ellipse([68 * s + dx, 24 * s + dy, 102 * s + dx, 104 * s + dy], fill=70)
        d.ellipse([56 * s + dx, 60 * s + dy, 80 * s + dx, 100 * s + dy], fill=175)  # heart
        if kind == "needle":
            a = rng.uniform(0.5, 0.9)
            x0, y0 = 38 * s + dx, 30 * s + dy
            d.line([x0, y0, x0 + 30 * s * np.cos(a), y0 + 30 * s * np.sin(a)], fill=255, width=max(1, int(3 * s)))
        elif kind == "wire":
            ys = np.linspace(30, 100, 20) * s + dy
            xs = (50 + 8 * np.sin(np.linspace(0, 3, 20) + rng.uniform(0, 1))) * s + dx
            d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=245, width=1)
        elif kind in ("catheter", "port"):
            ys = np.linspace(30, 80 if kind == "catheter" else 95, 20) * s + dy
            xs = (45 + 18 * np.linspace(0, 1, 20) ** 2) * s + dx
            d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=235, width=max(2, int(4 * s)))
            if kind == "port":
                d.ellipse([30 * s + dx, 20 * s + dy, 46 * s + dx, 36 * s + dy], fill=255)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _fmt(t: int) -> str:
    return f"{t // 60:02d}:{t % 60:02d}" if t < 3600 else f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d}"


def label_ranges(labels: np.ndarray) -> tuple[list[str], list[str]]:
    """Per-second phase indices -> the annotation's ``"start-end"`` time ranges and their phase names."""
    change = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], change, [len(labels)]])
    ranges = [f"{_fmt(int(a))}-{_fmt(int(b) - 1)}" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return ranges, [PHASES[int(labels[a])] for a in bounds[:-1]]


def make_synthetic_dataset(
    root: str | Path,
    n_ops: int = 8,
    seconds: tuple[int, int] = (150, 240),
    seed: int = 0,
    frame_format: str = "jpg",
    labels_format: str = "json",
    sample_rate: int = 16000,
    frame_size: int = 128,
    progress: bool = True,
) -> list[str]:
    """Write ``n_ops`` synthetic operations in the PoCaP layout under ``root``; returns the operation names.

    Args:
        root: output folder (``OP_001/Channel_{1,2,3}.wav``, ``frame_#####.<fmt>``, ``annotations.json``).
        seconds: range of operation lengths in seconds.
        frame_format: ``jpg`` or ``png``.
        labels_format: ``json`` (corpus ``annotations.json``) or ``csv`` (per-operation ``labels.csv``).
    """
    import soundfile as sf
    from PIL import Image
    from tqdm import tqdm

    if frame_format not in ("jpg", "png"):
        raise ValueError(f"frame_format must be jpg or png, got {frame_format!r}")
    if labels_format not in ("json", "csv"):
        raise ValueError(f"labels_format must be json or csv, got {labels_format!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries, names = [], []
    for i in tqdm(range(n_ops), desc="synthetic operations", disable=not progress):
        name = f"OP_{i + 1:03d}"
        op_dir = root / name
        op_dir.mkdir(exist_ok=True)
        total = int(rng.integers(seconds[0], seconds[1] + 1))
        y = make_schedule(rng, total)
        audio = synth_audio(rng, y, sample_rate)
        for ch, fname in enumerate(CHANNEL_FILES):
            sf.write(str(op_dir / fname), audio[ch], sample_rate, subtype="PCM_16")
        for t in range(total):
            Image.fromarray(synth_frame(rng, int(y[t]), frame_size)).save(op_dir / f"frame_{t + 1:05d}.{frame_format}")
        ranges, phases = label_ranges(y)
        entries.append([name, "physician", "assistant", ranges, phases])
        if labels_format == "csv":
            with (op_dir / "labels.csv").open("w") as f:
                f.write("second,phase\n" + "".join(f"{t},{PHASES[int(c)]}\n" for t, c in enumerate(y)))
        names.append(name)
    if labels_format == "json":
        (root / "annotations.json").write_text(json.dumps(entries, indent=1))
    return names
