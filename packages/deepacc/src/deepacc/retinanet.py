"""RetinaNet baseline of Table 2 (Lin et al. 2017) as torchvision's ``retinanet_resnet50_fpn``: P3-P7 with
convolutional P6/P7 from P5, three octave scales x three ratios per location, focal loss; plus a
top-1-class-per-anchor post-processing for the paper's mAP_max."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import boxes as box_ops

__all__ = ["DeepACCRetinaNet", "MaxBoxesTransform"]


class MaxBoxesTransform(GeneralizedRCNNTransform):
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
