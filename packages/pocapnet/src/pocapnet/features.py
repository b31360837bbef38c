"""Offline feature extraction and storage (paper §2.2): resumable inside an operation, shardable across processes.

Storage: one memory-mappable ``.npy`` per operation and modality under ``feat_root/OP_xxx/``: ``xray.npy (T, Di)``,
``ch<k>.npy (T, F, Da)`` for each channel ``k`` of ``FeatureConfig.channels``, ``labels.npy (T,)``, and
``meta.json`` written last (the completion marker). ``meta.json`` records the extraction settings
(:func:`feature_signature`), the extractors' identity (source, path, SHA-256 of the weights), the channels, the
headset wearers and any input change made under an explicit flag; ``train`` copies the settings and identity into
the checkpoint, and ``evaluate`` / ``predict`` refuse features made differently (:func:`check_compatible`).

Resume inside an operation: the arrays are filled chunk by chunk (``FeatureConfig.chunk_s`` seconds) in
preallocated ``*.npy.part`` memory maps; after each chunk is flushed, ``progress.json`` (written atomically) lists
the finished chunks, so an interrupted extraction redoes at most one chunk. A changed configuration or other weights
restart the operation. Sharding (``extract --shard i/n`` or torchrun's rank / world size): each process takes the
operations :func:`medshared.distributed.shard_items` gives it, and every operation is one folder written by one
process, so shards need no merge step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocapnet.config import FeatureConfig
from pocapnet.data import InputPolicy, Operation, load_operation, read_frame
from pocapnet.extractors import AudioExtractor, XrayExtractor, audio_windows, image_windows

__all__ = [
    "feature_signature",
    "extract_operation",
    "is_complete",
    "extract_dataset",
    "check_compatible",
    "FeatureOperation",
    "chunk_arrays",
    "load_feature_operation",
]

log = logging.getLogger("pocapnet")
_NOT_IDENTITY = ("batch_windows", "xray_batch", "bf16", "chunk_s")  # speed settings, not what the features are


def feature_signature(cfg: FeatureConfig) -> dict[str, Any]:
    """The settings that define the features (JSON form); speed settings (batching, bf16, chunking) are left out."""
    d = asdict(cfg)
    for k in _NOT_IDENTITY:
        d.pop(k)
    return json.loads(json.dumps(d))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def extract_operation(
    op: Operation,
    out_dir: str | Path,
    audio: AudioExtractor,
    xray: XrayExtractor,
    cfg: FeatureConfig,
    identity: dict[str, Any] | None = None,
    progress: bool = True,
    workers: int = 1,
    precision: dict[str, Any] | None = None,
) -> Path:
    """Extract and store one operation's features chunk by chunk (resumable); ``meta.json`` is written last.

    Args:
        identity: the extractors' weights identity (``{"wav2vec2": ..., "xray": ...}``, see
            :func:`pocapnet.weights.weights_identity`), recorded in ``meta.json``.
        workers: threads preparing the next batches (frames decoded, audio windowed) while the extractors run
            (0: in this thread).
        precision: the resolved precision (``Precision.as_dict()``), recorded in ``meta.json``. Its name is part of
            the resume plan: an interrupted extraction continued under another precision starts the operation
            again (with a warning) instead of mixing bf16 and fp32 chunks in one array.
    """
    from medshared.runtime import atomic_path, atomic_write_json
    from tqdm import tqdm

    from pocapnet.loop import prefetch_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    T = op.seconds
    dtype = np.float16 if cfg.fp16 else np.float32
    shapes = {"xray": [T, xray.dim], **{f"ch{k}": [T, audio.frames, audio.dim] for k in op.channels}}
    plan = json.loads(
        json.dumps(
            {
                "op": op.name,
                "seconds": T,
                "shapes": shapes,
                "dtype": np.dtype(dtype).name,
                "features": feature_signature(cfg),
                "weights": identity,
                "chunk_s": cfg.chunk_s,
                "input_changes": op.changes,
                "precision": (precision or {}).get("name"),
            }
        )
    )
    prog_path = out_dir / "progress.json"
    prog = _read_json(prog_path)
    parts = {n: out_dir / f"{n}.npy.part" for n in shapes}
    resume = prog is not None and prog.get("plan") == plan and all(p.is_file() for p in parts.values())
    if prog is not None and prog.get("done") and not resume:
        old = prog.get("plan") or {}
        changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        log.warning(
            "%s: %d finished chunks of an interrupted extraction were made with other settings (%s); "
            "extracting the operation again so one array never mixes them",
            op.name,
            len(prog["done"]),
            ", ".join(changed) or "missing part files",
        )
    done: set[int] = set(prog["done"]) if resume else set()
    if resume and done:
        log.info("%s: resuming extraction, %d of %d chunks done", op.name, len(done), -(-T // cfg.chunk_s))
    arrays = {
        n: np.lib.format.open_memmap(p, mode="r+" if resume else "w+", dtype=dtype, shape=tuple(shapes[n]))
        for n, p in parts.items()
    }
    if not resume:
        atomic_write_json(prog_path, {"plan": plan, "done": []})
    t0 = time.perf_counter()
    bar = tqdm(
        total=T * (1 + len(op.channels)), desc=f"{op.name} features", unit="s", disable=not progress, leave=False
    )
    chunks = [(k, a, min(a + cfg.chunk_s, T)) for k, a in enumerate(range(0, T, cfg.chunk_s))]
    for k, a, b in chunks:
        if k in done:
            bar.update((b - a) * (1 + len(op.channels)))
    # the inputs of every batch, in order: X-ray once per frame, then each channel's windows
    batches = [
        (k, name, i, min(i + step, b), m)
        for k, a, b in chunks
        if k not in done
        for name, step, m in [("xray", cfg.xray_batch, -1)]
        + [(f"ch{ch}", cfg.batch_windows, m) for m, ch in enumerate(op.channels)]
        for i in range(a, b, step)
    ]

    def load(item: tuple) -> tuple:
        k, name, i, j, m = item
        if m < 0:
            return item, [read_frame(p, dicom_first_frame=op.policy.dicom_first_frame) for p in op.frames[i:j]]
        return item, audio_windows(op.audio[m], np.arange(i, j), cfg)

    todo = {k: sum(1 for x in batches if x[0] == k) for k, _, _ in chunks if k not in done}
    for (k, name, i, j, _), inputs in prefetch_map(load, batches, workers, depth=2):
        arrays[name][i:j] = (xray(inputs) if name == "xray" else audio(inputs)).cpu().numpy()
        bar.update(j - i)
        todo[k] -= 1
        if todo[k] == 0:  # chunk k complete
            for arr in arrays.values():
                arr.flush()
            done.add(k)
            atomic_write_json(prog_path, {"plan": plan, "done": sorted(done)})
    bar.close()
    del arrays
    if op.labels is not None:
        with atomic_path(out_dir / "labels.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, op.labels.astype(np.int64))
    for n, p in parts.items():
        os.replace(p, out_dir / f"{n}.npy")
    meta = {
        "op": op.name,
        "seconds": T,
        "image_dim": xray.dim,
        "audio_dim": audio.dim,
        "audio_frames": audio.frames,
        "channels": list(op.channels),
        "dtype": np.dtype(dtype).name,
        "labels": op.labels is not None,
        "features": feature_signature(cfg),
        "weights": identity,
        "wearers": list(op.wearers),
        "input_changes": op.changes,
        "extract_seconds": round(time.perf_counter() - t0, 2),
        "precision": precision,
    }
    atomic_write_json(out_dir / "meta.json", meta)
    prog_path.unlink(missing_ok=True)
    return out_dir


def is_complete(op_dir: Path, cfg: FeatureConfig, identity: dict[str, Any] | None = None) -> bool:
    """True when ``op_dir`` holds finished features extracted with the same settings (and the same weights, when
    ``identity`` is given)."""
    meta = _read_json(Path(op_dir) / "meta.json")
    if meta is None or meta.get("features") != feature_signature(cfg):
        return False
    return identity is None or meta.get("weights") == json.loads(json.dumps(identity))


def extract_dataset(
    data_root: str | Path,
    feat_root: str | Path,
    cfg: FeatureConfig,
    device: str = "cpu",
    ops: list[str] | None = None,
    progress: bool = True,
    require_labels: bool = False,
    policy: InputPolicy | None = None,
    shard: tuple[int, int] = (0, 1),
    offline: bool = False,
    precision: str = "auto",
    workers: int = 1,
) -> list[str]:
    """Extract the operations of shard ``shard = (i, n)`` under ``data_root`` into ``feat_root`` (resumable).

    Finished operations with the same settings and weights are skipped, unfinished ones resume at their last
    finished chunk. Returns the operations of this shard.

    Args:
        precision: ``auto | fp32 | tf32 | bf16`` (:mod:`pocapnet.precision`, key ``pocapnet.extract``); with
            ``auto`` the old config field ``cfg.bf16`` (true / false) decides when set. bf16 runs wav2vec2 and
            DenseNet on copies cast once to bf16.
        workers: threads preparing the extractors' inputs ahead (0: none).
    """
    from medshared.distributed import shard_items
    from tqdm import tqdm

    from pocapnet.data import list_operations, read_annotations
    from pocapnet.weights import load_densenet, load_wav2vec2, weights_identity

    mine = shard_items(ops or list_operations(data_root), *shard)
    feat_root = Path(feat_root)
    w2v = load_wav2vec2(cfg.wav2vec2, offline=offline)
    dn = load_densenet(cfg.xray_weights, offline=offline)
    identity = {"wav2vec2": weights_identity(w2v, cfg.wav2vec2), "xray": weights_identity(dn, cfg.xray_weights)}
    todo = [o for o in mine if not is_complete(feat_root / o, cfg, identity)]
    if todo:
        ann_path = Path(data_root) / "annotations.json"
        ann = read_annotations(ann_path) if ann_path.is_file() else None
        from pocapnet.precision import resolve, spec_from_aliases

        prec = resolve(spec_from_aliases(precision, cfg.bf16), device, "pocapnet.extract")
        log.info("extraction precision %s: %s", prec.name, prec.reason)
        bf16 = prec.name == "bf16"
        audio, xray = AudioExtractor(w2v, cfg, device, bf16=bf16), XrayExtractor(dn, cfg, device, bf16=bf16)
        for o in tqdm(todo, desc="extract", unit="op", disable=not progress):
            op = load_operation(
                data_root,
                o,
                cfg.sample_rate,
                channels=cfg.channels,
                require_labels=require_labels,
                annotations=ann,
                policy=policy,
            )
            extract_operation(
                op, feat_root / o, audio, xray, cfg, identity, progress, workers=workers, precision=prec.as_dict()
            )
    return mine


def check_compatible(meta: dict[str, Any], features: dict[str, Any], weights: dict[str, Any] | None, what: str) -> None:
    """Refuse features whose settings or extractor weights differ from what a checkpoint was trained on.

    Args:
        meta: the features' ``meta.json``.
        features: the checkpoint's feature signature; ``weights``: its recorded extractor identity (None: unknown).
        what: the features' name for the message (e.g. the operation folder).

    Raises:
        ValueError: naming the differing settings or weights and how to fix it.
    """
    got = meta.get("features") or {}
    diff = sorted(k for k in set(got) | set(features) if got.get(k) != features.get(k))
    if diff:
        detail = ", ".join(f"{k}: features {got.get(k)!r} vs checkpoint {features.get(k)!r}" for k in diff)
        raise ValueError(
            f"{what}: features were extracted with other settings than the checkpoint was trained on "
            f"({detail}); re-run `pocapnet extract` with the checkpoint's settings"
        )
    mine = meta.get("weights")
    if weights and mine:
        for part in ("wav2vec2", "xray"):
            a, b = (mine.get(part) or {}), (weights.get(part) or {})
            if a.get("sha256") != b.get("sha256"):
                raise ValueError(
                    f"{what}: {part} weights differ from the checkpoint's ({a.get('source')!r} sha256 "
                    f"{a.get('sha256')} vs {b.get('source')!r} sha256 {b.get('sha256')}); extract with "
                    "the weights the model was trained on"
                )


class FeatureOperation:
    """Memory-mapped features of one operation."""

    def __init__(self, op_dir: str | Path) -> None:
        op_dir = Path(op_dir)
        meta = _read_json(op_dir / "meta.json")
        if meta is None:
            raise FileNotFoundError(f"{op_dir}: no finished features (meta.json missing); run `pocapnet extract`")
        self.meta = meta
        self.name = meta["op"]
        self.channels = tuple(meta.get("channels", (1, 2, 3)))
        self.xray = np.load(op_dir / "xray.npy", mmap_mode="r")  # (T, Di)
        self.audio = [np.load(op_dir / f"ch{c}.npy", mmap_mode="r") for c in self.channels]  # M x (T, F, Da)
        lab = op_dir / "labels.npy"
        self.labels = np.load(lab) if lab.is_file() else None
        T = len(self.xray)
        if any(len(a) != T for a in self.audio) or (self.labels is not None and len(self.labels) != T):
            raise ValueError(f"{op_dir}: feature arrays disagree in length; re-run `pocapnet extract`")

    def __len__(self) -> int:
        return len(self.xray)

    def chunk(
        self, start: int, stop: int, num_images: int = 7, audio: bool = True, pin: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Seconds ``[start, stop)``: images ``(B, 7, Di)`` and audio ``(B, M, F, Da)`` float32 tensors (audio None
        when not asked for, e.g. for an X-ray-only model); see :func:`chunk_arrays`."""
        return chunk_arrays(self.xray, self.audio, start, stop, num_images, audio, pin)


