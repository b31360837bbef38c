"""LungCVT: three-branch convolution + CBAM attention + DeiT (paper III-B/C; official ``model.py::DeiTCnn``).

Neto et al., "Convolution-Vision Transformer for Automatic Lung Sound Classification", SIBGRAPI 2022.
Input [B, 3, S, S] (MFCC / mel / CQT images, S = 224 in the paper) -> logits [B, 4].

Deviations are switches, not forks (brief section 10):
    - ``share_branch_conv``: the code shares one 3x3 1->1 conv across the three channels; the paper's wording reads
      as three independent convolutions (``False``: a grouped conv, groups=3).
    - ``cbam_order``: the code runs the spatial gate (with BN and a ReLU before the sigmoid) before the channel gate;
      ``"standard"`` is CBAM as published (Woo et al. 2018; paper Eq. 11-12): channel then spatial, no ReLU.
    - ``use_cnn`` / ``use_attention``: the ablations of paper Table II.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from lungcvt.config import LungCVTConfig, ModelConfig, get_config
from lungcvt.deit_weights import WEIGHTS_ENV, WEIGHTS_URL_ENV, resolve_weights, weights_url

__all__ = [
    "BranchConv",
    "SpatialGate",
    "ChannelGate",
    "AttentionBlock",
    "LungCVT",
    "LungCVTEnsemble",
    "build_lungcvt",
    "create_model",
    "resolve_weights",
    "WEIGHTS_ENV",
    "WEIGHTS_URL_ENV",
    "weights_url",
]


class BranchConv(nn.Module):
    """Three 3x3 convolution branches, one per feature channel (paper III-B). [B, 3, H, W] -> [B, 3, H, W].

    Args:
        shared: one ``Conv2d(1, 1, 3)`` applied to each channel (code) or three independent ones (paper wording).
    """

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1, bias=False)
        else:
            self.conv = nn.Conv2d(3, 3, kernel_size=3, padding=1, groups=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shared:
            return self.conv(x)
        b, c, h, w = x.shape
        y = self.conv(x.reshape(b * c, 1, h, w))  # [B, 3, H, W] -> [B*3, 1, H, W]
        return y.reshape(b, c, h, w)  # [B*3, 1, H, W] -> [B, 3, H, W]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the backward sums the gradients of every rank, as SyncBatchNorm's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        g = grad.clone()
        dist.all_reduce(g)
        return g


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SpatialGate(nn.Module):
    """CBAM spatial attention (paper Eq. 12): sigmoid(BN(conv7x7([max_c; mean_c]))) * x.

    Under DDP (a process group with more than one rank) the BatchNorm's training statistics are taken over the global
    batch: one differentiable all-reduce of (count, sum, sum of squares) per forward, so 2 ranks with half the batch
    train exactly as 1 process with the whole batch. torch's ``SyncBatchNorm`` does the same but refuses CPU tensors;
    this one-channel version works with gloo and nccl alike.

    Args:
        relu: apply a ReLU before the sigmoid (official code; keeps scales >= 0.5).
    """

    def __init__(self, kernel_size: int = 7, relu: bool = True, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=bn_momentum)
        self.relu = relu

    def _global_bn(self, s: torch.Tensor) -> torch.Tensor:
        """BatchNorm of [B, 1, H, W] with batch statistics over every rank's batch (training mode, DDP)."""
        bn = self.bn
        v = s.float()
        stats = torch.stack([torch.ones((), device=v.device) * v.numel(), v.sum(), (v * v).sum()])
        n, total, sq = _AllReduceSum.apply(stats)  # type: ignore[misc]
        mean = total / n
        var = (sq / n - mean * mean).clamp_min(0.0)  # biased, used to normalise (as BatchNorm)
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))  # unbiased, as BatchNorm
        y = (v - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        return y.to(s.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # [B, 2, H, W]
        s = self.conv(pooled)  # [B, 1, H, W]
        s = self._global_bn(s) if self.training and _distributed() else self.bn(s)
        if self.relu:
            s = torch.relu(s)
        return x * torch.sigmoid(s)


class ChannelGate(nn.Module):
    """CBAM channel attention (paper Eq. 11): sigmoid(MLP(GAP(x)) + MLP(GMP(x))) * x, MLP C -> C/r -> C."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))  # [B, C]
        mx = self.mlp(x.amax(dim=(2, 3)))  # [B, C]
        return x * torch.sigmoid(avg + mx)[:, :, None, None]  # [B, C] -> [B, C, 1, 1]


class AttentionBlock(nn.Module):
    """Conv 3->C, CBAM gates, conv C->3 (code ``attention=True, spatialAtt=True``). [B, 3, H, W] -> [B, 3, H, W].

    Args:
        channels: inner width (code: 16).
        reduction: channel-MLP reduction (code: 16).
        order: ``"official"`` spatial (BN+ReLU) then channel; ``"standard"`` channel then spatial (no ReLU).
    """

    def __init__(
        self, channels: int = 16, reduction: int = 16, order: str = "official", bn_momentum: float = 0.01
    ) -> None:
        super().__init__()
        self.order = order
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.spatial = SpatialGate(7, relu=(order == "official"), bn_momentum=bn_momentum)
        self.channel = ChannelGate(channels, reduction)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # [B, C, H, W]
        if self.order == "official":
            x = self.channel(self.spatial(x))
        else:
            x = self.spatial(self.channel(x))
        return self.conv_out(x)  # [B, 3, H, W]


class LungCVT(nn.Module):
    """Convolution-Vision Transformer (paper Fig. 1).

    Args:
        cfg: :class:`ModelConfig`.
        weights: DeiT ImageNet weights file (see :func:`resolve_weights`); used only when ``cfg.pretrained``.

    Forward: float32 [B, 3, S, S] (S = ``cfg.img_size``; normalised feature images) -> logits [B, num_classes].
    """

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        super().__init__()
        import timm

        self.cfg = cfg
        self.branch = BranchConv(cfg.share_branch_conv) if cfg.use_cnn else nn.Identity()
        self.attention = (
            AttentionBlock(cfg.attention_channels, cfg.reduction, cfg.cbam_order, cfg.bn_momentum)
            if cfg.use_attention
            else nn.Identity()
        )
        kwargs: dict = {"img_size": cfg.img_size, "num_classes": 0}
        if cfg.backbone_depth is not None:
            kwargs["depth"] = cfg.backbone_depth
        if cfg.patch_size is not None:
            kwargs["patch_size"] = cfg.patch_size
        if cfg.global_pool != "token":
            kwargs.update(global_pool=cfg.global_pool, class_token=False)
        if cfg.pretrained:
            path = resolve_weights(cfg.backbone, weights)
            # timm unwraps 'model'/'state_dict', drops the classifier (num_classes=0) and resamples the position
            # embedding when img_size differs (brief section 8)
            self.backbone = timm.create_model(
                cfg.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        else:
            self.backbone = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
        if cfg.front_init == "identity":
            self._identity_init()
        d = self.backbone.num_features
        # code: DeiT head replaced by Linear(768, 512)-ReLU-Dropout(0.2)-Linear(512, 4)
        self.head = nn.Sequential(
            nn.Linear(d, cfg.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, cfg.num_classes),
        )

    @torch.no_grad()
    def _identity_init(self) -> None:
        """Start the convolution block as a pass-through of the 3 feature channels (``front_init="identity"``)."""
        if isinstance(self.branch, BranchConv):
            self.branch.conv.weight.zero_()
            w = self.branch.conv.weight  # [1, 1, 3, 3] shared, or [3, 1, 3, 3] grouped
            w[:, 0, 1, 1] = 1.0
        if isinstance(self.attention, AttentionBlock):
            a = self.attention
            a.conv_in.weight[:3].zero_()  # [C, 3, 3, 3]: channels 0..2 copy the input channels
            a.conv_out.weight.mul_(0.1)  # [3, C, 3, 3]: small contribution of the other channels
            for c in range(3):
                a.conv_in.weight[c, c, 1, 1] = 1.0
                a.conv_out.weight[c, :3].zero_()
                a.conv_out.weight[c, c, 1, 1] = 1.0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> pooled DeiT features (class token) [B, D]."""
        s = self.cfg.img_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(
                f"LungCVT expects input [B, 3, {s}, {s}] (features resized to features.image_size), "
                f"got {tuple(x.shape)}"
            )
        x = self.branch(x)  # [B, 3, S, S]
        x = self.attention(x)  # [B, 3, S, S]
        return self.backbone(x)  # [B, D]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats if pre_logits else self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LungCVTEnsemble(nn.Module):
    """``cfg.ensemble`` LungCVT members (a deep ensemble: different random inits, the same batches).

    Forward: float32 [B, 3, S, S] -> in training mode the members' logits [M, B, num_classes] (the loss averages each
    member's own loss: :class:`lungcvt.losses.ClassBalancedCE`), in eval mode log of the members' mean probability
    [B, num_classes] (log-probabilities are logits: their softmax is the mean probability, and the normal-class
    bias adds to them as to a single model's logits). Members are created one after the other from the global RNG.
    """

    def __init__(self, cfg: ModelConfig, weights: str | Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(LungCVT(cfg, weights=weights) for _ in range(cfg.ensemble))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x) for m in self.members])  # [M, B, K]
        if self.training:
            return logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # [M, B, K]
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))  # [B, K]: log mean probability


