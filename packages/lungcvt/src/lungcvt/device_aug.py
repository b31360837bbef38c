"""Device augmentation on the cached features: a random stethoscope filter per training cycle (ours, issue 21).

A recording device acts on lung sounds as a fixed, smooth filter ``g(f)`` in dB (its membrane, chest piece and
microphone; a Littmann 3200's "bell/diaphragm/extended" modes roll off above a few hundred Hz to 1 kHz). In the
pre-resize features that :mod:`lungcvt.features` caches (float [3, F, T]: MFCC, mel dB, CQT dB) such a filter is
additive per row, so it can be applied to the cached features without touching the audio:

- mel and CQT channels (dB relative to the cycle's maximum, floored 80 dB below): row ``k`` + ``g(f_k)`` at the
  band's centre frequency, then re-referenced to the new maximum and floored at -80 dB again;
- MFCC channel (DCT-II, ortho, of the HTK log-mel bands, floored 80 dB below their maximum): the log-mel bands are
  recovered by the inverse DCT (exact when ``n_mfcc`` equals the number of bands, as in the presets), ``g`` added at
  the HTK band centres, floored, and transformed back.

:func:`apply_filter` is that deterministic map (``tests/test_device_aug.py`` checks it against the features of audio
filtered in the time domain); :class:`DeviceAugment` draws a random ``g`` per call from torch's global RNG (seeded
per DataLoader worker and epoch, as ``time_roll``): a spectral tilt, a low-pass at a random cut-off, a high-pass and
a resonance bump, each at random (:meth:`DeviceAugment.sample_curve`). ``train.device_aug`` is the probability that
a training cycle is filtered (0 = off). Validation and test cycles are never filtered by it.

:func:`with_device_views` adds filtered copies of the validation cycles (``train.bias_views``), on which the
normal-class decision bias and the best epoch are chosen, so that the operating point holds on a device training
did not see, not only on the training devices.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lungcvt.config import FeatureConfig
from lungcvt.dataset import CycleSet

__all__ = ["band_frequencies", "apply_filter", "add_noise_floor", "DeviceAugment", "with_device_views"]

_FLOOR_DB = 80.0


def band_frequencies(cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre frequencies in Hz of the rows: (mel channel [n_mels], the MFCC's HTK mel bands [mfcc_n_mels], CQT
    [cqt_bins]), as :class:`lungcvt.features.BatchedFeaturizer` builds its filter banks."""
    import librosa

    fmax = cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2
    mel = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=0.0, fmax=fmax, htk=cfg.mel_htk)[1:-1]
    m = cfg.effective_mfcc_n_mels
    mfcc = librosa.mel_frequencies(n_mels=m + 2, fmin=0.0, fmax=fmax, htk=True)[1:-1]
    cqt = librosa.cqt_frequencies(n_bins=cfg.cqt_bins, fmin=cfg.cqt_fmin, bins_per_octave=cfg.cqt_bins_per_octave)
    return mel, mfcc, cqt


def _dct(n_mfcc: int, m: int) -> torch.Tensor:
    import scipy.fft

    return torch.tensor(scipy.fft.dct(np.eye(m), type=2, norm="ortho", axis=0)[:n_mfcc], dtype=torch.float32)


def _refloor(x: torch.Tensor) -> torch.Tensor:
    """[R, T] dB -> relative to its maximum, floored at -80 dB (``power_to_db(ref=max, top_db=80)``)."""
    x = x - x.max()
    return x.clamp_min(-_FLOOR_DB)


