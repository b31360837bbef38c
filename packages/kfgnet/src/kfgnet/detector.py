"""Stage 1a: the torchvision Faster R-CNN nodule detector (one foreground class) and per-frame box features.

Per frame the top detection's box-head output (``TwoMLPHead``: the FC7 equivalent, 1024-d for torchvision's
ResNet50-FPN head) is extracted with its box and score [P §2 "output of the FC7 layer"]; frames without a detection
above the threshold are dropped, as in the official stage-1 JSONs [V brief §2].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kfgnet.config import DetectorConfig, config_to_dict

__all__ = [
    "TinyBackbone",
    "SmallBackbone",
    "build_detector",
    "detect_frames",
    "FrameDetections",
    "save_detector",
    "load_detector",
]


def _conv_bn(ci: int, co: int, s: int) -> list[nn.Module]:
    return [nn.Conv2d(ci, co, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]


class TinyBackbone(nn.Sequential):
    """4-conv backbone (stride 8, ``out_channels`` 64) for tests and the demo."""

    def __init__(self, out_channels: int = 64):
        super().__init__(
            *_conv_bn(3, 16, 2),
            *_conv_bn(16, 32, 2),
            *_conv_bn(32, out_channels, 2),
            *_conv_bn(out_channels, out_channels, 1),
        )
        self.out_channels = out_channels


class SmallBackbone(nn.Sequential):
    """7-conv BatchNorm backbone, stride 16: stages ``widths[0..3]`` (stride 2 each, a second conv in stages 2-4).

    Sized to train from random init on one CPU thread (kfgnet_ddti: 1.0 M backbone parameters at widths 16-32-64-96).
    ``forward(x (B, 3, H, W))`` -> ``(B, widths[3], H / 16, W / 16)``.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96)):
        if len(widths) != 4:
            raise ValueError(f"the small backbone needs 4 widths, got {widths}")
        w = widths
        super().__init__(
            *_conv_bn(3, w[0], 2),
            *_conv_bn(w[0], w[1], 2),
            *_conv_bn(w[1], w[1], 1),
            *_conv_bn(w[1], w[2], 2),
            *_conv_bn(w[2], w[2], 1),
            *_conv_bn(w[2], w[3], 2),
            *_conv_bn(w[3], w[3], 1),
        )
        self.out_channels = w[3]


_HINT = "or train from random init with --pretrained-backbone none --weights none"


def _torchvision_backbone(cfg: DetectorConfig, load_weights: bool, offline: bool) -> nn.Module:
    """ResNet50-FPN or MobileNetV3-FPN through torchvision's public backbone builders, with the config's norm layer
    and trainable stages; ImageNet weights loaded into the body when asked (before freezing takes effect)."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    from kfgnet.weights import load_state_dict_file, resolve_weights

    norm = FrozenBatchNorm2d if cfg.frozen_bn else nn.BatchNorm2d
    net = "resnet50" if cfg.backbone == "resnet50_fpn" else "mobilenet_v3_large"
    if cfg.backbone == "resnet50_fpn":
        bb = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=norm, trainable_layers=cfg.trainable_layers
        )
    else:
        bb = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=norm,
            trainable_layers=cfg.trainable_layers
            if cfg.trainable_backbone_layers >= 0
            else (3 if cfg.pretrained else 6),
        )
    if load_weights and cfg.pretrained_backbone != "none":
        path = resolve_weights(cfg.pretrained_backbone, net, "pass --pretrained-backbone none " + _HINT[3:], offline)
        sd = load_state_dict_file(path)
        if cfg.backbone == "resnet50_fpn":
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            missing, unexpected = bb.body.load_state_dict(sd, strict=False)
        else:  # torchvision's MobileNetV3 backbone body holds the "features" modules by index
            sd = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
            missing, unexpected = bb.body.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if unexpected or missing:
            raise ValueError(
                f"{path} does not match the {net} backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return bb


def build_detector(cfg: DetectorConfig, load_weights: bool = True, offline: bool = False) -> nn.Module:
    """torchvision ``FasterRCNN`` with 2 classes (background, nodule) described by ``cfg``.

    Args:
        cfg: the detector config (backbone, norm, trainable stages, anchors, sampling, weights).
        load_weights: load ``cfg.pretrained_backbone`` / ``cfg.weights`` (False when a checkpoint follows).
        offline: never download weights (the ``--offline`` flag).

    Returns:
        the model in training mode; ``forward(images: list[(3, H, W) 0..1], targets)`` as torchvision's.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    common = dict(
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_batch_size_per_image=cfg.rpn_batch,
        box_batch_size_per_image=cfg.box_batch,
        box_detections_per_img=cfg.detections_per_img,
        box_score_thresh=cfg.score_threshold,
    )
    if cfg.backbone in ("resnet50_fpn", "mobilenet_v3_fpn"):
        bb = _torchvision_backbone(cfg, load_weights, offline)
        n_levels = len(bb.body.return_layers) + 1 if cfg.backbone == "resnet50_fpn" else 3
        sizes = tuple(cfg.anchor_sizes)
        if len(sizes) == n_levels:  # one size per FPN level (torchvision's layout)
            anchor_sizes = tuple((s,) for s in sizes)
        else:  # every size on every level
            anchor_sizes = (sizes,) * n_levels
        anchors = AnchorGenerator(anchor_sizes, (tuple(cfg.aspect_ratios),) * n_levels)
        m = FasterRCNN(
            bb,
            num_classes=2,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=cfg.proposals_train,
            rpn_post_nms_top_n_train=cfg.proposals_train,
            rpn_pre_nms_top_n_test=cfg.proposals_test,
            rpn_post_nms_top_n_test=cfg.proposals_test,
            **common,
        )
        if load_weights and cfg.weights != "none":
            _load_detector_weights(m, cfg, offline)
        return m
    backbone = TinyBackbone(cfg.widths[-1]) if cfg.backbone == "tiny" else SmallBackbone(cfg.widths)
    c = backbone.out_channels
    anchors = AnchorGenerator(sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=(tuple(cfg.aspect_ratios),))
    pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(c * 7 * 7, cfg.representation)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(cfg.representation, 2),
        rpn_pre_nms_top_n_train=3 * cfg.proposals_train,
        rpn_post_nms_top_n_train=cfg.proposals_train,
        rpn_pre_nms_top_n_test=3 * cfg.proposals_test,
        rpn_post_nms_top_n_test=cfg.proposals_test,
        **common,
    )


