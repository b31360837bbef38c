"""Models of the ``paper-<model>`` steps of ``scripts/gpu_check_steps.py``: each package's model built by the
package's own builder with random weights (no download), a batch of the paper's size on CUDA (the tiny preset on a
CPU) and its training loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def cpu_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class ModelSpec:
    """``build()`` -> CPU model (random init); ``batch(dev)`` -> inputs on dev; ``loss(model, inputs)`` -> (loss, out
    tensor compared against fp32); ``what`` says the size."""

    build: Callable[[], torch.nn.Module]
    batch: Callable[[torch.device], Any]
    loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
    what: str


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target)


def spec_pocapnet(paper: bool) -> ModelSpec:
    from pocapnet.model import create_model

    name, T = ("pocapnet", 512) if paper else ("pocapnet_tiny", 8)
    c = create_model(name).cfg

    def batch(dev: torch.device) -> Any:
        g = cpu_generator()
        imgs = torch.randn(T, c.num_images, c.image_dim, generator=g)
        aud = torch.randn(T, c.num_mics, c.audio_frames, c.audio_dim, generator=g)
        target = torch.arange(T) % (c.num_classes - 1)
        return [t.to(dev) for t in (imgs, aud, target)]

    def loss(m: torch.nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, aud, target = b
        out = m(imgs, aud, torch.arange(T, device=imgs.device), torch.zeros(c.hidden_dim, device=imgs.device))
        logits = out.logits  # (stages, T, C)
        return _ce(logits.flatten(0, 1), target.repeat(logits.shape[0])), logits

    return ModelSpec(lambda: seeded(lambda: create_model(name)), batch, loss, f"{name}, {T} s")


def spec_lungcvt(paper: bool) -> ModelSpec:
    from lungcvt.config import get_config
    from lungcvt.model import create_model

    name = "lungcvt_base" if paper else "lungcvt_tiny"
    cfg = get_config(name)
    B = cfg.train.batch_size if paper else 4
    S = cfg.model.img_size

    def batch(dev: torch.device) -> Any:
        g = cpu_generator()
        return torch.randn(B, 3, S, S, generator=g).to(dev), torch.randint(0, 4, (B,), generator=g).to(dev)

    def loss(m: torch.nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m(b[0])
        return _ce(logits, b[1]), logits

    return ModelSpec(
        lambda: seeded(lambda: create_model(name, pretrained=False)),
        batch,
        loss,
        f"{name} (random init), B={B}, {S} px",
    )


def _boxes(n: int, h: int, w: int, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    wh = torch.randint(lo, hi, (n, 2), generator=g).float()
    x0 = torch.rand(n, generator=g) * (w - wh[:, 0])
    y0 = torch.rand(n, generator=g) * (h - wh[:, 1])
    return torch.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1)


def _detector_batch(B: int, h: int, w: int, n_boxes: int, lo: int, hi: int, n_labels: int) -> Callable:
    def batch(dev: torch.device) -> Any:
        g = cpu_generator()
        imgs = [torch.rand(3, h, w, generator=g).to(dev) for _ in range(B)]
        tg = [
            {
                "boxes": _boxes(n_boxes, h, w, lo, hi, g).to(dev),
                "labels": torch.randint(1, n_labels + 1, (n_boxes,), generator=g).to(dev),
            }
            for _ in range(B)
        ]
        return imgs, tg

    return batch


def _detector_loss(m: torch.nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    d = m(*b)
    losses = [v for k, v in d.items() if k.startswith("loss")] or list(d.values())
    total = sum(v.float() for v in losses)
    return total, total.detach().reshape(1)


def spec_deepacc(paper: bool) -> ModelSpec:
    from deepacc.config import create_config
    from deepacc.model import build_model

    name = "deepacc_r101" if paper else "deepacc_tiny"
    cfg = create_config(name)
    B, h, w, n = (2, 1200, 1600, 46) if paper else (1, 160, 160, 6)  # a metaphase: 46 chromosomes
    return ModelSpec(
        lambda: seeded(lambda: build_model(cfg, pretrained=None)),
        _detector_batch(B, h, w, n, 20 if paper else 10, 90 if paper else 40, 24),
        _detector_loss,
        f"{name} (random init), {B} x {h}x{w}, {n} boxes",
    )


def spec_kfgnet_classifier(paper: bool) -> ModelSpec:
    from kfgnet.model import create_model
    from kfgnet.presets import get_classifier_config

    name = "kfgnet_light_c3d" if paper else "kfgnet_tiny"
    c = get_classifier_config(name)
    B = 16 if paper else 2

    def batch(dev: torch.device) -> Any:
        g = cpu_generator()
        x = torch.randn(B, c.in_channels, c.num_frames, c.size, c.size, generator=g)
        return x.to(dev), torch.randint(0, c.num_classes, (B,), generator=g).to(dev)

    def loss(m: torch.nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m(b[0])[0]
        return _ce(logits, b[1]), logits

    what = f"{name}, B={B}, {c.num_frames}x{c.size}x{c.size} clips"
    return ModelSpec(lambda: seeded(lambda: create_model(name)), batch, loss, what)


def spec_kfgnet_detector(paper: bool) -> ModelSpec:
    from kfgnet.detector import build_detector
    from kfgnet.presets import get_detector_config

    name = "resnet50_fpn" if paper else "tiny"
    cfg = get_detector_config(name)
    B, h, w = (8, 500, 600) if paper else (2, 128, 128)
    return ModelSpec(
        lambda: seeded(lambda: build_detector(cfg, load_weights=False)),
        _detector_batch(B, h, w, 1, 40 if paper else 16, 200 if paper else 64, 1),
        _detector_loss,
        f"kfgnet detector {name} (random init), {B} x {h}x{w}",
    )


def spec_alges(paper: bool) -> ModelSpec:
    from alges.config import create_config
    from alges.model import build_model

    name = "alges_paper" if paper else "alges_tiny"
    cfg = create_config(name)
    B, S = (cfg.batch_size, cfg.image_size) if paper else (4, cfg.image_size)

    def batch(dev: torch.device) -> Any:
        g = cpu_generator()
        x = torch.rand(B, 3, S, S, generator=g) * 255
        return x.to(dev), torch.randint(0, cfg.num_classes, (B, S, S), generator=g).to(dev)

    def loss(m: torch.nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m(b[0]).logits
        return _ce(logits, b[1]), logits

    return ModelSpec(
        lambda: seeded(lambda: build_model(cfg, encoder_weights="none")), batch, loss, f"{name}, B={B}, {S} px"
    )


SPECS: dict[str, Callable[[bool], ModelSpec]] = {
    "pocapnet": spec_pocapnet,
    "lungcvt": spec_lungcvt,
    "deepacc": spec_deepacc,
    "kfgnet-classifier": spec_kfgnet_classifier,
    "kfgnet-detector": spec_kfgnet_detector,
    "alges": spec_alges,
}
