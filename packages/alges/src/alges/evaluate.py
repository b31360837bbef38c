"""Test metrics and the chance baselines.

* ``dice_macro``: dataset-level Dice per class (ignore 255), macro over the classes present (``medshared``).
* ``dice_official``: the ALGES code's per-image smoothed Dice over the scored classes.
* ``dice_image``: per-image Dice (2|P∩G| / (|P|+|G|)) of each scored class, averaged over images (an image where a
  class is absent from both prediction and truth does not count for that class), then over scored classes.
* ``hd95``: per-image HD95 (``medshared.boundary``, pooled 95th percentile) of each scored class in *original*
  pixels (the model's grid scaled by the image's original size), averaged likewise. An image where exactly one of
  prediction and truth is empty scores the image diagonal (the largest possible distance).

Scored classes are ``cfg.scored_classes`` (from the dataset: the official 8 for CholecSeg8k, the foreground of a
binary class map).

Chance baselines: ``majority_chance`` (every pixel the training set's majority class) and the **prior mask**
(``prior_mask``): the per-pixel majority class of the training masks; for a binary map, the training masks' mean
thresholded at the value that maximises the training set's own mean Dice. On nodule-centred crops (DDTI) the prior
is a strong baseline, and gains over it are what a model has learnt from the image.
"""

from __future__ import annotations

import base64
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.boundary import hd95, max_distance
from medshared.metrics import DiceAccumulator, dice_per_image_smoothed

from alges.arrays import SegArrays
from alges.config import IGNORE_INDEX, AlgesConfig
from alges.inference import infer

__all__ = [
    "segmentation_scores",
    "evaluate_model",
    "predict_arrays",
    "majority_chance",
    "prior_mask",
    "prior_scores",
    "encode_map",
    "decode_map",
    "evaluate_checkpoint",
    "predict_folder",
]


def _image_dice(p: np.ndarray, t: np.ndarray) -> float:
    ps, ts = int(p.sum()), int(t.sum())
    if ps + ts == 0:
        return float("nan")
    return 2.0 * int((p & t).sum()) / (ps + ts)


def segmentation_scores(
    pred: np.ndarray, target: np.ndarray, cfg: AlgesConfig, orig_hw: np.ndarray | None = None, *, boundary: bool = True
) -> dict[str, Any]:
    """Scores of class maps ``pred`` against ``target`` (uint8 [M, S, S], 255 = ignore); see the module docstring."""
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and masks {target.shape} differ in shape")
    acc = DiceAccumulator(cfg.num_classes, ignore_index=IGNORE_INDEX)
    acc.update(pred, target)
    res = acc.compute()
    classes = cfg.scored_classes
    official = np.stack([dice_per_image_smoothed(p, t, classes) for p, t in zip(pred, target)])  # [M, C]
    m, s = pred.shape[0], pred.shape[-1]
    dice_img = np.full((m, len(classes)), np.nan)
    hd = np.full((m, len(classes)), np.nan)
    for i in range(m):
        valid = target[i] != IGNORE_INDEX
        spacing = (1.0, 1.0) if orig_hw is None else (orig_hw[i][0] / s, orig_hw[i][1] / s)
        worst = max_distance(pred[i].shape, spacing)
        for j, c in enumerate(classes):
            pc, tc = (pred[i] == c) & valid, (target[i] == c) & valid
            dice_img[i, j] = _image_dice(pc, tc)
            if boundary and not np.isnan(dice_img[i, j]):
                hd[i, j] = hd95(pc, tc, spacing=spacing, empty_value=worst)
    with warnings.catch_warnings():  # all-NaN columns (a class absent everywhere) are NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        per_cls_dice = np.nanmean(dice_img, axis=0) if m else np.full(len(classes), np.nan)
        per_cls_hd = np.nanmean(hd, axis=0) if m else np.full(len(classes), np.nan)
    out: dict[str, Any] = {
        "dice_macro": float(res["macro"]),
        "dice_official": float(official.mean()),
        "dice_per_class": [None if np.isnan(v) else float(v) for v in res["per_class"]],
        "dice_image": float(np.nanmean(per_cls_dice)) if np.isfinite(per_cls_dice).any() else float("nan"),
        "dice_image_per_class": {int(c): _f(v) for c, v in zip(classes, per_cls_dice)},
        "scored_classes": list(classes),
    }
    if boundary:
        out["hd95"] = float(np.nanmean(per_cls_hd)) if np.isfinite(per_cls_hd).any() else float("nan")
        out["hd95_per_class"] = {int(c): _f(v) for c, v in zip(classes, per_cls_hd)}
        out["hd95_units"] = "original pixels" if orig_hw is not None else "model pixels"
    return out


