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
from pocapnet.model import DelayedMemory, PoCaPNet, positional_encoding

__all__ = ["OnlineExtractor", "StreamingPredictor", "IncrementalCausalTCN"]


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


class IncrementalCausalTCN:
    """Step-by-step evaluation of a causal :class:`~pocapnet.model.MultiStageTCN` (O(layers) per second).

    Each dilated layer keeps its last ``2 * dilation + 1`` inputs, so the output for the newest second equals the
    last column of the full causal forward over the chunk so far (zero history at the chunk start).
    """

    def __init__(self, tcn: torch.nn.Module) -> None:
        self.stages = [tcn.stage1, *tcn.stages]
        self.reset()

    def reset(self) -> None:
        """Start a new chunk (the offline model zero-pads each chunk's start)."""
        self.buffers = [[deque(maxlen=2 * layer.dilation + 1) for layer in st.layers] for st in self.stages]

    @staticmethod
    def _conv1x1(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return conv.weight[:, :, 0] @ x + conv.bias  # (Cout, Cin) @ (Cin,) -> (Cout,)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(dim,)`` input of the newest second -> ``(C,)`` logits of the last stage."""
        out = x
        for s, (stage, bufs) in enumerate(zip(self.stages, self.buffers, strict=True)):
            h = self._conv1x1(stage.conv_1x1, out if s == 0 else torch.softmax(out, 0))
            for layer, buf in zip(stage.layers, bufs, strict=True):
                buf.append(h)
                d = layer.dilation
                taps = [buf[-1 - k * d] if len(buf) > k * d else torch.zeros_like(h) for k in (2, 1, 0)]
                w = layer.conv_dilated.weight  # (C, C, 3): taps at t-2d, t-d, t
                y = torch.relu(sum(w[:, :, j] @ taps[j] for j in range(3)) + layer.conv_dilated.bias)
                h = h + self._conv1x1(layer.conv_1x1, y)
            out = self._conv1x1(stage.conv_out, h)
        return out


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
        self.incremental = IncrementalCausalTCN(self.model.tcn) if self.model.cfg.causal_conv else None

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
        hist = self.memory.vector if self.model.cfg.delayed_estimation else None
        if self.incremental is not None:  # causal TCN: O(layers) per second, same result as the chunk forward
            x = fused[0]
            if self.model.cfg.positional_encoding:
                x = x + positional_encoding(torch.tensor([self.t], device=self.device), x.numel())[0]
            if hist is not None:
                x = x + hist
            logits = self.incremental.step(x)
        else:  # acausal TCN (paper): re-run the MS-TCN over the chunk so far
            start = self.t - len(self.chunk) + 1
            pos = torch.arange(start, self.t + 1, device=self.device)
            logits = self.model.forward_temporal(torch.stack(self.chunk), pos, hist)[-1, -1]  # (S, n, C) -> (C,)
        pred = int(logits.argmax())
        self.chunk_preds.append(pred)
        self.t += 1
        if len(self.chunk) == self.batch_size:  # chunk complete: push its predictions into the memory
            self.memory.update(torch.tensor(self.chunk_preds, device=self.device))
            self.chunk, self.chunk_preds = [], []
            if self.incremental is not None:
                self.incremental.reset()
        return pred, torch.softmax(logits.float(), 0).cpu().numpy()
