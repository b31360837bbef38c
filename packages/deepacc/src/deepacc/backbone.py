"""Backbones of DeepACC: ResNet + FPN (Sec. 2.1, ImageNet-initialised) and a tiny BatchNorm CNN for tests and demos.

Pretrained weights: torchvision's IMAGENET1K_V1 files (what mmdet's ``torchvision://resnet101`` loaded) are looked up
locally (an explicit path, ``$DEEPACC_WEIGHTS_DIR``, torch.hub's cache) and, unless offline, downloaded into
torch.hub's cache with the hash in the file name checked (:func:`medshared.weights.fetch_url`).

Normalisation layers: a pretrained ResNet keeps torchvision's ``FrozenBatchNorm2d`` (ImageNet statistics, as mmdet's
``norm_eval=True``): batch statistics of one or two metaphases per GPU would be too noisy, and frozen statistics make
multi-process training equal to one process with the whole batch. Random init needs trainable BatchNorm
(``model.norm: bn``), whose statistics are then per process under DDP (SyncBatchNorm only exists for CUDA).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from deepacc.config import ModelConfig

__all__ = [
    "BACKBONE_WEIGHT_FILES",
    "WEIGHTS_URL",
    "TinyBody",
    "build_backbone",
    "load_body_weights",
    "resolve_backbone_weights",
]

#: torchvision's IMAGENET1K_V1 file names (what mmdet's ``torchvision://resnet101`` loaded) [V].
BACKBONE_WEIGHT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}
#: Where torchvision downloads them from; ``$DEEPACC_WEIGHTS_URL`` overrides (a mirror, or the tests' local server).
WEIGHTS_URL = "https://download.pytorch.org/models/"
RANDOM_INIT_HINT = "--pretrained none (random init; then also set model.norm: bn)"


class TinyBody(nn.Module):
    """Small CNN with ResNet-like strides 4/8/16/32 (``layer1``..``layer4``) for tests and the demo.

    Args:
        widths: channels of layer1..layer4.
        norm_layer: ``nn.BatchNorm2d`` (trainable statistics, the default) or ``FrozenBatchNorm2d``.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96), norm_layer: type = nn.BatchNorm2d) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                norm_layer(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                norm_layer(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), norm_layer(widths[0]), nn.ReLU(inplace=True)
        )
        self.layer1 = block(widths[0], widths[0])  # stride 4
        self.layer2 = block(widths[0], widths[1])  # stride 8
        self.layer3 = block(widths[1], widths[2])  # stride 16
        self.layer4 = block(widths[2], widths[3])  # stride 32

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - IntermediateLayerGetter walks the children
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _is_none(pretrained: str | Path | None) -> bool:
    return pretrained is None or str(pretrained).lower() in ("none", "")


def resolve_backbone_weights(backbone: str, pretrained: str | Path | None, offline: bool = False) -> Path | None:
    """Find (or download) the ImageNet weights file of ``backbone``.

    ``pretrained``: ``None``/``"none"`` (random init), a file or a folder holding the torchvision file name, or
    ``"imagenet"``: ``$DEEPACC_WEIGHTS_DIR``, then torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), then, unless
    ``offline`` (or ``HF_HUB_OFFLINE=1``), a download from ``WEIGHTS_URL`` into that cache, sha256 prefix checked.

    Raises:
        FileNotFoundError: naming the file, the URL and ``--pretrained none`` for random init.
    """
    if _is_none(pretrained):
        return None
    if backbone not in BACKBONE_WEIGHT_FILES:
        raise ValueError(f"backbone {backbone!r} has no ImageNet weights; use --pretrained none")
    fname = BACKBONE_WEIGHT_FILES[backbone]
    base_url = os.environ.get("DEEPACC_WEIGHTS_URL", WEIGHTS_URL)
    url = base_url.rstrip("/") + "/" + fname
    if str(pretrained).lower() not in ("imagenet", "auto", "default"):
        p = Path(pretrained).expanduser()  # type: ignore[arg-type]
        cand = p / fname if p.is_dir() else p
        if cand.is_file():
            return cand
        raise FileNotFoundError(
            f"backbone weights file {cand} not found. Download {url} there, use --pretrained imagenet to fetch it "
            f"into torch.hub's cache, or {RANDOM_INIT_HINT}."
        )
    if os.environ.get("DEEPACC_WEIGHTS_DIR"):
        cand = Path(os.environ["DEEPACC_WEIGHTS_DIR"]).expanduser() / fname
        if cand.is_file():
            return cand
    from medshared.weights import fetch_url

    return fetch_url(url, file_name=fname, check_hash=True, offline=offline, hint=RANDOM_INIT_HINT)


def load_body_weights(body: nn.Module, path: Path) -> None:
    """Load a torchvision ResNet state dict into ``body`` (``fc.`` dropped, ``module.``/``_orig_mod.`` stripped)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = body.state_dict()
    # FrozenBatchNorm2d has no num_batches_tracked; drop it from the file when absent in the module.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the backbone (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    body.load_state_dict(state, strict=True)


def build_backbone(
    cfg: ModelConfig, pretrained: str | Path | None = None, retinanet: bool = False, offline: bool = False
) -> BackboneWithFPN:
    """ResNet (or tiny) + FPN, ``cfg.fpn_channels`` wide.

    Faster R-CNN (``retinanet=False``): stages from ``cfg.fpn_min_level`` (P2 for the paper) to P5 plus a max-pooled
    'pool' level for the RPN. RetinaNet: P3-P5 plus convolutional P6/P7 computed from P5, as torchvision's
    ``retinanet_resnet50_fpn`` (``LastLevelP6P7(256, 256)``).
    """
    norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
    low = min(cfg.fpn_min_level, cfg.roi_min_level or cfg.fpn_min_level)  # P2 for RoIAlign only: see model.py
    first = 2 if retinanet else low - 1  # first returned ResNet stage (layer index 1..4)
    stages = list(range(first, 5))
    extra = LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels) if retinanet else LastLevelMaxPool()
    if cfg.backbone == "tiny":
        if not _is_none(pretrained):
            raise ValueError("backbone 'tiny' has no pretrained weights; use --pretrained none")
        widths = tuple(cfg.tiny_widths)
        body = TinyBody(widths, norm_layer)  # type: ignore[arg-type]
        return BackboneWithFPN(
            body,
            return_layers={f"layer{s}": str(i) for i, s in enumerate(stages)},
            in_channels_list=[widths[s - 1] for s in stages],
            out_channels=cfg.fpn_channels,
            extra_blocks=extra,
        )
    weights_file = resolve_backbone_weights(cfg.backbone, pretrained, offline)
    # paper: ImageNet-initialised ResNet-101; weights=None + our own load keeps the lookup order above.
    trainable = cfg.trainable_layers if weights_file is not None else 5
    backbone = resnet_fpn_backbone(
        backbone_name=cfg.backbone,
        weights=None,
        norm_layer=norm_layer,
        trainable_layers=5,
        returned_layers=stages,
        extra_blocks=extra,
    )
    if weights_file is not None:
        load_body_weights(backbone.body, weights_file)
    # freeze like torchvision's trainable_layers (after loading, so frozen params keep ImageNet values)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers_to_train.append("bn1")
    for name, p in backbone.body.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            p.requires_grad_(False)
    return backbone
