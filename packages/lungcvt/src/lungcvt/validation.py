"""The validation part of training: which cycles, their logits, and the per-epoch scores.

- :func:`training_cycles`: the protocol's training part split (patient-grouped, stratified) into training and
  validation cycles (:func:`lungcvt.splits.validation_split`);
- :func:`selection_cycles`: the cycles the decision bias and the best epoch are chosen on: the validation cycles,
  plus ``train.bias_views`` simulated-device copies of them (:func:`lungcvt.device_aug.with_device_views`);
- :func:`validate_logits`: their logits (gathered across ranks under DDP);
- :func:`validation_scores`: the normal-class bias (``train.tune_normal_bias``), the ICBHI / macro-OvR / 2-class
  scores at it, and the abnormal-vs-normal AUROC of the validation cycles (``train.select_on="auroc"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungcvt.config import CLASSES, LungCVTConfig
from lungcvt.data import audio_summary, device_notes
from lungcvt.dataset import CycleSet, extract_cycles, predict_logits
from lungcvt.loaders import stratified_subset
from lungcvt.scoring import apply_normal_bias, tune_normal_bias
from lungcvt.splits import DataOptions, class_counts, select_recordings, validation_split

__all__ = [
    "training_cycles",
    "selection_cycles",
    "validate_logits",
    "validation_scores",
    "icbhi_variants",
    "val_auroc",
]

log = logging.getLogger("lungcvt.train")


def training_cycles(
    cfg: LungCVTConfig,
    data_dir: str | Path,
    data: DataOptions,
    cache_dir: Path,
    dev: torch.device,
    ctx: Any,
    show: bool,
) -> tuple[CycleSet, CycleSet, dict, list[int]]:
    """The protocol's training part split into training and validation cycles (``train.subset_fraction`` applied to
    the training cycles). Returns ``(train, val, split_info, test_counts)``."""
    from medshared.distributed import barrier, shard_items

    tc = cfg.train
    recs = select_recordings(data_dir, data, seed=tc.seed)
    test_counts = class_counts([r for r in recs if r.split == "test"])
    tr_recs, va_recs, split_info = validation_split(recs, tc.val_fraction, tc.seed, data.allow_missing_class)
    used = [r for r in recs if r.split != "test"]
    split_info["device_notes"] = device_notes(used)
    for note in split_info["device_notes"]:
        log.info("%s", note)
    split_info["audio_by_device"] = audio_summary(used)
    if ctx.enabled:  # fill the cache in parallel, each recording once, then everyone reads it
        for part in (tr_recs, va_recs):
            extract_cycles(
                shard_items(part, ctx.rank, ctx.world_size, key=lambda r: r.stem),
                cfg.features,
                cache_dir,
                dev,
                progress=False,
            )
        barrier(ctx)
    tr = extract_cycles(tr_recs, cfg.features, cache_dir, dev, show)
    va = extract_cycles(va_recs, cfg.features, cache_dir, dev, show)
    if tc.subset_fraction < 1.0:
        keep = stratified_subset(tr.labels, tc.subset_fraction, tc.seed)
        log.info(
            "train.subset_fraction=%g: %d of %d training cycles (stratified)", tc.subset_fraction, len(keep), len(tr)
        )
        tr = tr.subset(keep)
    return tr, va, split_info, test_counts


def selection_cycles(va: CycleSet, cfg: LungCVTConfig) -> CycleSet:
    """The validation cycles, followed by ``train.bias_views`` filtered copies of them (seeded with ``train.seed``)."""
    if cfg.train.bias_views <= 0:
        return va
    from lungcvt.device_aug import with_device_views

    return with_device_views(va, cfg.features, cfg.train.bias_views, cfg.train.seed)


def icbhi_variants(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    from medshared.metrics import icbhi_scores

    return {
        v: icbhi_scores(list(y_true), list(y_pred), variant=v, labels=CLASSES)
        for v in ("icbhi", "macro_ovr", "two_class")
    }


def val_auroc(labels: Sequence[int], logits: np.ndarray) -> float | None:
    """Abnormal-vs-normal AUROC of validation logits (scored by 1 - p(normal))."""
    from lungcvt.scoring import auroc

    z = torch.as_tensor(logits, dtype=torch.float64)
    return auroc(np.asarray(labels) != 0, 1.0 - torch.softmax(z, dim=1)[:, 0].numpy())


def validate_logits(
    model: torch.nn.Module, va: CycleSet, cfg: LungCVTConfig, dev: torch.device, ctx: Any, bf16: bool = False
) -> np.ndarray:
    """Validation logits; under DDP each rank predicts every world_size-th cycle and the parts are gathered."""
    if ctx is None or not ctx.enabled:
        return predict_logits(model, va, cfg.features, dev, bf16=bf16)
    from medshared.distributed import all_gather_object, unwrap_model

    # the plain module: DDP's forward may broadcast buffers (a collective), and ranks can hold different numbers of
    # validation batches; the weights are the same on every rank
    idx = list(range(ctx.rank, len(va), ctx.world_size))
    plain = unwrap_model(model)
    part = predict_logits(plain, va.subset(idx), cfg.features, dev, bf16=bf16) if idx else None
    out = np.zeros((len(va), cfg.model.num_classes), dtype=np.float32)
    for r, p in enumerate(all_gather_object(part, ctx)):
        if p is not None:
            out[list(range(r, len(va), ctx.world_size))] = p
    return out


def validation_scores(
    labels: Sequence[int], logits: np.ndarray, n_clean: int, tune_bias: bool, min_bias: float | None = None
) -> dict:
    """Scores of one validation pass over :func:`selection_cycles` (the first ``n_clean`` are the validation cycles
    as recorded, the rest their filtered copies).

    The best epoch is chosen on the validation cycles as recorded: ``"icbhi"``, ``"macro_ovr"``, ``"two_class"``
    (:func:`icbhi_variants`) are theirs at their own tuned bias ``"clean_bias"`` (0 unless ``tune_bias``). The bias
    stored with the checkpoint, ``"normal_bias"``, is tuned over all the cycles (validation and filtered copies)
    when there are copies, else ``"clean_bias"``; then raised to ``min_bias`` when it is lower (``None``: no
    floor). With copies, ``"views"`` holds the ICBHI scores over all cycles and ``"val_at_bias"`` those of the
    validation cycles, both at ``"normal_bias"``. ``"auroc_abnormal"``: the validation cycles' abnormal AUROC.
    """
    y, yc, zc = list(labels), list(labels)[:n_clean], logits[:n_clean]
    clean_bias = tune_normal_bias(yc, zc)[0] if tune_bias else 0.0
    sc = icbhi_variants(yc, apply_normal_bias(zc, clean_bias).argmax(1).tolist())
    sc["clean_bias"] = clean_bias
    bias = tune_normal_bias(y, logits)[0] if tune_bias and len(y) > n_clean else clean_bias
    if tune_bias and min_bias is not None and bias < min_bias:
        bias = float(min_bias)
    sc["normal_bias"] = bias
    if len(y) > n_clean or bias != clean_bias:
        pred = apply_normal_bias(logits, bias).argmax(1)
        sc["views"] = icbhi_variants(y, pred.tolist())["icbhi"]
        sc["val_at_bias"] = icbhi_variants(yc, pred[:n_clean].tolist())["icbhi"]
    sc["auroc_abnormal"] = val_auroc(yc, zc)
    return sc
