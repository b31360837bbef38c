"""kfgnet's precision: ``--precision auto | fp32 | tf32 | bf16`` resolved by ``medshared.precision`` with kfgnet's own
op mixes as the CPU probes, and where bf16 autocast applies in each model.

- **Classifier** (light C3D, baselines): bf16 autocast over the forward pass; the losses run in fp32
  (``kfgnet_loss`` casts the logits and V_temp). Probe (key ``kfgnet.c3d_train``): one training step of a half-width
  light C3D on one 16 x 56 x 56 clip in channels_last_3d (forward, L_cls + L_motion, backward, Adam), ~0.16 s in
  fp32 on one thread; its bf16 / fp32 time ratio (0.46 on the AMX CPU of this session) tracks the paper-size step's
  (0.38 there, ``bench/train_step.py``).
- **Detector** (Faster R-CNN): bf16 autocast on the backbone only (most of the FLOPs); its feature maps come back
  as fp32, so the RPN, box coding, RoI heads and losses stay fp32 (box coordinates in bf16 would round to 4 px at
  600 px). Probe (key ``kfgnet.detector_backbone.<backbone>``): forward + backward of the detector's own backbone
  (random init) on one 128-px image. Per backbone because the answer differs: on this session's AMX CPU bf16 took
  0.69-0.78x fp32's time for ``small`` (kfgnet_ddti), 0.87x for ``tiny``, 0.90x for ``resnet50_fpn`` and **1.45x**
  for ``mobilenet_v3_fpn`` (depthwise convolutions).
- **Key-frame LSTM**: fp32 always (256 units on a few hundred steps; nothing to gain, and its MSE targets are
  differences of scores); the precision still sets the TF32 switches and the detector's autocast in stage 1.
- **Memory format**: every precision but an explicit ``fp32`` also runs the classifier in channels_last_3d (faster
  on every CPU measured, and for cuDNN's 3D convolutions); ``--precision fp32`` is the plain reference.

Old switches kept as aliases: ``train.bf16: true`` in a ``--config`` file means ``--precision bf16`` (an explicit
``--precision`` other than bf16 beside it is an error naming both).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "CLASSIFIER_KEY",
    "DETECTOR_KEY",
    "c3d_probe",
    "detector_probe",
    "classifier_precision",
    "detector_precision",
    "fixed_precision",
    "backbone_autocast",
    "spec_from_alias",
]

CLASSIFIER_KEY = "kfgnet.c3d_train"
DETECTOR_KEY = "kfgnet.detector_backbone"  # + "." + the backbone name


def c3d_probe(frames: int = 16, size: int = 56, widths: tuple[int, int, int, int] = (32, 64, 128, 256)) -> Callable:
    """A callable running one light-C3D training step (built on the first call, so the warm-up call pays for it).

    Runs under whatever autocast the caller sets (``medshared.precision.measure_probe`` times it in fp32 and under
    bf16 autocast). Shapes: one clip ``(1, 3, frames, size, size)`` in channels_last_3d; V_motion ``(1, frames/4)``.
    """
    state: dict[str, Any] = {}

    def step() -> None:
        from kfgnet.losses import kfgnet_loss
        from kfgnet.model import create_model

        if not state:
            g = torch.Generator().manual_seed(0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = create_model("kfgnet_light_c3d", num_frames=frames, size=size, widths=widths).train()
            state["model"] = model.to(memory_format=torch.channels_last_3d)
            state["x"] = torch.rand(1, 3, frames, size, size, generator=g).contiguous(
                memory_format=torch.channels_last_3d
            )
            state["y"] = torch.tensor([1])
            state["vm"] = torch.rand(1, frames // 4, generator=g)
            state["opt"] = torch.optim.Adam(model.parameters(), lr=1e-5)
        logits, v_temp = state["model"](state["x"])
        loss, _ = kfgnet_loss(logits, state["y"], v_temp, state["vm"])
        state["opt"].zero_grad(set_to_none=True)
        loss.backward()
        state["opt"].step()

    return step


def _default_detector_config() -> Any:
    from kfgnet.presets import get_detector_config

    return get_detector_config("kfgnet_ddti")


def detector_probe(cfg: Any = None, size: int = 128) -> Callable:
    """A callable running forward + backward of the backbone of detector config ``cfg`` (default ``kfgnet_ddti``;
    random init, no weights loaded) on one ``size``-px image."""
    state: dict[str, Any] = {}

    def step() -> None:
        if not state:
            from kfgnet.detector import build_detector

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                det = build_detector(cfg or _default_detector_config(), load_weights=False)
                state["backbone"] = det.backbone.train()
            state["x"] = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        out = state["backbone"](state["x"])
        maps = out.values() if isinstance(out, dict) else [out]
        sum(m.float().mean() for m in maps).backward()

    return step


def _resolve(spec: str, device: Any, key: str, probe: Callable, ctx: Any = None) -> Any:
    from medshared.precision import resolve_precision

    if ctx is not None and getattr(ctx, "enabled", False):
        from medshared.distributed import broadcast_object

        # rank 0 measures (ranks sharing a CPU would disturb each other's timing), the others take its answer
        prec = resolve_precision(spec, device, key=key, probe=probe) if ctx.is_main else None
        return broadcast_object(prec, ctx)
    return resolve_precision(spec, device, key=key, probe=probe)


def classifier_precision(spec: str, device: Any, ctx: Any = None) -> Any:
    """The classifier's :class:`medshared.precision.Precision` for ``--precision spec`` on ``device`` (CPU auto: the
    C3D probe, measured once per CPU model / torch / thread count and cached). Under DDP (``ctx``) rank 0 decides."""
    return _resolve(spec, device, CLASSIFIER_KEY, c3d_probe(), ctx)


def detector_precision(spec: str, device: Any, ctx: Any = None, cfg: Any = None) -> Any:
    """The precision of the detector of config ``cfg`` (default ``kfgnet_ddti``; CPU auto: its backbone's probe,
    cached per backbone); bf16 applies to the backbone only."""
    cfg = cfg or _default_detector_config()
    return _resolve(spec, device, f"{DETECTOR_KEY}.{cfg.backbone}", detector_probe(cfg), ctx)


def fixed_precision(name: str = "fp32", device: Any = "cpu") -> Any:
    """A :class:`~medshared.precision.Precision` of ``name`` without resolution (library defaults, tests)."""
    from medshared.precision import resolve_precision

    return resolve_precision(name, torch.device(device), key="kfgnet.fixed")


def spec_from_alias(spec: str, bf16_alias: bool | None, where: str) -> str:
    """``--precision`` combined with the old ``train.bf16`` switch (``where`` names it in the error)."""
    if not bf16_alias:
        return spec
    if spec not in ("auto", "bf16"):
        raise ValueError(
            f"{where} asks for bf16 but --precision is {spec}; drop one of them (train.bf16 is an alias of "
            f"--precision bf16)"
        )
    return "bf16"


@contextlib.contextmanager
def backbone_autocast(model: torch.nn.Module, precision: Any) -> Iterator[None]:
    """Within the block, a torchvision detector's backbone runs under ``precision``'s autocast and returns fp32
    feature maps (so box coding, RoI heads and losses stay fp32). No-op unless ``precision.name == "bf16"``.

    The backbone's ``forward`` is replaced on the instance for the block only (state-dict keys are unchanged, DDP
    wrappers are looked through).
    """
    if precision is None or getattr(precision, "name", "fp32") != "bf16":
        yield
        return
    from medshared.distributed import unwrap_model

    bb = unwrap_model(model).backbone
    saved = bb.__dict__.get("forward")
    inner = bb.forward

    def forward(x: torch.Tensor) -> Any:
        with precision.autocast():
            out = inner(x)
        if isinstance(out, dict):
            return OrderedDict((k, v.float()) for k, v in out.items())
        return out.float()

    bb.forward = forward
    try:
        yield
    finally:
        if saved is None:
            del bb.forward
        else:
            bb.forward = saved
