"""Stage 2 classifiers: the lightweight C3D with 3D SPP and motion attention (KFGNet), and Table 1 baselines.

Provenance: KFGNet (Wang et al., MICCAI 2022) §2 "Ultrasound Video Classification"; the official classification net
of NeuronXJTU/KFGNet commit 28d3f3e ``model.py`` as read in ``../shared/briefs/kfgnet.md`` §1, §3. Differences from
the official file: SPP and fc1's width follow from the config (adaptive pooling) so T = 16/64 and 128-px clips work;
``spp_mode="official"`` keeps the fixed 2x3x3 kernels for bit-compatibility.

Every classifier's ``forward(x)`` takes ``x: (B, C, T, H, W)`` float (0..1) and returns ``(logits (B, classes),
v_temp (B, T') or None)``.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from kfgnet.config import ClassifierConfig
from kfgnet.presets import get_classifier_config

__all__ = [
    "LightC3D",
    "MotionAttention",
    "SPP3d",
    "C3D",
    "TorchvisionVideo",
    "build_classifier",
    "create_model",
    "list_models",
    "load_local_weights",
]


def _conv_bn(cin: int, cout: int, stride: tuple[int, int, int] | int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class MotionAttention(nn.Module):
    """Motion attention branch [P §2 Fig. 2; V brief §3].

    Three Conv3d with temporal kernel 1 (2D convs shared over time): C -> 64 k(1,3,3) s(1,2,2), 64 -> 16 same,
    16 -> 1 k(1,2,2); no BN, no activation (official). At 112-px input the map goes 14 -> 6 -> 2 -> 1; other sizes
    are averaged to 1x1 (identity at 112 px). Output: one weight per time step.
    """

    def __init__(self, in_ch: int, widths: tuple[int, int] = (64, 16), padding: int = 0, sigmoid: bool = False):
        super().__init__()
        p = (0, padding, padding)
        self.conv1 = nn.Conv3d(in_ch, widths[0], (1, 3, 3), stride=(1, 2, 2), padding=p)
        self.conv2 = nn.Conv3d(widths[0], widths[1], (1, 3, 3), stride=(1, 2, 2), padding=p)
        self.conv3 = nn.Conv3d(widths[1], 1, (1, 2, 2), stride=1)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T', h, w)`` -> weights ``(B, 1, T', 1, 1)``."""
        w = self.conv2(self.conv1(x))  # (B, 16, T', h', w')
        if w.shape[-1] < 2 or w.shape[-2] < 2:  # tiny frames: replicate up to the 2x2 kernel of conv3
            w = F.pad(w, (0, max(0, 2 - w.shape[-1]), 0, max(0, 2 - w.shape[-2]), 0, 0), mode="replicate")
        w = self.conv3(w)  # (B, 1, T', h'', w'')
        if w.shape[-1] != 1 or w.shape[-2] != 1:
            w = w.mean(dim=(-2, -1), keepdim=True)  # (B, 1, T', 1, 1)
        return torch.sigmoid(w) if self.sigmoid else w


