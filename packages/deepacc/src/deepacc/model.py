"""DeepACC detector on torchvision Faster R-CNN (Luo et al., ISBI 2021, doi:10.1109/ISBI48211.2021.9433943).

Implements Sec. 2.1-2.4: ResNet-101 + FPN backbone, RPN, RoIAlign, and a custom :class:`DeepACCRoIHeads` with
  * a separate regression branch (two FC layers, class-specific deltas, smooth L1; Sec. 2.1),
  * a siamese classification branch sharing two FC layers (``representation_size`` wide; Sec. 2.1),
  * the margin branch: bias-free cosine classifier trained with the Additive Angular Margin loss (Eq. 1, fp32),
  * the inference branch: per-image class templates from the most confident RoI (Eq. 2) with a learnable bias, CE,
  * the Group Inner-Adjacency loss over the Denver groups (Eq. 3), total loss Eq. 4,
  * its own post-processing that keeps RoI indices, with a top-1-class-per-RoI mode for mAP_max (Sec. 3.1).
Table 1 rows are config switches (``separate_reg``, ``aam``, ``siamese``, ``gia``); the Table 2 RetinaNet baseline is
``arch="retinanet"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from deepacc.config import DeepACCConfig, ModelConfig
from deepacc.losses import aam_loss, box_regression_loss, cosine, gia_loss, group_adjacency, select_templates

__all__ = [
    "BACKBONE_WEIGHT_FILES",
    "DeepACCRetinaNet",
    "DeepACCRoIHeads",
    "TinyBody",
    "agnostic_top1",
    "build_model",
    "cast_bf16",
    "postprocess_detections",
    "resolve_backbone_weights",
]

#: torchvision's IMAGENET1K_V1 file names (what mmdet's ``torchvision://resnet101`` loaded) [V].
BACKBONE_WEIGHT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}
_WEIGHTS_URL = "https://download.pytorch.org/models/"


# --------------------------------------------------------------------------------------------------------- backbone
class TinyBody(nn.Module):
    """Small BatchNorm CNN with ResNet-like strides 4/8/16/32 (``layer1``..``layer4``) for tests and the demo."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = block(widths[0], widths[0])  # stride 4
        self.layer2 = block(widths[0], widths[1])  # stride 8
        self.layer3 = block(widths[1], widths[2])  # stride 16
        self.layer4 = block(widths[2], widths[3])  # stride 32

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - IntermediateLayerGetter walks the children
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def resolve_backbone_weights(backbone: str, pretrained: str | Path | None) -> Path | None:
    """Find the ImageNet weights file of ``backbone``.

    Order: explicit path (file, or a directory holding the torchvision file name), ``$DEEPACC_WEIGHTS_DIR``, the torch
    hub cache (``$TORCH_HOME/hub/checkpoints``). ``None``/"none" means random init.

    Raises:
        FileNotFoundError: naming the file, where to get it, and ``--pretrained none`` for random init.
    """
    if pretrained is None or str(pretrained).lower() in ("none", ""):
        return None
    if backbone not in BACKBONE_WEIGHT_FILES:
        raise ValueError(f"backbone {backbone!r} has no ImageNet weights; use --pretrained none")
    fname = BACKBONE_WEIGHT_FILES[backbone]
    candidates: list[Path] = []
    if str(pretrained).lower() not in ("imagenet", "auto", "default"):
        p = Path(pretrained).expanduser()
        candidates.append(p / fname if p.is_dir() else p)
    else:
        if os.environ.get("DEEPACC_WEIGHTS_DIR"):
            candidates.append(Path(os.environ["DEEPACC_WEIGHTS_DIR"]).expanduser() / fname)
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
        candidates.append(torch_home / "hub" / "checkpoints" / fname)
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"backbone weights file {fname} not found (looked at: {tried}). Download {_WEIGHTS_URL}{fname} and pass "
        f"--pretrained /path/to/{fname} (or put it in $DEEPACC_WEIGHTS_DIR), or use --pretrained none for random init "
        "(then also set model.norm: bn)."
    )


def _load_body_weights(body: nn.Module, path: Path) -> None:
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


