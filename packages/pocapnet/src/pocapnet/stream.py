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
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pocapnet.config import FeatureConfig
from pocapnet.features import AudioExtractor, XrayExtractor
from pocapnet.model import AvgResBlock, DelayedMemory, PoCaPNet, positional_encoding

__all__ = ["OnlineExtractor", "StreamingPredictor", "IncrementalCausalTCN", "FrozenPoCaPNet"]


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


def _fold_bn(conv: torch.nn.Conv1d, bn: torch.nn.BatchNorm1d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm folded into the preceding convolution: ``(W (Cout, Cin, k), b (Cout,))``."""
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0], device=w.device)
    if bn is None:
        return w, b
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return w * scale[:, None, None], (b - bn.running_mean.float()) * scale + bn.bias.detach().float()


def _taps(w: torch.Tensor) -> torch.Tensor:
    """``(Cout, Cin, k)`` -> ``(k*Cout, Cin)``: one GEMM computes every tap's contribution."""
    return w.permute(2, 0, 1).reshape(-1, w.shape[1]).contiguous()


def _shift_sum(y: torch.Tensor, bias: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """Tap outputs ``y`` ``(k, ..., T)`` -> ``(..., T)``: ``out[..., t] = bias + sum_j y[j, ..., t + offsets[j]]``
    (zero outside ``[0, T)``, i.e. the convolution's zero padding)."""
    T = y.shape[-1]
    assert 0 in offsets, offsets
    out = bias + y[offsets.index(0)]  # (..., T), a new tensor
    for j, o in enumerate(offsets):
        if o == 0 or abs(o) >= T:
            continue
        if o > 0:
            out[..., : T - o] += y[j, ..., o:]
        else:
            out[..., -o:] += y[j, ..., : T + o]
    return out


class FrozenPoCaPNet:
    """Inference-only PoCaPNet for one second at a time: BatchNorm folded, every convolution one GEMM.

    The per-second path (branches + fusion + linear) and the MS-TCN are re-expressed as matrix products on
    ``(channels, length)`` tensors (a k=3 convolution is one ``(3*Cout, Cin) @ (Cin, L)`` product plus two shifted
    adds), which removes most of the per-op overhead of ~150 small ``conv1d``/``BatchNorm`` calls per second. With
    ``bf16=True`` the three audio branches (95 % of the per-second FLOPs) run on weights cast once to bf16 (AMX /
    AVX512-BF16); the rest stays fp32. Same result as :class:`~pocapnet.model.PoCaPNet` in eval mode up to rounding
    (tests; ``bench/stream.py`` measures the bf16 agreement).

    Args:
        model: a trained model (its eval-mode statistics are folded, later changes to it are not seen).
        bf16: run the audio branches in bf16.
    """

    def __init__(self, model: PoCaPNet, bf16: bool = False) -> None:
        self.cfg = model.cfg
        self.bf16 = bf16
        dev = next(model.parameters()).device
        adt = torch.bfloat16 if bf16 else torch.float32
        self.audio = self._branches(model.audio, adt, dev)
        self.visual = self._avg(model.visual, dev)
        self.fusion = self._avg(model.audio_fusion, dev)
        self.linear_w = model.linear.weight.detach().float()  # (H, Di + Da)
        self.linear_b = model.linear.bias.detach().float()
        stages = [model.tcn.stage1, *model.tcn.stages]
        pad = "causal" if self.cfg.causal_conv else "same"
        self.stages = []
        for st in stages:
            layers = []
            for la in st.layers:
                d = la.dilation
                offs = (-2 * d, -d, 0) if pad == "causal" else (-d, 0, d)
                w, b = _fold_bn(la.conv_dilated, None)
                w1, b1 = _fold_bn(la.conv_1x1, None)
                layers.append((_taps(w), b, offs, w1[:, :, 0], b1))
            w_in, b_in = _fold_bn(st.conv_1x1, None)
            w_out, b_out = _fold_bn(st.conv_out, None)
            self.stages.append((w_in[:, :, 0], b_in, layers, w_out[:, :, 0], b_out))

    @staticmethod
    def _branches(branches: torch.nn.ModuleList, dtype: torch.dtype, dev: torch.device) -> tuple:
        """The microphones' branches stacked on a leading axis ``M`` (one batched GEMM per layer for all three)."""
        stems = [_fold_bn(br.stem[0], br.stem[1]) for br in branches]
        stem_w = torch.stack([w[:, :, 0] for w, _ in stems]).to(dev, dtype)  # (M, C0, F)
        stem_b = torch.stack([b[:, None] for _, b in stems]).to(dev, dtype)  # (M, C0, 1)
        blocks = []
        for blks in zip(*[br.blocks for br in branches], strict=True):
            first, b1, w2, b2 = [], [], [], []
            for blk in blks:
                w1_, b1_ = _fold_bn(blk.conv1, blk.bn1)
                wsc, bsc = _fold_bn(blk.shortcut, None)
                w2_, b2_ = _fold_bn(blk.conv2, blk.bn2)
                first.append(torch.cat([_taps(w1_), wsc[:, :, 0]]))  # (4*Cout, Cin): conv1 taps, then the shortcut
                b1.append(b1_[:, None])
                w2.append(_taps(w2_))
                b2.append((b2_ + bsc)[:, None])  # the shortcut's bias joins conv2's (both added before the ReLU)
            blocks.append(tuple(torch.stack(t).to(dev, dtype) for t in (first, b1, w2, b2)))
        return stem_w, stem_b, blocks

    @staticmethod
    def _avg(blk: AvgResBlock, dev: torch.device) -> list:
        pairs = []
        for conv1, bn1, conv2, bn2 in blk.pairs:
            w1, b1 = _fold_bn(conv1, bn1)
            w2, b2 = _fold_bn(conv2, bn2)
            pairs.append((_taps(w1).to(dev), b1.to(dev), _taps(w2).to(dev), b2.to(dev)))
        return pairs

    @staticmethod
    def _run_avg(pairs: list, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(C, L)`` -> ``(L,)`` (AvgResBlock: residual pairs, then the mean over channels)."""
        for w1, b1, w2, b2 in pairs:
            c = x.shape[0]
            y = torch.relu(_shift_sum((w1 @ x).view(3, c, -1), b1[:, None], (-1, 0, 1)))
            y = _shift_sum((w2 @ y).view(3, c, -1), b2[:, None], (-1, 0, 1))
            x = torch.relu(x + y)
        return x.mean(0)

    def _run_branches(self, x: torch.Tensor) -> torch.Tensor:
        """All microphones at once: ``(M, F, Da)`` -> ``(M, Da)``."""
        stem_w, stem_b, blocks = self.audio
        h = torch.relu(torch.baddbmm(stem_b, stem_w, x))  # stem: (M, C0, F) @ (M, F, Da) -> (M, C0, Da)
        for first, b1, w2, b2 in blocks:
            m, c4, L = first.shape[0], first.shape[1], h.shape[-1]
            y = torch.bmm(first, h).view(m, 4, c4 // 4, L).transpose(0, 1)  # (4, M, Cout, Da): conv1 taps + shortcut
            z = torch.relu(_shift_sum(y[:3], b1, (-1, 0, 1)))  # (M, Cout, Da)
            z = _shift_sum(torch.bmm(w2, z).view(m, 3, c4 // 4, L).transpose(0, 1), b2, (-1, 0, 1))
            h = torch.relu(z + y[3])
        return h.float().mean(1)  # (M, C_last, Da) -> (M, Da)

    @torch.no_grad()
    def features(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """One second: images ``(7, Di)``, audio ``(3, F, Da)`` -> ``(H,)`` (= ``PoCaPNet.forward_features``)."""
        dt = torch.bfloat16 if self.bf16 else torch.float32
        v = self._run_avg(self.visual, images.float())  # (7, Di) -> (Di,)
        a = self._run_branches(audio.to(dt))  # (M, F, Da) -> (M, Da)
        a = self._run_avg(self.fusion, a)  # (M, Da) -> (Da,)
        x = torch.cat([v, a])  # (Di + Da,)
        return F.leaky_relu(torch.addmv(self.linear_b, self.linear_w, x), self.cfg.leaky_slope)

    def stage1_input(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1's 1x1 input convolution of one second's ``(H,)`` vector -> ``(f_maps,)`` (pointwise in time,
        so a streaming caller computes it once per second and keeps the column)."""
        w, b = self.stages[0][0], self.stages[0][1]
        return torch.addmv(b, w, x)

    @torch.no_grad()
    def temporal(self, h0: torch.Tensor) -> torch.Tensor:
        """MS-TCN over a chunk from stage 1's input-conv output ``(f_maps, T)`` -> last stage logits ``(C, T)``."""
        out = None
        for s, (w_in, b_in, layers, w_out, b_out) in enumerate(self.stages):
            h = h0 if s == 0 else torch.addmm(b_in[:, None], w_in, torch.softmax(out, 0))
            for wt, b, offs, w1, b1 in layers:
                y = torch.relu(_shift_sum((wt @ h).view(3, h.shape[0], -1), b[:, None], offs))
                h = h + torch.addmm(b1[:, None], w1, y)
            out = torch.addmm(b_out[:, None], w_out, h)
        assert out is not None
        return out

    def new_chunk_cache(self, capacity: int) -> dict:
        """Per-chunk buffers for :meth:`temporal_step`: the ``(f_maps, capacity)`` inputs of every layer that a later
        second can reuse. An input whose positions always all change (its cumulative reach, the sum of the
        preceding layers' right offsets, is at least ``capacity - 1``: stage 1's last layers and all of stage 2 for
        the paper's 512-s chunks) is not stored."""
        f = self.stages[0][0].shape[0]
        dev = self.linear_w.device
        reach, h = 0, []
        for _, _, layers, _, _ in self.stages:
            bufs = []
            for i in range(len(layers) + 1):
                bufs.append(torch.zeros(f, capacity, device=dev) if reach < capacity - 1 else None)
                if i < len(layers):
                    reach += max(layers[i][2])
            h.append(bufs)
        return {"n": 0, "h": h}

    @staticmethod
    def _put(buf: torch.Tensor | None, new: torch.Tensor, c: int, T: int) -> torch.Tensor:
        """Store the changed columns ``[c, T)`` and return the layer input over ``[0, T)``."""
        if buf is None:  # never reused: every column changed
            assert c == 0, c
            return new
        buf[:, c:T] = new
        return buf[:, :T]

    @torch.no_grad()
    def fill_chunk_cache(self, h0: torch.Tensor, capacity: int) -> dict:
        """A :meth:`new_chunk_cache` holding the chunk ``h0`` ``(f_maps, n)`` (full forward, layer inputs kept)."""
        cache = self.new_chunk_cache(capacity)
        n = h0.shape[1]
        out = None
        for s, (w_in, b_in, layers, w_out, b_out) in enumerate(self.stages):
            h = h0 if s == 0 else torch.addmm(b_in[:, None], w_in, torch.softmax(out, 0))
            bufs = cache["h"][s]
            for i, (wt, b, offs, w1, b1) in enumerate(layers):
                if bufs[i] is not None:
                    bufs[i][:, :n] = h
                y = torch.relu(_shift_sum((wt @ h).view(3, h.shape[0], -1), b[:, None], offs))
                h = h + torch.addmm(b1[:, None], w1, y)
            if bufs[-1] is not None:
                bufs[-1][:, :n] = h
            out = torch.addmm(b_out[:, None], w_out, h)
        cache["n"] = n
        return cache

    @torch.no_grad()
    def temporal_step(self, cache: dict, h0_col: torch.Tensor) -> torch.Tensor:
        """Append one second to the chunk and return its last-stage logits ``(C,)`` (= ``temporal(...)[:, -1]``).

        Only what the new second changes is recomputed: a dilated layer's output at position ``p`` depends on
        inputs ``p + offsets``, so when the layer's inputs changed from position ``c`` on, its outputs change from
        ``c - max(offsets)`` on (``c - d`` for the paper's acausal layers: the right zero padding of the chunk end
        became data). Layer ``l`` of stage 1 thus recomputes about ``3 * 2**l`` columns instead of the whole chunk;
        stage 2 sees stage 1's last layer changed everywhere (receptive field 1023 > 512) and is recomputed whole.
        Unchanged columns come from the cache.
        """
        n = cache["n"]
        T = n + 1
        c = n  # first position whose input changed
        out = None
        for s, (w_in, b_in, layers, w_out, b_out) in enumerate(self.stages):
            bufs = cache["h"][s]
            new = h0_col[:, None] if s == 0 else torch.addmm(b_in[:, None], w_in, torch.softmax(out, 0))  # [c, T)
            cur = self._put(bufs[0], new, c, T)  # (f, T)
            for i, (wt, b, offs, w1, b1) in enumerate(layers):
                c_new = max(0, c - max(offs))  # first output that changes
                lo = max(0, c_new + min(offs))  # first input those outputs read
                x = cur[:, lo:T]  # (f, T - lo)
                y = torch.relu(_shift_sum((wt @ x).view(3, x.shape[0], -1), b[:, None], offs))
                k = c_new - lo  # slice columns before c_new saw a false left edge: dropped
                cur = self._put(bufs[i + 1], x[:, k:] + torch.addmm(b1[:, None], w1, y[:, k:]), c_new, T)
                c = c_new
            out = torch.addmm(b_out[:, None], w_out, cur[:, c:T])  # (C, T - c)
        cache["n"] = T
        assert out is not None
        return out[:, -1]


class StreamingPredictor:
    """Per-second PoCaPNet inference with the delayed-estimation memory carried across chunks."""

    def __init__(self, model: PoCaPNet, batch_size: int, device: str | torch.device = "cpu", fast: bool = True,
                 bf16: bool = False) -> None:
        """
        Args:
            model: trained PoCaPNet (put in eval mode).
            batch_size: chunk length in seconds (the training batch size).
            fast: use :class:`FrozenPoCaPNet` (folded BatchNorm, GEMM convolutions, stage-1 input conv cached per
                second); False runs the ``nn.Module`` layers (the reference).
            bf16: with ``fast``, run the audio branches in bf16.
        """
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.frozen = FrozenPoCaPNet(self.model, bf16=bf16) if fast else None
        self.reset()

    def reset(self) -> None:
        """Start a new operation: zero memory, empty buffers."""
        self.memory = DelayedMemory(self.model.cfg.hidden_dim, self.device)
        self.images: deque[torch.Tensor] = deque(maxlen=self.model.cfg.num_images)
        self.chunk: list[torch.Tensor] = []  # fused (H,) vectors of the current chunk
        self.tcn_cache: dict | None = None  # fast acausal path: per-layer columns of the chunk so far
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
        images = torch.stack(list(self.images))  # (7, Di)
        if self.frozen is not None:
            fused = self.frozen.features(images, audio_feat.to(self.device))  # (H,)
        else:
            fused = self.model.forward_features(images[None], audio_feat.to(self.device)[None])[0]  # (H,)
        self.chunk.append(fused)
        hist = self.memory.vector if self.model.cfg.delayed_estimation else None
        x = fused
        if self.model.cfg.positional_encoding:
            x = x + positional_encoding(torch.tensor([self.t], device=self.device), x.numel())[0]
        if hist is not None:
            x = x + hist
        if self.incremental is not None:  # causal TCN: O(layers) per second, same result as the chunk forward
            logits = self.incremental.step(x)
        elif self.frozen is not None:  # acausal TCN (paper): only the columns the new second changes
            if self.tcn_cache is None:
                self.tcn_cache = self.frozen.new_chunk_cache(self.batch_size)
            logits = self.frozen.temporal_step(self.tcn_cache, self.frozen.stage1_input(x))  # (C,)
        else:  # acausal TCN, reference path: re-run the MS-TCN over the chunk so far
            start = self.t - len(self.chunk) + 1
            pos = torch.arange(start, self.t + 1, device=self.device)
            logits = self.model.forward_temporal(torch.stack(self.chunk), pos, hist)[-1, -1]  # (S, n, C) -> (C,)
        pred = int(logits.argmax())
        self.chunk_preds.append(pred)
        self.t += 1
        if len(self.chunk) == self.batch_size:  # chunk complete: push its predictions into the memory
            self.memory.update(torch.tensor(self.chunk_preds, device=self.device))
            self.chunk, self.chunk_preds, self.tcn_cache = [], [], None
            if self.incremental is not None:
                self.incremental.reset()
        return pred, torch.softmax(logits.float(), 0).cpu().numpy()
