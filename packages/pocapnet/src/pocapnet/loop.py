"""Running the model over operations chunk by chunk: evaluation of one operation (:func:`run_operation`), the
training streams and one optimizer step over this process's streams (:func:`make_streams`, :func:`train_step`),
and feature prefetching (:func:`prefetch`, :func:`prefetch_map`). See :mod:`pocapnet.train` for how the streams
map to DDP ranks.

Feeding a GPU: the chunks are loaded by ``workers`` background threads (memory-mapped ``.npy`` copies release the
GIL) into pinned host memory when the device is CUDA (:meth:`~pocapnet.features.FeatureOperation.chunk`
``pin=True``: one copy from the memory map straight into the pinned buffer; torch's caching host allocator reuses the
buffers), and copied with ``non_blocking=True``, so the host-to-GPU copy of a paper-size chunk (512 s x 3 channels x
349 x 1024 float32 = 2.2 GB) no longer blocks the Python thread nor goes through a pageable staging copy. No
per-step host synchronisation: the losses stay on the device and are read once per epoch / operation
(``float(loss)`` per step stalled the GPU queue at every step); predictions are gathered on the device and copied
once per operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from pocapnet.features import FeatureOperation
from pocapnet.losses import stage_loss
from pocapnet.model import DelayedMemory, PoCaPNet

__all__ = ["prefetch", "prefetch_map", "run_operation", "make_streams", "load_chunk", "train_step"]


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Yield ``items`` in order while a background thread produces up to ``depth`` ahead (0: no thread).

    Reading memory-mapped features (NumPy copies release the GIL) overlaps with the model's compute. An exception in
    the producer is raised in the consumer; closing the generator early stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for x in items:
                while not stop.is_set():
                    try:
                        q.put((True, x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, end))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    th = threading.Thread(target=work, daemon=True, name="pocapnet-prefetch")
    th.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                raise x
            if x is end:
                return
            yield x
    finally:
        stop.set()
        th.join(timeout=5)


def prefetch_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 1, depth: int = 2) -> Iterator[Any]:
    """``fn(x)`` for each of ``items``, in order, computed by ``workers`` threads up to ``max(depth, workers)`` items
    ahead (``workers`` 0: in the calling thread, nothing ahead). An exception in ``fn`` is raised here; closing the
    generator early cancels what has not started."""
    if workers <= 0:
        yield from map(fn, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    ahead = max(depth, workers, 1)
    ex = ThreadPoolExecutor(workers, thread_name_prefix="pocapnet-load")
    pending: deque = deque()
    try:
        for x in it:
            pending.append(ex.submit(fn, x))
            if len(pending) >= ahead:
                break
        while pending:
            f = pending.popleft()
            for x in it:
                pending.append(ex.submit(fn, x))
                break
            yield f.result()
    finally:
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True)


def _to(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Host -> device copy that does not block the host (it overlaps when ``x`` is pinned)."""
    return None if x is None else x.to(device, non_blocking=True)


