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
the code; clean: dB rescaled to [-1, 1], MFCC standardised). :class:`FeatureCache` (in :mod:`lungcvt.feature_cache`,
re-exported here) stores the pre-resize features on disk, keyed by a hash of the settings that change them.

Shapes: audio float32 [N] at ``sample_rate``; features float32 [3, 96, T] with T = 1 + N // hop_length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import torch

from lungcvt.band_norm import band_normalise
from lungcvt.config import FeatureConfig
from lungcvt.cqt import FFTCQT, frames
from lungcvt.data import DataError
from lungcvt.feature_cache import FeatureCache, feature_key
from lungcvt.images import IMAGENET_MEAN, IMAGENET_STD, batch_to_image, to_image

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
    "band_normalise",
    "to_image",
    "batch_to_image",
    "FeatureCache",
    "feature_key",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


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
        y=y,
        sr=sr,
        n_mfcc=cfg.n_mfcc,
        hop_length=hop,
        n_fft=n_fft,
        htk=True,
        n_mels=cfg.effective_mfcc_n_mels,
        window=cfg.window,
        fmax=cfg.fmax,
    )
    if cfg.mode == "faithful":
        mfcc = librosa.power_to_db(mfcc, ref=np.max)  # the code's step: negative MFCCs fall to the -80 dB floor
    mel = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=y,
            sr=sr,
            n_fft=n_fft,
            hop_length=hop,
            n_mels=cfg.n_mels,
            window=cfg.window,
            htk=cfg.mel_htk,
            fmax=cfg.fmax,
        ),
        ref=np.max,
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
        # periodic windows = scipy's get_window(..., fftbins=True), as librosa's stft
        win = torch.hann_window if cfg.window == "hann" else torch.hamming_window
        self.window = win(n_fft, periodic=True, device=self.device)
        mel_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.n_mels, htk=cfg.mel_htk, fmax=cfg.fmax)
        mfcc_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.effective_mfcc_n_mels, htk=True, fmax=cfg.fmax)
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
        spec = torch.fft.rfft(frames(x, cfg.n_fft, cfg.hop_length, t_max) * self.window)  # [B, T, 1 + n_fft/2]
        sq = torch.view_as_real(spec).square()  # [B, T, F, 2] (re^2, im^2)
        power = sq[..., 0] + sq[..., 1]  # |X|^2 [B, T, F] (faster than abs() or a sum over the last axis)
        lap("stft")
        own = torch.tensor([1 + n // cfg.hop_length for n in lens], device=x.device)  # frames per item, on x's device
        valid = (torch.arange(t_max, device=x.device) < own[:, None])[:, :, None]  # [B, T, 1]
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
    """Features of many cycles with ``cfg.backend`` -> list of float32 [3, 96, T_i].

    With ``cfg.band_norm="recording"`` the cycles must be one recording's (both callers pass one recording at a
    time): :func:`band_normalise` is applied over them.
    """
    out = _compute_features(cycles, cfg, device, batch_size, progress)
    return band_normalise(out) if cfg.band_norm == "recording" else out


def _compute_features(
    cycles: Sequence[np.ndarray],
    cfg: FeatureConfig,
    device: str | torch.device,
    batch_size: int,
    progress: bool,
) -> list[np.ndarray]:
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
