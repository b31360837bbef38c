"""Streaming inference: one phase estimate per second using only the past (the intended operating-room use).

:class:`OnlineExtractor` turns each new second of the audio channels plus the new X-ray frame into the same features
the offline extractor computes (the 7 s causal window ends with the new second). :class:`StreamingPredictor` keeps
the 7-frame image window, the current chunk's MS-TCN inputs and the delayed-estimation memory of the previous
chunks. Second ``t`` of chunk ``k`` is predicted from seconds ``[k*B, t]`` of that chunk plus the memory, so with
``causal_conv=True`` streaming reproduces the offline predictions exactly; with the paper's acausal TCN the offline
run also sees the rest of the chunk (the future), and streaming accuracy is lower (README "Streaming vs offline").

There is one definition of the network, :class:`~pocapnet.model.PoCaPNet`. The fast path is derived from it:
:func:`~pocapnet.model.fold_batchnorm` folds each eval-mode BatchNorm into its convolution (a copy of the same
module, same ``forward``), and :class:`IncrementalMSTCN` evaluates the module's own MS-TCN layers
(``forward_from``) only on the columns a new second changes, and the acausal last stage only on the columns its
newest output reads (``forward_last``).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from pocapnet.config import FeatureConfig
from pocapnet.extractors import AudioExtractor, XrayExtractor
from pocapnet.model import DelayedMemory, MultiStageTCN, PoCaPNet, fold_batchnorm, positional_encoding

__all__ = ["OnlineExtractor", "IncrementalMSTCN", "StreamingPredictor"]


class OnlineExtractor:
    """Causal per-second feature extraction from a live feed (same result as the offline windows).

    Args:
        audio: the wav2vec2 extractor, or None for an X-ray-only model.
        xray: the DenseNet extractor, or None for an audio-only model.
        num_mics: channels per second of audio.
    """

    def __init__(
        self, audio: AudioExtractor | None, xray: XrayExtractor | None, cfg: FeatureConfig, num_mics: int = 3
    ) -> None:
        self.audio, self.xray, self.cfg = audio, xray, cfg
        self.win = cfg.window_s * cfg.sample_rate
        self.hann = np.hanning(self.win).astype(np.float32)
        self.num_mics = num_mics
        self.reset()

    def reset(self) -> None:
        """Start a new operation (zero history, as the offline left padding)."""
        self.buf = np.zeros((self.num_mics, self.win), dtype=np.float32)
        self.last: np.ndarray | None = None

    def step(
        self, samples: np.ndarray | None, frame: np.ndarray | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One second: ``samples`` ``(M, sr)`` float32 and a grey frame -> ``(Di,)``, ``(M, F, Da)`` (None for a
        modality without extractor)."""
        aud = img = None
        if self.audio is not None:
            sr = self.cfg.sample_rate
            if samples is None or samples.shape != (self.num_mics, sr):
                got = None if samples is None else samples.shape
                raise ValueError(f"expected one second of audio per channel, shape ({self.num_mics}, {sr}), got {got}")
            x = samples.astype(np.float32)
            prev = x[:, :1] if self.last is None else self.last[:, None]
            y = x - self.cfg.pre_emphasis * np.concatenate([prev, x[:, :-1]], axis=1)  # pre-emphasis across seconds
            if self.last is None:
                y[:, 0] = x[:, 0]
            self.last = x[:, -1].copy()
            self.buf = np.concatenate([self.buf[:, sr:], y], axis=1)  # keep the last 7 s
            aud = self.audio(self.buf * self.hann[None, :])  # (M, F, Da)
        if self.xray is not None:
            if frame is None:
                raise ValueError("this model reads X-ray frames, but no frame was given for the second")
            img = self.xray([frame])[0]  # (Di,)
        return img, aud


