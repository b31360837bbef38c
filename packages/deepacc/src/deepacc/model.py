"""Builder of the DeepACC detector (Luo et al., ISBI 2021, doi:10.1109/ISBI48211.2021.9433943) and its baselines.

``build_model(cfg)`` composes torchvision's Faster R-CNN (ResNet + FPN backbone from :mod:`deepacc.backbone`, RPN,
RoIAlign) with :class:`deepacc.heads.DeepACCRoIHeads`, or the Table 2 RetinaNet (:mod:`deepacc.retinanet`, P3-P7).
Post-processing lives in :mod:`deepacc.postprocess`, bf16 inference in :mod:`deepacc.precision`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign

from deepacc.backbone import build_backbone
from deepacc.config import DeepACCConfig, ModelConfig
from deepacc.heads import DeepACCRoIHeads
from deepacc.retinanet import DeepACCRetinaNet, MaxBoxesTransform

__all__ = ["build_model", "count_parameters", "set_output_mode"]

#: ImageNet mean / std of torchvision (images are [0, 1] RGB; grey images are copied to three channels).
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]


def _anchor_generator(cfg: ModelConfig, retinanet: bool = False) -> AnchorGenerator:
    if retinanet:  # torchvision's _default_anchorgen: 3 octave scales per level, P3-P7
        sizes = tuple((s, int(s * 2 ** (1.0 / 3)), int(s * 2 ** (2.0 / 3))) for s in cfg.retinanet_anchor_sizes)
    else:
        sizes = tuple((s,) for s in cfg.anchor_sizes)
    ratios = (tuple(cfg.aspect_ratios),) * len(sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


def build_model(cfg: DeepACCConfig, pretrained: str | Path | None = None, offline: bool = False) -> nn.Module:
    """Build the detector of ``cfg`` (random init when ``pretrained`` is None / "none").

    The model takes a list of ``[3, H, W]`` float images in [0, 1] (grey copied to 3 channels) and, in training, a list
    of targets ``{"boxes": [N, 4] float xyxy pixels, "labels": [N] int64 in 1..24}``; it returns a loss dict in
    training and one detection dict per image in evaluation (torchvision convention).

    Example::

        >>> from deepacc.config import create_config
        >>> model = build_model(create_config("deepacc_tiny")).eval()
        >>> out = model([torch.rand(3, 128, 128)])
    """
    m = cfg.model
    retina = m.arch == "retinanet"
    backbone = build_backbone(m, pretrained, retinanet=retina, offline=offline)
    common: dict[str, Any] = dict(min_size=m.min_size, max_size=m.max_size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    if retina:
        model = DeepACCRetinaNet(
            backbone,
            num_classes=m.num_classes,
            anchor_generator=_anchor_generator(m, retinanet=True),
            score_thresh=m.score_thresh,
            nms_thresh=m.nms_thresh,
            detections_per_img=m.detections_per_img,
            **common,
        )
        model.transform = MaxBoxesTransform(m.min_size, m.max_size, IMAGE_MEAN, IMAGE_STD)
        model.deepacc_config = cfg  # type: ignore[attr-defined]
        return model
    roi_low = m.roi_min_level or m.fpn_min_level
    n_extra = m.fpn_min_level - roi_low  # FPN levels below the RPN's, for RoIAlign only ('0'.. of them)
    n_levels = 6 - roi_low  # FPN outputs '0'.. (the extra 'pool' level is used by the RPN only)
    roi_pool = MultiScaleRoIAlign(
        featmap_names=[str(i) for i in range(n_levels)], output_size=m.roi_output_size, sampling_ratio=2
    )
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=_anchor_generator(m),
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
        rpn_nms_thresh=m.rpn_nms_thresh,
        rpn_fg_iou_thresh=m.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=m.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=nn.Identity(),  # replaced below; avoids allocating the stock 12544x1024 head
        box_predictor=nn.Identity(),
        **common,
    )
    if n_extra:
        model.rpn = LevelSubsetRPN.from_rpn(model.rpn, {str(i) for i in range(n_extra)})
    model.roi_heads = DeepACCRoIHeads(m, roi_pool, backbone.out_channels)
    model.deepacc_config = cfg  # type: ignore[attr-defined]
    return model


class LevelSubsetRPN(RegionProposalNetwork):
    """torchvision's RPN on a subset of the FPN levels: the levels in ``skip_levels`` (e.g. P2, kept for RoIAlign)
    are not given to the RPN head and anchor generator, so proposals cost the same as without them."""

    skip_levels: frozenset[str] = frozenset()

    @classmethod
    def from_rpn(cls, rpn: RegionProposalNetwork, skip_levels: set[str]) -> LevelSubsetRPN:
        new = cls.__new__(cls)
        new.__dict__.update(rpn.__dict__)  # same submodules and settings (no parameters copied or re-created)
        new.skip_levels = frozenset(skip_levels)
        return new

    def forward(self, images, features, targets=None):  # noqa: ANN001, ANN201 - torchvision's signature
        feats = OrderedDict((k, v) for k, v in features.items() if k not in self.skip_levels)
        return super().forward(images, feats, targets)


def set_output_mode(model: nn.Module, mode: str) -> None:
    """Choose ``standard`` / ``max`` / ``raw`` outputs of a DeepACC model or of the RetinaNet baseline."""
    if mode not in ("standard", "max", "raw"):
        raise ValueError(f"output mode must be standard|max|raw, got {mode!r}")
    model = getattr(model, "module", model)  # DDP-wrapped
    if isinstance(model, DeepACCRetinaNet):
        model.output_mode = mode
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, DeepACCRoIHeads):
        heads.output_mode = mode


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