def build_lungcvt(cfg: ModelConfig, weights: str | Path | None = None) -> LungCVT | LungCVTEnsemble:
    """:class:`LungCVT`, or :class:`LungCVTEnsemble` when ``cfg.ensemble > 1``."""
    return LungCVTEnsemble(cfg, weights) if cfg.ensemble > 1 else LungCVT(cfg, weights=weights)


def create_model(
    name_or_cfg: str | LungCVTConfig | ModelConfig = "lungcvt_base", weights: str | Path | None = None, **overrides
) -> LungCVT | LungCVTEnsemble:
    """Build a model from a registered config name (``lungcvt_base``, ``lungcvt_tiny``, ...) or a config.

    ``overrides`` replace :class:`ModelConfig` fields, e.g. ``create_model("lungcvt_base", pretrained=False)``.
    Unknown names raise ``ValueError`` listing the registered ones.
    """
    import dataclasses

    if isinstance(name_or_cfg, str):
        mcfg = get_config(name_or_cfg).model
    elif isinstance(name_or_cfg, LungCVTConfig):
        mcfg = name_or_cfg.model
    else:
        mcfg = name_or_cfg
    if overrides:
        mcfg = dataclasses.replace(mcfg, **overrides)
    return build_lungcvt(mcfg, weights=weights)
