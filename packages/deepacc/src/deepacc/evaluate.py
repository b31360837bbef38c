"""Evaluation of DeepACC through :mod:`medshared.metrics` (Sec. 3.1; brief Sec. 4).

* mAP@0.5: standard post-processing (score > 0.05, class-wise NMS 0.5, 100 per image), VOC all-point AP over 24 classes;
* mAP_max: the same with only the arg-max foreground class of each RoI (Sec. 3.1);
* Acc = TP / #predictions and AER = (FP + FN) / #GT after top-1 selection, score >= 0.5 and class-agnostic NMS 0.7,
  greedy one-to-one matching at IoU 0.5 with the class required (plus the class-agnostic count, DeepACE-style);
* WCR: fraction of images with no FP and no FN ("whole correct ratio");
* optional: COCO mAP@[.5:.95] (``medshared.coco.coco_map``: 101-point, maxDets 100, area all; checked there against
  pycocotools), and Acc/AER after the karyotype
  prior (:mod:`deepacc.karyotype`: at most two of each autosome, XX or XY, by optimal assignment).
One forward pass per image yields the raw per-RoI boxes and scores; both post-processings run on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepacc.config import DeepACCConfig
from deepacc.data import DetectionDataset
from deepacc.model import set_output_mode
from deepacc.postprocess import agnostic_top1, class_agnostic_detections, postprocess_detections
from deepacc.samples import Sample

__all__ = [
    "CAPS",
    "apply_karyotype_prior",
    "chance_map",
    "class_agnostic_ap",
    "detections_from_raw",
    "evaluate_detections",
    "predict_raw",
    "to_numpy_dets",
]

Raw = tuple[torch.Tensor, torch.Tensor]  # boxes [R, K, 4], scores [R, K] (original image pixels)


@torch.no_grad()
def predict_raw(
    model: torch.nn.Module,
    samples: list[Sample] | DetectionDataset,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress: bool = False,
    rescale_16bit: bool = False,
) -> list[Any]:
    """Run the model once per image. DeepACC models return raw ``(boxes [R,K,4], scores [R,K])``; RetinaNet returns
    its standard detection dict plus the top-1-class-per-anchor detections under ``max_boxes`` / ``max_scores`` /
    ``max_labels``. ``rescale_16bit``: see :func:`deepacc.images.read_image`."""
    from medshared.runtime import autocast_context
    from tqdm.auto import tqdm

    ds = samples if isinstance(samples, DetectionDataset) else DetectionDataset(samples, rescale_16bit=rescale_16bit)
    device = torch.device(device)
    model.eval()
    set_output_mode(model, "raw")
    k = 25
    outs: list[Any] = []
    try:
        for i in tqdm(range(len(ds)), desc="predict", disable=not progress, leave=False):
            img, _ = ds[i]
            with autocast_context(device, amp):
                out = model([img.to(device)])[0]
            if "roi_indices" in out or "labels" in out:  # RetinaNet
                outs.append({k_: (v.float() if v.is_floating_point() else v).cpu() for k_, v in out.items()})
            else:
                scores = out["scores"].float().cpu()
                k = scores.shape[1]
                outs.append((out["boxes"].float().cpu().reshape(-1, k, 4), scores))  # [R*K,4] -> [R,K,4]
    finally:
        set_output_mode(model, "standard")
    return outs


#: The detection caps reported beside the config's own (``map50_at``): mmdet's default 100 and 300.
CAPS = (100, 300)


def detections_from_raw(
    raws: list[Any], cfg: DeepACCConfig, mode: str, cap: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """Post-process raw outputs (``standard`` or ``max``) with the config's thresholds; ``cap`` overrides
    ``model.detections_per_img``."""
    m = cfg.model
    cap = m.detections_per_img if cap is None else cap
    dets = []
    for r in raws:
        if isinstance(r, dict):  # RetinaNet, already post-processed both ways (model.DeepACCRetinaNet)
            if mode == "max" and "max_boxes" in r:
                dets.append({k: r[f"max_{k}"] for k in ("boxes", "scores", "labels")})
            else:
                dets.append({k: v for k, v in r.items() if not k.startswith("max_")})
            continue
        boxes, scores = r
        dets.append(postprocess_detections(boxes, scores, mode, m.score_thresh, m.nms_thresh, cap))
    return dets


def class_agnostic_ap(raws: list[Any], samples: list[Sample], cfg: DeepACCConfig) -> float:
    """AP@0.5 of "chromosome or not": each RoI scored by ``1 - p(background)`` with its top-1 class's box
    (:func:`deepacc.postprocess.class_agnostic_detections`), every ground-truth box one class. For RetinaNet (no
    background class) the standard detections with their labels dropped. Localisation without classification."""
    from medshared.metrics import detection_map

    m = cfg.model
    dets = []
    for r in raws:
        if isinstance(r, dict):
            d = {
                "boxes": r["boxes"],
                "scores": r["scores"],
                "labels": torch.ones(len(r["scores"]), dtype=torch.long, device=r["scores"].device),
            }
        else:
            d = class_agnostic_detections(r[0], r[1], m.score_thresh, m.nms_thresh, m.detections_per_img)
        dets.append(d)
    gts = [{"boxes": s.boxes, "labels": np.ones(len(s.labels), np.int64)} for s in samples]
    return detection_map(to_numpy_dets(dets), gts, num_classes=1, iou_threshold=cfg.eval.iou_threshold)["map"]


def to_numpy_dets(dets: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in d.items()} for d in dets]


def _gts(samples: list[Sample]) -> list[dict[str, np.ndarray]]:
    return [{"boxes": s.boxes, "labels": s.labels} for s in samples]


def chance_map(
    dets: list[dict[str, np.ndarray]], gts: list[dict[str, np.ndarray]], iou: float = 0.5, seeds: int = 5
) -> dict[str, float]:
    """mAP of input-ignoring classifiers (the demo's chance level).

    * ``random_labels``: the model's own boxes and scores with labels drawn uniformly from 1..24 (mean over seeds);
    * ``gt_boxes_random_scores``: every GT box emitted once per class with uniform random scores (perfect boxes,
      classes ignored).
    """
    from medshared.metrics import detection_map

    vals = []
    for s in range(seeds):
        rng = np.random.default_rng(1234 + s)
        rd = [
            {"boxes": d["boxes"], "scores": d["scores"], "labels": rng.integers(1, 25, len(d["labels"]))} for d in dets
        ]
        vals.append(detection_map(rd, gts, num_classes=24, iou_threshold=iou)["map"])
    vals_gt = []
    for s in range(seeds):
        rng = np.random.default_rng(4321 + s)
        gd = []
        for g in gts:
            n = len(g["labels"])
            gd.append({"boxes": np.repeat(g["boxes"], 24, 0), "labels": np.tile(np.arange(1, 25), n),
                       "scores": rng.random(n * 24)})  # fmt: skip
        vals_gt.append(detection_map(gd, gts, num_classes=24, iou_threshold=iou)["map"])
    return {"random_labels": float(np.mean(vals)), "gt_boxes_random_scores": float(np.mean(vals_gt))}


def _confusion_pairs(
    dets: list[dict[str, np.ndarray]], gts: list[dict[str, np.ndarray]], iou: float
) -> tuple[list, list]:
    """(true, predicted) class of GT boxes matched class-agnostically (greedy by score, IoU >= iou)."""
    from medshared.metrics import box_iou

    yt, yp = [], []
    for d, g in zip(dets, gts):
        if len(g["labels"]) == 0 or len(d["labels"]) == 0:
            continue
        ious = box_iou(d["boxes"], g["boxes"])  # [N, M]
        taken = np.zeros(len(g["labels"]), bool)
        for i in np.argsort(-d["scores"], kind="stable"):
            ok = (~taken) & (ious[i] >= iou)
            if ok.any():
                j = int(np.argmax(np.where(ok, ious[i], -1)))
                taken[j] = True
                yt.append(int(g["labels"][j]))
                yp.append(int(d["labels"][i]))
    return yt, yp


def apply_karyotype_prior(raws: list[Any], acc_dets: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Relabel each image's top-1 detections (with ``roi_indices``) under the karyotype prior.

    The class probabilities of a detection are its RoI's row of the raw scores; its box becomes the RoI's box for the
    newly assigned class.
    """
    from deepacc.karyotype import assign_karyotype

    out = []
    for r, d in zip(raws, acc_dets):
        if isinstance(r, dict) or "roi_indices" not in d:
            raise ValueError(
                "the karyotype prior needs per-RoI class probabilities: a two-stage (DeepACC / Faster R-CNN) model"
            )
        boxes, scores = r
        roi = np.asarray(d["roi_indices"], np.int64)
        probs = scores.numpy()[roi]  # [N, 25]
        labels, assigned, _sex = assign_karyotype(probs)
        new = dict(d)
        new["labels"] = labels
        new["boxes"] = boxes.numpy()[roi, labels] if len(roi) else np.asarray(d["boxes"])
        new["scores"] = probs[np.arange(len(roi)), labels] if len(roi) else np.asarray(d["scores"])
        new["prior_assigned"] = assigned
        out.append(new)
    return out


def evaluate_detections(
    raws: list[Any],
    samples: list[Sample],
    cfg: DeepACCConfig,
    with_chance: bool = True,
    coco: bool = False,
    karyotype_prior: bool = False,
) -> dict[str, Any]:
    """All metrics of the paper (and extras) from raw model outputs on ``samples``.

    Args:
        coco: also COCO mAP@[.5:.95] / AP50 / AP75 of the standard detections (``medshared.coco.coco_map``).
        karyotype_prior: also Acc / AER / class accuracy after :func:`apply_karyotype_prior` (``*_prior`` keys).
    """
    from medshared.metrics import accuracy_aer, detection_map, match_detections

    e = cfg.eval
    gts = _gts(samples)
    det_std = to_numpy_dets(detections_from_raw(raws, cfg, "standard"))
    has_raw = all(not isinstance(r, dict) or "max_boxes" in r for r in raws)
    det_max = to_numpy_dets(detections_from_raw(raws, cfg, "max")) if has_raw else None
    res_map = detection_map(det_std, gts, num_classes=24, iou_threshold=e.iou_threshold)
    out: dict[str, Any] = {"n_images": len(samples), "n_gt": int(sum(len(g["labels"]) for g in gts))}
    out["map50"] = res_map["map"]
    out["detections_per_img"] = cfg.model.detections_per_img
    if has_raw and not any(isinstance(r, dict) for r in raws):  # the map50 of each cap (RetinaNet: its own cap only)
        out["map50_at"] = {str(c): detection_map(to_numpy_dets(detections_from_raw(raws, cfg, "standard", c)), gts,
                                                 num_classes=24, iou_threshold=e.iou_threshold)["map"]
                           for c in CAPS}  # fmt: skip
    out["class_agnostic_ap50"] = class_agnostic_ap(raws, samples, cfg)
    out["ap_per_class"] = {str(k): v for k, v in res_map["ap_per_class"].items()}
    base = det_max if det_max is not None else det_std
    if det_max is not None:
        out["map50_max"] = detection_map(det_max, gts, num_classes=24, iou_threshold=e.iou_threshold)["map"]
    else:
        out["map50_max"] = float("nan")  # detections without the top-1 (max) post-processing
    acc_dets = [
        {k: v.numpy() for k, v in agnostic_top1({k: torch.as_tensor(v) for k, v in d.items()},
                                                e.acc_score_thresh, e.agnostic_nms_thresh).items()}
        for d in base
    ]  # fmt: skip
    counts = match_detections(acc_dets, gts, e.iou_threshold)
    counts_ag = match_detections(acc_dets, gts, e.iou_threshold, class_agnostic=True)
    if out["n_gt"]:
        out.update(accuracy_aer(counts))
        ag = accuracy_aer(counts_ag)
        out["acc_agnostic"], out["aer_agnostic"] = ag["acc"], ag["aer"]
    out["wcr"] = counts["images_all_correct"] / max(len(samples), 1)
    out["wcr_agnostic"] = counts_ag["images_all_correct"] / max(len(samples), 1)
    out["counts"] = counts
    out["counts_agnostic"] = counts_ag
    n_pred = np.array([len(d["labels"]) for d in acc_dets])
    n_true = np.array([len(g["labels"]) for g in gts])
    out["count_mae"] = float(np.mean(np.abs(n_pred - n_true))) if len(n_true) else float("nan")
    out["count_exact"] = float(np.mean(n_pred == n_true)) if len(n_true) else float("nan")
    yt, yp = _confusion_pairs(acc_dets, gts, e.iou_threshold)
    out["matched_pairs"] = {"true": yt, "pred": yp}
    out["classification_acc_on_matched"] = float(np.mean(np.array(yt) == np.array(yp))) if yt else float("nan")
    if with_chance:
        out["chance"] = chance_map(det_std, gts, e.iou_threshold)
    if coco:
        from medshared.coco import coco_map

        c = coco_map(det_std, gts, class_ids=range(1, 25))
        out["coco"] = {"map": c["map"], "map50": c["map50"], "map75": c["map75"]}
    if karyotype_prior and out["n_gt"]:
        prior = apply_karyotype_prior(raws, acc_dets)
        c_prior = match_detections(prior, gts, e.iou_threshold)
        ap = accuracy_aer(c_prior)
        out["acc_prior"], out["aer_prior"] = ap["acc"], ap["aer"]
        out["wcr_prior"] = c_prior["images_all_correct"] / max(len(samples), 1)
        yt_p, yp_p = _confusion_pairs(prior, gts, e.iou_threshold)
        out["classification_acc_on_matched_prior"] = float(np.mean(np.array(yt_p) == np.array(yp_p))) if yt_p else None
        out["counts_prior"] = c_prior
        # at p >= 0.5 the tiny models keep only a few chromosomes per spread, where the prior's "two of each" rarely
        # binds; the same measurement over every top-1 detection (score > 0.05, agnostic NMS) shows its effect
        low = [{k: v.numpy() for k, v in agnostic_top1({k: torch.as_tensor(v) for k, v in d.items()},
                                                       m_score, e.agnostic_nms_thresh).items()}
               for d, m_score in zip(base, [cfg.model.score_thresh] * len(base))]  # fmt: skip
        low_prior = apply_karyotype_prior(raws, low)
        yt0, yp0 = _confusion_pairs(low, gts, e.iou_threshold)
        yt1, yp1 = _confusion_pairs(low_prior, gts, e.iou_threshold)
        out["prior_all_detections"] = {
            "score_thresh": cfg.model.score_thresh,
            "n_detections": int(sum(len(d["labels"]) for d in low)),
            "class_acc_on_matched": float(np.mean(np.array(yt0) == np.array(yp0))) if yt0 else None,
            "class_acc_on_matched_prior": float(np.mean(np.array(yt1) == np.array(yp1))) if yt1 else None,
            "n_matched": len(yt0),
        }
    return out