def build_backbone(cfg: ModelConfig, pretrained: str | Path | None = None) -> BackboneWithFPN:
    """ResNet (or tiny) + FPN with levels '0'..'3' and 'pool', ``cfg.fpn_channels`` wide."""
    if cfg.backbone == "tiny":
        if pretrained is not None and str(pretrained).lower() not in ("none", ""):
            raise ValueError("backbone 'tiny' has no pretrained weights; use --pretrained none")
        widths = tuple(cfg.tiny_widths)
        body = TinyBody(widths)  # type: ignore[arg-type]
        stages = list(range(cfg.fpn_min_level - 1, 5))  # e.g. [2, 3, 4] for P3..P5
        return BackboneWithFPN(
            body,
            return_layers={f"layer{s}": str(i) for i, s in enumerate(stages)},
            in_channels_list=[widths[s - 1] for s in stages],
            out_channels=cfg.fpn_channels,
            extra_blocks=LastLevelMaxPool(),
        )
    weights_file = resolve_backbone_weights(cfg.backbone, pretrained)
    norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
    # paper: ImageNet-initialised ResNet-101; weights=None + manual load avoids any hub download (brief Sec. 3).
    trainable = cfg.trainable_layers if weights_file is not None else 5
    backbone = resnet_fpn_backbone(
        backbone_name=cfg.backbone,
        weights=None,
        norm_layer=norm_layer,
        trainable_layers=5,
        returned_layers=list(range(cfg.fpn_min_level - 1, 5)),
    )
    if weights_file is not None:
        _load_body_weights(backbone.body, weights_file)
    # freeze like torchvision's trainable_layers (after loading, so frozen params keep ImageNet values)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers_to_train.append("bn1")
    for name, p in backbone.body.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            p.requires_grad_(False)
    return backbone


# ------------------------------------------------------------------------------------------------- post-processing
def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    mode: str = "standard",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> dict[str, Tensor]:
    """Post-process one image's per-class boxes and scores, keeping the RoI index of every detection.

    Args:
        boxes: ``[R, K, 4]`` decoded, clipped xyxy boxes per class (class 0 = background).
        scores: ``[R, K]`` class probabilities.
        mode: ``standard`` (every foreground class of every RoI is a candidate; mAP) or ``max`` (only the arg-max
            foreground class of each RoI; mAP_max, Sec. 3.1).
        score_thresh, nms_thresh, detections_per_img: as torchvision (class-wise NMS).
        min_size: boxes with a side below this are removed.

    Returns:
        dict with ``boxes [N,4]``, ``scores [N]``, ``labels [N]`` (1..K-1), ``roi_indices [N]`` (into the R RoIs).
    """
    r, k = scores.shape
    device = scores.device
    if mode == "standard":
        b = boxes[:, 1:].reshape(-1, 4)  # [R*(K-1), 4]
        s = scores[:, 1:].reshape(-1)  # [R*(K-1)]
        lab = torch.arange(1, k, device=device).repeat(r)  # [R*(K-1)]
        roi = torch.arange(r, device=device).repeat_interleave(k - 1)  # [R*(K-1)]
    elif mode == "max":
        s, cls = scores[:, 1:].max(dim=1)  # [R], [R]
        lab = cls + 1
        roi = torch.arange(r, device=device)
        b = boxes[roi, lab]  # [R, 4]
    else:
        raise ValueError(f"mode must be 'standard' or 'max', got {mode!r}")
    keep = torch.where(s > score_thresh)[0]
    b, s, lab, roi = b[keep], s[keep], lab[keep], roi[keep]
    keep = box_ops.remove_small_boxes(b, min_size)
    b, s, lab, roi = b[keep], s[keep], lab[keep], roi[keep]
    keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]  # sorted by descending score
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep], "roi_indices": roi[keep]}