def _load_detector_weights(m: nn.Module, cfg: DetectorConfig, offline: bool) -> None:
    """Full torchvision COCO detector weights (all but the 91-class box predictor, which stays 2-class)."""
    from kfgnet.weights import load_state_dict_file, resolve_weights

    net = "fasterrcnn_resnet50_fpn" if cfg.backbone == "resnet50_fpn" else "fasterrcnn_mobilenet_v3_large_fpn"
    path = resolve_weights(cfg.weights, net, "pass --weights none " + _HINT[3:].replace(" --weights none", ""), offline)
    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("roi_heads.box_predictor.")}
    own = m.state_dict()
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [
        k for k in missing if not k.startswith("roi_heads.box_predictor.") and not k.endswith("num_batches_tracked")
    ]
    if bad or missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision {net} checkpoint matching this config (anchors and heads must "
            f"be torchvision's): shape mismatch {bad[:3]}, missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)  # (H,W,3)->(3,H,W)


@dataclass
class FrameDetections:
    """Top detection per frame of one video: only frames with a detection are kept.

    Attributes:
        frame_num: ``(N,)`` int frame indices; boxes: ``(N, 4)`` xyxy pixels; scores: ``(N,)``;
        features: ``(N, D)`` box-head (FC7) features; size: (H, W) of the frames; num_frames: video length.
    """

    frame_num: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    size: tuple[int, int]
    num_frames: int

    def save(self, path: Path) -> None:
        from medshared.runtime import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                frame_num=self.frame_num,
                boxes=self.boxes,
                scores=self.scores,
                features=self.features,
                size=np.asarray(self.size),
                num_frames=np.asarray(self.num_frames),
            )

    @classmethod
    def load(cls, path: Path) -> FrameDetections:
        z = np.load(path)
        return cls(
            z["frame_num"],
            z["boxes"],
            z["scores"],
            z["features"],
            tuple(int(v) for v in z["size"]),
            int(z["num_frames"]),
        )


class _Capture:
    """Forward hooks that keep the last backbone features and transformed image sizes of a public ``model(images)``
    call, so the top boxes' FC7 features can be pooled from them in one batched call."""

    def __init__(self, model: nn.Module):
        self.feats: dict[str, torch.Tensor] = {}
        self.image_sizes: list[tuple[int, int]] = []
        self._hooks = [
            model.backbone.register_forward_hook(self._on_backbone),
            model.transform.register_forward_hook(self._on_transform),
        ]

    def _on_backbone(self, _m: nn.Module, _inp: Any, out: Any) -> None:
        self.feats = {"0": out} if isinstance(out, torch.Tensor) else dict(out)

    def _on_transform(self, _m: nn.Module, _inp: Any, out: Any) -> None:
        self.image_sizes = [tuple(s) for s in out[0].image_sizes]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


