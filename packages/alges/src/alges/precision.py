"""``--precision auto|fp32|tf32|bf16`` for alges (``medshared.precision.resolve_precision``), in two parts:

* **training** (and the evaluation of trained models): ``auto`` is bf16 autocast where it pays: on CUDA with native
  bf16 (TF32 matmuls), on a CPU when the alges probe (:func:`train_probe`: one forward + backward + Adam step of a
  small U-Net R18) measures bf16 below 0.95x fp32's time (cached per CPU model, torch version and thread count).
  The loss is computed in fp32 (the logits are cast up), the weights stay fp32.
* **selection** (the pool forward that feeds the gradient embeddings, k-means++ and core-set distances): ``auto`` is
  fp32 with :data:`SELECTION_FP32_REASON`; on CUDA also with TF32 off, since PyTorch's cuDNN convolutions use TF32 by
  default. The ALGES head and every closed form run in fp32 whatever is chosen; an explicit ``bf16`` (or the old
  config key ``amp: true``) runs the backbone forward under bf16 autocast.

TF32 is a process-wide switch: :func:`phase` sets it for one part and restores it after, so a simulation that trains
in bf16 (TF32 on) and selects in fp32 (TF32 off) runs each part with its own setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from medshared.precision import PRECISIONS, Precision, resolve_precision

__all__ = [
    "PRECISIONS",
    "SELECTION_FP32_REASON",
    "AlgesPrecision",
    "resolve_alges_precision",
    "resolve_infer_precision",
    "train_probe",
    "infer_probe",
    "phase",
    "FP32",
]

SELECTION_FP32_REASON = (
    "the selection maths needs fp32 (gradient embeddings feed k-means++ D^2 sampling and core-set distances; a bf16 "
    "forward changed 5 of 10 ALGES-sem picks on DDTI, README 'bf16 selection')"
)
TRAIN_KEY = "alges.seg_train"
INFER_KEY = "alges.seg_infer"


def _probe_model(train: bool):
    from alges.config import create_config
    from alges.model import build_model

    cfg = create_config("alges_paper", num_classes=13, image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg).train(train)
    x = torch.rand(2, 3, 64, 64) * 255
    y = torch.randint(0, 13, (2, 64, 64))
    return cfg, model, x, y


def train_probe() -> Callable[[], None]:
    """The alges training op mix: one step (forward, fp32 CE, backward, Adam) of the paper's U-Net R18 (13 classes)
    on 2 images of 64 px (about 0.2 s a call on one CPU thread). Called under fp32 and under bf16 autocast by
    ``resolve_precision``."""
    import torch.nn.functional as F

    from alges.train import make_optimizer

    cfg, model, x, y = _probe_model(True)
    opt = make_optimizer(model, cfg)

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out.logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer_probe() -> Callable[[], None]:
    """The alges inference op mix: the forward of the paper's U-Net R18 on 4 images of 64 px (eval mode)."""
    _, model, x, _ = _probe_model(False)
    x = torch.cat([x, x])

    def fwd() -> None:
        with torch.inference_mode():
            model(x)

    return fwd


def _lazy(factory: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    """Build the probe on its first call only (``resolve_precision`` calls it only when it measures)."""
    box: list[Callable[[], None]] = []

    def call() -> None:
        if not box:
            box.append(factory())
        box[0]()

    return call


FP32 = Precision("fp32", "fp32", "cpu", "fp32 (library default)")


@dataclasses.dataclass(frozen=True)
class AlgesPrecision:
    """The two resolved parts: ``train`` (training and evaluation) and ``select`` (the pool forward of selection)."""

    train: Precision
    select: Precision

    def as_dict(self) -> dict[str, Any]:
        return {"train": self.train.as_dict(), "select": self.select.as_dict()}

    def key(self) -> dict[str, str]:
        """What enters a run's resume key: the names that are not fp32 (fp32 runs keep their old keys)."""
        return {k: p.name for k, p in (("train", self.train), ("select", self.select)) if p.name != "fp32"}

    def lines(self) -> list[str]:
        return [f"precision (training): {self.train.name}: {self.train.reason}",
                f"precision (selection): {self.select.name}: {self.select.reason}"]  # fmt: skip


def resolve_alges_precision(spec: str, device: Any, *, amp: bool = False) -> AlgesPrecision:
    """Resolve ``--precision spec`` for training + selection on ``device``.

    ``amp``: the old config key ``amp: true`` (bf16 pool inference), an alias for ``bf16`` in the selection part
    when ``spec`` is ``auto``."""
    train = resolve_precision(spec, device, key=TRAIN_KEY, probe=_lazy(train_probe))
    sel_spec = "bf16" if amp and spec == "auto" else spec
    select = resolve_precision(sel_spec, device, key="alges.selection", fp32_reason=SELECTION_FP32_REASON)
    if amp and spec == "auto":
        select = dataclasses.replace(select, requested="auto", reason="bf16: the config's amp: true (old alias)")
    return AlgesPrecision(train=train, select=select)


def resolve_infer_precision(spec: str, device: Any) -> Precision:
    """``--precision`` for ``evaluate`` / ``predict`` (the forward op mix, :func:`infer_probe`)."""
    return resolve_precision(spec, device, key=INFER_KEY, probe=_lazy(infer_probe))


@contextlib.contextmanager
def phase(prec: Precision | None) -> Iterator[None]:
    """Run a block with ``prec``'s TF32 switches (CUDA), restoring the previous ones after; no-op for None / CPU."""
    if prec is None or prec.device_type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    prec.apply()
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