class SPP3d(nn.Module):
    """3D spatial pyramid pooling: concat(flattened full map, max-pool to 2x2x2, max-pool to 1x1x1) [P §2].

    ``mode="adaptive"``: adaptive max pooling (any map size). ``mode="official"``: the 28d3f3e kernels for a 2x3x3
    map: MaxPool k(2,3,3) -> 1^3 and MaxPool k(1,2,2) s(1,2,2) pad(0,1,1) -> 2^3 [V].
    """

    def __init__(self, mode: str = "adaptive"):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, t, h, w)`` -> ``(B, C * (t*h*w + 8 + 1))``."""
        if self.mode == "official":
            if tuple(x.shape[2:]) != (2, 3, 3):
                raise ValueError(
                    f"spp_mode='official' needs a 2x3x3 map (32 x 112 x 112 clips), got {tuple(x.shape[2:])}"
                )
            p1 = F.max_pool3d(x, (2, 3, 3))  # (B, C, 1, 1, 1)
            p2 = F.max_pool3d(x, (1, 2, 2), stride=(1, 2, 2), padding=(0, 1, 1))  # (B, C, 2, 2, 2)
        else:
            p1 = F.adaptive_max_pool3d(x, 1)  # (B, C, 1, 1, 1)
            p2 = F.adaptive_max_pool3d(x, 2)  # (B, C, 2, 2, 2)
        return torch.cat([x.flatten(1), p2.flatten(1), p1.flatten(1)], dim=1)  # (B, C * (thw + 9))


class LightC3D(nn.Module):
    """Key-frame guided lightweight C3D with optional 3D SPP and motion attention (KFGNet stage 2).

    Args:
        cfg: :class:`~kfgnet.config.ClassifierConfig` (``arch="light_c3d"``): ``in_channels``; ``widths`` of
            conv1..conv4 (64, 128, 256, 512); ``num_classes`` (2); ``num_frames``, ``size`` (the clip T and H = W
            the network is built for: fc1's input width depends on them); ``spp`` / ``spp_mode`` (3D SPP after
            pool2, else the flattened map only); ``motion_attention`` (one learned weight per time step multiplied
            into pool1's output, returned as V_temp) with ``attention_widths`` / ``attention_padding`` /
            ``attention_sigmoid`` (see :class:`MotionAttention`); ``hidden`` (fc1 width, 512); ``dropout`` (0.5).

    Shapes at the paper's 32 x 112 x 112: conv1 64x32x112², conv2 128x32x56², conv3 256x16x28², pool1 256x8x14²,
    conv4 512x4x7², pool2 512x2x3x3, SPP 13,824, fc1 512, fc2 2; V_temp (B, 8).
    """

    def __init__(self, cfg: ClassifierConfig | None = None):
        super().__init__()
        cfg = cfg or ClassifierConfig()
        widths = cfg.widths
        self.conv1 = _conv_bn(cfg.in_channels, widths[0], 1)
        self.conv2 = _conv_bn(widths[0], widths[1], (1, 2, 2))
        self.conv3 = _conv_bn(widths[1], widths[2], 2)
        self.pool1 = nn.MaxPool3d(2)
        self.attention = (
            MotionAttention(widths[2], cfg.attention_widths, cfg.attention_padding, cfg.attention_sigmoid)
            if cfg.motion_attention
            else None
        )
        self.conv4 = _conv_bn(widths[2], widths[3], 2)
        self.pool2 = nn.MaxPool3d(2)
        self.spp = SPP3d(cfg.spp_mode) if cfg.spp else None
        self.num_frames, self.size, self.in_channels = cfg.num_frames, cfg.size, cfg.in_channels
        if cfg.num_frames < 16 or cfg.size < 32:
            raise ValueError(
                f"the light C3D needs clips of at least 16 frames x 32 x 32 pixels (four stride/pool "
                f"halvings in time), got {cfg.num_frames} x {cfg.size} x {cfg.size}"
            )
        with torch.no_grad():
            n_feat = self._features(torch.zeros(1, cfg.in_channels, cfg.num_frames, cfg.size, cfg.size))[0].shape[1]
        self.fc1 = nn.Linear(n_feat, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.hidden, cfg.num_classes)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.pool1(self.conv3(self.conv2(self.conv1(x))))  # (B, C3, T/4, H/8, W/8)
        v_temp = None
        if self.attention is not None:
            w = self.attention(x)  # (B, 1, T/4, 1, 1)
            x = x * w  # broadcast over channels and space
            v_temp = w.flatten(1)  # (B, T/4)
        x = self.pool2(self.conv4(x))  # (B, C4, t, h, w)
        x = self.spp(x) if self.spp is not None else x.flatten(1)  # (B, F)
        return x, v_temp

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, C, T, H, W)`` -> (pooled features ``(B, F)``, V_temp ``(B, T/4)`` or None)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, T, H, W) clips, got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != (self.num_frames, self.size, self.size):
            raise ValueError(
                f"model built for {self.num_frames} x {self.size} x {self.size} clips, got "
                f"{tuple(x.shape[2:])}; set num_frames/size in the config to the clip size"
            )
        return self._features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(F.relu(self.fc1(x)))  # (B, hidden)
        return x if pre_logits else self.fc2(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feat, v_temp = self.forward_features(x)
        return self.forward_head(feat), v_temp


class C3D(nn.Module):
    """The original C3D [Tran et al. 2015] as a Table 1 baseline: 8 convs (64-128-256-256-512-512-512-512), 5 pools,
    fc6/fc7 4096 with dropout 0.5. pool5 is adaptive (1 x 4 x 4 at 112 px, 8192-d as in C3D) so T = 32 works.
    ``width_mult`` scales every width (tests)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width_mult: float = 1.0, fc: int = 4096):
        super().__init__()
        w = [max(4, int(c * width_mult)) for c in (64, 128, 256, 256, 512, 512, 512, 512)]

        def conv(ci: int, co: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(ci, co, 3, padding=1), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            conv(in_channels, w[0]),
            nn.MaxPool3d((1, 2, 2)),
            conv(w[0], w[1]),
            nn.MaxPool3d(2),
            conv(w[1], w[2]),
            conv(w[2], w[3]),
            nn.MaxPool3d(2),
            conv(w[3], w[4]),
            conv(w[4], w[5]),
            nn.MaxPool3d(2),
            conv(w[5], w[6]),
            conv(w[6], w[7]),
            nn.AdaptiveMaxPool3d((1, 4, 4)),
        )
        fcw = max(8, int(fc * width_mult))
        self.head = nn.Sequential(
            nn.Linear(w[7] * 16, fcw),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(fcw, fcw),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(fcw, num_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(self.features(x).flatten(1)), None  # features (B, C, 1, 4, 4) -> (B, 16C)


def load_local_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a local state dict (``.safetensors`` or a torch file, ``weights_only=True``), stripping ``module.``."""
    from kfgnet.weights import load_state_dict_file

    return load_state_dict_file(path)


class TorchvisionVideo(nn.Module):
    """torchvision ``r3d_18`` / ``r2plus1d_18`` (VideoResNet) with a ``num_classes`` head.

    ``pretrained``: ``"none"`` (random init), ``"kinetics"`` (torchvision's Kinetics-400 weights from
    ``$KFGNET_WEIGHTS_DIR`` or torch.hub's cache, downloaded there when online), ``"env"``
    (``$KFGNET_WEIGHTS_DIR/<arch>.pth``) or a local file; the fc is replaced when the class count differs.
    """

    def __init__(self, arch: str, num_classes: int = 2, pretrained: str = "none", offline: bool = False):
        super().__init__()
        from torchvision.models import video as tvv

        from kfgnet.weights import load_state_dict_file, resolve_weights

        self.net = getattr(tvv, arch)(weights=None)
        path = resolve_weights(pretrained, arch, "or train from random init with --pretrained none", offline)
        if path is not None:
            self.net.load_state_dict(load_state_dict_file(path), strict=True)
        self.net.fc = nn.Linear(self.net.fc.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


def build_classifier(cfg: ClassifierConfig, load_weights: bool = True, offline: bool = False) -> nn.Module:
    """Build the classifier described by ``cfg`` (``arch`` selects KFGNet's light C3D or a baseline);
    ``load_weights=False`` skips the baselines' pretrained weights (a checkpoint follows)."""
    if cfg.arch == "light_c3d":
        return LightC3D(cfg)
    if cfg.arch == "c3d":
        mult = cfg.widths[0] / 64.0
        return C3D(cfg.in_channels, cfg.num_classes, width_mult=mult, fc=4096)
    return TorchvisionVideo(cfg.arch, cfg.num_classes, cfg.pretrained if load_weights else "none", offline)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    from kfgnet.presets import CLASSIFIER_PRESETS

    return sorted(CLASSIFIER_PRESETS)


def create_model(name: str = "kfgnet_light_c3d", **overrides) -> nn.Module:
    """timm-style factory: ``create_model("kfgnet_tiny")``; unknown names raise ``KeyError`` listing the valid ones."""
    return build_classifier(get_classifier_config(name, **overrides))