def run_operation(
    model: PoCaPNet,
    fop: FeatureOperation,
    batch_size: int,
    device: torch.device | str,
    criterion: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    grad_clip: float = 0.0,
    prefetch_depth: int = 2,
    smooth_weight: float = 0.0,
    smooth_tau: float = 4.0,
    autocast: Callable[[], AbstractContextManager] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run one operation chunk by chunk, with the delayed-estimation memory reset at its start.

    Args:
        autocast: a context factory for the model's forward (``Precision.autocast``); the loss is computed outside
            it from float64 logits.
        workers: threads loading the chunks ahead (0: in this thread); ``prefetch_depth`` chunks ahead (0: none).

    Returns a dict with ``loss`` (mean over chunks, nan without criterion), ``pred`` ``(T,)`` last-stage argmax and
    ``prob`` ``(T, C)`` softmax of the last stage.
    """
    device = torch.device(device)
    cfg = model.cfg
    autocast = autocast or nullcontext
    pin, use_audio = device.type == "cuda", "audio" in cfg.modalities
    memory = DelayedMemory(cfg.hidden_dim, device)  # reset per operation (code: y_prev zeroed)
    labels = None if fop.labels is None else torch.as_tensor(np.asarray(fop.labels), dtype=torch.int64).to(device)
    losses, preds, probs = [], [], []
    T = len(fop)
    spans = [(a, min(a + batch_size, T)) for a in range(0, T, batch_size)]

    def load(span: tuple[int, int]) -> tuple:
        return (*span, *fop.chunk(*span, cfg.num_images, audio=use_audio, pin=pin))

    for start, stop, imgs, aud in prefetch_map(load, spans, workers if prefetch_depth > 0 else 0, prefetch_depth):
        imgs, aud = _to(imgs, device), _to(aud, device)
        pos = torch.arange(start, stop, device=device)
        with torch.set_grad_enabled(optimizer is not None):
            with autocast():
                out = model(imgs, aud, pos, memory.vector if cfg.delayed_estimation else None)
            if criterion is not None and labels is not None:
                target = labels[start:stop]
                loss = stage_loss(criterion, out.logits.double(), target, smooth_weight, smooth_tau)  # code: float64
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                losses.append(loss.detach())
        last = out.logits[-1].detach().float()  # (B, C)
        pred = last.argmax(dim=1)
        memory.update(pred)
        preds.append(pred)
        probs.append(torch.softmax(last, dim=1))
    return {
        "loss": float(torch.stack(losses).mean()) if losses else float("nan"),  # one sync per operation
        "pred": torch.cat(preds).cpu().numpy(),
        "prob": torch.cat(probs).cpu().numpy(),
    }


def make_streams(ops: Sequence[FeatureOperation], n_streams: int, batch_size: int) -> list[list[tuple]]:
    """Deal the (sorted) operations round-robin to ``n_streams`` streams; each stream is its list of chunks
    ``(fop, start, stop)`` in order."""
    from medshared.distributed import shard_items

    out = []
    for j in range(n_streams):
        mine = shard_items(list(ops), j, n_streams, key=lambda f: f.name)
        out.append([(f, a, min(a + batch_size, len(f))) for f in mine for a in range(0, len(f), batch_size)])
    return out


def load_chunk(item: tuple, num_images: int, audio: bool, pin: bool = False) -> tuple:
    """``(fop, start, stop)`` -> ``(fop, start, stop, images, audio)`` (pinned host tensors with ``pin``)."""
    fop, a, b = item
    return (fop, a, b, *fop.chunk(a, b, num_images, audio=audio, pin=pin))


def train_step(
    model: nn.Module,
    chunks: Sequence[tuple | None],
    memories: list[DelayedMemory],
    criterion: nn.Module,
    n_streams: int,
    device: torch.device,
    smooth: tuple[float, float] = (0.0, 4.0),
    dummy: tuple | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> list[torch.Tensor]:
    """Forward/backward of one optimizer step over this process's streams (no ``optimizer.step()`` here).

    Args:
        model: the (possibly DDP-wrapped) model in train mode.
        chunks: per local stream a loaded chunk ``(fop, start, stop, images, audio)`` or None (stream finished).
        memories: per local stream its delayed-estimation memory (reset by the caller at an operation's start).
        n_streams: the global number of streams (every loss is divided by it; DDP's mean over ranks makes the
            gradient the mean over all streams).
        dummy: a loaded chunk for a process whose streams are all finished while others still run: a zero-loss
            forward/backward in eval mode keeps DDP's collectives in step without touching BatchNorm statistics.
        autocast: a context factory for the forward (``Precision.autocast``: bf16 autocast or nothing); the loss
            (LDAM / CE / focal, smoothing) is computed outside it from float64 logits.

    Returns:
        The unscaled losses of the chunks run, as detached 0-dim tensors on the device (no host sync here).
    """
    autocast = autocast or nullcontext
    inner = getattr(model, "module", model)
    cfg = inner.cfg
    world = n_streams // max(1, len(chunks))
    live = [i for i, c in enumerate(chunks) if c is not None]
    losses: list[torch.Tensor] = []
    if not live:
        if dummy is not None and isinstance(model, nn.parallel.DistributedDataParallel):
            _, a, b, imgs, aud = dummy
            model.eval()
            with autocast():
                out = model(_to(imgs, device), _to(aud, device), torch.arange(a, b, device=device), None)
            (out.logits.float().sum() * 0.0).backward()
            model.train()
        return losses
    for n, i in enumerate(live):
        fop, a, b, imgs, aud = chunks[i]
        sync = n == len(live) - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        ctx = model.no_sync() if not sync else nullcontext()
        with ctx:
            hist = memories[i].vector if cfg.delayed_estimation else None
            with autocast():
                out = model(_to(imgs, device), _to(aud, device), torch.arange(a, b, device=device), hist)
            target = torch.as_tensor(np.asarray(fop.labels[a:b]), dtype=torch.int64).to(device, non_blocking=True)
            loss = stage_loss(criterion, out.logits.double(), target, *smooth)  # code: float64 logits
            (loss * (world / n_streams)).backward()
        memories[i].update(out.logits[-1].detach().float().argmax(dim=1))
        losses.append(loss.detach())
    return losses
