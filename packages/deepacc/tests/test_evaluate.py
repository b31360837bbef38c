"""Evaluation protocol on constructed outputs: mAP@0.5, mAP_max, Acc/AER (top-1, p >= 0.5, agnostic NMS 0.7), WCR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from deepacc.config import create_config
from deepacc.data import Sample
from deepacc.evaluate import chance_map, evaluate_detections


def test_acc_aer_wcr_on_constructed_detections(raw_rois) -> None:
    gt_boxes = np.array([[0, 0, 10, 20], [30, 0, 40, 20], [60, 0, 70, 20], [90, 0, 100, 20]], np.float32)
    sample = Sample(Path("unused.png"), gt_boxes, np.array([1, 2, 3, 4]))
    raw = raw_rois([
        ([0, 0, 10, 20], {1: 0.9, 2: 0.05}),  # TP (class 1)
        ([0, 0, 10, 19], {1: 0.6}),  # duplicate of RoI 0: removed by class-agnostic NMS 0.7 (IoU 0.95)
        ([30, 0, 40, 20], {3: 0.8, 2: 0.15}),  # well placed, wrong class: FP + FN (GT 2)
        ([60, 0, 70, 20], {3: 0.4, 5: 0.1}),  # right class but score < 0.5: dropped -> FN (GT 3)
        ([90, 0, 100, 21], {4: 0.7}),  # TP (IoU 0.95)
        ([200, 0, 210, 20], {7: 0.55}),  # background box: FP
    ])  # fmt: skip
    cfg = create_config("deepacc_tiny")
    res = evaluate_detections([raw], [sample], cfg, with_chance=False)
    # after top-1 + p >= 0.5 + agnostic NMS: RoIs 0, 2, 4, 5 -> TP 2, FP 2, FN 2
    assert res["counts"] == {"tp": 2, "fp": 2, "fn": 2, "n_pred": 4, "n_gt": 4, "images_all_correct": 0}
    assert res["acc"] == pytest.approx(2 / 4)
    assert res["aer"] == pytest.approx((2 + 2) / 4)
    assert res["acc_agnostic"] == pytest.approx(3 / 4)  # the wrong-class box counts when classes are ignored
    assert res["aer_agnostic"] == pytest.approx((1 + 1) / 4)
    assert res["wcr"] == 0.0 and res["count_mae"] == 0.0
    assert res["matched_pairs"] == {"true": [1, 2, 4], "pred": [1, 3, 4]}
    # mAP@0.5 over the classes present (1..4): class 1 AP 1 (duplicate is FP after the TP), class 2: 1 TP at rank 2
    # of (0.15 and 0.05 entries) -> AP 1.0? check values directly
    ap = res["ap_per_class"]
    assert ap["1"] == pytest.approx(1.0) and ap["4"] == pytest.approx(1.0)
    assert ap["2"] == pytest.approx(1.0)  # RoI 2's class-2 score 0.15 is the only class-2 box on GT 2
    assert ap["3"] == pytest.approx(0.5)  # 0.8 on GT 2 (FP) then 0.4 on GT 3 (TP): precision 1/2 at recall 1
    assert res["map50"] == pytest.approx(np.mean([1.0, 1.0, 0.5, 1.0]))
    # mAP_max: one class per RoI -> class 2 never appears as a top-1 label -> AP 0 for class 2
    assert res["map50_max"] < res["map50"]


def test_all_correct_image_and_chance(raw_rois) -> None:
    gt = Sample(Path("x.png"), np.array([[0, 0, 10, 20], [30, 0, 40, 20]], np.float32), np.array([5, 6]))
    raw = raw_rois([([0, 0, 10, 20], {5: 0.95}), ([30, 0, 40, 20], {6: 0.9})])
    res = evaluate_detections([raw], [gt], create_config("deepacc_tiny"), with_chance=True)
    assert res["acc"] == 1.0 and res["aer"] == 0.0 and res["wcr"] == 1.0 and res["map50"] == 1.0
    assert res["chance"]["random_labels"] < 0.6


def test_chance_map_is_low_for_many_classes() -> None:
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(4):
        boxes = np.stack([np.arange(48) * 30, np.zeros(48), np.arange(48) * 30 + 20, np.full(48, 40)], 1).astype(float)
        labels = np.repeat(np.arange(1, 25), 2)
        gts.append({"boxes": boxes, "labels": labels})
        dets.append({"boxes": boxes, "labels": labels, "scores": rng.random(48)})
    ch = chance_map(dets, gts)
    assert ch["random_labels"] < 0.15  # perfect boxes, random labels
    assert 0.02 < ch["gt_boxes_random_scores"] < 0.2  # about 1/24 precision at full recall


def test_retinanet_dicts_give_map_max_from_their_top1_detections(tmp_path: Path) -> None:
    gt = np.array([[0, 0, 10, 20], [30, 0, 40, 20]], np.float32)
    sample = Sample(tmp_path / "a.png", gt, np.array([3, 7]), 64, 64)
    box = torch.tensor([[0.0, 0, 10, 20], [0, 0, 10, 20], [30, 0, 40, 20]])
    raw = {  # standard: the first GT box also scores class 5 higher than class 3; max: one class per anchor
        "boxes": box, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([5, 3, 7]),
        "max_boxes": box[[0, 2]], "max_scores": torch.tensor([0.9, 0.7]), "max_labels": torch.tensor([5, 7]),
    }  # fmt: skip
    res = evaluate_detections([raw], [sample], create_config("deepacc_tiny"), with_chance=False)
    # VOC AP over the 24 classes: standard finds both GT classes (AP 1 for 3 and 7) -> 2/24 among the classes with GT;
    # max loses class 3 (its anchor's top-1 is the wrong class 5)
    assert res["map50"] > res["map50_max"] > 0
    no_max = {k: v for k, v in raw.items() if not k.startswith("max_")}
    res2 = evaluate_detections([no_max], [sample], create_config("deepacc_tiny"), with_chance=False)
    assert np.isnan(res2["map50_max"]) and res2["map50"] == pytest.approx(res["map50"])
