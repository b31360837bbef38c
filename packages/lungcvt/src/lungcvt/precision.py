"""``--precision auto|fp32|tf32|bf16`` for lungcvt: :func:`medshared.precision.resolve_precision` with lungcvt's probe.

The probe is lungcvt's own op mix: one forward + backward + Adam step of the tiny model (``lungcvt_tiny``'s DeiT: 2
blocks, width 192, 64 px input with 8 px patches, the CNN + attention front end) on a batch of 8 random images, well
under 0.3 s on one CPU thread. ``auto`` on a CPU takes bf16 only where that step is measured faster under bf16
autocast (cached per CPU model, torch version and thread count; ``MEDREPRO_PRECISION`` overrides); on CUDA bf16 with
TF32 where the GPU has native bf16.

The older ``train.bf16: true`` setting is an alias: with ``--precision auto`` it asks for bf16. Feature extraction
always runs in fp32 (dB of powers down to 1e-10; its matmuls are not where the time goes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PROBE_KEY", "train_probe", "resolve"]

#: the probe's name in the precision cache
PROBE_KEY = "lungcvt.tiny_train_step"


def train_probe(batch: int = 8) -> Callable[[], None]:
    """A callable running one training step of the tiny model (the probe ``resolve_precision`` times)."""
    from lungcvt.config import get_config
    from lungcvt.model import LungCVT

    cfg = get_config("lungcvt_tiny").model
    gen = torch.Generator().manual_seed(0)
    model = LungCVT(dataclasses.replace(cfg, pretrained=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=gen)
    y = torch.arange(batch) % cfg.num_classes

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def resolve(spec: str, device: Any, bf16_alias: bool = False):
    """The :class:`medshared.precision.Precision` of a lungcvt command.

    Args:
        spec: ``auto | fp32 | tf32 | bf16``.
        device: the torch device (or its string).
        bf16_alias: the config's old ``train.bf16``; with ``spec == "auto"`` it asks for bf16 (an explicit spec wins).
    """
    from medshared.precision import resolve_precision

    if bf16_alias and str(spec).lower() == "auto":
        spec = "bf16"
    return resolve_precision(spec, device, key=PROBE_KEY, probe=_LazyProbe())


class _LazyProbe:
    """Builds the tiny model only when ``resolve_precision`` actually measures (not when the answer is cached)."""

    def __init__(self) -> None:
        self._step: Callable[[], None] | None = None

    def __call__(self) -> None:
        if self._step is None:
            self._step = train_probe()
        self._step()
