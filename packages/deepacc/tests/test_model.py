"""Model tests on tiny configs: shapes, gradients to every trainable parameter, post-processing indices, weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from deepacc.backbone import resolve_backbone_weights
from deepacc.config import config_from_dict, create_config, list_configs
from deepacc.model import build_model, set_output_mode
from deepacc.postprocess import agnostic_top1, postprocess_detections
from deepacc.precision import cast_bf16


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 70.0], [60.0, 20.0, 90.0, 50.0], [20.0, 80.0, 50.0, 110.0]]),
         "labels": torch.tensor([1, 2, 23])},
        {"boxes": torch.tensor([[30.0, 30.0, 60.0, 90.0], [70.0, 70.0, 100.0, 100.0]]),
         "labels": torch.tensor([21, 24])},
    ]  # fmt: skip


def _tiny(**model_kw: object):
    cfg = create_config("deepacc_tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, min_size=128, max_size=128, **model_kw))


SWITCHES = {
    "a": dict(separate_reg=False, aam=False, siamese=False, gia=False),
    "b": dict(separate_reg=True, aam=False, siamese=False, gia=False),
    "c": dict(aam=True, siamese=False, gia=False),
    "d": dict(aam=False, siamese=True, gia=False),
    "e": dict(aam=True, siamese=True, gia=False),
    "f": dict(aam=True, siamese=True, gia=True),
}
EXPECTED_LOSSES = {
    "a": {"loss_classifier"},
    "b": {"loss_classifier"},
    "c": {"loss_aam", "loss_centre"},
    "d": {"loss_aam", "loss_ce", "loss_centre"},
    "e": {"loss_aam", "loss_ce", "loss_centre"},
    "f": {"loss_aam", "loss_ce", "loss_gia", "loss_centre"},
}


@pytest.mark.parametrize("row", sorted(SWITCHES))
def test_forward_backward_every_parameter_gets_gradient(row: str) -> None:
    torch.manual_seed(0)
    model = build_model(_tiny(**SWITCHES[row])).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 120, 128)]
    losses = model(images, _targets())
    assert set(losses) == {"loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} | EXPECTED_LOSSES[row]
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_separate_branch_structure() -> None:
    sep = build_model(_tiny(separate_reg=True))
    shared = build_model(_tiny(separate_reg=False, aam=False, siamese=False, gia=False))
    assert sep.roi_heads.reg_head is not None and shared.roi_heads.reg_head is None
    assert sep.roi_heads.cls_score is None and sep.roi_heads.margin_weight.shape == (25, 256)
    assert shared.roi_heads.cls_score.bias is not None  # plain CE classifier keeps its bias
    assert sep.roi_heads.bbox_pred.out_features == 4 * 25  # class-specific deltas
    assert sep.roi_heads.inf_bias.abs().sum() == 0  # Eq. 2: b initialised to zero


def test_eval_output_shapes_and_modes() -> None:
    torch.manual_seed(0)
    model = build_model(_tiny()).eval()
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    with torch.no_grad():
        out = model(images)
        assert len(out) == 2
        for o in out:
            n = len(o["labels"])
            assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["roi_indices"].shape == (n,)
            assert n <= _tiny().model.detections_per_img and (o["labels"] >= 1).all() and (o["labels"] <= 24).all()
        set_output_mode(model, "raw")
        raw = model(images)
        r = raw[0]["scores"].shape[0]
        assert raw[0]["scores"].shape == (r, 25) and raw[0]["boxes"].shape == (r * 25, 4)
        assert torch.allclose(raw[0]["scores"].sum(1), torch.ones(r), atol=1e-4)
        assert (raw[1]["boxes"][:, 3] <= 96.0 + 1e-3).all()  # clipped to the (original) image
        set_output_mode(model, "max")
        mx = model(images)
        idx = mx[0]["roi_indices"]
        assert len(torch.unique(idx)) == len(idx)  # at most one detection per RoI in mAP_max mode
    with pytest.raises(ValueError, match="output mode"):
        set_output_mode(model, "bogus")


def test_training_without_targets_raises() -> None:
    model = build_model(_tiny()).train()
    with pytest.raises((ValueError, AssertionError), match="targets"):  # torchvision asserts before our heads
        model([torch.rand(3, 64, 64)])


def test_postprocess_keeps_roi_indices() -> None:
    k = 4
    boxes = torch.zeros(3, k, 4)
    boxes[0] = torch.tensor([0.0, 0.0, 10.0, 10.0])
    boxes[1] = torch.tensor([50.0, 50.0, 60.0, 60.0])
    boxes[2] = torch.tensor([0.0, 0.0, 10.0, 11.0])  # overlaps RoI 0 (IoU 0.91)
    scores = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.2, 0.1, 0.1, 0.6], [0.05, 0.05, 0.8, 0.1]])
    std = postprocess_detections(boxes, scores, "standard", score_thresh=0.05, nms_thresh=0.5)
    got = sorted(zip(std["roi_indices"].tolist(), std["labels"].tolist()))
    # class-wise NMS: class 2 of RoI 0 (0.3) is suppressed by class 2 of RoI 2 (0.8); class 3 of RoI 2 (0.1) is
    # suppressed by nothing (RoI 1 is far); class 1 of RoIs 1 (0.1) and 2 (0.05 not > 0.05)
    assert got == [(0, 1), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3)]
    assert std["scores"].tolist() == sorted(std["scores"].tolist(), reverse=True)
    mx = postprocess_detections(boxes, scores, "max", score_thresh=0.05, nms_thresh=0.5)
    assert sorted(zip(mx["roi_indices"].tolist(), mx["labels"].tolist())) == [(0, 1), (1, 3), (2, 2)]
    # Acc/AER protocol: score >= 0.5 then class-agnostic NMS 0.7 removes RoI 0 (IoU 0.91 with higher-scored RoI 2)
    top = agnostic_top1(mx, 0.5, 0.7)
    assert sorted(top["roi_indices"].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="mode"):
        postprocess_detections(boxes, scores, "nope")


def test_missing_backbone_weights_names_file_and_flag(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DEEPACC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError, match=r"resnet101-63fe2227\.pth.*--pretrained none"):
        resolve_backbone_weights("resnet101", "imagenet")
    with pytest.raises(FileNotFoundError, match="resnet101-63fe2227.pth"):
        build_model(create_config("deepacc_r101"), pretrained=tmp_path / "nope.pth")
    assert resolve_backbone_weights("resnet101", None) is None


def test_backbone_weights_loaded_from_local_file(tmp_path) -> None:
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    cfg = create_config("deepacc_r101")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="resnet18", min_size=64, max_size=64))
    model = build_model(cfg, pretrained=tmp_path)
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, ref.conv1.weight)
    assert torch.equal(body.layer1[0].bn1.running_mean, ref.layer1[0].bn1.running_mean)
    # trainable_layers = 3: conv1 and layer1 frozen, layer2..4 trainable
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


def test_registry_and_config_overrides() -> None:
    names = list_configs()
    for n in ("deepacc_r101", "table1_a", "table1_f", "faster_rcnn_r101", "retinanet_r101", "deepacc_tiny"):
        assert n in names
    with pytest.raises(ValueError, match="valid names"):
        create_config("nope")
    paper = create_config("deepacc_r101")
    assert (paper.model.margin, paper.model.scale, paper.model.aam_weight, paper.model.gia_weight) == (
        0.25,
        64.0,
        0.1,
        0.1,
    )
    assert paper.train.milestones == (16, 22) and paper.train.epochs == 24 and paper.train.batch_size == 1
    cfg = config_from_dict({"base": "deepacc_tiny", "model": {"delta": 0.7}, "train": {"epochs": 3}})
    assert cfg.model.delta == 0.7 and cfg.train.epochs == 3 and cfg.model.backbone == "tiny"
    with pytest.raises(ValueError, match="valid keys"):
        config_from_dict({"model": {"deltaa": 0.7}})
    with pytest.raises(ValueError, match="expects"):
        config_from_dict({"train": {"epochs": "three"}})


def test_retinanet_baseline_builds_and_runs() -> None:
    cfg = create_config("retinanet_r101")
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(create_config("deepacc_tiny").model, arch="retinanet", min_size=96, max_size=96)
    )
    model = build_model(cfg).train()
    losses = model([torch.rand(3, 96, 96)], _targets()[:1])
    assert {"classification", "bbox_regression"} <= set(losses)


def _retinanet_tiny(size: int = 96):
    cfg = create_config("retinanet_r101")
    tiny = create_config("deepacc_tiny").model
    return dataclasses.replace(cfg, model=dataclasses.replace(tiny, arch="retinanet", min_size=size, max_size=160))


def test_retinanet_max_mode_keeps_top1_foreground_class_per_anchor() -> None:
    model = build_model(_retinanet_tiny()).eval()
    logits = torch.full((3, 25), -9.0)  # [A=3 anchors, K=25]
    logits[0, 3], logits[0, 5] = 3.0, 2.0  # anchor 0: classes 3 and 5 both above the 0.05 score threshold
    logits[1, 0], logits[1, 7] = 4.0, 1.0  # anchor 1: background column highest, class 7 the best foreground
    anchors = torch.tensor([[10.0, 10.0, 40.0, 60.0], [50.0, 20.0, 80.0, 70.0], [5.0, 5.0, 20.0, 20.0]])
    head = {"cls_logits": [logits[None]], "bbox_regression": [torch.zeros(1, 3, 4)]}
    std = model.postprocess_detections(head, [[anchors]], [(96, 96)])[0]
    assert sorted(std["labels"].tolist()) == [0, 3, 5, 7]  # torchvision: every (anchor, class) pair
    mx = model.postprocess_max(head, [[anchors]], [(96, 96)])[0]
    assert mx["labels"].tolist() == [3, 7]  # one detection per anchor, never background
    torch.testing.assert_close(mx["boxes"], anchors[:2], rtol=0, atol=1e-4)
    torch.testing.assert_close(mx["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])), rtol=0, atol=1e-6)


def test_retinanet_raw_mode_max_boxes_in_original_frame() -> None:
    torch.manual_seed(0)
    model = build_model(_retinanet_tiny()).eval()
    model.score_thresh = 0.0  # untrained: the focal-loss prior puts every score near 0.01
    img = torch.rand(3, 80, 120)  # resized to 96 x 144 inside the model
    with torch.no_grad():
        set_output_mode(model, "max")
        mx = model([img])[0]
        set_output_mode(model, "raw")
        raw = model([img])[0]
        set_output_mode(model, "standard")
    assert len(mx["boxes"]) == 300 and {"boxes", "max_boxes", "max_scores", "max_labels"} <= set(raw)  # the cap
    torch.testing.assert_close(raw["max_boxes"], mx["boxes"])
    assert float(raw["max_boxes"][:, 2].max()) <= 120.0 + 1e-3 and float(raw["max_boxes"][:, 3].max()) <= 80.0 + 1e-3
    assert float(raw["max_boxes"][:, 2].max()) > 100.0  # boxes do reach the right part of the original image
    assert int(raw["max_labels"].min()) >= 1


@pytest.mark.parametrize("feature_norm", [False, True])
def test_templates_local_from_first_iteration(feature_norm: bool) -> None:
    """Eq. 2 from iteration 0: classes whose best RoI passes delta use that RoI's normalised embedding, the others
    (and background) the global centre; logits are W_I^T x + b with x not normalised (Eq. 2 as printed) or
    s * n(x)^T W_I + b (``inference_feature_norm``, the default)."""
    torch.manual_seed(0)
    model = build_model(_tiny(delta=0.0, inference_feature_norm=feature_norm)).train()
    heads = model.roi_heads
    emb = torch.rand(6, 256)
    heads.inf_bias.data = torch.arange(25, dtype=torch.float32) * 0.01
    out = heads.class_outputs(emb, [6])  # first call, training mode: no warm-up, no counter
    probs = torch.softmax(64.0 * out["cos"], 1)
    j_star = probs.argmax(0)  # [K]
    nf = torch.nn.functional.normalize
    assert heads.current_scale("inference") == 8.0  # s of s * n(x): model.inference_scale (the margin branch: 64)
    x = 8.0 * nf(emb, dim=1) if feature_norm else emb
    expected = x @ nf(emb[j_star], dim=1).t() + heads.inf_bias  # delta 0: every foreground class local
    w0 = nf(heads.margin_weight[0], dim=0)
    expected[:, 0] = x @ w0 + heads.inf_bias[0]  # background: always the global centre
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-5)
    assert heads.last_template_stats["local_fraction"] == 1.0
    heads.cfg = dataclasses.replace(heads.cfg, delta=1.0)  # delta 1: nothing passes, all global
    glob = heads.class_outputs(emb, [6])["logits"]
    torch.testing.assert_close(glob, x @ nf(heads.margin_weight, dim=1).t() + heads.inf_bias, rtol=1e-5, atol=1e-4)
    assert heads.last_template_stats["local_fraction"] == 0.0
    assert not hasattr(heads, "train_iters")  # no hidden iteration counter can change the loss


def test_heads_with_zero_proposals() -> None:
    model = build_model(_tiny()).eval()
    feats = {str(i): torch.rand(1, 32, 16 // 2**i, 16 // 2**i) for i in range(3)}
    for mode in ("standard", "max", "raw"):
        set_output_mode(model, mode)
        with torch.no_grad():
            out, _ = model.roi_heads(feats, [torch.zeros(0, 4)], [(128, 128)])
        assert out[0]["boxes"].shape[-1] == 4 and out[0]["scores"].shape[0] == 0


def test_cast_bf16_keeps_fp32_interfaces_and_close_outputs() -> None:
    import copy

    torch.manual_seed(0)
    model = build_model(_tiny()).eval()
    cast = cast_bf16(copy.deepcopy(model))
    heads = cast.roi_heads
    assert next(cast.backbone.parameters()).dtype == torch.bfloat16
    assert heads.box_head.fc6.weight.dtype == torch.bfloat16
    assert heads.margin_weight.dtype == torch.float32 and heads.bbox_pred.weight.dtype == torch.float32
    x = torch.rand(3, 128, 128)
    set_output_mode(model, "raw")
    set_output_mode(cast, "raw")
    with torch.no_grad():
        feats32 = model.backbone(x[None])
        feats16 = cast.backbone(x[None])  # fp32 in, fp32 out
        out32, out16 = model([x])[0], cast([x])[0]
    assert all(v.dtype == torch.float32 for v in feats16.values())
    rel = max(float((feats16[k] - feats32[k]).norm() / feats32[k].norm()) for k in feats32)
    assert 0 < rel < 0.05, rel  # bf16 rounding, not a different network
    assert out16["scores"].dtype == torch.float32 and out16["boxes"].dtype == torch.float32
    assert out16["scores"].shape[1] == out32["scores"].shape[1] == 25


def test_retinanet_is_p3_to_p7_like_torchvision() -> None:
    """Table 2's RetinaNet as ``retinanet_resnet50_fpn``: P3-P7 (strides 8..128), P6/P7 convolutions from P5,
    3 octave scales x 3 ratios per location; Faster R-CNN keeps P2-P5 + a pooled level for the RPN."""
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    cfg = create_config("retinanet_r101")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="resnet18", norm="bn",
                                                             min_size=128, max_size=128))  # fmt: skip
    model = build_model(cfg).eval()
    feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert [tuple(v.shape[-2:]) for v in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert isinstance(model.backbone.fpn.extra_blocks, LastLevelP6P7) and model.backbone.fpn.extra_blocks.use_P5
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    frcnn = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch="deepacc")))
    assert isinstance(frcnn.backbone.fpn.extra_blocks, LastLevelMaxPool)
    assert [tuple(v.shape[-2:]) for v in frcnn.backbone(torch.rand(1, 3, 128, 128)).values()] == [
        (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # fmt: skip
