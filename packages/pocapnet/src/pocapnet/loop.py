"""Running the model over operations chunk by chunk: evaluation of one operation (:func:`run_operation`), the
training streams and one optimizer step over this process's streams (:func:`make_streams`, :func:`train_step`),
and feature prefetching (:func:`prefetch`). See :mod:`pocapnet.train` for how the streams map to DDP ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pocapnet.features import FeatureOperation
from pocapnet.losses import stage_loss
from pocapnet.model import DelayedMemory, PoCaPNet

__all__ = ["prefetch", "run_operation", "make_streams", "load_chunk", "train_step"]


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


def _chunks(fop: FeatureOperation, batch_size: int, num_images: int, audio: bool) -> Iterator[tuple]:
    T = len(fop)
    for start in range(0, T, batch_size):
        stop = min(start + batch_size, T)
        yield (start, stop, *fop.chunk(start, stop, num_images, audio=audio))


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
) -> dict[str, Any]:
    """Run one operation chunk by chunk, with the delayed-estimation memory reset at its start.

    Returns a dict with ``loss`` (mean over chunks, nan without criterion), ``pred`` ``(T,)`` last-stage argmax and
    ``prob`` ``(T, C)`` softmax of the last stage.
    """
    device = torch.device(device)
    cfg = model.cfg
    memory = DelayedMemory(cfg.hidden_dim, device)  # reset per operation (code: y_prev zeroed)
    losses, preds, probs = [], [], []
    for start, stop, imgs, aud in prefetch(
        _chunks(fop, batch_size, cfg.num_images, "audio" in cfg.modalities), prefetch_depth
    ):
        imgs = imgs.to(device)
        aud = aud.to(device) if aud is not None else None
        pos = torch.arange(start, stop, device=device)
        with torch.set_grad_enabled(optimizer is not None):
            out = model(imgs, aud, pos, memory.vector if cfg.delayed_estimation else None)
            if criterion is not None and fop.labels is not None:
                target = torch.as_tensor(np.asarray(fop.labels[start:stop]), device=device)
                loss = stage_loss(criterion, out.logits.double(), target, smooth_weight, smooth_tau)  # code: float64
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                losses.append(float(loss.detach()))
        last = out.logits[-1].detach()  # (B, C)
        pred = last.argmax(dim=1)
        memory.update(pred)
        preds.append(pred.cpu().numpy())
        probs.append(torch.softmax(last.float(), dim=1).cpu().numpy())
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "pred": np.concatenate(preds),
        "prob": np.concatenate(probs),
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


def load_chunk(item: tuple, num_images: int, audio: bool) -> tuple:
    fop, a, b = item
    return (fop, a, b, *fop.chunk(a, b, num_images, audio=audio))


def train_step(
    model: nn.Module,
    chunks: Sequence[tuple | None],
    memories: list[DelayedMemory],
    criterion: nn.Module,
    n_streams: int,
    device: torch.device,
    smooth: tuple[float, float] = (0.0, 4.0),
    dummy: tuple | None = None,
) -> list[float]:
    """Forward/backward of one optimizer step over this process's streams (no ``optimizer.step()`` here).

    Args:
        model: the (possibly DDP-wrapped) model in train mode.
        chunks: per local stream a loaded chunk ``(fop, start, stop, images, audio)`` or None (stream finished).
        memories: per local stream its delayed-estimation memory (reset by the caller at an operation's start).
        n_streams: the global number of streams (every loss is divided by it; DDP's mean over ranks makes the
            gradient the mean over all streams).
        dummy: a loaded chunk for a process whose streams are all finished while others still run: a zero-loss
            forward/backward in eval mode keeps DDP's collectives in step without touching BatchNorm statistics.

    Returns:
        The unscaled losses of the chunks run.
    """
    inner = getattr(model, "module", model)
    cfg = inner.cfg
    world = n_streams // max(1, len(chunks))
    live = [i for i, c in enumerate(chunks) if c is not None]
    losses: list[float] = []
    if not live:
        if dummy is not None and isinstance(model, nn.parallel.DistributedDataParallel):
            _, a, b, imgs, aud = dummy
            model.eval()
            out = model(
                imgs.to(device), None if aud is None else aud.to(device), torch.arange(a, b, device=device), None
            )
            (out.logits.sum() * 0.0).backward()
            model.train()
        return losses
    for n, i in enumerate(live):
        fop, a, b, imgs, aud = chunks[i]
        sync = n == len(live) - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        ctx = model.no_sync() if not sync else _null()
        with ctx:
            hist = memories[i].vector if cfg.delayed_estimation else None
            out = model(
                imgs.to(device), None if aud is None else aud.to(device), torch.arange(a, b, device=device), hist
            )
            target = torch.as_tensor(np.asarray(fop.labels[a:b]), device=device)
            loss = stage_loss(criterion, out.logits.double(), target, *smooth)  # code: float64 logits
            (loss * (world / n_streams)).backward()
        memories[i].update(out.logits[-1].detach().argmax(dim=1))
        losses.append(float(loss.detach()))
    return losses


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
