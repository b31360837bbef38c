"""medshared.metrics against worked, hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medshared import metrics as M

# The LungCVT notebook's test confusion matrix (rows true N/C/W/B), brief lungcvt.md section 5.
LUNGCVT_CM = [[814, 390, 284, 91], [249, 264, 69, 67], [170, 63, 105, 47], [57, 24, 25, 37]]


def _expand(cm):
    t, p = [], []
    for i, row in enumerate(cm):
        for j, c in enumerate(row):
            t += [i] * c
            p += [j] * c
    return np.array(t), np.array(p)


def test_icbhi_worked_confusion_matrix():
    t, p = _expand(LUNGCVT_CM)
    icbhi = M.icbhi_scores(t, p)
    assert round(icbhi["score"] * 100, 2) == 43.02
    assert round(icbhi["sp"] * 100, 2) == 51.55
    assert round(icbhi["se"] * 100, 2) == 34.49
    ovr = M.icbhi_scores(t, p, variant="macro_ovr")
    assert round(ovr["score"] * 100, 2) == 57.31
    assert round(ovr["se"] * 100, 2) == 36.34
    assert round(ovr["sp"] * 100, 2) == 78.28
    assert round(ovr["accuracy"] * 100, 2) == 44.27
    two = M.icbhi_scores(t, p, variant="two_class")
    # abnormal predicted as any abnormal: (264+69+67) + (63+105+47) + (24+25+37) = 701 of 1177
    assert two["se"] == pytest.approx(701 / 1177)
    assert two["sp"] == pytest.approx(814 / 1579)


def test_icbhi_accepts_names_and_rejects_unknown():
    names = ["normal", "crackle", "wheeze", "both", "normal"]
    preds = ["normal", "crackle", "normal", "both", "wheeze"]
    r = M.icbhi_scores(names, preds)
    assert r["sp"] == pytest.approx(0.5) and r["se"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="rale"):
        M.icbhi_scores(["normal", "rale"], ["normal", "normal"])
    with pytest.raises(ValueError, match="outside 0..3"):
        M.icbhi_scores([0, 4], [0, 0])
    with pytest.raises(ValueError, match="unknown ICBHI variant"):
        M.icbhi_scores([0], [0], variant="nope")


def test_classification_metrics_hand_values():
    r = M.classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], labels=[0, 1, 2])
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert r["recall_macro"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # weighted by support 2, 2, 1: f1 per class 0.5, 0.8, 0
    assert r["f1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 0) / 5)
    with pytest.raises(ValueError, match="differ in length"):
        M.classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="outside the class list"):
        M.classification_metrics([0, 7], [0, 0], labels=[0, 1])


def test_confusion_matrix_orientation():
    cm = M.confusion_matrix(["b", "a", "a"], ["a", "a", "b"], labels=["a", "b"])
    assert cm.tolist() == [[1, 1], [1, 0]]


def test_binary_metrics_hand_values():
    t = ["m", "m", "m", "b", "b", "b", "b"]
    p = ["m", "m", "b", "b", "b", "m", "b"]
    r = M.binary_metrics(t, p, positive="m")
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 1, 3)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["specificity"] == pytest.approx(3 / 4)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(5 / 7)


def test_dice_accumulator_worked_example_and_ignore():
    acc = M.DiceAccumulator(3)
    acc.update([[0, 1], [2, 2]], [[0, 1], [2, 1]])
    out = acc.compute()
    np.testing.assert_allclose(out["per_class"], [1.0, 2 / 3, 2 / 3])
    assert out["macro"] == pytest.approx(7 / 9)
    # ignore pixels: target 255 never counts; an absent class is nan and skipped
    acc = M.DiceAccumulator(4, ignore_index=255)
    acc.update(np.array([0, 1, 1, 3]), np.array([0, 1, 255, 255]))
    acc.update(np.array([0]), np.array([1]))
    out = acc.compute()
    # class 0: inter 1, pred 2, tgt 1 -> 2/3; class 1: inter 1, pred 1, tgt 2 -> 2/3; classes 2, 3 absent -> nan
    np.testing.assert_allclose(out["per_class"][:2], [2 / 3, 2 / 3])
    assert np.isnan(out["per_class"][2]) and np.isnan(out["per_class"][3])
    assert out["macro"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="outside 0..3"):
        acc.update(np.array([4]), np.array([0]))


def test_dice_per_image_smoothed():
    pred = np.array([[0, 0, 1], [1, 1, 1]])
    tgt = np.array([[0, 1, 1], [1, 1, 2]])
    d = M.dice_per_image_smoothed(pred, tgt, classes=[0, 1, 2, 5])
    # c0: (2*1+1)/(2+1+1)=0.75; c1: (2*3+1)/(4+4+1)=7/9; c2: (0+1)/(0+1+1)=0.5; c5 absent: 1.0
    np.testing.assert_allclose(d, [0.75, 7 / 9, 0.5, 1.0])


def test_voc_ap_worked_example():
    # 3 ground truths (two in image 0, one in image 1); detections in score order: TP, FP, TP, duplicate (FP).
    gts = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [1, 1]},
        {"boxes": [[0, 0, 10, 10]], "labels": [1]},
    ]
    dets = [
        {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9]], "scores": [0.9, 0.8, 0.6], "labels": [1, 1, 1]},
        {"boxes": [[1, 0, 10, 10]], "scores": [0.7], "labels": [1]},
    ]
    r = M.detection_map(dets, gts, num_classes=1)
    # recall 1/3,1/3,2/3,2/3; precision 1,1/2,2/3,1/2 -> area = 1/3*1 + 1/3*2/3
    assert r["map"] == pytest.approx(1 / 3 + 2 / 9)
    counts = M.match_detections(dets, gts)
    assert (counts["tp"], counts["fp"], counts["fn"]) == (2, 2, 1)
    aa = M.accuracy_aer(counts)
    assert aa["acc"] == pytest.approx(2 / 4) and aa["aer"] == pytest.approx(3 / 3)
    assert counts["images_all_correct"] == 1  # image 1 is all correct, image 0 has an FP and an FN


def test_match_detections_class_must_match():
    gts = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [1, 2]}]
    dets = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "scores": [0.9, 0.8], "labels": [2, 2]}]
    c = M.match_detections(dets, gts)
    assert (c["tp"], c["fp"], c["fn"]) == (1, 1, 1)
    c = M.match_detections(dets, gts, class_agnostic=True)
    assert (c["tp"], c["fp"], c["fn"], c["images_all_correct"]) == (2, 0, 0, 1)
    r = M.detection_map(dets, gts, num_classes=3)
    # class 2: the higher-scored class-2 box is an FP (no class-2 GT there), then a TP -> precision 1/2 at recall 1
    assert r["ap_per_class"][1] == 0.0 and r["ap_per_class"][2] == 0.5 and math.isnan(r["ap_per_class"][3])
    assert r["map"] == pytest.approx(0.25)


def test_detection_map_agrees_with_pycocotools():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    n_img, n_cls = 12, 3
    gts, dets, images, anns, results = [], [], [], [], []
    aid = 1
    for i in range(n_img):
        k = rng.integers(2, 6)
        xy = rng.uniform(0, 200, size=(k, 2))
        wh = rng.uniform(20, 60, size=(k, 2))
        gb = np.concatenate([xy, xy + wh], axis=1)
        gl = rng.integers(1, n_cls + 1, size=k)
        gts.append({"boxes": gb, "labels": gl})
        images.append({"id": i + 1, "width": 300, "height": 300})
        for b, lab in zip(gb, gl):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": aid,
                    "image_id": i + 1,
                    "category_id": int(lab),
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            aid += 1
        # noisy copies (some with wrong class) plus random false positives
        db = gb + rng.normal(0, 6, size=gb.shape)
        dl = np.where(rng.random(k) < 0.8, gl, rng.integers(1, n_cls + 1, size=k))
        fp = rng.uniform(0, 240, size=(2, 2))
        db = np.concatenate([db, np.concatenate([fp, fp + 30], axis=1)])
        dl = np.concatenate([dl, rng.integers(1, n_cls + 1, size=2)])
        ds = rng.random(len(db))
        dets.append({"boxes": db, "labels": dl, "scores": ds})
        for b, lab, s in zip(db, dl, ds):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(lab),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": float(s),
                }
            )
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(1, n_cls + 1)]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    prec = ev.eval["precision"][0, :, :, 0, -1]  # [101 recall thresholds, classes]
    coco_ap = np.mean([prec[:, c][prec[:, c] > -1].mean() for c in range(n_cls)])
    ours = M.detection_map(dets, gts, num_classes=n_cls)["map"]
    # COCO samples 101 recall points, VOC integrates the envelope exactly: they agree closely, not exactly
    assert abs(ours - coco_ap) < 0.02, (ours, coco_ap)
    assert 0.2 < ours < 0.95


def test_box_iou():
    iou = M.box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])


def test_keyframe_tolerance():
    curve = M.keyframe_tolerance_accuracy([10, 12, 20, 5], [10, 10, 10, 10], max_distance=10)
    assert curve.shape == (11,)
    assert curve[0] == 0.25 and curve[1] == 0.25 and curve[2] == 0.5 and curve[5] == 0.75 and curve[10] == 1.0
    assert np.all(np.diff(curve) >= 0)


def test_mean_std_and_aggregate():
    m, s = M.mean_std([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and s == pytest.approx(np.std([1, 2, 3]))
    agg = M.aggregate([{"acc": 0.5, "name": "a"}, {"acc": 0.7, "name": "b"}])
    assert set(agg) == {"acc"} and agg["acc"]["mean"] == pytest.approx(0.6) and agg["acc"]["std"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        M.aggregate([])
