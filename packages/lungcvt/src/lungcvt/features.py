"""Feature extraction (paper III-A; official ``SoundLoader``): MFCC, mel spectrogram and CQT stacked as 3 x 96 x T.

Three backends compute the same pre-resize features:

- ``librosa``: :func:`librosa_features` (reference, one cycle at a time, exactly the librosa calls of the official
  code);
- ``torch`` (batched default): :class:`BatchedFeaturizer` with :class:`FFTCQT`, librosa's multi-resolution CQT
  written in torch (per-octave short FFTs on a signal decimated in the FFT domain); CPU or GPU;
- ``nnaudio``: :class:`BatchedFeaturizer` with nnAudio's ``CQT1992v2`` (time-domain kernels; slower, kept to
  compare).

Batched backends zero-pad cycles of different lengths (which is what librosa's ``center=True, pad_mode="constant"``
does at the end anyway), take each item's dB reference over its own frames, and crop to T_i.

Then :func:`to_image` resizes to ``image_size`` squared and normalises (faithful: ImageNet mean/std on dB values as
the code; clean: dB rescaled to [-1, 1], MFCC standardised). :class:`FeatureCache` stores the pre-resize features
on disk, keyed by a hash of the settings that change them.

Shapes: audio float32 [N] at ``sample_rate``; features float32 [3, 96, T] with T = 1 + N // hop_length.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lungcvt.config import FeatureConfig
from lungcvt.data import DataError

__all__ = [
    "FeatureError",
    "check_cqt",
    "prepare_cycle",
    "librosa_features",
    "FFTCQT",
    "BatchedFeaturizer",
    "NnAudioFeaturizer",
    "get_featurizer",
    "compute_features",
    "to_image",
    "FeatureCache",
    "feature_key",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureError(DataError):
    """Feature settings cannot work with the audio (e.g. CQT above Nyquist)."""


def _cqt_cutoff(cfg: FeatureConfig) -> tuple[float, float]:
    """(centre of the top CQT bin, highest filter cutoff) in Hz, computed as librosa 0.11's ``vqt`` does."""
    import librosa

    freqs = librosa.cqt_frequencies(n_bins=cfg.cqt_bins, fmin=cfg.cqt_fmin, bins_per_octave=cfg.cqt_bins_per_octave)
    try:
        alpha = librosa.filters._relative_bandwidth(freqs=freqs)
        _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=cfg.sample_rate, window="hann", alpha=alpha)
    except Exception:  # pragma: no cover - private librosa helper moved; use the constant-Q bandwidth
        r = 2.0 ** (1.0 / cfg.cqt_bins_per_octave)
        alpha = (r**2 - 1) / (r**2 + 1)
        cutoff = float(freqs[-1] * (1 + 0.5 * 1.50018310546875 * alpha))  # hann equivalent noise bandwidth
    return float(freqs[-1]), float(cutoff)


def check_cqt(cfg: FeatureConfig) -> None:
    """Raise :class:`FeatureError` when ``cqt_bins`` from ``cqt_fmin`` exceed the Nyquist frequency.

    The brief's table: 96 bins at 12 per octave from C1 need about 16.7 kHz; 4, 8 and 16 kHz fail. Never changed
    silently: the message names the options that fix it.
    """
    top, cutoff = _cqt_cutoff(cfg)
    nyq = cfg.sample_rate / 2
    if cutoff > nyq:
        octaves = cfg.cqt_bins / cfg.cqt_bins_per_octave
        raise FeatureError(
            f"CQT with {cfg.cqt_bins} bins at {cfg.cqt_bins_per_octave} bins/octave from fmin={cfg.cqt_fmin:.2f} Hz "
            f"spans {octaves:.1f} octaves up to {top:.0f} Hz (filter cutoff {cutoff:.0f} Hz), above the Nyquist "
            f"frequency {nyq:.0f} Hz of features.sample_rate={cfg.sample_rate}. Fix: raise features.sample_rate "
            f"(22050, as the paper), or set features.cqt_bins_per_octave=24, or lower features.cqt_bins, or lower "
            f"features.cqt_fmin (C0 = 16.35 Hz works from 16 kHz)"
        )