@torch.no_grad()
def detect_frames(
    model: nn.Module,
    frames: np.ndarray,
    device: torch.device,
    batch_size: int = 16,
    score_threshold: float = 0.05,
    precision: Any = None,
) -> FrameDetections:
    """Run the detector on every frame and keep each frame's top detection with its FC7 feature.

    The detector runs through its public ``model(images)`` call; forward hooks keep the backbone features, and the
    top boxes of a whole batch are pooled (``roi_heads.box_roi_pool``) and passed through the box head
    (``roi_heads.box_head``, torchvision's FC7) in one call per batch.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        precision: a ``medshared.precision.Precision``; bf16 runs the backbone under autocast
            (:func:`kfgnet.precision.backbone_autocast`), the heads and the FC7 features stay fp32. None: fp32.

    Returns:
        :class:`FrameDetections` (possibly empty: the caller decides how to handle a video without detections).
    """
    model.eval()
    fn, bx, sc, ft = [], [], [], []
    from kfgnet.precision import backbone_autocast

    cap = _Capture(model)
    try:
        for s in range(0, len(frames), batch_size):
            imgs = [_to_tensor(f).to(device) for f in frames[s : s + batch_size]]
            with backbone_autocast(model, precision):
                dets = model(imgs)  # boxes in the original frame's pixels
            top: list[torch.Tensor] = []
            for j, d in enumerate(dets):
                keep = d["scores"] >= score_threshold
                if not bool(keep.any()):
                    top.append(torch.zeros(0, 4, device=device))
                    continue
                k = int(torch.argmax(d["scores"] * keep))
                rh, rw = cap.image_sizes[j]
                oh, ow = imgs[j].shape[-2:]
                scale = torch.tensor([rw / ow, rh / oh, rw / ow, rh / oh], device=device)
                top.append(d["boxes"][k : k + 1] * scale)  # (1, 4) in the resized image, as the features
                fn.append(s + j)
                bx.append(d["boxes"][k].cpu().numpy())
                sc.append(float(d["scores"][k]))
            if any(len(t) for t in top):
                pooled = model.roi_heads.box_roi_pool(cap.feats, top, cap.image_sizes)  # (n, C, 7, 7), fp32 maps
                ft.extend(model.roi_heads.box_head(pooled).float().cpu().numpy())  # (n, D)
    finally:
        cap.close()
    d = ft[0].shape[0] if ft else int(model.roi_heads.box_head.fc7.out_features)
    return FrameDetections(
        np.asarray(fn, dtype=np.int64),
        np.asarray(bx, dtype=np.float32).reshape(-1, 4),
        np.asarray(sc, dtype=np.float32),
        np.asarray(ft, dtype=np.float32).reshape(-1, d),
        tuple(frames.shape[1:3]),
        len(frames),
    )


def save_detector(path: Path, model: nn.Module, cfg: DetectorConfig, extra: dict[str, Any] | None = None) -> None:
    """Safetensors checkpoint with the detector config (and ``extra``, e.g. the training median box) in its
    metadata."""
    from medshared.checkpoint import save_checkpoint
    from medshared.distributed import unwrap_model

    save_checkpoint(path, unwrap_model(model).state_dict(), {"detector": config_to_dict(cfg)}, extra)


def load_detector(path: Path, device: torch.device, with_extra: bool = False) -> Any:
    """Rebuild a detector from its checkpoint alone (no weights are downloaded: the checkpoint holds them).

    Returns:
        ``(model in eval mode, config)``, plus the checkpoint's ``extra`` dict when ``with_extra``.
    """
    from medshared.checkpoint import load_checkpoint

    from kfgnet.config import config_from_dict

    sd, conf, extra = load_checkpoint(path)
    if "detector" not in conf:
        raise ValueError(f"{path} is not a kfgnet detector checkpoint (no detector config in its metadata)")
    cfg = config_from_dict(DetectorConfig, conf["detector"])
    m = build_detector(cfg, load_weights=False)
    m.load_state_dict(sd)
    m = m.to(device).eval()
    return (m, cfg, extra) if with_extra else (m, cfg)