def apply_filter(
    feat: torch.Tensor,
    g_mel: torch.Tensor,
    g_mfcc: torch.Tensor,
    g_cqt: torch.Tensor,
    dct: torch.Tensor,
    mode: str = "clean",
) -> torch.Tensor:
    """The features of a cycle recorded through a filter of gain ``g`` dB: [3, F, T] -> [3, F, T] (float32).

    Args:
        feat: pre-resize features [3, F, T] (MFCC, mel dB, CQT dB; clean-mode MFCCs, i.e. not re-referenced).
        g_mel, g_mfcc, g_cqt: the filter's gain in dB at each row's centre frequency ([F], [mfcc_n_mels], [F]).
        dct: DCT-II (ortho) matrix [n_mfcc, mfcc_n_mels].
        mode: ``"clean"`` (MFCCs of the floored log-mel) or ``"faithful"`` (the MFCC channel is itself a dB map
            relative to its maximum: left as it is).
    """
    x = feat.float()
    mel = _refloor(x[1] + g_mel[:, None])
    cqt = _refloor(x[2] + g_cqt[:, None])
    mfcc = x[0]
    if mode == "clean":
        if dct.shape[0] == dct.shape[1]:  # invertible: filter the log-mel bands, floor them as the featurizer does
            lm = dct.T @ mfcc + g_mfcc[:, None]  # [M, T]
            lm = torch.maximum(lm, lm.max() - _FLOOR_DB)
            mfcc = dct @ lm
        else:  # a truncated DCT: the filter's cepstrum added (linear part only)
            mfcc = mfcc + (dct @ g_mfcc)[:, None]
    return torch.stack([mfcc, mel, cqt])