def prepare_cycle(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Apply the length policy to one cycle: ``none`` keeps it; ``repeat`` tiles/cuts it to ``repeat_seconds``."""
    if cfg.length == "none":
        return audio
    n = int(round(cfg.repeat_seconds * cfg.sample_rate))
    if len(audio) == 0:
        return np.zeros(n, dtype=np.float32)
    reps = math.ceil(n / len(audio))
    return np.tile(audio, reps)[:n]  # [N] -> [reps * N] -> [n]


def _min_length(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    # librosa needs at least one frame's worth for some transforms; pad very short cycles with zeros
    need = cfg.hop_length
    if len(audio) < need:
        audio = np.pad(audio, (0, need - len(audio)))
    return audio


def librosa_features(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Reference features of one cycle, as the official ``SoundLoader`` (with keyword arguments for librosa 0.11).

    Args:
        audio: float32 [N] at ``cfg.sample_rate``.
        cfg: feature settings.

    Returns:
        float32 [3, 96, T], T = 1 + N // hop. Channels: MFCC, mel, CQT. Faithful: MFCC passed through
        ``power_to_db(ref=max)`` as the code; mel ``power_to_db(ref=max)``; CQT ``amplitude_to_db(ref=max)``; all in
        [-80, 0] dB. Clean: MFCC raw (from ``n_mels`` bands), mel and CQT dB as above.
    """
    import librosa

    check_cqt(cfg)
    y = _min_length(prepare_cycle(np.asarray(audio, dtype=np.float32), cfg), cfg)
    sr, hop, n_fft = cfg.sample_rate, cfg.hop_length, cfg.n_fft
    mfcc = librosa.feature.mfcc(
        y=y, sr=sr, n_mfcc=cfg.n_mfcc, hop_length=hop, n_fft=n_fft, htk=True, n_mels=cfg.effective_mfcc_n_mels
    )
    if cfg.mode == "faithful":
        mfcc = librosa.power_to_db(mfcc, ref=np.max)  # the code's step: negative MFCCs fall to the -80 dB floor
    mel = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=cfg.n_mels), ref=np.max
    )
    cqt = librosa.amplitude_to_db(
        np.abs(
            librosa.cqt(
                y=y,
                sr=sr,
                hop_length=hop,
                n_bins=cfg.cqt_bins,
                bins_per_octave=cfg.cqt_bins_per_octave,
                fmin=cfg.cqt_fmin,
            )
        ),
        ref=np.max,
    )
    t = min(mfcc.shape[1], mel.shape[1], cqt.shape[1])
    return np.stack([mfcc[:, :t], mel[:, :t], cqt[:, :t]]).astype(np.float32)  # 3 x [96, T] -> [3, 96, T]


