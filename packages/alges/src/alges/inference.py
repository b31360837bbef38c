"""Streamed pool inference for any segmentation model: a forward hook on the final conv gives ``z`` (its input);
the logits are that conv applied to ``z`` in fp32. Each strategy's per-image value (score or gradient embedding) is
computed batch by batch and written to an array, or, with ``workdir``, to a memory-mapped ``.npy`` file, so neither
the pool nor its embeddings is ever held whole in memory.

The head must be a ``Conv2d`` with stride 1, dilation 1, one group and "same" zero padding (a 1x1 or kxk head, as
smp's ``SegmentationHead``). Embeddings are taken at the head's own resolution: anything after it (smp FPN's and
DeepLabV3+'s x4 upsampling, an activation) is not part of the gradient (documented in the README).

Inference runs under ``eval()`` + ``inference_mode``; bf16 autocast when ``precision`` says bf16 (or the old ``amp``
flag), channels-last when ``channels_last``; the head and every closed form run in fp32. On CUDA the batches are
copied from pinned memory with ``non_blocking``; the per-batch reads to the host are the results themselves.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from medshared.runtime import autocast_context, resolve_device
from torch import nn
from tqdm.auto import tqdm

from alges.config import AlgesConfig
from alges.model import AlgesUnet, fold_batchnorm
from alges.pool import as_source
from alges.strategies import HeadBatch, Strategy, get_strategy

__all__ = ["find_head", "check_head", "infer", "InferResult", "embed", "CPU_BATCH"]

#: pool batches on a CPU hold at most this many images (unless ``batch_size`` is given): a 224 px U-Net batch of 16
#: has ~50 MB per activation map and runs memory-bound; 4-8 images kept the forward 8-10 % faster here
CPU_BATCH = 4


def find_head(model: nn.Module, head: nn.Module | str | None = None) -> nn.Conv2d:
    """The final conv of ``model``: ``head`` (a module or its dotted name), else ``model.head`` (``AlgesUnet``),
    else the conv in smp's ``segmentation_head``; any other model needs ``head`` (``ValueError`` says so)."""
    if isinstance(head, str):
        try:
            head = model.get_submodule(head)
        except AttributeError as e:
            raise ValueError(f"the model has no submodule {head!r}; pass head= the final conv (module or name)") from e
    if head is None:
        if isinstance(getattr(model, "head", None), nn.Conv2d):
            head = model.head
        elif isinstance(getattr(model, "segmentation_head", None), nn.Module):
            convs = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)]
            head = convs[0] if len(convs) == 1 else None
    if head is None:
        raise ValueError(
            f"cannot find the final conv of {type(model).__name__}; pass head= the module (or its name) that maps "
            "the penultimate features to the class logits"
        )
    check_head(head)
    return head  # type: ignore[return-value]


