"""PoCaPNet: surgical phase recognition from speech and X-ray with a two-stage MS-TCN.

Demir et al., "PoCaPNet: A Novel Approach for Surgical Phase Recognition Using Speech and X-Ray Images",
Interspeech 2023 (paper Fig. 1, §2.3, §3.2). Branch layouts follow the official code (kubicndmr/PoCaPNet @c384c95);
the MS-TCN is TeCNO's ``mstcn.py`` (Czempiel et al., MICCAI 2020), itself after Farha & Gall (CVPR 2019).

Batch = time: a mini-batch is ``T`` consecutive seconds of ONE operation. Every second is first reduced to one
``hidden_dim`` vector (branches + fusion + linear, per second), then the sequence ``(1, hidden_dim, T)`` goes through
the MS-TCN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pocapnet.config import ModelConfig, PocapConfig, get_config
from pocapnet.tcn import CosineClassifier, MultiStageTCN

__all__ = [
    "MODALITIES",
    "AvgResBlock",
    "CosineClassifier",
    "GatedMultimodalUnit",
    "AudioBranch",
    "MultiStageTCN",
    "DelayedMemory",
    "PoCaPNet",
    "positional_encoding",
    "create_model",
    "count_parameters",
    "fold_batchnorm",
]


class AvgResBlock(nn.Module):
    """Residual Conv1d blocks whose channels are the frames/images/microphones, then a mean over channels.

    The convolution runs along the feature axis (code: ``AvgResBlock``). Input ``(B, C, L)``, output ``(B, L)``.
    """

    def __init__(self, channels: int, num_pairs: int = 2) -> None:
        super().__init__()
        self.pairs = nn.ModuleList()
        for _ in range(num_pairs):
            self.pairs.append(
                nn.ModuleList(
                    [
                        nn.Conv1d(channels, channels, 3, padding=1),
                        nn.BatchNorm1d(channels),
                        nn.Conv1d(channels, channels, 3, padding=1),
                        nn.BatchNorm1d(channels),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, L)`` -> ``(B, L)``."""
        for conv1, bn1, conv2, bn2 in self.pairs:
            y = F.relu(bn1(conv1(x)))
            y = bn2(conv2(y))
            x = F.relu(x + y)
        return x.mean(dim=1)  # (B, C, L) -> (B, L)


