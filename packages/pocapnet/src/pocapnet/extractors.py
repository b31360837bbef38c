"""Frozen feature extractors run per 7 s window / per frame (paper §2.2), and the causal windowing around them.

Audio, per channel and second ``t`` (code, brief "Features"): pre-emphasis 0.97, 6 s of zeros on the left, samples
``[sr*t, sr*t + 7*sr)`` of the padded signal times a symmetric Hann window, i.e. the 7 s ending with second ``t``
(causal). The last transformer layer's output is taken by a forward hook on ``encoder.layers[-1]`` (before the
encoder's final LayerNorm, as torchaudio's ``extract_features`` and transformers 5.x ``hidden_states[-1]``; the hook
is the same across transformers versions). All 349 frames are kept (option: mean-pooled).

X-ray: one 1024-d DenseNet ``features2`` vector per frame ([0, 255] -> [-1024, 1024], 224 x 224); the 7-image
window of second ``t`` (frames t-6..t, repeating frame 0 at the start) is assembled when loading, not recomputed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from medshared.runtime import native_bf16
from torch import nn

from pocapnet.config import FeatureConfig

__all__ = [
    "audio_windows",
    "ChannelsLastFeatureEncoder",
    "cast_wav2vec2_bf16",
    "cast_densenet_bf16",
    "native_bf16",
    "AudioExtractor",
    "XrayExtractor",
    "image_windows",
]


def audio_windows(wave: np.ndarray, seconds: np.ndarray | list[int], cfg: FeatureConfig) -> np.ndarray:
    """Causal Hann windows of one channel.

    Args:
        wave: ``(N,)`` float32 at ``cfg.sample_rate``.
        seconds: second indices ``t``; window ``t`` covers original samples ``[sr*(t-6), sr*(t+1))``.

    Returns:
        ``(len(seconds), window_s * sr)`` float32.
    """
    sr, w = cfg.sample_rate, cfg.window_s * cfg.sample_rate
    x = np.asarray(wave, dtype=np.float32)
    y = np.empty_like(x)
    y[:1] = x[:1]
    y[1:] = x[1:] - cfg.pre_emphasis * x[:-1]  # pre-emphasis
    pad = (cfg.window_s - cfg.hop_s) * sr
    y = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(w, np.float32)])  # left pad 6 s (+ right guard)
    hann = np.hanning(w).astype(np.float32)  # symmetric Hann(112000), code: scipy hann(sym=True)
    return np.stack([y[sr * t * cfg.hop_s : sr * t * cfg.hop_s + w] * hann for t in seconds])


class ChannelsLastFeatureEncoder(nn.Module):
    """wav2vec2's convolutional feature encoder ("layer" norm variant, XLSR-53) as unfold + matmul, channels last.

    The same math as transformers' ``Wav2Vec2FeatureEncoder`` (per layer: Conv1d, LayerNorm over channels, GELU),
    computed on ``(B, L, C)`` tensors: each strided convolution is a strided view of its input (``(B, L_out, k*C)``,
    copied once) times a ``(k*C, C_out)`` matrix, and the LayerNorm needs no transposes. In bf16 on an AVX512-BF16 /
    AMX CPU it is about 4x faster than oneDNN's channels-first ``conv1d``, whose layout reorders (``aten::copy_``)
    were 44 % of the bf16 forward's profile (measured, see README "Benchmarks").

    Args:
        encoder: ``model.feature_extractor`` of a ``Wav2Vec2Model`` with ``feat_extract_norm="layer"``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.conv_layers = encoder.conv_layers
        for i, layer in enumerate(self.conv_layers):
            w = layer.conv.weight  # (C_out, C_in, k)
            self.register_buffer(f"w{i}", w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous(), persistent=False)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """True when every conv layer is conv -> LayerNorm -> activation (``feat_extract_norm="layer"``)."""
        layers = getattr(getattr(model, "feature_extractor", None), "conv_layers", [])
        return len(layers) > 0 and all(hasattr(la, "layer_norm") and hasattr(la, "conv") for la in layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` samples -> ``(B, C, L)`` (a transposed view of ``(B, L, C)``, as the HF encoder's output)."""
        h = input_values[:, :, None].contiguous()  # (B, N) -> (B, N, 1)
        for i, layer in enumerate(self.conv_layers):
            k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
            B, L, C = h.shape
            lo = (L - k) // s + 1
            # (B, L, C) -> (B, L_out, k*C): row t holds inputs [s*t, s*t + k) (time-major, as the permuted weight)
            p = h.as_strided((B, lo, k * C), (L * C, s * C, 1), h.storage_offset()).reshape(B * lo, k * C)  # copy
            h = F.linear(p, getattr(self, f"w{i}"), layer.conv.bias).view(B, lo, -1)  # one GEMM -> (B, L_out, C_out)
            h = layer.activation(layer.layer_norm(h))
        return h.transpose(1, 2)  # (B, L, C) -> (B, C, L) view


def cast_wav2vec2_bf16(model: nn.Module) -> nn.Module:
    """A bf16 copy of a wav2vec2 model for inference: weights cast once, fast feature encoder, fused attention.

    Autocast re-casts every weight on every call; a model cast once runs its matmuls on bf16 weights directly
    (AMX / AVX512-BF16 on CPU). The positional convolution's weight norm is folded into a plain weight (it would
    otherwise be recomputed per call), the conv feature encoder is replaced by :class:`ChannelsLastFeatureEncoder`
    where the architecture allows it, and attention uses ``sdpa``. Accuracy against fp32 is measured in
    ``bench/extract.py`` (cosine of the layer-24 features on real German speech and synthetic audio).
    """
    import copy

    from torch.nn.utils import parametrize

    m = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    pos = getattr(getattr(m, "encoder", None), "pos_conv_embed", None)
    conv = getattr(pos, "conv", None)
    if conv is not None and parametrize.is_parametrized(conv, "weight"):
        # a plain Conv1d with the folded weight (remove_parametrizations would edit the class the fp32 model shares)
        plain = nn.Conv1d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            padding=conv.padding[0],
            groups=conv.groups,
            bias=conv.bias is not None,
            dtype=torch.bfloat16,
            device=conv.bias.device,
        )
        with torch.no_grad():
            plain.weight.copy_(conv.weight)
            if conv.bias is not None:
                plain.bias.copy_(conv.bias)
        pos.conv = plain.requires_grad_(False)
    if ChannelsLastFeatureEncoder.supports(m):
        m.feature_extractor = ChannelsLastFeatureEncoder(m.feature_extractor)
    if hasattr(m.config, "_attn_implementation"):
        m.config._attn_implementation = "sdpa"
    return m


def cast_densenet_bf16(model: nn.Module) -> nn.Module:
    """A bf16 copy of the X-ray DenseNet for inference, weights cast once, channels-last (oneDNN's bf16 convolutions
    want NHWC: under bf16 autocast in the default layout DenseNet121 was no faster than fp32 on an AMX CPU, channels
    last with bf16 weights about 2x at a batch of 8; ``bench/extract.py`` measures it)."""
    import copy

    m = copy.deepcopy(model).eval().requires_grad_(False)
    return m.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


class AudioExtractor:
    """wav2vec2 features of batched 7 s windows, last transformer layer via a forward hook.

    Two precisions: fp32 (the given model, the reference) and bf16 (a copy cast once by :func:`cast_wav2vec2_bf16`,
    built on first use and kept); features are returned as float32 either way. Which one: the ``bf16`` argument
    (what ``--precision`` resolved to, :mod:`pocapnet.precision`), else ``cfg.bf16`` (the old config field), else
    fp32. There is no flag rule any more: ``auto`` is decided by measurement (AVX512-BF16 without AMX was slower
    than fp32).
    """

    def __init__(
        self, model: nn.Module, cfg: FeatureConfig, device: torch.device | str = "cpu", bf16: bool | None = None
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.bf16 = bool(cfg.bf16) if bf16 is None else bool(bf16)
        self._out: torch.Tensor | None = None
        self._bf16_model: nn.Module | None = None
        self.model.encoder.layers[-1].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._out = output[0] if isinstance(output, (tuple, list)) else output

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def frames(self) -> int:
        """wav2vec2 frames per window (349 for 7 s at 16 kHz; 1 when pooled), from the conv stack's arithmetic."""
        if self.cfg.pooled:
            return 1
        n = torch.tensor(self.cfg.window_s * self.cfg.sample_rate)
        return int(self.model._get_feat_extract_output_lengths(n))

    def bf16_model(self) -> nn.Module:
        """The bf16 copy (built on first call)."""
        if self._bf16_model is None:
            self._bf16_model = cast_wav2vec2_bf16(self.model)
            self._bf16_model.encoder.layers[-1].register_forward_hook(self._hook)
        return self._bf16_model

    @torch.no_grad()
    def __call__(self, windows: np.ndarray | torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        """``windows``: ``(B, samples)`` -> ``(B, F, D)`` float32 (``(B, 1, D)`` when ``cfg.pooled``).

        Args:
            windows: Hann-windowed 7 s segments at 16 kHz.
            bf16: override the extractor's precision (True: the bf16 copy; False: the fp32 model).
        """
        x = torch.as_tensor(windows, dtype=torch.float32)
        x = x.pin_memory() if self.device.type == "cuda" else x
        x = x.to(self.device, non_blocking=True)
        if self.cfg.normalize_waveform:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        if self.bf16 if bf16 is None else bf16:
            self.bf16_model()(x.to(torch.bfloat16))
        else:
            self.model(x)
        out = self._out
        assert out is not None, "forward hook on encoder.layers[-1] did not fire"
        out = out.float()
        self._out = None
        return out.mean(dim=1, keepdim=True) if self.cfg.pooled else out  # (B, F, D) or (B, 1, D)


class XrayExtractor:
    """DenseNet ``features2`` (ReLU + global average pool) of single frames.

    Two precisions, as :class:`AudioExtractor`: fp32 (the given model) and bf16 (``bf16=True``: a channels-last copy
    cast once by :func:`cast_densenet_bf16`, built on first use and kept); features are float32 either way.
    """

    def __init__(
        self, model: nn.Module, cfg: FeatureConfig, device: torch.device | str = "cpu", bf16: bool = False
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.bf16 = bf16
        self._bf16_model: nn.Module | None = None

    def bf16_model(self) -> nn.Module:
        """The bf16 channels-last copy (built on first call)."""
        if self._bf16_model is None:
            self._bf16_model = cast_densenet_bf16(self.model)
        return self._bf16_model

    @property
    def dim(self) -> int:
        return int(self.model.classifier.in_features)

    def preprocess(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Grey ``[0, 255]`` frames -> ``(N, 1, S, S)`` in [-1024, 1024] (xrv ``normalize(img, 255)``)."""
        s = self.cfg.xray_size
        out = []
        for f in frames:
            t = torch.as_tensor(f, dtype=torch.float32)[None, None]  # (H, W) -> (1, 1, H, W)
            t = F.interpolate(t, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            out.append(t.clamp(0, 255) / 255.0 * 2048.0 - 1024.0)
        return torch.cat(out)  # (N, 1, S, S)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray], bf16: bool | None = None) -> torch.Tensor:
        """List of N grey frames -> ``(N, Di)`` float32 (``bf16`` overrides the extractor's setting)."""
        x = self.preprocess(frames).to(self.device, non_blocking=True)
        if self.bf16 if bf16 is None else bf16:
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            return self.bf16_model().features2(x).float()
        return self.model.features2(x).float()


def image_windows(xray: np.ndarray | torch.Tensor, seconds: np.ndarray, num_images: int = 7) -> torch.Tensor:
    """Assemble causal 7-image windows ``(len(seconds), 7, Di)`` from per-frame features ``(T, Di)``.

    Second ``t`` sees frames ``t-6..t``; indices before 0 repeat frame 0 (code).
    """
    idx = np.asarray(seconds)[:, None] + np.arange(-(num_images - 1), 1)[None, :]  # (B, 7)
    idx = np.clip(idx, 0, None)
    return torch.as_tensor(np.asarray(xray[idx.ravel()]), dtype=torch.float32).reshape(len(idx), num_images, -1)