class IncrementalMSTCN:
    """Second-by-second evaluation of a :class:`~pocapnet.model.MultiStageTCN` over a growing chunk.

    ``step(x)`` appends one column and returns the last stage's logits of the new second, equal to the last column
    of the module's forward over the chunk so far. Only what the new second changes is recomputed, with the module's
    own layers: a dilated layer's output at position ``p`` reads inputs ``p - left .. p + right``, so when its inputs
    changed from position ``c`` on, its outputs change from ``c - right`` on (``right = d`` for the paper's acausal
    layers: the chunk end's zero padding became data; 0 for causal layers, which recompute one column per layer).
    Stage-1 layer ``l`` of the acausal TCN thus redoes about ``3 * 2**l`` columns. An acausal last stage sees its
    input changed almost everywhere (stage 1's receptive field 1023 > 512 s), but the estimate reads only its last
    column: it is evaluated column-restricted (:meth:`~pocapnet.tcn._SingleStage.forward_last`: layer ``l`` on
    about ``T / 2**(l + 1)`` columns, about ``T`` in all instead of ``10 T``), and its layers' inputs are not
    cached. A causal last stage changes only at the new column and keeps the cached one-column-per-layer update.

    Args:
        tcn: the (eval-mode) MS-TCN.
        capacity: the chunk length in seconds.
        last_only: evaluate the last stage column-restricted; None (default): when it is acausal. False gives the
            incremental update of every changed column (``bench/stream.py`` measures what the restriction saves).
    """

    def __init__(self, tcn: MultiStageTCN, capacity: int, last_only: bool | None = None) -> None:
        self.stages = [tcn.stage1, *tcn.stages]
        self.capacity = capacity
        # an acausal last stage changes at (nearly) every column: evaluate only what its last column reads
        acausal = any(layer.pad[1] > 0 for layer in self.stages[-1].layers)
        self.last_only = acausal if last_only is None else last_only
        self.reset()

    def reset(self) -> None:
        """Start a new chunk (the offline model zero-pads each chunk's ends)."""
        ref = self.stages[0].conv_1x1.weight
        reach, self.buffers = 0, []
        for st in self.stages:
            bufs: list[torch.Tensor | None] = []
            for i in range(len(st.layers) + 1):
                # not stored: an input whose columns always all change, or a column-restricted last stage's layers
                keep = reach < self.capacity - 1 and not (i > 0 and st is self.stages[-1] and self.last_only)
                bufs.append(ref.new_zeros(1, st.conv_1x1.out_channels, self.capacity) if keep else None)
                if i < len(st.layers):
                    reach += st.layers[i].pad[1]
            self.buffers.append(bufs)
        self.n = 0

    @staticmethod
    def _put(buf: torch.Tensor | None, new: torch.Tensor, c: int, T: int) -> torch.Tensor:
        """Store the changed columns ``[c, T)`` and return the layer input over ``[0, T)``."""
        if buf is None:  # never reused: every column changed
            assert c == 0, c
            return new
        buf[..., c:T] = new
        return buf[..., :T]

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(dim,)`` input of the newest second -> ``(C,)`` logits of the last stage."""
        if self.n >= self.capacity:
            raise ValueError(f"chunk is full ({self.capacity} s); call reset() to start the next chunk")
        T = self.n + 1
        c = self.n  # first position whose input changed
        out = x[None, :, None]  # (1, dim, 1)
        for s, (stage, bufs) in enumerate(zip(self.stages, self.buffers, strict=True)):
            inp = out if s == 0 else torch.softmax(out, dim=1)  # columns [c, T)
            cur = self._put(bufs[0], stage.conv_1x1(inp), c, T)  # (1, f, T); the 1x1 conv is pointwise in time
            if self.last_only and s == len(self.stages) - 1:
                out = stage.forward_last(cur)[..., None]  # (1, C, 1): only the newest column
                break
            for i, layer in enumerate(stage.layers):
                c = max(0, c - layer.pad[1])  # first output that changes
                cur = self._put(bufs[i + 1], layer.forward_from(cur, c), c, T)
            out = stage.conv_out(cur[..., c:T])  # (1, C, T - c)
        self.n = T
        return out[0, :, -1]


class StreamingPredictor:
    """Per-second PoCaPNet inference with the delayed-estimation memory carried across chunks.

    Args:
        model: trained PoCaPNet (put in eval mode).
        batch_size: chunk length in seconds (the training batch size).
        fast: BatchNorm folded into a copy of the model (:func:`~pocapnet.model.fold_batchnorm`) and the incremental
            MS-TCN; False re-runs the module's ``forward_temporal`` over the chunk so far (the reference).
        bf16: with ``fast``, the audio branches of the copy in bf16 (only faster on CPUs with native bf16; measured
            in ``bench/stream.py``).
    """

    def __init__(
        self,
        model: PoCaPNet,
        batch_size: int,
        device: str | torch.device = "cpu",
        fast: bool = True,
        bf16: bool = False,
    ) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.fast = fast
        self.net = fold_batchnorm(self.model, audio_dtype=torch.bfloat16 if bf16 else None) if fast else self.model
        self.reset()

    @property
    def cfg(self):
        return self.model.cfg

    def reset(self) -> None:
        """Start a new operation: zero memory, empty buffers."""
        self.memory = DelayedMemory(self.cfg.hidden_dim, self.device)
        self.images: deque[torch.Tensor] = deque(maxlen=self.cfg.num_images)
        self.chunk: list[torch.Tensor] = []  # MS-TCN inputs of the current chunk (reference path)
        self.chunk_preds: list[int] = []
        self.tcn = IncrementalMSTCN(self.net.tcn, self.batch_size) if self.fast else None
        self.t = 0

    @torch.no_grad()
    def step(self, image_feat: torch.Tensor | None, audio_feat: torch.Tensor | None) -> tuple[int, np.ndarray]:
        """Add second ``t``: image ``(Di,)`` and audio ``(M, F, Da)`` features (None for an absent modality)
        -> (phase index, probabilities ``(C,)``). The one host read per second is the estimate itself."""
        logits = self.logits(image_feat, audio_feat)
        prob = torch.softmax(logits.float(), 0).cpu().numpy()  # the per-second output (one device -> host copy)
        pred = int(prob.argmax())
        self.advance(pred)
        return pred, prob

    @torch.no_grad()
    def logits(self, image_feat: torch.Tensor | None, audio_feat: torch.Tensor | None) -> torch.Tensor:
        """The last stage's logits ``(C,)`` of second ``t`` on the device (no host synchronisation); call
        :meth:`advance` with the estimate afterwards."""
        images = None
        if image_feat is not None and "xray" in self.cfg.modalities:
            img = image_feat.to(self.device).float()
            if not self.images:
                self.images.extend([img] * self.cfg.num_images)  # repeat frame 0 at the start (code)
            else:
                self.images.append(img)
            images = torch.stack(list(self.images))[None]  # (1, 7, Di)
        audio = audio_feat.to(self.device)[None] if audio_feat is not None and "audio" in self.cfg.modalities else None
        fused = self.net.forward_features(images, audio)[0]  # (H,)
        hist = self.memory.vector if self.cfg.delayed_estimation else None
        if self.tcn is not None:
            x = fused
            if self.cfg.positional_encoding:
                x = x + positional_encoding(torch.tensor([self.t], device=self.device), x.numel())[0]
            if hist is not None:
                x = x + hist
            return self.tcn.step(x)
        # reference: re-run the MS-TCN over the chunk so far
        self.chunk.append(fused)
        pos = torch.arange(self.t - len(self.chunk) + 1, self.t + 1, device=self.device)
        return self.model.forward_temporal(torch.stack(self.chunk), pos, hist)[-1, -1]  # (S, n, C) -> (C,)

    def advance(self, pred: int) -> None:
        """Record second ``t``'s estimate; at a chunk's end push the chunk's estimates into the memory."""
        self.chunk_preds.append(pred)
        self.t += 1
        if len(self.chunk_preds) == self.batch_size:  # chunk complete: push its predictions into the memory
            self.memory.update(torch.tensor(self.chunk_preds, device=self.device))
            self.chunk, self.chunk_preds = [], []
            if self.tcn is not None:
                self.tcn.reset()