def check_head(head: nn.Module) -> None:
    """Raise ``ValueError`` unless ``head`` is a stride-1, dilation-1, ungrouped conv with "same" zero padding."""
    if not isinstance(head, nn.Conv2d):
        raise ValueError(f"the head must be an nn.Conv2d (the final conv), got {type(head).__name__}")
    k = head.kernel_size
    pad = head.padding if not isinstance(head.padding, str) else (k[0] // 2, k[1] // 2)
    if (
        k[0] != k[1]
        or k[0] % 2 == 0
        or head.stride != (1, 1)
        or head.dilation != (1, 1)
        or head.groups != 1
        or tuple(pad) != (k[0] // 2, k[1] // 2)
        or head.padding_mode != "zeros"
    ):
        raise ValueError(
            f"the head {head} must be a square odd kernel with stride 1, dilation 1, groups 1 and zero padding k//2 "
            "(the closed-form gradients assume a per-pixel linear map over a k x k patch)"
        )


class _Capture:
    """Forward hook storing the head's input."""

    def __init__(self, head: nn.Conv2d) -> None:
        self.z: torch.Tensor | None = None
        self._h = head.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.z = inputs[0]

    def close(self) -> None:
        self._h.remove()


class _Store:
    """Row-wise outputs: NumPy arrays, or ``.npy`` memmaps under ``workdir`` (allocated on the first batch)."""

    def __init__(self, n: int, workdir: Path | None) -> None:
        self.n = n
        self.workdir = workdir
        self.arrays: dict[str, np.ndarray] = {}
        self.lists: dict[str, list[np.ndarray]] = {}

    def put(self, name: str, row: int, vals: np.ndarray) -> None:
        if self.n < 0:  # unknown length: keep batches (an iterable source without len)
            self.lists.setdefault(name, []).append(vals)
            return
        if name not in self.arrays:
            shape = (self.n, *vals.shape[1:])
            if self.workdir is not None:
                path = self.workdir / f"{name}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=vals.dtype, shape=shape)
            else:
                self.arrays[name] = np.empty(shape, dtype=vals.dtype)
        self.arrays[name][row : row + len(vals)] = vals

    def result(self, rows: int) -> dict[str, np.ndarray]:
        if self.n < 0:
            return {k: np.concatenate(v) for k, v in self.lists.items()}
        out = {}
        for k, a in self.arrays.items():
            if isinstance(a, np.memmap):
                a.flush()
            out[k] = a[:rows]
        return out


@dataclass
class InferResult:
    """Per-image outputs, one row per image read: ``values[strategy]`` ([M] scores or [M, D] embeddings, arrays
    or memmaps), ``pred`` (uint8 [M, h, w] class maps, when asked), ``positions`` (the source position of each row)
    and ``failures`` ((position, path, reason) of unreadable files)."""

    values: dict[str, np.ndarray]
    positions: np.ndarray
    pred: np.ndarray | None = None
    failures: list[tuple[int, str, str]] = field(default_factory=list)


def _prefetch(it: Iterator, enabled: bool) -> Iterator:
    """Read the next batch in a background thread while the current one runs (decoding releases the GIL)."""
    if not enabled:
        yield from it
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(next, it, None)
        while True:
            item = fut.result()
            if item is None:
                return
            fut = ex.submit(next, it, None)
            yield item


def infer(
    model: nn.Module,
    source: Any,
    cfg: AlgesConfig,
    device: torch.device | str = "cpu",
    strategies: Sequence[str | Strategy] = (),
    *,
    pred: bool = False,
    head: nn.Module | str | None = None,
    positions: Sequence[int] | np.ndarray | None = None,
    batch_size: int | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    workdir: str | Path | None = None,
    progress: bool = False,
    precision: Any = None,
) -> InferResult:
    """Run ``model`` over ``source`` (array, tensor, pool source or iterable of batches) and compute, per image, the
    value of each strategy in ``strategies`` (and the argmax class map with ``pred``).

    uint8 inputs are passed to the model as float 0-255 (``AlgesUnet`` normalises inside); float inputs as they are.
    ``precision``: a ``medshared.precision.Precision`` for the model's forward (bf16 autocast; on CUDA its TF32
    switches for this call); None: the old ``amp`` flag (default ``cfg.amp``) decides, fp32 when off.
    """
    from alges.precision import phase
    from alges.train import to_device

    device = resolve_device(device) if isinstance(device, str) else device
    strats = [get_strategy(s) for s in strategies]
    strats = [s for s in strats if s.needs_model]
    src = as_source(source)
    n_total = len(src)
    pos_arr = np.arange(n_total, dtype=np.int64) if positions is None and n_total >= 0 else positions
    n_rows = len(pos_arr) if pos_arr is not None else -1
    conv = find_head(model, head)
    ks = conv.kernel_size[0]
    bs = batch_size or (min(cfg.eval_batch_size, CPU_BATCH) if device.type == "cpu" else cfg.eval_batch_size)
    if precision is not None:
        autocast = precision.autocast
    else:
        amp = cfg.amp if amp is None else amp

        def autocast():
            return autocast_context(device, amp)

    cl = (cfg.channels_last if channels_last is None else channels_last) and device.type in ("cpu", "cuda")
    for s in strats:
        if s.needs_deal_head and getattr(model, "deal", None) is None:
            raise ValueError(f"strategy {s.name} needs a model trained with the DEAL head (alges train --deal-head)")
    wd = Path(workdir) if workdir is not None else None
    if wd is not None:
        wd.mkdir(parents=True, exist_ok=True)
    store = _Store(n_rows, wd)
    preds: list[np.ndarray] = []
    rows_pos: list[np.ndarray] = []
    model.to(device).eval()
    user_model = model
    if isinstance(model, AlgesUnet) and not isinstance(head, nn.Module):
        # a private copy with BatchNorm folded into the convs (fp32, ~1e-6 relative; 9 % of the forward) in the
        # layout asked for; the caller's model is left as it was
        model = fold_batchnorm(copy.deepcopy(model))
        conv = find_head(model, head)
    if cl:  # outside inference mode: parameters converted inside it would become inference tensors
        model.to(memory_format=torch.channels_last)
    cap = _Capture(conv)
    row = 0
    try:
        batches = src.batches(pos_arr, bs)
        total = -(-n_rows // bs) if n_rows >= 0 else None
        with torch.inference_mode(), phase(precision):
            for pos, xb in tqdm(_prefetch(batches, wd is not None), total=total, desc="infer", disable=not progress):
                x = to_device(xb, device)  # uint8 copied as is (4x fewer bytes), converted on the device
                x = x.float() if not x.is_floating_point() else x
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    model(x)
                z = cap.z.float().contiguous()  # [B, d, h, w]
                w = conv.weight.float()
                b = conv.bias.float() if conv.bias is not None else None
                logits = F.conv2d(z, w, b, padding=ks // 2)  # [B, K, h, w] fp32
                h = HeadBatch(z=z, logits=logits, kernel_size=ks, model=model, cfg=cfg)
                if pred:
                    preds.append(h.pred.to(torch.uint8).cpu().numpy())
                for s in strats:
                    store.put(s.name, row, s.compute(h).detach().cpu().numpy())
                rows_pos.append(np.asarray(pos))
                row += len(pos)
    finally:
        cap.close()
        if cl and model is user_model:
            model.to(memory_format=torch.contiguous_format)
    return InferResult(
        values=store.result(row),
        positions=np.concatenate(rows_pos) if rows_pos else np.empty(0, np.int64),
        pred=np.concatenate(preds) if preds else None,
        failures=list(getattr(src, "failures", [])),
    )


def embed(
    model: nn.Module,
    images_or_loader: np.ndarray | torch.Tensor | Iterable,
    *,
    head: nn.Module | str | None = None,
    strategy: str | Strategy = "alges-img",
    cfg: AlgesConfig | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per-image values of ``strategy`` for any segmentation model: ALGES-img / ALGES-sem / BADGE-style
    embeddings [M, D], core-set features, or uncertainty scores [M].

    Args:
        model: any ``nn.Module`` whose final conv maps features to class logits (smp ``Unet``, ``FPN``,
            ``DeepLabV3Plus``, ``AlgesUnet``, your own).
        images_or_loader: float tensor/array [M, C, H, W] exactly as the model expects it, or an iterable of such
            batches (a ``DataLoader`` yielding tensors, ``(x, y)`` tuples or ``{"image": x}`` dicts).
        head: the final conv (module or dotted name); found automatically for smp models and ``AlgesUnet``.
        strategy: a registered strategy name (see :func:`alges.strategies.strategy_names`).
        cfg: embedding options (``img_variant``, ``sem_variant``, ``include_bias``, ``coreset_grid``); default
            :class:`~alges.config.AlgesConfig`.
        workdir: write the result as a memory-mapped ``<strategy>.npy`` there instead of holding it in memory.

    Example::

        import segmentation_models_pytorch as smp, alges
        net = smp.FPN("resnet18", encoder_weights=None, classes=3).eval()
        emb = alges.embed(net, images)                     # [M, 3 * 128] ALGES-img embeddings
        picks, norms = alges.select("alges-img", emb, 10)  # the 10 images to label next
    """
    cfg = cfg or AlgesConfig(amp=False, channels_last=False)
    s = get_strategy(strategy)
    if not s.needs_model:
        raise ValueError(f"strategy {s.name} uses no model outputs; call alges.select({s.name!r}, None, n, ...)")
    res = infer(
        model,
        images_or_loader,
        cfg,
        device,
        (s,),
        head=head,
        batch_size=batch_size,
        amp=False,
        channels_last=False,
        workdir=workdir,
        progress=progress,
    )
    return res.values[s.name]


def temp_workdir(near: str | Path) -> tempfile.TemporaryDirectory:
    """A temporary folder next to ``near`` (same disk) for memory-mapped embeddings; removed on exit."""
    parent = Path(near).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".alges-embed-", dir=os.fspath(parent))
