"""ALGES segmentation model: smp U-Net (ResNet-18) with a configurable last layer, plus DEAL's difficulty head.

Paper: Aklilu & Yeung, "ALGES", MLHC 2022, section 3.1.2 (f(X) = softmax(W z(X, V)), W a 1x1 conv with K filters) and
section 4.1 (U-Net with a ResNet-18 backbone). DEAL: Xie et al., "DEAL: Difficulty-aware Active Learning for Semantic
Segmentation", ACCV 2020 (probability attention module + difficulty head trained against the error mask).

paper: the last layer is a 1x1 conv; smp's ``Unet`` builds a 3x3 ``SegmentationHead``; here: 1x1 by default
(``head_kernel_size=1``), 3x3 as an option (the embeddings then use patch forms).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import NamedTuple

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from alges.config import AlgesConfig

__all__ = [
    "AlgesOutput",
    "AlgesUnet",
    "DealHead",
    "build_model",
    "load_trained",
    "fold_batchnorm",
    "resolve_encoder_weights",
    "RESNET18_FILE",
]

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class AlgesOutput(NamedTuple):
    """Model outputs. ``logits`` [B, K, H, W]; ``z`` [B, d, H, W] penultimate activations; ``difficulty``
    [B, 1, H, W] in (0, 1) or None when the model has no DEAL head."""

    logits: torch.Tensor
    z: torch.Tensor
    difficulty: torch.Tensor | None


class DealHead(nn.Module):
    """DEAL's semantic-difficulty head (Xie et al. 2020; original ``MaskHead(with_pam=True)`` + ``PAM``).

    logits [B, K, H, W] -> bilinear resize to ``attention_size`` (align_corners=True) -> softmax over classes: P ->
    probability attention A = softmax_rows(P^T P) [n, n] -> Q = gamma * (P A^T) + P (learnable ``gamma``, initialised
    to 0; the attention is skipped while gamma < -0.01, as the original) -> 1x1 conv to one channel -> bilinear
    upsample to H x W -> sigmoid: difficulty [B, 1, H, W]. Values and residual are probabilities, not logits.
    paper (official ALGES code): an untrained head built anew in every forward; here: a registered head trained with
    the BCE loss against the error mask, as the original DEAL.
    """

    def __init__(self, num_classes: int, attention_size: int) -> None:
        super().__init__()
        self.attention_size = attention_size
        self.gamma = nn.Parameter(torch.zeros(1))
        self.out = nn.Conv2d(num_classes, 1, kernel_size=1)

    def attend(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, K, H, W] -> Q [B, K, a, a], the attended class probabilities."""
        b, k = logits.shape[:2]
        a = self.attention_size
        x = F.interpolate(logits, size=(a, a), mode="bilinear", align_corners=True)
        p = x.softmax(dim=1)  # [B, K, a, a] class probabilities
        if self.gamma.item() < -0.01:  # original PAM: attention off
            return p
        p_flat = p.reshape(b, k, a * a)  # [B, K, n]
        attn = torch.bmm(p_flat.transpose(1, 2), p_flat).softmax(dim=-1)  # [B, n, n] probability similarity
        out = torch.bmm(p_flat, attn.transpose(1, 2))  # [B, K, n]
        return (self.gamma * out + p_flat).reshape(b, k, a, a)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        h, w = logits.shape[-2:]
        d = self.out(self.attend(logits))  # [B, 1, a, a]
        d = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=True)  # [B, 1, H, W]
        return torch.sigmoid(d)


