"""The official audio preprocessing (brief "Features", code ``utils/utils.py``), each step an explicit option.

- :func:`peak_normalize`: pydub's ``normalize``: scale so that the peak sits ``headroom_db`` below full scale.
- :func:`zero_mic_off`: "mic off" noise removal: STFT frames whose summed magnitude exceeds a threshold are zeroed.
  The code's threshold is 1e5, but the brief does not give the scale of its STFT, and on any plain scale 1e5 is
  meaningless (librosa defaults on int16-scale samples: quiet room noise at 1 % of full scale already sums to ~8e6;
  on [-1, 1] samples full-scale noise sums to ~2.5e4). So the threshold here is defined on a stated scale (the sum
  over frequency bins of |STFT| with librosa's defaults: periodic Hann 2048, hop 512, centred frames, no
  normalisation, int16-scale samples) and must be calibrated on a known mic-off stretch (:func:`frame_magnitudes`).
  A loud frame zeroes the ``hop`` samples around its centre, so the result is exact zeros rather than an
  overlap-add taper.
- :func:`estimate_lag` / :func:`align_to`: cross-correlation alignment of a channel to a reference (the code
  correlates the first 30 min with the GoPro track), then shift by the lag: late channels lose their first samples,
  early ones get zeros in front, and the end is padded or cut to the reference length.

Each function returns the processed signal and a short record of what it did (for ``ingest.json`` and the log).
"""

from __future__ import annotations

import numpy as np

__all__ = ["peak_normalize", "frame_magnitudes", "zero_mic_off", "estimate_lag", "align_to"]


def peak_normalize(x: np.ndarray, headroom_db: float = 0.1) -> tuple[np.ndarray, dict]:
    """Scale ``x`` (float in [-1, 1]) so that ``max |x| = 10^(-headroom_db / 20)`` (pydub ``normalize``, headroom
    0.1 dB). Silence (peak 0) is returned unchanged. Returns ``(y, {"gain_db": ...})``."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x.astype(np.float32), {"gain_db": 0.0}
    target = 10.0 ** (-headroom_db / 20.0)
    gain = target / peak
    return (x * gain).astype(np.float32), {"gain_db": round(20.0 * np.log10(gain), 3)}


def frame_magnitudes(x: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Summed STFT magnitude per frame (the quantity :func:`zero_mic_off` thresholds), ``(frames,)``; frame ``m`` is
    centred on sample ``m * hop``. Use it to calibrate the threshold on a stretch known to be mic-off noise."""
    n = x.size
    if n == 0:
        return np.zeros(0)
    xs = np.pad(
        x.astype(np.float64) * 32768.0, (n_fft // 2, n_fft // 2), mode="reflect" if n > n_fft // 2 else "constant"
    )
    win = np.hanning(n_fft + 1)[:-1]  # periodic Hann (librosa / scipy get_window('hann'))
    n_frames = 1 + (xs.size - n_fft) // hop
    out = np.empty(n_frames)
    for a in range(0, n_frames, 256):  # blocks of frames: bounded memory for hour-long files
        b = min(a + 256, n_frames)
        idx = np.arange(a, b)[:, None] * hop + np.arange(n_fft)[None, :]
        out[a:b] = np.abs(np.fft.rfft(xs[idx] * win, axis=1)).sum(axis=1)
    return out


def zero_mic_off(x: np.ndarray, threshold: float, n_fft: int = 2048, hop: int = 512) -> tuple[np.ndarray, dict]:
    """Zero the samples of STFT frames whose summed magnitude (:func:`frame_magnitudes`) exceeds ``threshold``.

    Returns:
        ``(y, {"zeroed_samples": ..., "frames": frames zeroed})``.
    """
    n = x.size
    loud = frame_magnitudes(x, n_fft, hop) > threshold
    y = x.astype(np.float32).copy()
    for m in np.flatnonzero(loud):
        c = m * hop  # frame centre in the original signal (centred STFT)
        y[max(0, c - hop // 2) : min(n, c + hop - hop // 2)] = 0.0
    return y, {"zeroed_samples": int(np.sum((y == 0) & (x != 0))), "frames": int(loud.sum())}


def estimate_lag(x: np.ndarray, ref: np.ndarray, sr: int, max_s: float = 1800.0, max_lag_s: float = 60.0) -> int:
    """Samples by which ``x`` lags ``ref`` (positive: the same event comes later in ``x``), from the peak of their
    FFT cross-correlation over the first ``max_s`` seconds, searched within ``±max_lag_s``."""
    n = int(min(max_s * sr, x.size, ref.size))
    if n < 2:
        return 0
    a, b = x[:n].astype(np.float64), ref[:n].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    size = 1 << int(np.ceil(np.log2(2 * n - 1)))
    cc = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)  # cc[k] = sum a[t+k] b[t]
    lmax = int(min(max_lag_s * sr, n - 1))
    lags = np.concatenate([np.arange(0, lmax + 1), np.arange(-lmax, 0)])
    vals = np.concatenate([cc[: lmax + 1], cc[size - lmax :]])
    return int(lags[int(np.argmax(vals))])


def align_to(
    x: np.ndarray, ref: np.ndarray, sr: int, max_s: float = 1800.0, max_lag_s: float = 60.0
) -> tuple[np.ndarray, dict]:
    """Shift ``x`` onto ``ref``'s clock (see :func:`estimate_lag`) and pad / cut its end to ``ref``'s length.

    Returns ``(y, {"lag_samples", "lag_s", "end_padded_samples", "end_cut_samples"})``.
    """
    lag = estimate_lag(x, ref, sr, max_s, max_lag_s)
    y = x[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), x])
    pad = max(0, ref.size - y.size)
    cut = max(0, y.size - ref.size)
    y = np.concatenate([y, np.zeros(pad, np.float32)])[: ref.size]
    return y.astype(np.float32), {
        "lag_samples": lag,
        "lag_s": round(lag / sr, 4),
        "end_padded_samples": int(pad),
        "end_cut_samples": int(cut),
    }
