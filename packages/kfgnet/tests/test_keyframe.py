"""Stage 1: label generation, score model, detector forward/backward and feature extraction, tolerance curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kfgnet.config import KeyFrameTrainConfig
from kfgnet.data import DataError
from kfgnet.detector import FrameDetections, build_detector, detect_frames
from kfgnet.keyframe import (
    KeyFrameNet,
    build_keyframe_model,
    build_sequences,
    generate_labels,
    geo_features,
    predict_keyframes,
    subsample_entries,
    train_keyframe,
)
from kfgnet.presets import get_detector_config, get_keyframe_config


def test_labels_one_at_key_and_hand_computation() -> None:
    feat = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances to entry 0: 0, 5, 10
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=float)
    frames = np.array([10, 12, 20])
    lab = generate_labels(feat, boxes, frames, 0, "exp")
    assert lab[0] == pytest.approx(1.0)
    # entry 1: s_feat = exp(-5/10), s_frame = 1 - 2/10, IoU = 50/100
    assert lab[1] == pytest.approx((math.exp(-0.5) + 0.8 + 0.5) / 3, rel=1e-6)
    # entry 2: s_feat = exp(-1), s_frame = 0, IoU = 0
    assert lab[2] == pytest.approx(math.exp(-1) / 3, rel=1e-6)
    lin = generate_labels(feat, boxes, frames, 0, "linear")
    assert lin[1] == pytest.approx((0.5 + 0.8 + 0.5) / 3, rel=1e-6)


def test_subsample_keeps_key() -> None:
    idx = subsample_entries(1000, 517, 300)
    assert 517 in idx and len(idx) <= 300 and np.all(np.diff(idx) > 0)
    assert len(subsample_entries(10, 3, 300)) == 10


def _dets(n: int, d: int = 16, seed: int = 0) -> FrameDetections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (n, 2))
    return FrameDetections(
        np.arange(n) * 2,
        np.concatenate([xy, xy + 20], 1).astype(np.float32),
        rng.uniform(0.5, 1, n).astype(np.float32),
        rng.normal(size=(n, d)).astype(np.float32),
        (64, 64),
        2 * n,
    )


def test_geo_features_minmax_and_image() -> None:
    d = _dets(6)
    g = geo_features(d, get_keyframe_config("kfgnet_keyframe"))
    assert g.shape == (6, 5) and g[:, :4].min() == 0 and g[:, :4].max() == 1
    assert g[-1, 4] == pytest.approx(10 / 11)
    g6 = geo_features(d, get_keyframe_config("kfgnet_keyframe", geo_dim=6, box_norm="image"))
    assert g6.shape == (6, 6) and np.allclose(g6[:, 5], d.scores)
    gs = geo_features(d, get_keyframe_config("kfgnet_keyframe", geo_dim=6, score_norm="minmax"))
    lo, hi = d.scores.min(), d.scores.max()
    np.testing.assert_allclose(gs[:, 5], (d.scores - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(gs[:, :5], g, atol=1e-6)  # the box and frame columns are unchanged


@pytest.mark.parametrize("preset", ["kfgnet_keyframe", "official_2023"])
def test_keyframe_net_forward_backward(preset: str) -> None:
    over = (
        {"feature_dim": 16, "lstm_hidden": 16, "feat_embed": 8, "geo_embed": 8}
        if preset != "official_2023"
        else {"feature_dim": 16, "lstm_hidden": 16, "feat_embed": 8}
    )
    cfg = get_keyframe_config(preset, **over)
    m = build_keyframe_model(cfg)
    feat, geo = torch.randn(3, 7, 16), torch.rand(3, 7, cfg.geo_dim)
    out = m(feat, geo, torch.tensor([7, 5, 2]))
    assert out.shape == (3, 7)
    out.sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    if cfg.sigmoid:
        assert out.min() >= 0 and out.max() <= 1


def test_keyframe_training_learns_a_simple_rule() -> None:
    cfg = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=16)
    dets = [_dets(12, seed=s) for s in range(12)]
    keys = [int(d.frame_num[np.argmax(d.boxes[:, 0])]) for d in dets]  # key = right-most box
    seqs = build_sequences(dets, keys, cfg)
    assert all(s["label"][s["key"]] == pytest.approx(1.0) for s in seqs)
    m = train_keyframe(seqs, cfg, KeyFrameTrainConfig(epochs=40, batch_size=12, lr=0.01), torch.device("cpu"), False)
    pred, curves = predict_keyframes(m, seqs, torch.device("cpu"))
    assert len(curves[0]) == 12
    assert np.mean(np.abs(np.array(pred) - np.array(keys)) <= 2) >= 0.5


def test_no_detections_error() -> None:
    empty = FrameDetections(
        np.zeros(0, int),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros((0, 16), np.float32),
        (64, 64),
        20,
    )
    with pytest.raises(DataError, match="no frame with a detection"):
        build_sequences([empty], [3], get_keyframe_config("kfgnet_keyframe", feature_dim=16))


def test_tiny_detector_forward_backward_and_features() -> None:
    torch.manual_seed(0)
    cfg = get_detector_config("tiny", min_size=64, max_size=64)
    m = build_detector(cfg).train()
    imgs = [torch.rand(3, 64, 64) for _ in range(2)]
    tg = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.ones(1, dtype=torch.int64)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = m(imgs, tg)
    sum(losses.values()).backward()
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert m.backbone[0].weight.grad is not None
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    d = detect_frames(m, frames, torch.device("cpu"), score_threshold=0.0)
    assert d.features.shape == (len(d.frame_num), cfg.representation) and d.boxes.shape == (len(d.frame_num), 4)
    none = detect_frames(m, frames, torch.device("cpu"), score_threshold=1.01)
    assert len(none.frame_num) == 0 and none.features.shape == (0, cfg.representation)


def test_tolerance_curve_constructed() -> None:
    from kfgnet.evaluate import tolerance_curve

    c = tolerance_curve([10, 12, 30, 0], [10, 10, 10, 0], max_distance=32)
    assert c.shape == (33,)
    assert c[0] == 0.5 and c[1] == 0.5 and c[2] == 0.75 and c[19] == 0.75 and c[20] == 1.0


def test_keyframe_net_rejects_wrong_feature_width() -> None:
    m = KeyFrameNet(
        get_keyframe_config(
            "kfgnet_keyframe", feature_dim=8, geo_dim=5, feat_embed=4, geo_embed=4, lstm_hidden=4, head_hidden=4
        )
    )
    with pytest.raises(ValueError, match="feature_dim"):
        m(torch.randn(1, 3, 9), torch.rand(1, 3, 5), torch.tensor([3]))


def test_official_2023_optimisation_and_best_epoch_on_validation() -> None:
    from kfgnet.presets import get_keyframe_train_config

    t = get_keyframe_train_config("official_2023", epochs=12)
    assert (t.lr, t.weight_decay, t.lr_milestones, t.lr_gamma, t.grad_clip, t.mask_padding) == (
        1e-3,
        1e-8,
        (10,),
        0.1,
        0.5,
        False,
    )
    assert get_keyframe_train_config("kfgnet_keyframe").lr == 0.01  # the paper's
    cfg = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=16)
    dets = [_dets(12, seed=s) for s in range(10)]
    keys = [int(d.frame_num[np.argmax(d.boxes[:, 0])]) for d in dets]
    seqs = build_sequences(dets[:7], keys[:7], cfg)
    val = build_sequences(dets[7:], None, cfg)
    log: list[dict] = []
    m = train_keyframe(seqs, cfg, t, torch.device("cpu"), False, log, val, keys[7:])
    assert [r["lr"] for r in log][9:11] == pytest.approx([1e-3, 1e-4])  # x0.1 from epoch 11 (after 10)
    assert [r["epoch"] for r in log if "val_acc_d0" in r] == [2, 4, 6, 8, 10, 12]  # official: every 2 epochs
    best = [r for r in log if r.get("best")][-1]
    pred, _ = predict_keyframes(m, val, torch.device("cpu"))
    acc = float(np.mean([p == k for p, k in zip(pred, keys[7:])]))
    assert acc == pytest.approx(best["val_acc_d0"])  # the returned model is the best epoch's


def test_locate_keyframes_fallback_for_a_video_without_detections(caplog: pytest.LogCaptureFixture) -> None:
    """Stage 1's answer: the LSTM's argmax frame with the detector's box there; a video without any detection gets
    the middle frame, no box, source fallback_middle (logged), never a crash or a dropped video."""
    from kfgnet.keyframe import build_keyframe_model
    from kfgnet.pipeline import locate_keyframes

    cfg = get_keyframe_config("kfgnet_keyframe_tiny", feature_dim=16)
    torch.manual_seed(0)
    model = build_keyframe_model(cfg).eval()
    empty = FrameDetections(
        np.zeros(0, np.int64),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros((0, 16), np.float32),
        (64, 64),
        31,
    )
    d = _dets(10)
    with caplog.at_level("WARNING", logger="kfgnet"):
        preds = locate_keyframes(["a.avi", "b.avi"], [d, empty], model, cfg, torch.device("cpu"))
    a, b = preds
    assert a.source == "stage1" and a.key_frame in d.frame_num.tolist()
    np.testing.assert_allclose(a.box, d.boxes[list(d.frame_num).index(a.key_frame)])
    assert (b.key_frame, b.box, b.source, b.num_frames) == (15, None, "fallback_middle", 31)
    assert "b.avi" in caplog.text and "fallback_middle" in caplog.text