class AlgesUnet(nn.Module):
    """smp U-Net with the ALGES head. Input: float images [B, 3, H, W] with pixel values in [0, 255] (H, W divisible
    by 2**encoder_depth); ``cfg.effective_input_norm`` is applied inside. Output: :class:`AlgesOutput`.

    Example::

        >>> from alges.config import create_config
        >>> m = build_model(create_config("alges_tiny"))
        >>> m(torch.rand(2, 3, 32, 32) * 255).logits.shape
        torch.Size([2, 13, 32, 32])
    """

    def __init__(self, cfg: AlgesConfig, *, deal_head: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = smp.Unet(
            encoder_name=cfg.encoder_name,
            encoder_weights=None,  # build_model loads them (local file, torch.hub cache or download)
            encoder_depth=cfg.encoder_depth,
            decoder_channels=tuple(cfg.decoder_channels),
            classes=cfg.num_classes,
        )
        # smp keeps every ResNet stage even when encoder_depth < 5; drop the unused ones (no dead parameters)
        for i in range(cfg.encoder_depth, 5):
            if hasattr(self.net.encoder, f"layer{i}"):
                setattr(self.net.encoder, f"layer{i}", nn.Identity())
        d = cfg.decoder_channels[-1]
        # paper: 1x1 conv last layer W in R^{K x d}; smp default 3x3 -> replace unless head_kernel_size == 3
        self.head = nn.Conv2d(d, cfg.num_classes, kernel_size=cfg.head_kernel_size, padding=cfg.head_kernel_size // 2)
        self.net.segmentation_head = nn.Identity()  # unused; the head above is the last layer
        self.deal = DealHead(cfg.num_classes, cfg.deal_attention_size) if deal_head else None
        sig = inspect.signature(self.net.decoder.forward)
        # smp <= 0.4 calls decoder(*features), smp >= 0.5 decoder(features)
        self._star_decoder = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
        if cfg.effective_input_norm == "imagenet":
            self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for a wrong rank/channel count or a size not divisible by 2**encoder_depth."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        div = 2**self.cfg.encoder_depth
        h, w = x.shape[-2:]
        if h % div or w % div:
            ph, pw = -(-h // div) * div, -(-w // div) * div
            raise ValueError(f"image size {h}x{w} is not divisible by {div}; resize or pad to {ph}x{pw}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values [0, 255] -> the encoder's input (``cfg.effective_input_norm``: ImageNet mean/std for a
        pretrained encoder, else ``cfg.input_norm``)."""
        norm = self.cfg.effective_input_norm
        if norm == "unit":
            return x / 255.0
        if norm == "imagenet":
            return (x - self.mean) / self.std
        return x  # "raw": official code feeds 0-255 floats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 255] -> penultimate activations z [B, d, H, W] (after a ReLU)."""
        self.check_input(x)
        feats = self.net.encoder(self.normalize(x))
        return self.net.decoder(*feats) if self._star_decoder else self.net.decoder(feats)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d, H, W] -> logits [B, K, H, W]."""
        return self.head(z)

    def forward(self, x: torch.Tensor) -> AlgesOutput:
        z = self.forward_features(x)
        logits = self.forward_head(z)
        diff = self.deal(logits) if self.deal is not None else None
        return AlgesOutput(logits, z, diff)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d right before it (in place; returns ``module``).

    Inference only (the folded conv computes ``bn(conv(x))`` with BatchNorm's running statistics, in fp32: the
    results differ from the unfolded model by float rounding, ~1e-6 relative). Folded: adjacent (Conv2d,
    BatchNorm2d) pairs in a plain ``nn.Sequential`` (smp's decoder blocks, ResNet downsample branches) and the
    ``conv<i>`` / ``bn<i>`` pairs of torchvision's ResNet stem and blocks (``forward`` applies ``bn<i>`` right after
    ``conv<i>``). Other layouts are left alone. Saves one memory pass per BatchNorm (9 % of the pool forward).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and not bn.training:
                module._modules[a], module._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    if isinstance(module, BasicBlock | Bottleneck | ResNet):
        for i in ("1", "2", "3"):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and not bn.training:
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
    return module


def resolve_encoder_weights(spec: str | os.PathLike | None, *, offline: bool = False) -> Path | None:
    """The ImageNet ResNet-18 weights file for ``--encoder-weights``.

    ``None``/"none": random init (the paper's setting). A path: that file. "imagenet": ``$ALGES_WEIGHTS_DIR``, then
    torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), then, unless offline (``--offline``, ``HF_HUB_OFFLINE=1``,
    ``MEDREPRO_OFFLINE=1``), a download through torch.hub into that cache with torchvision's sha256 prefix checked
    (``$ALGES_RESNET18_URL`` overrides the URL, e.g. for a mirror). Offline or unreachable: ``FileNotFoundError``
    naming the file, the URL and ``--encoder-weights none``.
    """
    from medshared.weights import fetch_url, hub_checkpoint_dir

    if spec is None or str(spec).lower() in ("none", ""):
        return None
    hint = "or use --encoder-weights none for random initialisation (the paper's setting)"
    if str(spec).lower() != "imagenet":
        p = Path(spec)
        if not p.is_file():
            raise FileNotFoundError(f"encoder weights file {p} not found; download {RESNET18_URL} to that path, {hint}")
        return p
    url = os.environ.get("ALGES_RESNET18_URL") or RESNET18_URL
    name = Path(url).name
    if os.environ.get("ALGES_WEIGHTS_DIR"):
        local = Path(os.environ["ALGES_WEIGHTS_DIR"]) / name
        if local.is_file():
            return local
    cached = hub_checkpoint_dir() / name
    if cached.is_file():
        return cached
    return fetch_url(
        url, offline=offline, what=f"ImageNet ResNet-18 weights {name}", hint=f"put it in $ALGES_WEIGHTS_DIR, {hint}"
    )


def build_model(
    cfg: AlgesConfig, *, deal_head: bool = False, encoder_weights: str | None = None, offline: bool = False
) -> AlgesUnet:
    """Build the model; ``encoder_weights`` (default ``cfg.encoder_weights``) is a file path, "imagenet" or None
    (see :func:`resolve_encoder_weights`)."""
    model = AlgesUnet(cfg, deal_head=deal_head)
    spec = encoder_weights if encoder_weights is not None else cfg.encoder_weights
    path = resolve_encoder_weights(spec, offline=offline)
    if path is not None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}
        unused = [f"layer{i}." for i in range(cfg.encoder_depth, 5)] + ["fc."]  # classifier / dropped stages
        sd = {k: v for k, v in sd.items() if not any(k.startswith(u) for u in unused)}
        try:
            nn.Module.load_state_dict(model.net.encoder, sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path} does not match the {cfg.encoder_name} encoder: {str(e)[:300]}") from e
    return model


def load_trained(path: str | os.PathLike, map_location: str = "cpu") -> tuple[AlgesUnet, AlgesConfig, dict]:
    """Rebuild a trained model from an ``alges`` checkpoint (safetensors weights + config in the metadata)."""
    from medshared.checkpoint import load_checkpoint

    from alges.config import config_from_dict

    sd, cfg_dict, extra = load_checkpoint(path, map_location=map_location)
    try:
        cfg = config_from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an alges checkpoint (its config does not fit: {e})") from e
    model = AlgesUnet(cfg, deal_head=bool(extra.get("deal_head", False)))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not match its config: {str(e).splitlines()[0]}") from e
    return model.eval(), cfg, extra