def _f(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def predict_arrays(
    model: torch.nn.Module, images: np.ndarray, cfg: AlgesConfig, device, progress=False, precision=None
) -> np.ndarray:
    """Argmax class maps uint8 [M, S, S] of in-memory images [M, 3, S, S] (``precision``: see ``infer``)."""
    res = infer(model, images, cfg, device, (), pred=True, progress=progress, precision=precision)
    return res.pred if res.pred is not None else np.empty((0, *images.shape[-2:]), np.uint8)


def evaluate_model(
    model: torch.nn.Module,
    data: SegArrays,
    cfg: AlgesConfig,
    device,
    progress: bool = False,
    boundary: bool = True,
    precision=None,
) -> dict[str, Any]:
    """Predict ``data.images`` and score against ``data.masks`` (see :func:`segmentation_scores`)."""
    if data.masks is None:
        raise ValueError("evaluation needs masks")
    pred = predict_arrays(model, data.images, cfg, device, progress, precision)
    return segmentation_scores(pred, data.masks, cfg, data.orig_hw, boundary=boundary)


def majority_chance(train_masks: np.ndarray, test: SegArrays, cfg: AlgesConfig) -> dict[str, Any]:
    """Scores of a model that ignores its input: every pixel predicted as the training set's majority class."""
    counts = np.bincount(train_masks[train_masks != IGNORE_INDEX].ravel(), minlength=cfg.num_classes)
    maj = int(np.argmax(counts))
    out = segmentation_scores(np.full_like(test.masks, maj), test.masks, cfg, test.orig_hw, boundary=False)
    out["majority_class"] = maj
    return out


def prior_mask(
    train_masks: np.ndarray, num_classes: int, scored_classes: tuple[int, ...] = (1,)
) -> tuple[np.ndarray, dict]:
    """The prior-mask baseline from training masks uint8 [M, S, S]: uint8 [S, S] class map and ``info``.

    Multi-class: the per-pixel most frequent class. Binary: mean foreground fraction thresholded at the value in
    0.05..0.95 (step 0.05) that maximises the training masks' own mean per-image Dice (``info["threshold"]``).
    """
    if len(train_masks) == 0:
        raise ValueError("the prior mask needs at least one training mask")
    valid = train_masks != IGNORE_INDEX
    if num_classes == 2:
        fg = ((train_masks == 1) & valid).astype(np.float64)
        frac = fg.sum(0) / np.maximum(valid.sum(0), 1)  # [S, S]
        best_t, best_d = 0.5, -1.0
        for t in np.arange(0.05, 0.951, 0.05):
            pm = frac > t
            d = np.nanmean([_image_dice(pm & v, (m == 1) & v) for m, v in zip(train_masks, valid)])
            if d > best_d + 1e-12:
                best_t, best_d = float(t), float(d)
        return (frac > best_t).astype(np.uint8), {"threshold": round(best_t, 2), "train_dice": best_d}
    counts = np.stack([((train_masks == c) & valid).sum(0) for c in range(num_classes)])  # [K, S, S]
    return counts.argmax(0).astype(np.uint8), {"threshold": None}


def prior_scores(prior: np.ndarray, test: SegArrays, cfg: AlgesConfig) -> dict[str, Any]:
    """Scores of the prior map predicted for every test image."""
    if prior.shape != test.masks.shape[1:]:
        raise ValueError(f"the prior map is {prior.shape}, the test masks {test.masks.shape[1:]}; same image_size?")
    pred = np.broadcast_to(prior, test.masks.shape).copy()
    return segmentation_scores(pred, test.masks, cfg, test.orig_hw)


def encode_map(a: np.ndarray) -> str:
    """uint8 [S, S] -> compact text (zlib + base64), for checkpoint metadata."""
    return (
        f"{a.shape[0]}x{a.shape[1]}:"
        + base64.b64encode(zlib.compress(np.ascontiguousarray(a, np.uint8).tobytes())).decode()
    )


def decode_map(s: str) -> np.ndarray:
    """Inverse of :func:`encode_map`."""
    shape, data = s.split(":", 1)
    h, w = (int(v) for v in shape.split("x"))
    return np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=np.uint8).reshape(h, w).copy()


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    id_list: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    precision: Any = None,
    workers: int = 0,
) -> dict[str, Any]:
    """``alges evaluate``: score a checkpoint on a dataset's labelled images (or ``id_list``) and write
    ``out/metrics.json`` (with ``headline`` = {metric, value, chance}: the per-image Dice of the scored class, and
    the same Dice of the checkpoint's prior mask, computed from its training masks) and ``out/per_class.csv``."""
    from medshared.runtime import atomic_write_csv, atomic_write_json, resolve_device

    from alges.arrays import load_arrays
    from alges.data import open_dataset
    from alges.index import read_id_list
    from alges.model import load_trained

    device = resolve_device(device) if isinstance(device, str) else device
    model, cfg, extra = load_trained(checkpoint)
    index = open_dataset(data)
    if index.class_map.num_classes != cfg.num_classes:
        raise ValueError(
            f"the dataset {data} has {index.class_map.num_classes} classes ({', '.join(index.class_names)}), the "
            f"checkpoint {checkpoint} {cfg.num_classes}; evaluate on data with the same classes"
        )
    ids = read_id_list(id_list, index) if id_list else list(index.labeled_ids)
    if not ids:
        raise ValueError(f"no labelled images (with masks) in {data}")
    arr = load_arrays(index, ids, cfg.image_size, empty_masks=cfg.empty_masks, progress=progress, workers=workers)
    res = evaluate_model(model, arr, cfg, device, progress=progress, precision=precision)
    if precision is not None:
        res["precision"] = precision.as_dict()
    names = list(extra.get("class_names") or index.class_names)
    scored = cfg.scored_classes
    chance = None
    if extra.get("prior_map"):
        pri = prior_scores(decode_map(extra["prior_map"]), arr, cfg)
        res["prior_mask"] = {k: pri[k] for k in ("dice_image", "dice_image_per_class", "hd95", "dice_macro")}
        chance = pri["dice_image"]
    if len(scored) == 1:
        what = f"Dice of class {names[scored[0]]!r} (mean per image)"
    else:
        what = f"mean per-image Dice over classes {[names[c] for c in scored]}"
    res["headline"] = {"metric": what, "value": res["dice_image"], "chance": chance}
    res["chance_note"] = "prior mask of the checkpoint's training masks" if chance is not None else "not stored"
    res["n_images"] = len(arr)
    res["checkpoint"] = str(checkpoint)
    res["data"] = str(data)
    out = Path(out)
    atomic_write_json(out / "metrics.json", res)
    atomic_write_csv(
        out / "per_class.csv",
        [
            {
                "class": n,
                "dice_dataset": d,
                "dice_image": res["dice_image_per_class"].get(c),
                "hd95": res["hd95_per_class"].get(c),
            }
            for c, (n, d) in enumerate(zip(names, res["dice_per_class"]))
        ],
        ["class", "dice_dataset", "dice_image", "hd95"],
    )
    return res


