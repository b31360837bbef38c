"""Cycles with their features, the training dataset and batched inference.

Features are computed per recording (or read from :class:`~lungcvt.features.FeatureCache`) and kept pre-resize as
float16 [3, 96, T_i] (what the cache stores). A :class:`CycleDataset` item is that map (optionally rolled in time);
:func:`~lungcvt.images.collate_cycles` pads a batch and :func:`~lungcvt.images.batch_to_image` resizes it on the
training device. Augmentation draws from torch's global RNG, which DataLoader workers seed per worker and per epoch
from the loader's generator (never from a generator object held by the dataset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lungcvt.config import FeatureConfig
from lungcvt.data import Recording, check_cycles_within, load_audio
from lungcvt.features import FeatureCache, check_cqt, compute_features
from lungcvt.images import batch_to_image, collate_cycles, collate_images, to_image

__all__ = ["CycleSet", "extract_cycles", "load_recording_audio", "CycleDataset", "make_loader", "predict_logits"]


@dataclass
class CycleSet:
    """Cycles with their pre-resize features (float16 [3, 96, T_i]) and metadata."""

    feats: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    patients: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int = 4) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=int), minlength=n_classes).tolist()

    def subset(self, idx: Sequence[int]) -> CycleSet:
        """The cycles at ``idx``, in that order (metadata lists left empty stay empty)."""
        cols = [getattr(self, f) for f in self.__dataclass_fields__]
        return CycleSet(*[[col[i] for i in idx] if col else [] for col in cols])


def load_recording_audio(wav: str | Path, cfg: FeatureConfig) -> tuple[np.ndarray, int]:
    """A recording at ``cfg.sample_rate`` with the feature settings' channel and band-limit policies."""
    return load_audio(wav, cfg.sample_rate, channels=cfg.channels, band_limit_hz=cfg.band_limit_hz)


def cut_cycles(audio: np.ndarray, sr: int, spans: Sequence[tuple[float, float]]) -> list[np.ndarray]:
    """Audio of each (start, end) span in seconds (at least one sample each)."""
    out = []
    for s, e in spans:
        a = int(round(s * sr))
        out.append(audio[a : max(int(round(e * sr)), a + 1)])
    return out


def extract_cycles(
    recordings: Sequence[Recording],
    cfg: FeatureConfig,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CycleSet:
    """Load each recording, cut its cycles and compute (or fetch cached) features; one recording's decoded audio is
    held at a time, and with ``cache_dir`` each finished recording is cached, so an interrupted run resumes there.

    Raises:
        DataError: unreadable audio, a cycle beyond the end of its audio; FeatureError: CQT above Nyquist.
    """
    from tqdm.auto import tqdm

    check_cqt(cfg)
    cache = FeatureCache(cache_dir, cfg) if cache_dir is not None else None
    out = CycleSet()
    for rec in tqdm(recordings, desc="recordings", disable=not progress, leave=False):
        spans = np.array([[c.start, c.end] for c in rec.cycles], dtype=np.float64)
        feats = cache.get(rec.stem, rec.wav, spans) if cache else None
        if feats is None:
            audio, sr = load_recording_audio(rec.wav, cfg)
            cycles = check_cycles_within(rec, len(audio) / sr)
            feats = compute_features(cut_cycles(audio, sr, [(c.start, c.end) for c in cycles]), cfg, device=device)
            del audio  # one recording's decoded audio in memory at a time (not two while the next one loads)
            if cache:
                cache.put(rec.stem, rec.wav, spans, feats)
        for c, f in zip(rec.cycles, feats):
            out.feats.append(f.astype(np.float16))
            out.labels.append(c.label)
            out.stems.append(rec.stem)
            out.starts.append(c.start)
            out.ends.append(c.end)
            out.patients.append(rec.info.patient)
            out.devices.append(rec.info.device)
    return out


class CycleDataset(Dataset):
    """Item -> (pre-resize features float16 [3, F, T_i], int label), or with ``image_cfg`` the resized, normalised
    image float32 [3, S, S] (``to_image`` in the DataLoader worker: the cheaper place on a CPU with workers).

    Args:
        cycles: the cycles.
        time_roll: training augmentation: rotate the cycle by a random number of frames, drawn from torch's global
            RNG (per worker and per epoch in DataLoader workers; events keep their shape and pitch).
        image_cfg: resize and normalise each item with these settings (default: leave it to ``batch_to_image``).
        augment: a map [3, F, T] -> [3, F, T] applied to each item before the roll (e.g.
            :class:`lungcvt.device_aug.DeviceAugment`; drawing from torch's global RNG).
    """

    def __init__(
        self,
        cycles: CycleSet,
        time_roll: bool = False,
        image_cfg: FeatureConfig | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.cycles, self.time_roll, self.image_cfg, self.augment = cycles, time_roll, image_cfg, augment

    def __len__(self) -> int:
        return len(self.cycles)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = torch.from_numpy(self.cycles.feats[i])  # [3, F, T]
        if self.augment is not None:
            f = self.augment(f)
        if self.time_roll:
            f = torch.roll(f, int(torch.randint(f.shape[-1], (1,))), dims=-1)
        if self.image_cfg is not None:
            f = to_image(f, self.image_cfg)
        return f, int(self.cycles.labels[i])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with :func:`collate_cycles` (or :func:`collate_images` for a dataset that resizes). Each
    worker's torch (and ``random`` / NumPy) RNG is seeded by torch with ``base_seed + worker_id``, ``base_seed``
    drawn from ``generator`` when an epoch's iterator starts: the augmentation differs per worker and per epoch and
    is reproduced by the generator state saved for resume."""
    images = getattr(dataset, "image_cfg", None) is not None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate_images if images else collate_cycles,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    cycles: CycleSet,
    cfg: FeatureConfig,
    device: torch.device,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Logits [N, C] for every cycle, in order (resize batched on ``device``)."""
    from medshared.runtime import autocast_context
    from tqdm.auto import tqdm

    model.eval()
    # sort by length so that a batch pads little; the output is put back in order
    order = sorted(range(len(cycles)), key=lambda i: cycles.feats[i].shape[-1])
    dl = make_loader(
        CycleDataset(cycles.subset(order)), batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    out = []
    for x, lens, _ in tqdm(dl, desc="predict", disable=not progress, leave=False):
        img = batch_to_image(x.to(device, non_blocking=True), lens, cfg)
        if device.type == "cuda":
            img = img.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, bf16):
            out.append(model(img).float().cpu())
    n_classes = getattr(getattr(model, "cfg", None), "num_classes", 4)
    logits = torch.cat(out).numpy() if out else np.zeros((0, n_classes), dtype=np.float32)
    result = np.empty_like(logits)
    result[order] = logits
    return result