def agnostic_top1(det: dict[str, Tensor], score_thresh: float = 0.5, nms_thresh: float = 0.7) -> dict[str, Tensor]:
    """Acc/AER protocol after top-1 selection (Sec. 3.1): keep ``score >= score_thresh``, class-agnostic NMS."""
    keep = torch.where(det["scores"] >= score_thresh)[0]
    out = {k: v[keep] for k, v in det.items()}
    keep = nms(out["boxes"], out["scores"], nms_thresh)
    return {k: v[keep] for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------- heads
class DeepACCRoIHeads(RoIHeads):
    """RoI heads of DeepACC (Sec. 2.1-2.4); the Table 1 switches come from :class:`ModelConfig`.

    Training returns ``({}, losses)`` with ``loss_box_reg`` plus, by switch, ``loss_classifier`` (plain CE),
    ``loss_aam`` (margin branch, weighted by alpha), ``loss_ce`` (inference branch, beta) and ``loss_gia`` (gamma).
    Evaluation returns one dict per image; ``output_mode`` selects ``standard`` / ``max`` detections (with
    ``roi_indices``) or ``raw`` (``boxes [R*K, 4]`` flattened per class, ``scores [R, K]``) for evaluation code that
    post-processes both ways from a single forward pass.
    """

    def __init__(self, cfg: ModelConfig, box_roi_pool: MultiScaleRoIAlign, in_channels: int) -> None:
        k = cfg.num_classes
        rep = cfg.representation_size
        flat = in_channels * cfg.roi_output_size**2
        cls_head = TwoMLPHead(flat, rep)  # shared fc6/fc7 of both siamese streams
        super().__init__(
            box_roi_pool=box_roi_pool,
            box_head=cls_head,
            box_predictor=None,
            fg_iou_thresh=cfg.box_fg_iou_thresh,
            bg_iou_thresh=cfg.box_bg_iou_thresh,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=cfg.box_positive_fraction,
            bbox_reg_weights=cfg.bbox_reg_weights,
            score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_img,
        )
        self.cfg = cfg
        self.num_classes = k
        self.reg_head = TwoMLPHead(flat, rep) if cfg.separate_reg else None  # separate regression branch, Sec. 2.1
        self.bbox_pred = nn.Linear(rep, 4 * k)  # class-specific deltas
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)
        self.use_margin_branch = cfg.aam or cfg.siamese
        if self.use_margin_branch:
            self.margin_weight = nn.Parameter(torch.empty(k, rep))  # W_M: global class centres, no bias (Sec. 2.2)
            nn.init.normal_(self.margin_weight, std=0.01)
            self.cls_score = None
        else:
            self.cls_score = nn.Linear(rep, k)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.zeros_(self.cls_score.bias)
        self.inf_bias = nn.Parameter(torch.zeros(k)) if cfg.siamese else None  # b_j of Eq. 2, zero-initialised
        self.register_buffer("adjacency", group_adjacency(k), persistent=False)
        self.register_buffer("train_iters", torch.zeros((), dtype=torch.long))  # for template_warmup_iters
        self.output_mode = "standard"

    # -- branches ---------------------------------------------------------------------------------------------
    def _class_outputs(
        self,
        emb: Tensor,
        counts: list[int],
        labels: Tensor | None = None,
        template_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Classification outputs for RoI embeddings ``emb [R, D]`` grouped per image by ``counts``.

        Returns ``logits`` (final, ``[R, K]``) and, with the margin branch, ``cos`` and ``margin_probs``.
        """
        cfg = self.cfg
        out: dict[str, Tensor] = {}
        if not self.use_margin_branch:
            assert self.cls_score is not None
            out["logits"] = self.cls_score(emb)  # [R, K]
            return out
        with torch.autocast(device_type=emb.device.type, enabled=False):
            emb32 = emb.float()
            cos = cosine(emb32, self.margin_weight)  # [R, K], fp32
            margin_probs = F.softmax(cfg.scale * cos, dim=1)  # [R, K], no margin
            out["cos"] = cos
            out["margin_probs"] = margin_probs
            if not cfg.siamese:
                out["logits"] = cfg.scale * cos
                return out
            assert self.inf_bias is not None
            sel_probs = margin_probs.detach() if cfg.detach_templates else margin_probs
            allow_local = not self.training or int(self.train_iters) >= cfg.template_warmup_iters
            delta = cfg.delta if allow_local else float("inf")  # warm-up: global centres only
            logits = []
            start = 0
            for n in counts:
                e = emb32[start : start + n]  # [n, D]
                cand = None if template_mask is None else template_mask[start : start + n]
                templates, _ = select_templates(sel_probs[start : start + n], e, self.margin_weight, delta, cand)
                if cfg.detach_templates:
                    templates = templates.detach()
                x = F.normalize(e, dim=1) * cfg.scale if cfg.inference_feature_norm else e  # [n, D]
                logits.append(x @ templates.t() + self.inf_bias)  # [n, K], Eq. 2
                start += n
            out["logits"] = torch.cat(logits, 0) if logits else emb32.new_zeros((0, self.num_classes))
        return out

    def forward(  # type: ignore[override]
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Run the heads. ``proposals`` is a list of ``[R_i, 4]`` xyxy boxes in the transformed image frame."""
        cfg = self.cfg
        if self.training:
            if targets is None:
                raise ValueError("DeepACCRoIHeads needs targets in training mode")
            gt_boxes = [t["boxes"] for t in targets]
            proposals, _matched, labels_list, regression_targets = self.select_training_samples(proposals, targets)
            labels = torch.cat(labels_list, 0)  # [R]
            reg_targets = torch.cat(regression_targets, 0)  # [R, 4]
            template_mask = None
            if cfg.exclude_gt_templates:
                masks = []
                for p, g in zip(proposals, gt_boxes):
                    masks.append(box_iou(p, g).amax(1) < 0.999 if g.numel() else torch.ones(len(p), dtype=torch.bool))
                template_mask = torch.cat(masks, 0)
        counts = [len(p) for p in proposals]
        box_features = self.box_roi_pool(features, proposals, image_shapes)  # [R, C, 7, 7], proposal order kept
        emb = self.box_head(box_features)  # [R, D]
        reg_emb = self.reg_head(box_features) if self.reg_head is not None else emb  # [R, D]
        box_regression = self.bbox_pred(reg_emb)  # [R, 4K]

        if self.training:
            out = self._class_outputs(emb, counts, labels, template_mask)
            self.train_iters += 1
            losses = {"loss_box_reg": box_regression_loss(box_regression.float(), labels, reg_targets, cfg.reg_beta)}
            if not self.use_margin_branch:
                losses["loss_classifier"] = F.cross_entropy(out["logits"].float(), labels)
            else:
                margin = cfg.margin if cfg.aam else 0.0  # Table 1(d): margin branch without margin
                losses["loss_aam"] = cfg.aam_weight * aam_loss(out["cos"], labels, margin, cfg.scale, cfg.margin_on_bg)
                if cfg.siamese:
                    losses["loss_ce"] = cfg.ce_weight * F.cross_entropy(out["logits"], labels)
            if cfg.gia:
                probs = out["margin_probs"] if "margin_probs" in out else F.softmax(out["logits"].float(), 1)
                img_idx = torch.repeat_interleave(
                    torch.arange(len(counts), device=labels.device), torch.tensor(counts, device=labels.device)
                )  # [R]
                losses["loss_gia"] = cfg.gia_weight * gia_loss(
                    probs, labels, img_idx, self.adjacency, cfg.detach_partner
                )
            return [], losses

        out = self._class_outputs(emb, counts)
        scores = F.softmax(out["logits"].float(), dim=1)  # [R, K]
        # [R, 4K] -> [R, K, 4]; the explicit reshape also covers R = 0 (decode then returns [0, 4K])
        pred_boxes = self.box_coder.decode(box_regression.float(), proposals).reshape(-1, self.num_classes, 4)
        results: list[dict[str, Tensor]] = []
        for b, s, shape in zip(pred_boxes.split(counts, 0), scores.split(counts, 0), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)  # [n, K, 4]
            if self.output_mode == "raw":
                results.append({"boxes": b.reshape(-1, 4), "scores": s})  # boxes [n*K, 4]
            else:
                results.append(
                    postprocess_detections(
                        b, s, self.output_mode, self.score_thresh, self.nms_thresh, self.detections_per_img
                    )
                )
        return results, {}


# ------------------------------------------------------------------------------------------------------ RetinaNet
class _MaxBoxesTransform(GeneralizedRCNNTransform):
    """torchvision's transform; ``postprocess`` also maps the ``max_boxes`` of :class:`DeepACCRetinaNet` back to the
    original image size."""

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if not self.training:
            for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
                if "max_boxes" in pred:
                    pred["max_boxes"] = resize_boxes(pred["max_boxes"], im_s, o_im_s)
        return result


class DeepACCRetinaNet(RetinaNet):
    """torchvision RetinaNet (Table 2 baseline) with a top-1-class-per-anchor post-processing for mAP_max.

    ``output_mode``: ``standard`` (torchvision: every (anchor, class) pair above ``score_thresh`` is a candidate),
    ``max`` (only the arg-max foreground class of each anchor, the RetinaNet analogue of the top-1 class per RoI of
    Sec. 3.1) or ``raw`` (the standard dict plus ``max_boxes`` / ``max_scores`` / ``max_labels``).
    """

    output_mode: str = "standard"

    def postprocess_max(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per anchor keep only its best foreground class (column 0 = background is never a label), then the same
        score threshold, per-level top-k, decoding and class-wise NMS as torchvision."""
        detections: list[dict[str, Tensor]] = []
        for index, image_shape in enumerate(image_shapes):
            boxes_all, scores_all, labels_all = [], [], []
            for reg, logits, anc in zip(
                [br[index] for br in head_outputs["bbox_regression"]],  # [A_l, 4] per level
                [cl[index] for cl in head_outputs["cls_logits"]],  # [A_l, K] per level
                anchors[index],  # [A_l, 4] per level
            ):
                scores, cls = torch.sigmoid(logits[:, 1:]).max(dim=1)  # [A_l], [A_l]: top-1 foreground class
                idx = torch.where(scores > self.score_thresh)[0]
                num_topk = det_utils._topk_min(idx, self.topk_candidates, 0)
                top, order = scores[idx].topk(num_topk)
                idx = idx[order]
                b = self.box_coder.decode_single(reg[idx], anc[idx])  # [n, 4]
                boxes_all.append(box_ops.clip_boxes_to_image(b, image_shape))
                scores_all.append(top)
                labels_all.append(cls[idx] + 1)
            b, s, lab = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = box_ops.batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return detections

    def postprocess_detections(  # type: ignore[override]
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        if self.output_mode == "max":
            return self.postprocess_max(head_outputs, anchors, image_shapes)
        dets = super().postprocess_detections(head_outputs, anchors, image_shapes)
        if self.output_mode == "raw":
            for d, m in zip(dets, self.postprocess_max(head_outputs, anchors, image_shapes)):
                d.update({f"max_{k}": v for k, v in m.items()})
        return dets


# ---------------------------------------------------------------------------------------------------------- builder
def _anchor_generator(cfg: ModelConfig, per_level_scales: int = 1) -> AnchorGenerator:
    if per_level_scales == 1:
        sizes = tuple((s,) for s in cfg.anchor_sizes)
    else:  # RetinaNet: 3 octave scales per level
        sizes = tuple(tuple(int(s * 2 ** (i / 3)) for i in range(3)) for s in cfg.anchor_sizes)
    ratios = (tuple(cfg.aspect_ratios),) * len(sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


def build_model(cfg: DeepACCConfig, pretrained: str | Path | None = None) -> nn.Module:
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
    backbone = build_backbone(m, pretrained)
    common: dict[str, Any] = dict(
        min_size=m.min_size,
        max_size=m.max_size,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    if m.arch == "retinanet":
        model = DeepACCRetinaNet(
            backbone,
            num_classes=m.num_classes,
            anchor_generator=_anchor_generator(m, 3),
            score_thresh=m.score_thresh,
            nms_thresh=m.nms_thresh,
            detections_per_img=m.detections_per_img,
            **common,
        )
        model.transform = _MaxBoxesTransform(m.min_size, m.max_size, common["image_mean"], common["image_std"])
        model.deepacc_config = cfg  # type: ignore[attr-defined]
        return model
    n_levels = 6 - m.fpn_min_level  # FPN outputs '0'.. (the extra 'pool' level is used by the RPN only)
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
        box_roi_pool=roi_pool,
        box_head=nn.Identity(),  # replaced below; avoids allocating the stock 12544x1024 head
        box_predictor=nn.Identity(),
        **common,
    )
    model.roi_heads = DeepACCRoIHeads(m, roi_pool, backbone.out_channels)
    model.deepacc_config = cfg  # type: ignore[attr-defined]
    return model


def set_output_mode(model: nn.Module, mode: str) -> None:
    """Choose ``standard`` / ``max`` / ``raw`` outputs of a DeepACC model or of the RetinaNet baseline."""
    if mode not in ("standard", "max", "raw"):
        raise ValueError(f"output mode must be standard|max|raw, got {mode!r}")
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


def _to_dtype(obj: Any, dtype: torch.dtype) -> Any:
    """Cast floating tensors inside ``obj`` (tensor, list/tuple, dict) to ``dtype``."""
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_dtype(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_dtype(v, dtype)) for k, v in obj.items())
    return obj


def cast_bf16(model: nn.Module) -> nn.Module:
    """Inference only: cast the heavy parts (backbone + FPN, RPN head, the two-FC RoI heads) to bf16 once, in place.

    Each cast part takes and returns fp32 (hooks convert at its boundary), so anchors, box decoding, the margin and
    inference branches (fp32 as in training), NMS and post-processing stay fp32. On CPUs with AMX / AVX512-BF16, bf16
    weights avoid the per-call weight re-cast of ``torch.autocast``. Returns ``model`` (in eval mode).
    """
    parts: list[nn.Module] = [model.backbone]
    if hasattr(model, "rpn"):
        parts.append(model.rpn.head)
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, DeepACCRoIHeads):
        parts += [m for m in (heads.box_head, heads.reg_head) if m is not None]
    for part in parts:
        part.to(torch.bfloat16)
        part.register_forward_pre_hook(lambda _m, args: _to_dtype(args, torch.bfloat16))
        part.register_forward_hook(lambda _m, _args, out: _to_dtype(out, torch.float32))
    return model.eval()