def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    original_size: bool = False,
    device: torch.device | str = "cpu",
    chunk: int = 256,
    precision: Any = None,
    workers: int = 0,
) -> int:
    """``alges predict``: class-id PNG masks for every image under ``images``, streamed in chunks."""
    import cv2
    from medshared.runtime import atomic_path, resolve_device

    from alges.arrays import read_image
    from alges.data import scan_images
    from alges.model import load_trained
    from alges.pool import FileSource

    device = resolve_device(device) if isinstance(device, str) else device
    model, cfg, _ = load_trained(checkpoint)
    items = scan_images(images)
    src = FileSource([p for _, p in items], cfg.image_size, [i for i, _ in items], workers=workers)
    out = Path(out)
    for s in range(0, len(items), chunk):
        pos = np.arange(s, min(s + chunk, len(items)))
        res = infer(model, src, cfg, device, (), pred=True, positions=pos, precision=precision)
        for pos, m in zip(res.positions, res.pred):
            i, p = items[pos]
            if original_size:
                h, w = read_image(p).shape[:2]
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) if (h, w) != m.shape else m
            dst = out / f"{i}_pred.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(m))
            if not ok:
                raise ValueError(f"could not encode {dst}")
            with atomic_path(dst) as tmp:
                Path(tmp).write_bytes(buf.tobytes())
    if src.failures:
        raise ValueError(f"{len(src.failures)} images could not be read:\n{src.failure_report()}")
    return len(items)
