"""medshared.coco against pycocotools' COCOeval on random and hand-made detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from medshared.coco import coco_map


def _pycoco(dets, gts, class_ids):
    cc = pytest.importorskip("pycocotools.coco")
    ce = pytest.importorskip("pycocotools.cocoeval")
    images, anns, res = [], [], []
    aid = 1
    for i, (d, g) in enumerate(zip(dets, gts)):
        images.append({"id": i + 1, "width": 500, "height": 500})
        for b, lab in zip(g["boxes"], g["labels"]):
            x1, y1, x2, y2 = map(float, b)
            anns.append(
                {
                    "id": aid,
                    "image_id": i + 1,
                    "category_id": int(lab),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
            aid += 1
        for b, lab, s in zip(d["boxes"], d["labels"], d["scores"]):
            x1, y1, x2, y2 = map(float, b)
            res.append(
                {"image_id": i + 1, "category_id": int(lab), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
            )
    gt = cc.COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in class_ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(res)
        ev = ce.COCOeval(gt, dt, "bbox")
        ev.params.catIds = list(class_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats  # [AP, AP50, AP75, ...]


def _random_case(rng, n_img=6, n_cls=3):
    dets, gts = [], []
    for _ in range(n_img):
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(10, 90, (m, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        gl = rng.integers(1, n_cls + 1, m)
        # detections: jittered copies of some GT boxes (with label noise) plus random false positives
        keep = rng.random(m) < 0.8
        jit = gb[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        lab = np.where(rng.random(int(keep.sum())) < 0.85, gl[keep], rng.integers(1, n_cls + 1, int(keep.sum())))
        k = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 400, (k, 2))
        fb = np.concatenate([fxy, fxy + rng.uniform(10, 90, (k, 2))], 1)
        db = np.concatenate([jit, fb]) if len(fb) else jit
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.concatenate([lab, rng.integers(1, n_cls + 1, k)]).astype(int)
        ds = rng.random(len(db))
        dets.append({"boxes": db, "labels": dl, "scores": ds})
        gts.append({"boxes": gb, "labels": gl})
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_map_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    dets, gts = _random_case(rng)
    ours = coco_map(dets, gts, class_ids=[1, 2, 3])
    ref = _pycoco(dets, gts, [1, 2, 3])
    assert ours["map"] == pytest.approx(ref[0], abs=1e-9)
    assert ours["map50"] == pytest.approx(ref[1], abs=1e-9)
    assert ours["map75"] == pytest.approx(ref[2], abs=1e-9)


def test_coco_map_hand_example():
    # one image, one class, two GT boxes; three detections by score: a perfect hit, a miss, a box at IoU 0.6
    gts = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [1, 1]}]
    dets = [
        {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 6.0]], "labels": [1, 1, 1], "scores": [0.9, 0.8, 0.7]}
    ]
    r = coco_map(dets, gts)
    # IoU 0.5..0.6: TP, FP, TP -> recall 0.5 at precision 1, recall 1 at precision 2/3: 51 points of 1, 50 of 2/3
    ap_low = (51 * 1 + 50 * 2 / 3) / 101
    # IoU 0.65..0.95: only the perfect hit -> 51 recall points (0..0.5) at precision 1
    ap_high = 51 / 101
    assert r["map50"] == pytest.approx(ap_low)
    assert r["ap_per_threshold"][0.6] == pytest.approx(ap_low)
    assert r["map75"] == pytest.approx(ap_high)
    assert r["map"] == pytest.approx((3 * ap_low + 7 * ap_high) / 10)


def test_coco_map_class_without_detections_and_without_gt():
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    dets = [{"boxes": [[0, 0, 10, 10]], "labels": [2], "scores": [0.5]}]
    r = coco_map(dets, gts, class_ids=[1, 2])
    assert r["ap_per_class"][1] == 0.0 and np.isnan(r["ap_per_class"][2]) and r["map"] == 0.0
    with pytest.raises(ValueError, match="one entry per image"):
        coco_map(dets, gts + gts)