def chunk_arrays(
    xray: np.ndarray,
    audio_arrays: list[np.ndarray],
    start: int,
    stop: int,
    num_images: int = 7,
    audio: bool = True,
    pin: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seconds ``[start, stop)`` of per-frame X-ray features ``(T, Di)`` and per-channel audio features
    ``M x (T, F, Da)`` as ``(B, 7, Di)`` and ``(B, M, F, Da)`` float32 tensors.

    The audio is copied once, from the (memory-mapped, maybe float16) arrays straight into the output tensor, which
    is allocated in pinned (page-locked) host memory with ``pin`` (for a ``non_blocking`` copy to a GPU).
    """
    imgs = image_windows(xray, np.arange(start, stop), num_images)
    if pin:
        imgs = imgs.pin_memory()
    if not audio:
        return imgs, None
    first = audio_arrays[0]
    aud = torch.empty((stop - start, len(audio_arrays), *first.shape[1:]), dtype=torch.float32, pin_memory=pin)
    view = aud.numpy()
    for m, a in enumerate(audio_arrays):
        np.copyto(view[:, m], a[start:stop], casting="same_kind")  # fp16 -> fp32 on the fly
    return imgs, aud  # (B, 7, Di), (B, M, F, Da)


def load_feature_operation(feat_root: str | Path, op: str) -> FeatureOperation:
    """Open ``feat_root/op``."""
    return FeatureOperation(Path(feat_root) / op)