def _power_add(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """dB maps [R, T] + noise levels [R] (dB, the same reference) -> dB of the summed powers."""
    return 10.0 * torch.log10(10.0 ** (x / 10.0) + 10.0 ** (n[:, None] / 10.0))


def add_noise_floor(
    feat: torch.Tensor,
    n_mel: torch.Tensor,
    n_mfcc: torch.Tensor,
    n_cqt: torch.Tensor,
    dct: torch.Tensor,
    mode: str = "clean",
) -> torch.Tensor:
    """The features of a cycle with stationary noise added: [3, F, T] -> [3, F, T] (float32).

    The noise's power in each row is ``n`` dB relative to the cycle's maximum (``n_mel`` [F], ``n_mfcc``
    [mfcc_n_mels], ``n_cqt`` [F]); powers add, then each map is re-referenced to its new maximum and floored at
    -80 dB as the featurizer does. A quieter cycle (or a noisier device) is one whose floor sits closer to its
    maximum. The MFCCs (clean mode, invertible DCT) go through their log-mel bands as in :func:`apply_filter`.
    """
    x = feat.float()
    mel = _refloor(_power_add(x[1], n_mel))
    cqt = _refloor(_power_add(x[2], n_cqt))
    mfcc = x[0]
    if mode == "clean" and dct.shape[0] == dct.shape[1]:
        lm = dct.T @ mfcc  # [M, T] log-mel dB (HTK bands), max-referenced up to the floor
        lm = _power_add(lm - lm.max(), n_mfcc)
        lm = torch.maximum(lm, lm.max() - _FLOOR_DB)
        mfcc = dct @ lm
    return torch.stack([mfcc, mel, cqt])


class DeviceAugment:
    """A random stationary device filter per call (``train.device_aug``; ours, issue 21).

    The gain curve ``g(f)`` in dB, over ``o = log2(f / 250 Hz)`` octaves:

    - a tilt ``a * o`` with ``a ~ U(-tilt, tilt)`` dB per octave (always);
    - with probability 0.5 a low-pass: ``-s * max(0, log2(f / fc))``, ``fc`` log-uniform in [300, 2000] Hz,
      ``s ~ U(12, 48)`` dB per octave (the Litt3200's roll-off lies in this range);
    - with probability 0.3 a high-pass: ``-s * max(0, log2(fc / f))``, ``fc`` log-uniform in [50, 250] Hz,
      ``s ~ U(6, 24)`` dB per octave;
    - with probability 0.5 a resonance: ``b * exp(-((log2(f / fb)) / w)^2 / 2)``, ``b ~ U(-10, 10)`` dB, ``fb``
      log-uniform in [100, 1500] Hz, ``w ~ U(0.25, 1)`` octave.

    With probability ``noise`` (after the filter, drawn independently of it) a stationary noise floor is added
    (:func:`add_noise_floor`): its level ``L ~ U(-45, -15)`` dB relative to the cycle's maximum, its spectrum
    tilted by ``U(-3, 3)`` dB per octave about 250 Hz: a quieter cycle, or a device with more hiss.

    Args:
        cfg: the feature settings (row frequencies, MFCC size, mode).
        p: probability that a call filters its input (else it is returned unchanged).
        tilt: the largest tilt in dB per octave.
        noise: probability that a call adds a noise floor (``train.device_noise``; 0 draws nothing from the RNG).
    """

    def __init__(self, cfg: FeatureConfig, p: float = 1.0, tilt: float = 4.0, noise: float = 0.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"device augmentation probability must be in [0, 1], got {p}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"device noise probability must be in [0, 1], got {noise}")
        self.p, self.tilt, self.mode, self.noise = p, tilt, cfg.mode, noise
        self.freqs = tuple(torch.tensor(f, dtype=torch.float32) for f in band_frequencies(cfg))
        self.dct = _dct(cfg.n_mfcc, cfg.effective_mfcc_n_mels)

    @staticmethod
    def _u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    def _logu(self, lo: float, hi: float) -> float:
        return math.exp(self._u(math.log(lo), math.log(hi)))

    def sample_curve(self) -> dict[str, float]:
        """Draw the parameters of one filter from torch's global RNG (0 = that component off)."""
        c = {"tilt": self._u(-self.tilt, self.tilt), "lp_fc": 0.0, "lp_s": 0.0, "hp_fc": 0.0, "hp_s": 0.0,
             "bump_db": 0.0, "bump_f": 1.0, "bump_w": 1.0}  # fmt: skip
        if float(torch.rand(())) < 0.5:
            c["lp_fc"], c["lp_s"] = self._logu(300.0, 2000.0), self._u(12.0, 48.0)
        if float(torch.rand(())) < 0.3:
            c["hp_fc"], c["hp_s"] = self._logu(50.0, 250.0), self._u(6.0, 24.0)
        if float(torch.rand(())) < 0.5:
            c["bump_db"], c["bump_f"], c["bump_w"] = self._u(-10.0, 10.0), self._logu(100.0, 1500.0), self._u(0.25, 1.0)
        return c

    @staticmethod
    def gain(f: torch.Tensor, c: dict[str, float]) -> torch.Tensor:
        """The curve ``c`` in dB at frequencies ``f`` (Hz); flat below 50 Hz (the lowest bands hold mostly the
        window's leakage from their neighbours)."""
        f = f.clamp_min(50.0)
        g = c["tilt"] * torch.log2(f / 250.0)
        if c["lp_s"] > 0:
            g = g - c["lp_s"] * torch.log2(f / c["lp_fc"]).clamp_min(0.0)
        if c["hp_s"] > 0:
            g = g - c["hp_s"] * torch.log2(c["hp_fc"] / f).clamp_min(0.0)
        if c["bump_db"] != 0:
            g = g + c["bump_db"] * torch.exp(-0.5 * (torch.log2(f / c["bump_f"]) / c["bump_w"]) ** 2)
        return g

    def __call__(self, feat: torch.Tensor) -> torch.Tensor:
        """[3, F, T] -> [3, F, T] in ``feat``'s dtype, filtered with probability ``p`` (then a noise floor added
        with probability ``noise``)."""
        out = feat
        if self.p > 0.0 and float(torch.rand(())) < self.p:
            c = self.sample_curve()
            g = [self.gain(f, c) for f in self.freqs]
            out = apply_filter(feat, g[0], g[1], g[2], self.dct, self.mode)
        if self.noise > 0.0 and float(torch.rand(())) < self.noise:
            level, slope = self._u(-45.0, -15.0), self._u(-3.0, 3.0)
            n = [level + slope * torch.log2(f.clamp_min(50.0) / 250.0) for f in self.freqs]
            out = add_noise_floor(out, n[0], n[1], n[2], self.dct, self.mode)
        return out if out is feat else out.to(feat.dtype)


def with_device_views(cycles: CycleSet, cfg: FeatureConfig, views: int, seed: int) -> CycleSet:
    """``cycles`` followed by ``views`` copies of them, each cycle of each copy through its own random filter
    (:class:`DeviceAugment` with ``p=1``), drawn from a generator seeded with ``seed`` (the global RNG is left as it
    was). Labels and metadata are repeated; features keep their dtype."""
    if views <= 0:
        return cycles
    aug = DeviceAugment(cfg, p=1.0)
    out = CycleSet(**{k: list(v) for k, v in vars(cycles).items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(views):
            out.feats.extend(aug(torch.from_numpy(f)).numpy() for f in cycles.feats)
            for name in ("labels", "stems", "starts", "ends", "patients", "devices"):
                out.__dict__[name].extend(getattr(cycles, name))
    return out