def _db_batch(s: torch.Tensor, valid: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """``librosa.power_to_db(s_i, ref=np.max)`` for every item of a batch at once.

    Args:
        s: power [B, T_max, F] (padded frames of an item are ignored through ``valid``).
        valid: bool [B, T_max, 1], True on an item's own frames.

    Returns:
        dB [B, T_max, F], each item relative to its own maximum over its valid frames, floored at max - ``top_db``.
    """
    ref = s.masked_fill(~valid, -torch.inf).amax(dim=(1, 2), keepdim=True).abs()  # [B, 1, 1]
    out = 10.0 * torch.log10(s.clamp_min(amin)) - 10.0 * torch.log10(ref.clamp_min(amin))
    return torch.maximum(out, out.masked_fill(~valid, -torch.inf).amax(dim=(1, 2), keepdim=True) - top_db)


def _frames(x: torch.Tensor, n_fft: int, hop: int, n_frames: int) -> torch.Tensor:
    """Centred frames as ``torch.stft(center=True, pad_mode="constant")``: [B, N] -> view [B, n_frames, n_fft]."""
    xp = F.pad(x, (n_fft // 2, n_fft // 2))  # [B, N + n_fft]
    return xp.unfold(-1, n_fft, hop)[:, :n_frames]  # [B, 1 + N // hop, n_fft] -> [B, n_frames, n_fft]


class FFTCQT:
    """Batched constant-Q transform in torch with librosa's own multi-resolution scheme (``librosa.vqt``).

    Per octave (top down), librosa takes a short STFT (box window, ``n_fft`` = the octave's longest filter rounded up
    to a power of two: 128 samples at the paper's settings) and projects it on the octave's FFT-domain filter bank;
    then it halves the rate (soxr, a sharp anti-alias filter) and the hop. Here the FFT-domain bank (librosa's own
    wavelets, normalisation, sparsification and scaling, computed once) is folded with the DFT into a real
    time-domain kernel [n_fft, 2 x bins] per octave, so each octave is one small matmul on strided frames. All
    decimated signals come from one FFT of the zero-padded batch: octave ``k`` keeps the spectrum below its Nyquist
    frequency, tapered by a raised cosine over the top 10 % (above every filter of that octave), and inverts it at
    ``sr / 2**k``; the padding is longer than the taper's impulse response, so nothing wraps around. Early
    downsampling, the ``hop % 2`` rule, the per-octave basis scaling and the final ``1/sqrt(length)`` scaling follow
    librosa 0.11.

    Against ``librosa.cqt`` the dB maps differ by about 0.02 dB on average (``test_batched_matches_librosa``),
    against 0.4 dB for nnAudio's ``CQT1992v2``, which convolves 96 kernels of up to 16,384 taps at every frame.

    Args:
        sr: sample rate in Hz.
        hop_length: hop in samples at ``sr``.
        fmin: lowest bin frequency in Hz.
        n_bins: number of bins.
        bins_per_octave: bins per octave.
        device: torch device.
    """

    def __init__(
        self,
        sr: int,
        hop_length: int,
        fmin: float,
        n_bins: int,
        bins_per_octave: int,
        device: str | torch.device = "cpu",
    ) -> None:
        import librosa

        self.device = torch.device(device)
        self.hop_length = hop_length
        self.n_bins = n_bins
        freqs = librosa.cqt_frequencies(n_bins=n_bins, fmin=fmin, bins_per_octave=bins_per_octave)
        alpha = librosa.filters._relative_bandwidth(freqs=freqs)
        lengths, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window="hann", alpha=alpha)
        n_octaves = int(math.ceil(n_bins / bins_per_octave))
        n_filters = min(bins_per_octave, n_bins)
        # librosa's early downsampling (constantq.__early_downsample_count)
        count1 = max(0, int(np.ceil(np.log2(sr / 2.0 / cutoff)) - 1) - 1)
        twos = (hop_length & -hop_length).bit_length() - 1  # number of factors 2 in hop_length
        early = min(count1, max(0, twos - n_octaves + 1))
        sr_e, hop = sr / 2**early, hop_length // 2**early
        if early:  # librosa recomputes the lengths for the final scaling at the early-downsampled rate
            lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr_e, window="hann", alpha=alpha)
        idx = np.arange(n_bins)
        # per octave: (first bin, decimation factor from sr, n_fft, hop, real kernel [n_fft, 2 * bins in octave])
        self.octaves: list[tuple[int, int, int, int, torch.Tensor]] = []
        my_sr, my_hop = sr_e, hop
        for i in range(n_octaves):
            sl = slice(-n_filters, None) if i == 0 else slice(-n_filters * (i + 1), -n_filters * i)
            ii = idx[sl]
            basis, lens = librosa.filters.wavelet(
                freqs=freqs[ii], sr=my_sr, filter_scale=1, norm=1, pad_fft=True, window="hann", alpha=alpha[ii]
            )
            n_fft = basis.shape[1]
            basis = basis * (lens[:, None] / float(n_fft))  # re-normalise to the FFT length (librosa)
            fb = np.fft.fft(basis, n=n_fft, axis=1)[:, : n_fft // 2 + 1]  # [n, n_fft/2 + 1]
            fb = librosa.util.sparsify_rows(fb, quantile=0.01, dtype=np.complex64).toarray().astype(np.complex128)
            fb = fb * np.sqrt(sr_e / my_sr) / np.sqrt(lengths[ii])[:, None]  # downsampling and length scaling
            # response = sum_f fb[k, f] * sum_n x[n] exp(-2 pi i f n / n_fft) = sum_n kern[n, k] x[n]
            f = np.arange(n_fft // 2 + 1)
            dft = np.exp(-2j * np.pi * np.outer(f, np.arange(n_fft)) / n_fft)  # [F, n_fft]
            kern = (fb @ dft).T  # [n_fft, n] complex
            kern = np.concatenate([kern.real, kern.imag], axis=1)  # [n_fft, 2n]: real parts, then imaginary parts
            factor = int(round(sr / my_sr))
            self.octaves.append(
                (int(ii[0]), factor, n_fft, my_hop, torch.tensor(kern, dtype=torch.float32, device=self.device))
            )
            if my_hop % 2 == 0:
                my_hop //= 2
                my_sr /= 2.0
        self.max_factor = max(o[1] for o in self.octaves)
        # columns of the bottom-up concatenation of the octaves' [re | im] blocks that hold each bin's re and im
        re_idx, im_idx, off = [], [], 0
        for _, _, _, _, kern in self.octaves[::-1]:
            nb = kern.shape[1] // 2
            re_idx += range(off, off + nb)
            im_idx += range(off + nb, off + 2 * nb)
            off += 2 * nb
        self._re_idx = torch.tensor(re_idx, device=self.device)
        self._im_idx = torch.tensor(im_idx, device=self.device)
        self._tapers: dict[int, torch.Tensor] = {}

    def _taper(self, n_keep: int) -> torch.Tensor:
        """[n_keep] spectral weights: 1 up to 90 % of the octave's Nyquist, raised cosine to 0 at it (cached)."""
        if n_keep not in self._tapers:
            if len(self._tapers) > 64:
                self._tapers.clear()
            f = torch.linspace(0.0, 1.0, n_keep, device=self.device)
            w = torch.clamp((1.0 - f) / 0.1, 0.0, 1.0)
            self._tapers[n_keep] = (0.5 - 0.5 * torch.cos(math.pi * w)).to(torch.complex64)
        return self._tapers[n_keep]

    def responses(self, x: torch.Tensor, lengths: Sequence[int] | None = None, power: bool = False) -> torch.Tensor:
        """Magnitude (or, with ``power``, squared magnitude) CQT of a zero-padded batch, frames first.

        Args:
            x: float32 [B, N] at ``sr``.
            lengths: each item's own length in samples (its decimated signals are zeroed beyond it, as librosa sees
                a signal that ends there); ``None`` = all ``N``.
            power: return |C|^2 (what ``amplitude_to_db`` squares anyway) and skip the square root.

        Returns:
            float32 [B, 1 + N // hop_length, n_bins], bins from ``fmin`` upwards.
        """
        import scipy.fft

        b, n = x.shape
        m = self.max_factor
        # zero padding: room for the taper's impulse response at the coarsest rate (about 40 samples there)
        pad_len = scipy.fft.next_fast_len(-(-(n + 64 * m) // m)) * m  # 5-smooth multiple of the largest factor
        spec = torch.fft.rfft(x, n=pad_len) if m > 1 else None  # [B, pad_len/2 + 1]
        t_out = 1 + n // self.hop_length
        parts: list[torch.Tensor] = []  # per octave [B, T, 2 * bins]: real parts, then imaginary parts
        signals: dict[int, torch.Tensor] = {1: x}  # the top octave(s) see the signal itself, as in librosa
        for _, factor, n_fft, hop, kern in self.octaves:
            if factor not in signals:
                assert spec is not None
                n_k = pad_len // factor
                keep = n_k // 2 + 1
                # [B, keep] -> [B, n_k] at sr/factor, same amplitude, times sqrt(factor) as librosa's scale=True
                xk = torch.fft.irfft(spec[:, :keep] * self._taper(keep), n=n_k) * (math.sqrt(factor) / factor)
                xk = xk[:, : -(-n // factor)]
                if lengths is not None and factor > 1:
                    own = torch.tensor([-(-ln // factor) for ln in lengths], device=x.device)
                    xk = xk * (torch.arange(xk.shape[1], device=x.device) < own[:, None])
                signals[factor] = xk
            parts.append(_frames(signals[factor], n_fft, hop, t_out) @ kern)  # [B,T,n_fft] @ [n_fft,2nb] -> [B,T,2nb]
        # octaves run top down; bins go bottom up: [B, T, 2 * n_bins] as (re, im) pairs of octave blocks
        sq = torch.cat(parts[::-1], dim=-1).square()  # [B, T, 2 * n_bins]
        out = sq.index_select(-1, self._re_idx) + sq.index_select(-1, self._im_idx)  # |C|^2 [B, T, n_bins]
        return out if power else out.sqrt_()

    def __call__(self, x: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Magnitude CQT: float32 [B, N] -> [B, n_bins, 1 + N // hop_length] (see :meth:`responses`)."""
        return self.responses(x, lengths).transpose(1, 2)


class BatchedFeaturizer:
    """Batched features in torch: framed ``torch.fft.rfft`` + librosa's mel filters for the mel and MFCC channels
    (one FFT and one matmul serve both), and for the CQT channel either :class:`FFTCQT` (``cqt="fft"``, backend
    ``"torch"``, the default) or nnAudio ``CQT1992v2`` with librosa normalisation (``cqt="nnaudio"``, backend
    ``"nnaudio"``). Internally frames come first ([B, T, F]), so every FFT and matmul works on contiguous rows.

    Args:
        cfg: feature settings (``check_cqt`` is applied first).
        device: torch device for the transforms.
        cqt: ``"fft"`` or ``"nnaudio"``.
    """

    def __init__(self, cfg: FeatureConfig, device: str | torch.device = "cpu", cqt: str = "fft") -> None:
        import librosa
        import scipy.fft

        check_cqt(cfg)
        if cqt not in ("fft", "nnaudio"):
            raise ValueError(f"cqt must be 'fft' or 'nnaudio', got {cqt!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.cqt_impl = cqt
        sr, n_fft = cfg.sample_rate, cfg.n_fft
        self.window = torch.hann_window(n_fft, periodic=True, device=self.device)  # scipy 'hann', fftbins=True
        mel_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.n_mels, htk=False)  # [n_mels, 1 + n_fft/2]
        mfcc_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.effective_mfcc_n_mels, htk=True)
        # one matmul for both filter banks: [1 + n_fft/2, n_mels + mfcc_n_mels]
        self.fb_t = torch.tensor(np.concatenate([mel_fb, mfcc_fb]).T, dtype=torch.float32, device=self.device)
        # non-zero blocks (FFT bins f0:f1 x filters m0:m1) of each bank, 256 bins at a time: 4-6x fewer products
        self.fb_blocks: list[tuple[int, int, int, int]] = []
        for off, bank in ((0, mel_fb), (cfg.n_mels, mfcc_fb)):
            for f0 in range(0, bank.shape[1], 256):
                f1 = min(bank.shape[1], f0 + 256)
                rows = np.flatnonzero((bank[:, f0:f1] != 0).any(axis=1))
                if len(rows):
                    self.fb_blocks.append((f0, f1, off + int(rows[0]), off + int(rows[-1]) + 1))
        m = cfg.effective_mfcc_n_mels
        dct = scipy.fft.dct(np.eye(m), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]  # [n_mfcc, n_mels]
        self.dct_t = torch.tensor(dct.T, dtype=torch.float32, device=self.device)  # [n_mels, n_mfcc]
        if cqt == "fft":
            self.cqt = FFTCQT(
                sr, cfg.hop_length, cfg.cqt_fmin, cfg.cqt_bins, cfg.cqt_bins_per_octave, device=self.device
            )
        else:
            from nnAudio import features as nf

            self.cqt = nf.CQT1992v2(
                sr=sr,
                hop_length=cfg.hop_length,
                fmin=cfg.cqt_fmin,
                n_bins=cfg.cqt_bins,
                bins_per_octave=cfg.cqt_bins_per_octave,
                norm=1,
                window="hann",
                center=True,
                pad_mode="constant",
                output_format="Magnitude",
                verbose=False,
            ).to(self.device)

    def pad(self, cycles: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """Length policy, then zero-pad into one batch: float32 [B, N_max] (librosa's centre pad is zeros too)."""
        cfg = self.cfg
        ys = [_min_length(prepare_cycle(np.asarray(c, dtype=np.float32), cfg), cfg) for c in cycles]
        lens = [len(y) for y in ys]
        x = np.zeros((len(ys), max(lens)), dtype=np.float32)
        for i, y in enumerate(ys):
            x[i, : len(y)] = y
        return torch.from_numpy(x).to(self.device), lens

    @torch.no_grad()
    def batch(self, x: torch.Tensor, lens: Sequence[int], stages: dict[str, float] | None = None) -> torch.Tensor:
        """Features of a padded batch -> float32 [B, 3, 96, T_max] (item i valid up to ``1 + lens[i] // hop``).

        ``stages``, when given, accumulates seconds per stage (stft, mel, mfcc, cqt, db) for the benchmark.
        """
        import time

        cfg = self.cfg
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            if stages is not None:
                sync()
                now = time.perf_counter()
                stages[name] = stages.get(name, 0.0) + now - clock[0]
                clock[0] = now

        t_max = 1 + x.shape[1] // cfg.hop_length
        spec = torch.fft.rfft(_frames(x, cfg.n_fft, cfg.hop_length, t_max) * self.window)  # [B, T, 1 + n_fft/2]
        sq = torch.view_as_real(spec).square()  # [B, T, F, 2] (re^2, im^2)
        power = sq[..., 0] + sq[..., 1]  # |X|^2 [B, T, F] (faster than abs() or a sum over the last axis)
        lap("stft")
        valid = torch.arange(t_max, device=x.device) < torch.tensor([1 + n // cfg.hop_length for n in lens])[:, None]
        valid = valid.to(x.device)[:, :, None]  # [B, T, 1]
        bands = power.new_zeros(*power.shape[:2], self.fb_t.shape[1])  # [B, T, n_mels + mfcc_n_mels]
        for f0, f1, m0, m1 in self.fb_blocks:  # block-sparse power @ fb_t: each mel filter spans a few FFT bins
            bands[..., m0:m1] += power[..., f0:f1] @ self.fb_t[f0:f1, m0:m1]  # [B, T, f] @ [f, m] -> [B, T, m]
        mel_db = _db_batch(bands[..., : cfg.n_mels], valid)  # power_to_db(ref=max)
        lap("mel")
        # librosa.feature.mfcc: power_to_db(ref=1.0, top_db=80) per item, then DCT-II (ortho) over the mel axis
        lm = 10.0 * torch.log10(bands[..., cfg.n_mels :].clamp_min(1e-10))
        lm = torch.maximum(lm, lm.masked_fill(~valid, -torch.inf).amax(dim=(1, 2), keepdim=True) - 80.0)
        mfcc = lm @ self.dct_t  # [B, T, M] @ [M, n_mfcc] -> [B, T, n_mfcc]
        if cfg.mode == "faithful":
            mfcc = _db_batch(mfcc, valid)
        lap("mfcc")
        if self.cqt_impl == "fft":
            c2 = self.cqt.responses(x, lens, power=True)  # |C|^2 [B, T_max, cqt_bins]
        else:
            c2 = self.cqt(x, normalization_type="librosa").transpose(1, 2).square()  # [B, bins, T'] -> [B, T', bins]
        lap("cqt")
        t = min(t_max, c2.shape[1])
        cqt_db = _db_batch(c2[:, :t], valid[:, :t])  # amplitude_to_db(ref=max) = power_to_db of |C|^2
        out = torch.stack([mfcc[:, :t], mel_db[:, :t], cqt_db], dim=1).transpose(2, 3)  # [B, 3, T, 96] -> [B, 3, 96, T]
        lap("db")
        return out

    def __call__(self, cycles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features of a batch of cycles (float32 [N_i] each) -> list of float32 [3, 96, T_i]."""
        x, lens = self.pad(cycles)
        out = self.batch(x, lens).cpu().numpy()  # [B, 3, 96, T_max] (a transposed view; items copied below)
        return [np.ascontiguousarray(out[i, :, :, : 1 + n // self.cfg.hop_length]) for i, n in enumerate(lens)]


def NnAudioFeaturizer(cfg: FeatureConfig, device: str | torch.device = "cpu") -> BatchedFeaturizer:  # noqa: N802
    """:class:`BatchedFeaturizer` with nnAudio's ``CQT1992v2`` (backend ``"nnaudio"``; kept for comparison)."""
    return BatchedFeaturizer(cfg, device, cqt="nnaudio")


_FEATURIZERS: dict[tuple[str, str], BatchedFeaturizer] = {}


def get_featurizer(cfg: FeatureConfig, device: str | torch.device = "cpu") -> BatchedFeaturizer:
    """A cached :class:`BatchedFeaturizer` for ``cfg.backend`` (``"torch"`` or ``"nnaudio"``)."""
    key = (json.dumps(cfg.spectral_key(), sort_keys=True), str(torch.device(device)))
    if key not in _FEATURIZERS:
        if len(_FEATURIZERS) > 4:
            _FEATURIZERS.clear()
        _FEATURIZERS[key] = BatchedFeaturizer(cfg, device, cqt="nnaudio" if cfg.backend == "nnaudio" else "fft")
    return _FEATURIZERS[key]


def compute_features(
    cycles: Sequence[np.ndarray],
    cfg: FeatureConfig,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    progress: bool = False,
) -> list[np.ndarray]:
    """Features of many cycles with ``cfg.backend`` -> list of float32 [3, 96, T_i]."""
    from tqdm.auto import tqdm

    check_cqt(cfg)
    if cfg.backend == "librosa":
        return [librosa_features(c, cfg) for c in tqdm(cycles, desc="features (librosa)", disable=not progress)]
    fz = get_featurizer(cfg, device)
    # sort by length so that padding inside a batch stays small
    order = sorted(range(len(cycles)), key=lambda i: len(cycles[i]))
    out: list[np.ndarray | None] = [None] * len(cycles)
    for s in tqdm(range(0, len(order), batch_size), desc=f"features ({cfg.backend})", disable=not progress):
        idx = order[s : s + batch_size]
        for i, f in zip(idx, fz([cycles[i] for i in idx])):
            out[i] = f
    return out  # type: ignore[return-value]


def to_image(feat: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Resize [3, 96, T] (or [B, 3, 96, T]) features to ``image_size`` squared and normalise -> float32 tensor.

    Faithful: bilinear resize (as ``T.Resize``, antialiased) then ImageNet mean/std applied to the dB values (code).
    Clean: mel/CQT dB in [-80, 0] mapped to [-1, 1]; MFCC standardised per cycle (``mfcc_norm="cycle"``: one
    mean/std over the image, which the 0th coefficient dominates) or per coefficient over time before the resize
    (``mfcc_norm="coefficient"``, cepstral mean and variance normalisation).
    """
    x = torch.as_tensor(feat, dtype=torch.float32)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)  # [3, F, T] -> [1, 3, F, T]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected features [3, F, T] or [B, 3, F, T], got {tuple(x.shape)}")
    s = cfg.image_size
    if cfg.mode == "clean" and cfg.mfcc_norm == "coefficient":
        mfcc = x[:, :1]  # [B, 1, n_mfcc, T]: each coefficient's track standardised over time
        mfcc = (mfcc - mfcc.mean(dim=3, keepdim=True)) / mfcc.std(dim=3, keepdim=True).clamp_min(1e-3)
        x = torch.cat([mfcc, x[:, 1:]], dim=1)
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)  # [B, 3, S, S]
    if cfg.mode == "faithful":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    else:
        mfcc = x[:, :1]
        if cfg.mfcc_norm == "cycle":
            mu = mfcc.mean(dim=(2, 3), keepdim=True)
            sd = mfcc.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
            mfcc = (mfcc - mu) / sd
        x = torch.cat([mfcc, x[:, 1:] / 40.0 + 1.0], dim=1)  # [B, 1+2, S, S]
    return x[0] if squeeze else x


def feature_key(cfg: FeatureConfig) -> str:
    """16-hex-digit hash of the settings that change the pre-resize features (and the package's feature code)."""
    blob = json.dumps({"v": 1, **cfg.spectral_key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureCache:
    """On-disk cache of per-recording features: ``root/<feature_key>/<stem>.npz`` with one array per cycle.

    A recording's entry also stores its cycles' (start, end) and the wav file's size and mtime, so an edited
    annotation or audio file is recomputed.
    """

    def __init__(self, root: str | Path, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.dir = Path(root) / feature_key(cfg)

    def _path(self, stem: str) -> Path:
        return self.dir / f"{stem}.npz"

    @staticmethod
    def _fingerprint(wav: Path, spans: np.ndarray) -> np.ndarray:
        st = wav.stat()
        return np.concatenate([[st.st_size, st.st_mtime_ns % (1 << 52)], spans.ravel()]).astype(np.float64)

    def get(self, stem: str, wav: Path, spans: np.ndarray) -> list[np.ndarray] | None:
        p = self._path(stem)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                if not np.array_equal(z["fingerprint"], self._fingerprint(wav, spans)):
                    return None
                return [z[f"c{i}"] for i in range(int(z["n"]))]
        except Exception:  # a corrupt cache entry is recomputed
            return None

    def put(self, stem: str, wav: Path, spans: np.ndarray, feats: Sequence[np.ndarray]) -> None:
        from medshared.runtime import atomic_path

        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"c{i}": f.astype(np.float16) for i, f in enumerate(feats)}
        with atomic_path(self._path(stem)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, n=len(feats), fingerprint=self._fingerprint(wav, spans), **arrays)
        meta = self.dir / "settings.json"
        if not meta.exists():
            from medshared.runtime import atomic_write_json

            atomic_write_json(meta, self.cfg.spectral_key())