class _ResBlock(nn.Module):
    """Conv(k3)+BN+ReLU, Conv(k3)+BN, plus a 1x1 conv on the residual path, then ReLU (code: ``ResBlock``)."""

    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(cout, momentum=momentum)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(cout, momentum=momentum)
        self.shortcut = nn.Conv1d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class AudioBranch(nn.Module):
    """One microphone: wav2vec2 frames as channels, convolution along the feature axis (code: audio branch).

    Input ``(B, F, D)`` (``F`` = 349 wav2vec2 frames of a 7 s window, ``D`` = 1024), output ``(B, D)``.
    """

    def __init__(self, frames: int, stem: int, res_channels: tuple[int, ...], momentum: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(frames, stem, 1), nn.BatchNorm1d(stem, momentum=momentum), nn.ReLU())
        chans = (stem, *res_channels)
        self.blocks = nn.Sequential(*[_ResBlock(a, b, momentum) for a, b in zip(chans[:-1], chans[1:], strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, F, D)`` -> ``(B, D)``."""
        x = self.blocks(self.stem(x))  # (B, F, D) -> (B, C_last, D)
        return x.mean(dim=1)  # (B, C_last, D) -> (B, D)


def positional_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of the second index within the operation (code variant, brief "Positional encoding").

    Dimension ``t`` gets ``sin(idx / 10000^(t/dim))`` for even ``t`` and ``cos`` of the same argument for odd ``t``
    (paper [25] uses ``2i/d``; the official code uses ``t/d``, kept here).

    Args:
        positions: ``(T,)`` second index from 0 (int or float).
        dim: encoding size.

    Returns:
        ``(T, dim)`` float32.
    """
    t = torch.arange(dim, dtype=torch.float32, device=positions.device)
    arg = positions.float()[:, None] / torch.pow(10000.0, t / dim)[None, :]  # (T, 1) / (1, dim) -> (T, dim)
    return torch.where((t % 2 == 0)[None, :], torch.sin(arg), torch.cos(arg))


class DelayedMemory:
    """Auto-regressive delayed estimation memory (paper §3.2 setting 3; code: ``y_prev``).

    A FIFO vector of length ``dim`` holding the argmax class indices (as raw floats 0..8) of the previous batches,
    newest batch first. It is added, detached and unscaled, to every second's ``dim``-d feature of the next batch,
    and reset to zeros at the start of each operation.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.vector = torch.zeros(dim, device=device)

    def reset(self) -> None:
        """Zero the memory (start of an operation)."""
        self.vector = torch.zeros_like(self.vector)

    def update(self, predictions: torch.Tensor) -> None:
        """Push a batch of predicted class indices ``(B,)`` (code: write into the last B slots, then roll by B)."""
        p = predictions.detach().reshape(-1).to(self.vector)
        if p.numel() >= self.dim:
            self.vector = p[-self.dim :].clone()
        else:
            self.vector = torch.cat([p, self.vector[: self.dim - p.numel()]])  # == roll(buf with buf[-B:]=p, B)


class PoCaPOutput(NamedTuple):
    """``logits``: ``(S, T, C)`` per stage; ``features``: ``(T, hidden_dim)`` input to the MS-TCN."""

    logits: torch.Tensor
    features: torch.Tensor


class GatedMultimodalUnit(nn.Module):
    """Gated multimodal unit (Arevalo et al., ICLR-W 2017), the fusion of the authors' Interspeech 2024 follow-up.

    ``h_v = tanh(W_v v)``, ``h_a = tanh(W_a a)``, ``z = sigmoid(W_z [v; a])``, ``h = z * h_v + (1 - z) * h_a``.
    Inputs ``(T, Di)`` and ``(T, Da)``, output ``(T, hidden)``; :attr:`last_gate` keeps the gate ``z`` ``(T, hidden)``
    of the latest call (the share of the X-ray branch per unit).
    """

    def __init__(self, image_dim: int, audio_dim: int, hidden: int) -> None:
        super().__init__()
        self.visual = nn.Linear(image_dim, hidden)
        self.audio = nn.Linear(audio_dim, hidden)
        self.gate = nn.Linear(image_dim + audio_dim, hidden)
        self.last_gate: torch.Tensor | None = None

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([v, a], dim=1)))  # (T, hidden)
        self.last_gate = z.detach()
        return z * torch.tanh(self.visual(v)) + (1 - z) * torch.tanh(self.audio(a))


MODALITIES: tuple[str, ...] = ("xray", "audio")


class PoCaPNet(nn.Module):
    """PoCaPNet (paper Fig. 1).

    Args:
        cfg: architecture; defaults give the paper's 2.8 M-parameter network. ``cfg.modalities`` selects the X-ray
            and/or audio branch (an absent branch is not built and its input may be None), ``cfg.fusion`` the
            concatenation + linear of the paper or a :class:`GatedMultimodalUnit`, ``cfg.cosine_classifier`` the
            LDAM-DRW normalised classifier in every MS-TCN stage.
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        unknown = set(cfg.modalities) - set(MODALITIES)
        if unknown or not cfg.modalities:
            raise ValueError(
                f"model.modalities must be a non-empty subset of {list(MODALITIES)}, got {list(cfg.modalities)}"
            )
        if cfg.fusion not in ("concat", "gmu"):
            raise ValueError(f"model.fusion must be concat or gmu, got {cfg.fusion!r}")
        if cfg.fusion == "gmu" and len(cfg.modalities) < 2:
            raise ValueError("model.fusion gmu gates two modalities; use concat with a single modality")
        self.cfg = cfg
        self.use_xray, self.use_audio = "xray" in cfg.modalities, "audio" in cfg.modalities
        if self.use_xray:
            self.visual = AvgResBlock(cfg.num_images, cfg.avg_res_blocks)
        if self.use_audio:
            self.audio = nn.ModuleList(
                [
                    AudioBranch(cfg.audio_frames, cfg.audio_stem_channels, cfg.audio_res_channels, cfg.bn_momentum)
                    for _ in range(cfg.num_mics)
                ]  # code: one branch per microphone, no weight sharing
            )
            self.audio_fusion = AvgResBlock(cfg.num_mics, cfg.avg_res_blocks)
        if cfg.fusion == "gmu":
            self.gmu = GatedMultimodalUnit(cfg.image_dim, cfg.audio_dim, cfg.hidden_dim)
        else:
            dim = cfg.image_dim * self.use_xray + cfg.audio_dim * self.use_audio
            self.linear = nn.Linear(dim, cfg.hidden_dim)
        self.tcn = MultiStageTCN(
            cfg.num_stages,
            cfg.num_layers,
            cfg.num_f_maps,
            cfg.hidden_dim,
            cfg.num_classes,
            cfg.dropout,
            cfg.causal_conv,
            cfg.cosine_scale if cfg.cosine_classifier else None,
        )

    def _check(self, images: torch.Tensor | None, audio: torch.Tensor | None) -> int:
        c = self.cfg
        T = None
        if self.use_xray:
            if images is None or images.ndim != 3 or tuple(images.shape[1:]) != (c.num_images, c.image_dim):
                got = None if images is None else tuple(images.shape)
                raise ValueError(f"images must be (T, {c.num_images}, {c.image_dim}), got {got}")
            T = images.shape[0]
        if self.use_audio:
            want = (c.num_mics, c.audio_frames, c.audio_dim)
            if audio is None or audio.ndim != 4 or tuple(audio.shape[1:]) != want or T not in (None, audio.shape[0]):
                got = None if audio is None else tuple(audio.shape)
                raise ValueError(
                    f"audio must be (T={T or 'T'}, {', '.join(map(str, want))}), got {got}; were the "
                    "features extracted with another config?"
                )
            T = audio.shape[0]
        assert T is not None
        return T

    def forward_features(self, images: torch.Tensor | None, audio: torch.Tensor | None) -> torch.Tensor:
        """Per-second fusion, no temporal context.

        Args:
            images: ``(T, num_images, image_dim)`` DenseNet features of the frames t-6..t (None without X-ray).
            audio: ``(T, num_mics, audio_frames, audio_dim)`` wav2vec2 features of each channel's 7 s window (None
                without audio).

        Returns:
            ``(T, hidden_dim)`` after Linear and LeakyReLU (or the GMU).
        """
        self._check(images, audio)
        parts = []
        if self.use_xray:
            parts.append(self.visual(images.float()))  # (T, 7, Di) -> (T, Di)
        if self.use_audio:
            dt = next(self.audio.parameters()).dtype  # float32 (bf16 in a streaming copy)
            a = torch.stack([br(audio[:, m].to(dt)).float() for m, br in enumerate(self.audio)], dim=1)  # (T, M, Da)
            parts.append(self.audio_fusion(a))  # (T, M, Da) -> (T, Da)
        if self.cfg.fusion == "gmu":
            return self.gmu(*parts)  # (T, hidden)
        x = torch.cat(parts, dim=1)  # (T, Di + Da)
        return F.leaky_relu(self.linear(x), self.cfg.leaky_slope)  # (T, hidden)

    def forward_temporal(
        self, feats: torch.Tensor, positions: torch.Tensor | None = None, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Add the optional positional encoding and delayed-estimation memory, then run the MS-TCN.

        Args:
            feats: ``(T, hidden_dim)``.
            positions: ``(T,)`` second index within the operation (needed when ``positional_encoding``).
            history: ``(hidden_dim,)`` :class:`DelayedMemory` vector (used when ``delayed_estimation``).

        Returns:
            ``(S, T, num_classes)`` logits of every stage; the last stage is the prediction.
        """
        c = self.cfg
        if c.positional_encoding:
            if positions is None:
                raise ValueError("positional_encoding=True needs the seconds' positions within the operation")
            feats = feats + positional_encoding(positions, c.hidden_dim).to(feats)
        if c.delayed_estimation and history is not None:
            feats = feats + history.detach().to(feats)[None, :]  # (T, D) + (1, D)
        x = feats.t().unsqueeze(0)  # (T, D) -> (1, D, T): the batch axis is the time axis
        out = self.tcn(x)  # (S, 1, C, T)
        return out[:, 0].transpose(1, 2)  # (S, 1, C, T) -> (S, T, C)

    def forward(
        self,
        images: torch.Tensor,
        audio: torch.Tensor,
        positions: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> PoCaPOutput:
        """Full model on ``T`` consecutive seconds of one operation; see :meth:`forward_features`."""
        feats = self.forward_features(images, audio)
        return PoCaPOutput(self.forward_temporal(feats, positions, history), feats)


def _fuse(conv: nn.Module, bn: nn.Module) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn) if isinstance(bn, nn.BatchNorm1d) else conv


@torch.no_grad()
def fold_batchnorm(model: PoCaPNet, audio_dtype: torch.dtype | None = None) -> PoCaPNet:
    """An inference copy of ``model`` with every eval-mode BatchNorm folded into the convolution before it.

    The copy is the same class with the same ``forward`` (BatchNorms become ``nn.Identity``), so the network keeps
    one definition; it saves the per-call BatchNorm work on the per-second streaming path. Later changes to
    ``model`` are not seen. ``audio_dtype`` (e.g. bf16) casts the microphone branches of the copy.
    """
    import copy

    m = copy.deepcopy(model).eval().requires_grad_(False)
    for br in getattr(m, "audio", []):
        br.stem[0], br.stem[1] = _fuse(br.stem[0], br.stem[1]), nn.Identity()
        for blk in br.blocks:
            blk.conv1, blk.bn1 = _fuse(blk.conv1, blk.bn1), nn.Identity()
            blk.conv2, blk.bn2 = _fuse(blk.conv2, blk.bn2), nn.Identity()
        if audio_dtype is not None:
            br.to(audio_dtype)
    for avg in (getattr(m, "visual", None), getattr(m, "audio_fusion", None)):
        for pair in avg.pairs if avg is not None else []:
            pair[0], pair[1] = _fuse(pair[0], pair[1]), nn.Identity()
            pair[2], pair[3] = _fuse(pair[2], pair[3]), nn.Identity()
    return m


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_model(name: str | PocapConfig | ModelConfig = "pocapnet", **overrides: object) -> PoCaPNet:
    """Build a model from a registered config name (see :func:`pocapnet.config.list_configs`) or a config."""
    if isinstance(name, str):
        mcfg = get_config(name).model
    elif isinstance(name, PocapConfig):
        mcfg = name.model
    else:
        mcfg = name
    if overrides:
        import dataclasses

        mcfg = dataclasses.replace(mcfg, **overrides)  # type: ignore[arg-type]
    return PoCaPNet(mcfg)


def _expected_full_parameters() -> int:  # documented arithmetic, see README
    audio = (349 * 128 + 128 + 256) + sum(
        (a * b * 3 + b) + 2 * b + (b * b * 3 + b) + 2 * b + (a * b + b)
        for a, b in [(128, 64), (64, 32), (32, 16), (16, 8)]
    )
    tcn1 = (1024 * 64 + 64) + 10 * (64 * 64 * 3 + 64 + 64 * 64 + 64) + (64 * 9 + 9)
    tcn2 = (9 * 64 + 64) + 10 * (64 * 64 * 3 + 64 + 64 * 64 + 64) + (64 * 9 + 9)
    avg = lambda c: 4 * (c * c * 3 + c + 2 * c)  # noqa: E731
    return 3 * audio + avg(7) + avg(3) + (2048 * 1024 + 1024) + tcn1 + tcn2
