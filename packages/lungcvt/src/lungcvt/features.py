"""Feature extraction (paper III-A; official ``SoundLoader``): MFCC, mel spectrogram and CQT stacked as 3 x 96 x T.

Two backends compute the same pre-resize features:

- :func:`librosa_features` (reference, one cycle at a time, exactly the librosa calls of the official code);
- :class:`NnAudioFeaturizer` (nnAudio, batched torch on CPU or GPU; cycles of different lengths are zero-padded,
  which is what librosa's ``center=True, pad_mode="constant"`` does at the end anyway, then cropped to T_i).

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


def _power_to_db(s: torch.Tensor, ref: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """librosa.power_to_db for one item (``ref`` a scalar tensor)."""
    out = 10.0 * torch.log10(torch.clamp(s, min=amin)) - 10.0 * torch.log10(torch.clamp(ref.abs(), min=amin))
    return torch.maximum(out, out.max() - top_db)


class NnAudioFeaturizer:
    """Batched features in torch: ``torch.stft`` + librosa's mel filters for the mel and MFCC channels (one STFT
    serves both), nnAudio ``CQT1992v2`` (librosa normalisation) for the CQT channel.

    Args:
        cfg: feature settings (``check_cqt`` is applied first).
        device: torch device for the transforms.
    """

    def __init__(self, cfg: FeatureConfig, device: str | torch.device = "cpu") -> None:
        import librosa
        import scipy.fft
        from nnAudio import features as nf

        check_cqt(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        sr, n_fft = cfg.sample_rate, cfg.n_fft
        self.window = torch.hann_window(n_fft, periodic=True, device=self.device)  # scipy 'hann', fftbins=True
        mel_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.n_mels, htk=False)  # [n_mels, 1 + n_fft/2]
        mfcc_fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.effective_mfcc_n_mels, htk=True)
        self.mel_fb = torch.tensor(mel_fb, dtype=torch.float32, device=self.device)
        self.mfcc_fb = torch.tensor(mfcc_fb, dtype=torch.float32, device=self.device)
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
        m = cfg.effective_mfcc_n_mels
        dct = scipy.fft.dct(np.eye(m), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]  # [n_mfcc, n_mels]
        self.dct = torch.tensor(dct, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def __call__(self, cycles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features of a batch of cycles (float32 [N_i] each) -> list of float32 [3, 96, T_i]."""
        cfg = self.cfg
        ys = [_min_length(prepare_cycle(np.asarray(c, dtype=np.float32), cfg), cfg) for c in cycles]
        n_max = max(len(y) for y in ys)
        x = torch.zeros(len(ys), n_max, device=self.device)  # [B, N_max], zero-padded like librosa's centre pad
        for i, y in enumerate(ys):
            x[i, : len(y)] = torch.from_numpy(y)
        spec = torch.stft(
            x, cfg.n_fft, cfg.hop_length, window=self.window, center=True, pad_mode="constant", return_complex=True
        )  # [B, 1 + n_fft/2, T_max]
        power = spec.real**2 + spec.imag**2
        mel = self.mel_fb @ power  # [n_mels, F] @ [B, F, T] -> [B, n_mels, T_max]
        mmel = self.mfcc_fb @ power  # [B, mfcc_n_mels, T_max]
        cqt = self.cqt(x, normalization_type="librosa")  # [B, cqt_bins, T_max]
        out = []
        for i, y in enumerate(ys):
            t = min(1 + len(y) // cfg.hop_length, mel.shape[-1], cqt.shape[-1])
            m_i = mel[i, :, :t]
            mm_i = mmel[i, :, :t]
            c_i = cqt[i, :, :t]
            # librosa.feature.mfcc: power_to_db(ref=1.0, top_db=80), then DCT-II (ortho) over the mel axis
            mfcc = self.dct @ _power_to_db(mm_i, torch.tensor(1.0, device=self.device))  # [n_mfcc, t]
            if cfg.mode == "faithful":
                mfcc = _power_to_db(mfcc, mfcc.max())
            mel_db = _power_to_db(m_i, m_i.max())
            cqt_db = _power_to_db(c_i**2, c_i.max() ** 2, amin=1e-10)  # amplitude_to_db(ref=max)
            out.append(torch.stack([mfcc, mel_db, cqt_db]).float().cpu().numpy())  # [3, 96, t]
        return out


_FEATURIZERS: dict[tuple[str, str], NnAudioFeaturizer] = {}


def get_featurizer(cfg: FeatureConfig, device: str | torch.device = "cpu") -> NnAudioFeaturizer:
    """A cached :class:`NnAudioFeaturizer` (building the CQT kernels takes seconds)."""
    key = (json.dumps(cfg.spectral_key(), sort_keys=True), str(torch.device(device)))
    if key not in _FEATURIZERS:
        if len(_FEATURIZERS) > 4:
            _FEATURIZERS.clear()
        _FEATURIZERS[key] = NnAudioFeaturizer(cfg, device)
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
    for s in tqdm(range(0, len(order), batch_size), desc="features (nnAudio)", disable=not progress):
        idx = order[s : s + batch_size]
        for i, f in zip(idx, fz([cycles[i] for i in idx])):
            out[i] = f
    return out  # type: ignore[return-value]


def to_image(feat: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Resize [3, 96, T] (or [B, 3, 96, T]) features to ``image_size`` squared and normalise -> float32 tensor.

    Faithful: bilinear resize (as ``T.Resize``, antialiased) then ImageNet mean/std applied to the dB values (code).
    Clean: mel/CQT dB in [-80, 0] mapped to [-1, 1]; MFCC standardised per cycle.
    """
    x = torch.as_tensor(feat, dtype=torch.float32)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)  # [3, F, T] -> [1, 3, F, T]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected features [3, F, T] or [B, 3, F, T], got {tuple(x.shape)}")
    s = cfg.image_size
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)  # [B, 3, S, S]
    if cfg.mode == "faithful":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    else:
        mfcc = x[:, :1]
        mu = mfcc.mean(dim=(2, 3), keepdim=True)
        sd = mfcc.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        x = torch.cat([(mfcc - mu) / sd, x[:, 1:] / 40.0 + 1.0], dim=1)  # [B, 1+2, S, S]
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
