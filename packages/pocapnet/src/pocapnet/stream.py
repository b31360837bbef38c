"""Streaming inference: one phase estimate per second using only the past (the intended operating-room use).

:class:`OnlineExtractor` turns each new second of the three audio channels plus the new X-ray frame into the same
features the offline extractor computes (the 7 s causal window ends with the new second).
:class:`StreamingPredictor` keeps the 7-frame image window, the fused per-second vectors of the current chunk and
the delayed-estimation memory of the previous chunks. Second ``t`` of chunk ``k`` is predicted from seconds
``[k*B, t]`` of that chunk plus the memory, so with ``causal_conv=True`` streaming reproduces the offline
predictions exactly; with the paper's acausal TCN the offline run also sees the rest of the chunk (the future).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from pocapnet.config import FeatureConfig
from pocapnet.features import AudioExtractor, XrayExtractor
from pocapnet.model import DelayedMemory, PoCaPNet

__all__ = ["OnlineExtractor", "StreamingPredictor"]


class OnlineExtractor:
    """Causal per-second feature extraction from a live feed (same result as the offline windows)."""

    def __init__(self, audio: AudioExtractor, xray: XrayExtractor, cfg: FeatureConfig, num_mics: int = 3) -> None:
        self.audio, self.xray, self.cfg = audio, xray, cfg
        self.win = cfg.window_s * cfg.sample_rate
        self.hann = np.hanning(self.win).astype(np.float32)
        self.num_mics = num_mics
        self.reset()

    def reset(self) -> None:
        """Start a new operation (zero history, as the offline left padding)."""
        self.buf = np.zeros((self.num_mics, self.win), dtype=np.float32)
        self.last = None

    def step(self, samples: np.ndarray, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One second: ``samples`` ``(3, sr)`` float32 and a grey frame -> ``(Di,)``, ``(3, F, Da)``."""
        sr = self.cfg.sample_rate
        if samples.shape != (self.num_mics, sr):
            raise ValueError(f"expected one second of audio per channel, shape ({self.num_mics}, {sr}), "
                             f"got {samples.shape}")
        x = samples.astype(np.float32)
        prev = x[:, :1] if self.last is None else self.last[:, None]
        y = x - self.cfg.pre_emphasis * np.concatenate([prev, x[:, :-1]], axis=1)  # pre-emphasis across seconds
        if self.last is None:
            y[:, 0] = x[:, 0]
        self.last = x[:, -1].copy()
        self.buf = np.concatenate([self.buf[:, sr:], y], axis=1)  # keep the last 7 s
        aud = self.audio(self.buf * self.hann[None, :])  # (3, F, Da)
        img = self.xray([frame])[0]  # (Di,)
        return img, aud


class StreamingPredictor:
    """Per-second PoCaPNet inference with the delayed-estimation memory carried across chunks."""

    def __init__(self, model: PoCaPNet, batch_size: int, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Start a new operation: zero memory, empty buffers."""
        self.memory = DelayedMemory(self.model.cfg.hidden_dim, self.device)
        self.images: deque[torch.Tensor] = deque(maxlen=self.model.cfg.num_images)
        self.chunk: list[torch.Tensor] = []
        self.chunk_preds: list[int] = []
        self.t = 0

    @torch.no_grad()
    def step(self, image_feat: torch.Tensor, audio_feat: torch.Tensor) -> tuple[int, np.ndarray]:
        """Add second ``t``: image ``(Di,)`` and audio ``(3, F, Da)`` features -> (phase index, probabilities)."""
        img = image_feat.to(self.device).float()
        if not self.images:
            self.images.extend([img] * self.model.cfg.num_images)  # repeat frame 0 at the start (code)
        else:
            self.images.append(img)
        images = torch.stack(list(self.images))[None]  # (1, 7, Di)
        fused = self.model.forward_features(images, audio_feat.to(self.device)[None])  # (1, H)
        self.chunk.append(fused[0])
        start = self.t - len(self.chunk) + 1
        pos = torch.arange(start, self.t + 1, device=self.device)
        hist = self.memory.vector if self.model.cfg.delayed_estimation else None
        logits = self.model.forward_temporal(torch.stack(self.chunk), pos, hist)[-1, -1]  # (S, n, C) -> (C,)
        pred = int(logits.argmax())
        self.chunk_preds.append(pred)
        self.t += 1
        if len(self.chunk) == self.batch_size:  # chunk complete: push its predictions into the memory
            self.memory.update(torch.tensor(self.chunk_preds, device=self.device))
            self.chunk, self.chunk_preds = [], []
        return pred, torch.softmax(logits.float(), 0).cpu().numpy()
