"""bf16 inference: the heavy parts of a trained detector cast to bf16 once (``evaluate --amp`` / ``predict --amp``).

``bench/inference.py`` measured casting once against ``torch.autocast`` on the demo model: 1.12x and 98% of top-1
detections unchanged, where autocast gave 1.04x and 80% (it also runs the final box-regression layer in bf16).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["cast_bf16"]


def _to_dtype(obj: Any, dtype: torch.dtype) -> Any:
    """Cast floating tensors inside ``obj`` (tensor, list/tuple, dict) to ``dtype``."""
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_dtype(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_dtype(v, dtype)) for k, v in obj.items())
    return obj


def cast_bf16(model: nn.Module) -> nn.Module:
    """Inference only: cast the heavy parts (backbone + FPN, RPN head, the two-FC RoI heads) to bf16 once, in place.

    Each cast part takes and returns fp32 (hooks convert at its boundary), so anchors, box decoding, the margin and
    inference branches (fp32 as in training), NMS and post-processing stay fp32. On CPUs with AMX / AVX512-BF16, bf16
    weights avoid the per-call weight re-cast of ``torch.autocast``. Returns ``model`` (in eval mode).
    """
    from deepacc.heads import DeepACCRoIHeads

    parts: list[nn.Module] = [model.backbone]
    if hasattr(model, "rpn"):
        parts.append(model.rpn.head)
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, DeepACCRoIHeads):
        parts += [m for m in (heads.box_head, heads.reg_head) if m is not None]
    for part in parts:
        part.to(torch.bfloat16)
        part.register_forward_pre_hook(lambda _m, args: _to_dtype(args, torch.bfloat16))
        part.register_forward_hook(lambda _m, _args, out: _to_dtype(out, torch.float32))
    return model.eval()


#: ``--precision`` help text of deepacc (``--amp`` is the old name of ``bf16``).
PRECISION_HELP = (
    "deepacc: train runs bf16 autocast with the margin and inference branches in fp32; evaluate / predict cast the "
    "heavy parts to bf16 once (cast_bf16). --amp is kept as an alias of --precision bf16"
)


def probe(train: bool = True, size: int = 160) -> Any:
    """deepacc's op mix for ``medshared.precision.resolve_precision``: one forward (+ backward when ``train``) of the
    tiny detector (BatchNorm CNN + FPN, RoIAlign, the full DeepACC head) on a ``size`` px image with 46 boxes."""
    import dataclasses

    from deepacc.config import create_config
    from deepacc.model import build_model

    cfg = create_config("deepacc_tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, min_size=size, max_size=size,
                                                             roi_min_level=2))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    model = build_model(cfg).train(train)
    img = [torch.rand(3, size, size, generator=g)]
    xy = torch.rand(46, 2, generator=g) * (size - 24)
    boxes = torch.cat([xy, xy + 8 + torch.rand(46, 2, generator=g) * 14], 1)
    tgt = [{"boxes": boxes, "labels": torch.randint(1, 25, (46,), generator=g)}]

    def run() -> None:
        if train:
            losses = model(img, tgt)
            sum(losses.values()).backward()
        else:
            with torch.no_grad():
                model(img)

    return run


def resolve(spec: str, device: Any, train: bool, amp_alias: bool = False) -> Any:
    """``--precision`` (``auto | fp32 | tf32 | bf16``) of a deepacc command as a ``medshared.precision.Precision``;
    ``amp_alias`` (the old ``--amp``) means ``bf16``. ``auto`` on a CPU times :func:`probe` once per CPU model and
    torch version (cached)."""
    from medshared.precision import resolve_precision

    if amp_alias:
        if spec not in ("auto", "bf16"):
            raise ValueError(f"--amp means --precision bf16; it cannot be combined with --precision {spec}")
        spec = "bf16"
    key = "deepacc.tiny_train" if train else "deepacc.tiny_infer"
    built: list[Any] = []

    def lazy_probe() -> None:  # the model is built on the first call only (and never when nothing is measured)
        if not built:
            built.append(probe(train))
        built[0]()

    return resolve_precision(spec, device, key=key, probe=lazy_probe)
