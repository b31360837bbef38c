"""deepacc's CUDA paths (skipped without CUDA by the root conftest): a training step of the tiny detector with the
full head under the precision ``auto`` resolves to, and exclude_gt_templates with an image without boxes (the old
CPU ``torch.ones`` beside CUDA tensors in heads.py), then inference, evaluation and margin_health on CUDA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from deepacc.config import create_config
from deepacc.model import build_model

pytestmark = pytest.mark.gpu


def _cfg(**model_kw: object):
    cfg = create_config("deepacc_tiny")
    m = dataclasses.replace(cfg.model, min_size=128, max_size=128, box_batch_size_per_image=64, roi_min_level=2,
                            **model_kw)  # fmt: skip
    return dataclasses.replace(cfg, model=m)


def _targets(device: torch.device) -> list[dict[str, torch.Tensor]]:
    empty = {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long, device=device)}
    boxes = torch.tensor([[10.0, 12.0, 40.0, 70.0], [50.0, 20.0, 80.0, 50.0]], device=device)
    return [{"boxes": boxes, "labels": torch.tensor([1, 2], device=device)}, empty]


def test_train_step_and_inference_on_cuda_with_auto_precision() -> None:
    from deepacc.precision import resolve

    dev = torch.device("cuda")
    prec = resolve("auto", dev, train=True)
    prec.apply()
    torch.manual_seed(0)
    model = build_model(_cfg()).to(dev).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = [torch.rand(3, 128, 128, device=dev), torch.rand(3, 128, 128, device=dev)]
    for _ in range(2):
        with prec.autocast():
            losses = model(images, _targets(dev))
        loss = sum(v.float() for v in losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images[:1])[0]
    assert out["boxes"].device.type == "cuda" and out["boxes"].shape[-1] == 4


def test_exclude_gt_templates_with_an_empty_image_and_evaluation_on_cuda(tmp_path: Path) -> None:
    from deepacc.evaluate import evaluate_detections, predict_raw
    from deepacc.health import margin_health
    from deepacc.samples import Sample
    from PIL import Image

    dev = torch.device("cuda")
    torch.manual_seed(0)
    cfg = _cfg(exclude_gt_templates=True)
    model = build_model(cfg).to(dev).train()
    losses = model([torch.rand(3, 128, 128, device=dev)] * 2, _targets(dev))  # crashed: CPU mask beside CUDA boxes
    sum(losses.values()).backward()
    Image.fromarray((np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    s = Sample(tmp_path / "a.png", np.array([[10, 12, 40, 70]], np.float32), np.array([3]))
    raws = predict_raw(model, [s], dev)
    res = evaluate_detections(raws, [s], cfg, with_chance=False)
    assert 0.0 <= res["class_agnostic_ap50"] <= 1.0
    h = margin_health(model, [s], dev)
    assert h is not None and h["n_rois"] == 1
