"""Stage 1a: the torchvision Faster R-CNN nodule detector (one foreground class) and per-frame box features.

Per frame the top detection's box-head output (``TwoMLPHead``: the FC7 equivalent, 1024-d for torchvision's
ResNet50-FPN head) is extracted with its box and score [P §2 "output of the FC7 layer"]; frames without a detection
above the threshold are dropped, as in the official stage-1 JSONs [V brief §2].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kfgnet.config import DetectorConfig, config_to_dict
from kfgnet.data import DataError, VideoRecord, read_video

__all__ = ["TinyBackbone", "build_detector", "train_detector", "detect_frames", "FrameDetections",
           "save_detector", "load_detector", "detection_dataset"]


class TinyBackbone(nn.Sequential):
    """4-conv backbone (stride 8, ``out_channels`` 64) for tests and the demo."""

    def __init__(self, out_channels: int = 64):
        def block(ci: int, co: int, s: int) -> list[nn.Module]:
            return [nn.Conv2d(ci, co, 3, stride=s, padding=1), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

        super().__init__(*block(3, 16, 2), *block(16, 32, 2), *block(32, out_channels, 2),
                         *block(out_channels, out_channels, 1))
        self.out_channels = out_channels


def _load_backbone_weights(module: nn.Module, path: str) -> None:
    p = Path(path if path != "env" else os.environ.get("KFGNET_WEIGHTS_DIR", ".") + "/resnet50.pth")
    if not p.is_file():
        raise FileNotFoundError(
            f"backbone weights {p} not found; download ImageNet weights (e.g. torchvision's "
            f"https://download.pytorch.org/models/resnet50-0676ba61.pth) to that path or set KFGNET_WEIGHTS_DIR, "
            f"or train from scratch with --pretrained-backbone none")
    from kfgnet.model import load_local_weights

    sd = {k: v for k, v in load_local_weights(p).items() if not k.startswith("fc.")}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"{p} does not match the backbone: unexpected keys {unexpected[:5]}")


def build_detector(cfg: DetectorConfig) -> nn.Module:
    """torchvision ``FasterRCNN`` with 2 classes (background, nodule) for ``cfg.backbone``."""
    from torchvision.models import detection as tvd
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if cfg.backbone == "resnet50_fpn":
        m = tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=cfg.min_size,
                                        max_size=cfg.max_size)
        if cfg.pretrained_backbone != "none":
            _load_backbone_weights(m.backbone.body, cfg.pretrained_backbone)
        return m
    if cfg.backbone == "mobilenet_v3_fpn":
        m = tvd.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                  min_size=cfg.min_size, max_size=cfg.max_size)
        if cfg.pretrained_backbone != "none":
            _load_backbone_weights(m.backbone.body, cfg.pretrained_backbone)
        return m
    backbone = TinyBackbone(64)
    anchors = AnchorGenerator(sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=((0.67, 1.0, 1.5),))
    pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(64 * 7 * 7, cfg.representation)
    return tvd.FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                          box_head=head, box_predictor=FastRCNNPredictor(cfg.representation, 2),
                          min_size=cfg.min_size, max_size=cfg.max_size, rpn_pre_nms_top_n_train=300,
                          rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                          rpn_batch_size_per_image=64, box_batch_size_per_image=64, box_detections_per_img=5,
                          box_score_thresh=0.0)


def detection_dataset(records: list[VideoRecord], max_per_video: int = 8, negatives_per_video: int = 1,
                      seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Annotated frames (``(H, W, 3)`` uint8, ``(N, 4)`` float boxes) sampled from the records' boxes.

    Boxes outside the frame raise :class:`DataError`. Up to ``negatives_per_video`` frames without a box are added
    as background-only images when the video has unannotated frames far from any box.
    """
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        if not r.boxes:
            continue
        frames = read_video(r.path)
        h, w = frames.shape[1:3]
        keys = sorted(r.boxes)
        for k in keys:
            x1, y1, x2, y2 = r.boxes[k]
            if k >= len(frames):
                raise DataError(f"box on frame {k} of {r.path}, which has only {len(frames)} frames")
            if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
                raise DataError(f"box {r.boxes[k]} of frame {k} in {r.path} lies outside the {w}x{h} frame")
        sel = np.linspace(0, len(keys) - 1, min(len(keys), max_per_video)).round().astype(int)
        pick = sorted({keys[i] for i in sel})
        for k in pick:
            out.append((frames[k], np.asarray([r.boxes[k]], dtype=np.float32)))
        free = [i for i in range(len(frames)) if all(abs(i - k) > 3 for k in keys)]
        for i in rng.permutation(free)[:negatives_per_video]:
            out.append((frames[int(i)], np.zeros((0, 4), np.float32)))
    if not out:
        raise DataError("no annotated boxes in the manifest: the detector needs 'boxes' on some frames")
    return out


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)  # (H,W,3)->(3,H,W)


