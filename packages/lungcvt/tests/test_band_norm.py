"""``features.band_norm="recording"``: per-recording channel compensation (README "Real ICBHI")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lungcvt.config import FeatureConfig, get_config
from lungcvt.features import band_normalise, compute_features, feature_key


def _recording(sr: int, seconds: float = 12.0, seed: int = 0) -> np.ndarray:
    from lungcvt.synthetic import synth_cycle

    rng = np.random.default_rng(seed)
    return np.concatenate([synth_cycle(k % 4, 3.0, sr, rng) for k in range(int(seconds // 3))]).astype(np.float32)


def _coloured(y: np.ndarray, sr: int) -> np.ndarray:
    """``y`` through a fixed, smooth "stethoscope" response: a tilt of +24 dB from 0 to 2 kHz and a 10 dB bump."""
    f = np.fft.rfftfreq(len(y), 1 / sr)
    g_db = 24.0 * np.minimum(f, 2000.0) / 2000.0 + 10.0 * np.exp(-(((f - 400.0) / 150.0) ** 2))
    return np.fft.irfft(np.fft.rfft(y) * 10 ** (g_db / 20), n=len(y)).astype(np.float32)


def _cycles(y: np.ndarray, sr: int) -> list[np.ndarray]:
    spans = [(0.2, 2.9), (3.1, 5.4), (6.0, 9.0), (9.3, 11.8)]  # one recording's cycles, of different lengths
    return [y[int(s * sr) : int(e * sr)] for s, e in spans]


def _diff(a: list[np.ndarray], b: list[np.ndarray], q: float) -> np.ndarray:
    """Per channel, the ``q`` quantile of |a - b| over all cycles' bands and frames (the few frames at cycle edges,
    where the filter's smear and the -80 dB floor differ, stay out of the median and 90th percentile)."""
    d = np.concatenate([np.abs(x - z).reshape(3, -1) for x, z in zip(a, b)], axis=1)  # [3, sum F * T_i]
    return np.quantile(d, q, axis=1)


def _row_shift(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Per channel, the largest |mean over frames of (b - a)| over the rows (bands, coefficients)."""
    d = np.concatenate([z - x for x, z in zip(a, b)], axis=2)  # [3, F, sum T_i]
    return np.abs(d.mean(axis=2)).max(axis=1)


def test_a_fixed_band_gain_leaves_band_normalised_features_unchanged():
    base = dataclasses.replace(get_config("lungcvt_icbhi_cpu").features, repeat_seconds=2.0)
    sr = base.sample_rate
    y = _recording(sr)
    clean, coloured = _cycles(y, sr), _cycles(_coloured(y, sr), sr)
    on = dataclasses.replace(base, band_norm="recording")
    off = compute_features(clean, base), compute_features(coloured, base)
    on_ = compute_features(clean, on), compute_features(coloured, on)
    # without the option the colouring shifts bands by many dB (MFCC: the low coefficients, in dB units)
    assert (_row_shift(*off) > 5.0).all(), _row_shift(*off)
    assert (_diff(*off, 0.5)[1:] > 3.0).all(), _diff(*off, 0.5)
    assert (_row_shift(*on_) < 0.5).all(), _row_shift(*on_)
    # with it, what is left is the gain's variation inside one filter band and the filter's smear in time
    assert (_diff(*on_, 0.5) < 0.5).all(), _diff(*on_, 0.5)
    assert (_diff(*on_, 0.9) < 1.5).all(), _diff(*on_, 0.9)


def test_band_normalise_removes_row_means_and_centres_each_cycle():
    rng = np.random.default_rng(1)
    feats = [rng.normal(-30, 5, (3, 8, t)).astype(np.float32) for t in (5, 9)]
    g = rng.normal(0, 10, (3, 8, 1)).astype(np.float32)  # a per-row gain, the same for every frame and cycle
    ref = [np.array([0.0, c, c], dtype=np.float32)[:, None, None] for c in (3.0, -7.0)]  # mel/CQT: own dB reference
    shift = [f + g + r for f, r in zip(feats, ref)]
    a, b = band_normalise(feats), band_normalise(shift)
    for x, z in zip(a, b):
        np.testing.assert_allclose(x, z, atol=1e-4)
        np.testing.assert_allclose(x[1:].mean(axis=(1, 2)), -40.0, atol=1e-3)  # mel, CQT: each cycle at -40 dB
    mfcc = np.concatenate([x[0] for x in a], axis=1)
    np.testing.assert_allclose(mfcc.mean(axis=1), 0.0, atol=1e-4)  # MFCC rows: zero mean over the recording
    assert band_normalise([]) == []


def test_band_norm_is_in_the_cache_key_and_the_default_keeps_old_keys():
    cfg = get_config("lungcvt_icbhi_cpu").features
    assert cfg.band_norm == "none" and "band_norm" not in cfg.spectral_key()
    on = dataclasses.replace(cfg, band_norm="recording")
    assert on.spectral_key()["band_norm"] == "recording" and feature_key(on) != feature_key(cfg)
    with pytest.raises(ValueError, match="band_norm"):
        FeatureConfig(band_norm="file")
