"""Tensors created on the default device beside the model's tensors (a crash on CUDA), caught on the CPU.

``device_less_factories()`` is a ``TorchFunctionMode`` that records every tensor factory call (``torch.ones``,
``zeros``, ``arange``, ``tensor``, ...) made from deepacc's own source files without a ``device=`` argument: on CUDA
such a tensor lands on the CPU next to CUDA tensors. (``medshared.testing.strict_devices`` with ``device="meta"``
cannot run these paths: the RoI sampler's data-dependent ops have no meta kernels.)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import deepacc
import pytest
import torch
from deepacc.config import create_config
from deepacc.model import build_model, set_output_mode
from torch.overrides import TorchFunctionMode

PKG = str(Path(deepacc.__file__).parent)
TORCH = str(Path(torch.__file__).parent) + "/"
FACTORIES = {torch.ones, torch.zeros, torch.empty, torch.full, torch.arange, torch.tensor, torch.as_tensor,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye}  # fmt: skip


class device_less_factories(TorchFunctionMode):  # noqa: N801 - used like a function
    """Records ``(file:line, factory)`` of factory calls from deepacc's sources without ``device=``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename.startswith(TORCH):  # torch's own wrappers, not torchvision
                f = f.f_back
            if f is not None and f.f_code.co_filename.startswith(PKG):
                self.found.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


def _cfg(**model_kw: object):
    cfg = create_config("deepacc_tiny")
    m = dataclasses.replace(cfg.model, min_size=96, max_size=96, box_batch_size_per_image=32,
                            rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, **model_kw)  # fmt: skip
    return dataclasses.replace(cfg, model=m)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 70.0], [50.0, 20.0, 80.0, 50.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # fmt: skip


@pytest.mark.parametrize("roi_min_level", [0, 2])
def test_training_and_inference_create_no_tensor_on_the_default_device(roi_min_level: int) -> None:
    """The full head with exclude_gt_templates and an image without boxes (the old ``torch.ones`` on the CPU in
    heads.py), GIA, P2 pooling; then inference in every output mode, the health measurement and evaluation."""
    from deepacc.evaluate import detections_from_raw
    from deepacc.postprocess import class_agnostic_detections

    torch.manual_seed(0)
    cfg = _cfg(exclude_gt_templates=True, roi_min_level=roi_min_level)
    model = build_model(cfg).train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    with device_less_factories() as mode:
        losses = model(images, _targets())
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            for m in ("standard", "max", "raw"):
                set_output_mode(model, m)
                out = model(images[:1])
        set_output_mode(model, "standard")
        raw = (out[0]["boxes"].reshape(-1, 25, 4), out[0]["scores"])
        detections_from_raw([raw], cfg, "standard")
        class_agnostic_detections(raw[0], raw[1])
    assert mode.found == [], f"tensors created without device= (they land on the CPU beside CUDA tensors): {mode.found}"


def test_the_detector_catches_the_old_bug() -> None:
    """The mode itself: a device-less ``torch.ones`` from a deepacc file is reported (the old heads.py line)."""
    src = Path(PKG) / "heads.py"
    code = compile("torch.ones(3, dtype=torch.bool)", str(src), "eval")
    with device_less_factories() as mode:
        eval(code, {"torch": torch})  # noqa: S307 - a constant expression attributed to heads.py
    assert mode.found and mode.found[0].startswith("heads.py")
