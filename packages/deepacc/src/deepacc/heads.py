"""RoI heads of DeepACC (Luo et al., ISBI 2021, Sec. 2.1-2.4) on torchvision's ``RoIHeads``.

* a separate regression branch (two FC layers, class-specific deltas, smooth L1; Sec. 2.1),
* a siamese classification branch sharing two FC layers (``representation_size`` wide; Sec. 2.1),
* the margin branch: bias-free cosine classifier trained with the Additive Angular Margin loss (Eq. 1, fp32),
* the inference branch: per-image class templates from the most confident RoI (Eq. 2) with a learnable bias, CE,
* the Group Inner-Adjacency loss over the Denver groups (Eq. 3); total loss Eq. 4;
* not in the paper (README "Margin branch health"): the centre-spread penalty on W_M (``loss_centre``) and the
  inference branch's own scale s_I (``inference_scale``), which keep the class centres from collapsing into one cone.
The Table 1 rows are the config switches ``separate_reg``, ``aam``, ``siamese``, ``gia``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops import boxes as box_ops

from deepacc.config import ModelConfig
from deepacc.losses import (
    aam_loss,
    box_regression_loss,
    centre_spread_loss,
    cosine,
    gia_loss,
    group_adjacency,
    select_templates,
)
from deepacc.postprocess import postprocess_detections

__all__ = ["ClassHead", "DeepACCRoIHeads", "EMBEDDINGS"]

#: Margin-branch embeddings: ``relu`` (fc7 after ReLU, torchvision's ``TwoMLPHead``), ``linear`` (fc7 without its
#: ReLU), ``bn`` (fc7 without ReLU, then BatchNorm1d with its learnable scale and shift), ``bn_noaffine`` (the same
#: BatchNorm1d without scale and shift: no learnable shared direction). Only the margin / inference branches use
#: them; rows without a margin branch keep the stock ReLU head.
EMBEDDINGS = ("relu", "linear", "bn", "bn_noaffine")


class ClassHead(nn.Module):
    """fc6 -> ReLU -> fc7 -> embedding (``[R, C, 7, 7]`` pooled RoIs -> ``[R, D]``), Sec. 2.1's two shared FC layers.

    ``embedding="relu"`` equals torchvision's ``TwoMLPHead`` (same parameter names ``fc6`` / ``fc7``). A ReLU output
    lives in the positive orthant: every embedding shares one strong direction, and the cosine classifier of the margin
    branch can then escape the ArcFace margin by pushing all class centres away from it (own-class cosine near
    cos(pi - m)) or collapse every centre onto it (pairwise centre cosine near 1). ``linear`` / ``bn`` remove that
    shared direction (``bn`` centres every dimension over the RoIs of the batch), the usual ArcFace embedding
    (Deng et al. 2019: "BN-Dropout-FC-BN").
    """

    def __init__(self, in_features: int, rep: int, embedding: str = "relu") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.fc6 = nn.Linear(in_features, rep)
        self.fc7 = nn.Linear(rep, rep)
        self.embedding = embedding
        self.bn = nn.BatchNorm1d(rep, affine=embedding == "bn") if embedding.startswith("bn") else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc6(x.flatten(start_dim=1)))  # [R, D]
        x = self.fc7(x)  # [R, D]
        if self.embedding == "relu":
            return F.relu(x)
        if self.bn is not None:
            return self.bn(x) if x.shape[0] > 1 or not self.training else x
        return x


class DeepACCRoIHeads(RoIHeads):
    """RoI heads of DeepACC (Sec. 2.1-2.4); the Table 1 switches come from :class:`ModelConfig`.

    Training returns ``({}, losses)`` with ``loss_box_reg`` plus, by switch, ``loss_classifier`` (plain CE),
    ``loss_aam`` (margin branch, weighted by alpha), ``loss_ce`` (inference branch, beta) and ``loss_gia`` (gamma).
    Evaluation returns one dict per image; ``output_mode`` selects ``standard`` / ``max`` detections (with
    ``roi_indices``) or ``raw`` (``boxes [R*K, 4]`` flattened per class, ``scores [R, K]``) for evaluation code that
    post-processes both ways from a single forward pass.

    The templates of Eq. 2 are chosen with the same threshold ``cfg.delta`` from the first training iteration on:
    the loss depends on no hidden iteration counter. ``last_template_stats`` (diagnostics only) holds the fraction of
    the foreground classes of the last forward pass that used a local template.
    """

    def __init__(self, cfg: ModelConfig, box_roi_pool: MultiScaleRoIAlign, in_channels: int) -> None:
        k = cfg.num_classes
        rep = cfg.representation_size
        flat = in_channels * cfg.roi_output_size**2
        use_margin = cfg.aam or cfg.siamese
        # shared fc6/fc7 of both siamese streams; the margin branch's embedding has no ReLU by default (see ClassHead)
        cls_head = ClassHead(flat, rep, cfg.margin_embedding if use_margin else "relu")
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
        self.reg_head = ClassHead(flat, rep) if cfg.separate_reg else None  # separate regression branch, Sec. 2.1
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
        # learned s of s * n(x) (NormFace, Wang et al. 2017), as log s, from inference_scale (0: scale)
        self.inf_log_scale = (
            nn.Parameter(torch.tensor(math.log(cfg.inference_scale or cfg.scale)))
            if cfg.siamese and cfg.inference_scale_learned
            else None
        )
        self.register_buffer("adjacency", group_adjacency(k), persistent=False)
        self.output_mode = "standard"
        # share of the s / m warm-up done (1 = the config's s and m): set per step by train() from the iteration
        # during train.margin_warmup_iters; evaluation always runs at 1
        self.margin_factor = 1.0
        self._local_fraction: Tensor | None = None  # device tensor: no host sync in the forward pass
        self.own_cos_log: list[Tensor] | None = None  # when a list: each training step appends cos of positives

    def current_scale(self, branch: str = "margin") -> float:
        """s in use for the ``margin`` branch (``cfg.scale``) or the ``inference`` branch's s * n(x)
        (``cfg.inference_scale``, 0 = ``cfg.scale``): during the warm-up (training only) linear from
        ``cfg.warmup_scale`` to that value."""
        target = self.cfg.scale
        if branch == "inference" and self.cfg.inference_scale > 0:
            target = self.cfg.inference_scale
        f = self.margin_factor if self.training else 1.0
        s0 = min(self.cfg.warmup_scale, target)
        return s0 + (target - s0) * f

    @property
    def last_template_stats(self) -> dict[str, float]:
        """Share of the foreground classes of the last forward pass that used a local template (diagnostics; reading
        it synchronises with the device)."""
        return {} if self._local_fraction is None else {"local_fraction": float(self._local_fraction)}

    def centre_pairwise_cos(self) -> float | None:
        """Median cosine over the pairs of foreground class centres (rows 1..K-1 of W_M); None without W_M."""
        if not self.use_margin_branch:
            return None
        with torch.no_grad():
            w = F.normalize(self.margin_weight[1:].float(), dim=1)  # [K-1, D]
            c = w @ w.t()
            iu = torch.triu_indices(c.shape[0], c.shape[0], 1, device=c.device)
            return float(c[iu[0], iu[1]].median())

    # -- branches ---------------------------------------------------------------------------------------------
    def class_outputs(self, emb: Tensor, counts: list[int], template_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Classification outputs for RoI embeddings ``emb [R, D]`` grouped per image by ``counts``.

        Returns ``logits`` (final, ``[R, K]``) and, with the margin branch, ``cos`` and ``margin_probs`` ``[R, K]``.
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
            scale = self.current_scale()
            margin_probs = F.softmax(scale * cos, dim=1)  # [R, K], no margin
            out["cos"] = cos
            out["margin_probs"] = margin_probs
            if not cfg.siamese:
                out["logits"] = scale * cos
                return out
            assert self.inf_bias is not None
            sel_probs = margin_probs.detach() if cfg.detach_templates else margin_probs
            s_inf = self.current_scale("inference") if self.inf_log_scale is None else self.inf_log_scale.exp()
            logits, n_local = [], emb32.new_zeros(())
            start = 0
            for n in counts:
                e = emb32[start : start + n]  # [n, D]
                cand = None if template_mask is None else template_mask[start : start + n]
                templates, use_local = select_templates(sel_probs[start : start + n], e, self.margin_weight,
                                                        cfg.delta, cand)  # fmt: skip
                n_local = n_local + use_local.sum()
                if cfg.detach_templates:
                    templates = templates.detach()
                # Eq. 2: W_I^T x_i + b with x_i NOT normalised (the paper's Remark); optional s * n(x_i) variant
                x = F.normalize(e, dim=1) * s_inf if cfg.inference_feature_norm else e  # [n, D]
                logits.append(x @ templates.t() + self.inf_bias)  # [n, K]
                start += n
            self._local_fraction = n_local.detach() / max(1, len(counts) * (self.num_classes - 1))
            out["logits"] = torch.cat(logits, 0) if logits else emb32.new_zeros((0, self.num_classes))
        return out

    def _training_losses(
        self, out: dict[str, Tensor], box_regression: Tensor, labels: Tensor, reg_targets: Tensor, counts: list[int]
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        losses = {"loss_box_reg": box_regression_loss(box_regression.float(), labels, reg_targets, cfg.reg_beta)}
        if not self.use_margin_branch:
            losses["loss_classifier"] = F.cross_entropy(out["logits"].float(), labels)
        else:
            margin = (
                cfg.margin * (self.margin_factor if self.training else 1.0) if cfg.aam else 0.0
            )  # Table 1(d): margin branch without margin
            losses["loss_aam"] = cfg.aam_weight * aam_loss(out["cos"], labels, margin, self.current_scale(),
                                                           cfg.margin_on_bg,
                                                           cfg.easy_margin)  # fmt: skip
            if self.own_cos_log is not None:  # margin_health during training: cos of positives to their own centre
                pos = labels > 0
                self.own_cos_log.append(out["cos"].detach()[pos, labels[pos]])
            if cfg.siamese:
                losses["loss_ce"] = cfg.ce_weight * F.cross_entropy(out["logits"], labels)
            if cfg.centre_spread_weight > 0:  # keeps the class centres from sharing one direction (README)
                losses["loss_centre"] = cfg.centre_spread_weight * centre_spread_loss(self.margin_weight[1:])
        if cfg.gia:
            probs = out["margin_probs"] if "margin_probs" in out else F.softmax(out["logits"].float(), 1)
            img_idx = torch.repeat_interleave(
                torch.arange(len(counts), device=labels.device), torch.tensor(counts, device=labels.device)
            )  # [R]
            losses["loss_gia"] = cfg.gia_weight * gia_loss(
                probs, labels, img_idx, self.adjacency, cfg.detach_partner, num_images=len(counts)
            )
        return losses

    def forward(  # type: ignore[override]
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Run the heads. ``proposals`` is a list of ``[R_i, 4]`` xyxy boxes in the transformed image frame."""
        cfg = self.cfg
        template_mask = None
        if self.training:
            if targets is None:
                raise ValueError("DeepACCRoIHeads needs targets in training mode")
            gt_boxes = [t["boxes"] for t in targets]
            proposals, _matched, labels_list, regression_targets = self.select_training_samples(proposals, targets)
            labels = torch.cat(labels_list, 0)  # [R]
            reg_targets = torch.cat(regression_targets, 0)  # [R, 4]
            if cfg.exclude_gt_templates:
                masks = []
                for p, g in zip(proposals, gt_boxes):
                    masks.append(
                        box_iou(p, g).amax(1) < 0.999
                        if g.numel()
                        else torch.ones(len(p), dtype=torch.bool, device=p.device)
                    )
                template_mask = torch.cat(masks, 0)
        counts = [len(p) for p in proposals]
        box_features = self.box_roi_pool(features, proposals, image_shapes)  # [R, C, 7, 7], proposal order kept
        emb = self.box_head(box_features)  # [R, D]
        reg_emb = self.reg_head(box_features) if self.reg_head is not None else emb  # [R, D]
        box_regression = self.bbox_pred(reg_emb)  # [R, 4K]
        out = self.class_outputs(emb, counts, template_mask)
        if self.training:
            return [], self._training_losses(out, box_regression, labels, reg_targets, counts)

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