def train_detector(samples: list[tuple[np.ndarray, np.ndarray]], cfg: DetectorConfig, device: torch.device,
                   epochs: int | None = None, progress: bool = True, seed: int = 0,
                   log: list[dict[str, Any]] | None = None) -> nn.Module:
    """Train the detector with SGD (lr, momentum 0.9, wd 1e-4; torchvision reference settings) and horizontal flips."""
    from medshared.runtime import seed_everything

    seed_everything(seed)
    model = build_detector(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n_ep = cfg.epochs if epochs is None else epochs
    rng = np.random.default_rng(seed)
    steps_per_epoch = max(1, int(np.ceil(len(samples) / cfg.batch_size)))
    total = n_ep * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 2), pct_start=0.1)
    it = range(n_ep)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train detector", unit="epoch", leave=False)
    for ep in it:
        order = rng.permutation(len(samples))
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            imgs, tgts = [], []
            for i in idx:
                img, boxes = samples[int(i)]
                boxes = boxes.copy()
                if rng.uniform() < 0.5:
                    img = img[:, ::-1]
                    w = img.shape[1]
                    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
                imgs.append(_to_tensor(img).to(device))
                tgts.append({"boxes": torch.as_tensor(boxes, device=device).reshape(-1, 4),
                             "labels": torch.ones(len(boxes), dtype=torch.int64, device=device)})
            losses = model(imgs, tgts)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < max(total, 2):
                sched.step()
            tot += float(loss.detach())
        if log is not None:
            log.append({"epoch": ep + 1, "loss": tot / steps_per_epoch})
        if progress:
            it.set_postfix(loss=f"{tot / steps_per_epoch:.3f}")
    return model.eval()


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
            np.savez(fh, frame_num=self.frame_num, boxes=self.boxes, scores=self.scores, features=self.features,
                     size=np.asarray(self.size), num_frames=np.asarray(self.num_frames))

    @classmethod
    def load(cls, path: Path) -> FrameDetections:
        z = np.load(path)
        return cls(z["frame_num"], z["boxes"], z["scores"], z["features"], tuple(int(v) for v in z["size"]),
                   int(z["num_frames"]))


@torch.no_grad()
def detect_frames(model: nn.Module, frames: np.ndarray, device: torch.device, batch_size: int = 16,
                  score_threshold: float = 0.05) -> FrameDetections:
    """Run the detector on every frame and keep each frame's top detection with its FC7 feature.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.

    Returns:
        :class:`FrameDetections` (possibly empty: the caller decides how to handle a video without detections).
    """
    model.eval()
    fn, bx, sc, ft = [], [], [], []
    for s in range(0, len(frames), batch_size):
        imgs = [_to_tensor(f).to(device) for f in frames[s:s + batch_size]]
        orig = [tuple(im.shape[-2:]) for im in imgs]
        il, _ = model.transform(imgs)
        feats = model.backbone(il.tensors)
        if isinstance(feats, torch.Tensor):
            feats = {"0": feats}
        props, _ = model.rpn(il, feats)
        dets, _ = model.roi_heads(feats, props, il.image_sizes)
        for j, d in enumerate(dets):
            keep = d["scores"] >= score_threshold
            if not bool(keep.any()):
                continue
            top = int(torch.argmax(d["scores"] * keep))
            box_r = d["boxes"][top:top + 1]  # (1, 4) in the resized image
            f = model.roi_heads.box_head(model.roi_heads.box_roi_pool(
                {k: v[j:j + 1] for k, v in feats.items()}, [box_r], [il.image_sizes[j]]))  # (1, D)
            rh, rw = il.image_sizes[j]
            oh, ow = orig[j]
            scale = torch.tensor([ow / rw, oh / rh, ow / rw, oh / rh], device=box_r.device)
            fn.append(s + j)
            bx.append((box_r[0] * scale).cpu().numpy())
            sc.append(float(d["scores"][top]))
            ft.append(f[0].float().cpu().numpy())
    d = ft[0].shape[0] if ft else int(model.roi_heads.box_head.fc7.out_features)
    return FrameDetections(np.asarray(fn, dtype=np.int64), np.asarray(bx, dtype=np.float32).reshape(-1, 4),
                           np.asarray(sc, dtype=np.float32), np.asarray(ft, dtype=np.float32).reshape(-1, d),
                           tuple(frames.shape[1:3]), len(frames))


def save_detector(path: Path, model: nn.Module, cfg: DetectorConfig, extra: dict[str, Any] | None = None) -> None:
    from medshared.checkpoint import save_checkpoint

    save_checkpoint(path, model.state_dict(), {"detector": config_to_dict(cfg)}, extra)


def load_detector(path: Path, device: torch.device) -> tuple[nn.Module, DetectorConfig]:
    from medshared.checkpoint import load_checkpoint

    from kfgnet.config import config_from_dict

    sd, conf, _ = load_checkpoint(path)
    if "detector" not in conf:
        raise ValueError(f"{path} is not a kfgnet detector checkpoint (no detector config in its metadata)")
    cfg = config_from_dict(DetectorConfig, conf["detector"])
    m = build_detector(cfg)
    m.load_state_dict(sd)
    return m.to(device).eval(), cfg
