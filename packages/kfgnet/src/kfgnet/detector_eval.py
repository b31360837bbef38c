"""Detector evaluation: COCO AP / AP50 / AP75 (``medshared.coco.coco_map``) on held-out images, and the fixed-box
baseline that is its chance level on nodule-centred crops such as DDTI.

DDTI's images are crops centred on the nodule, so one fixed box (the training set's median box) already overlaps
most held-out nodules: every detector number is reported beside the same numbers for that fixed box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kfgnet.detection_data import DetectionDataset, DetectionItem

__all__ = [
    "predict_items",
    "ground_truths",
    "coco_summary",
    "fixed_box_predictions",
    "hit_rates",
    "evaluate_detector",
    "plot_detections",
]


def collate_detection(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    """DataLoader collate for detection: lists of images and targets (sizes differ)."""
    imgs, tgts = zip(*batch)
    return list(imgs), list(tgts)


@torch.no_grad()
def predict_items(
    model: torch.nn.Module,
    items: list[DetectionItem],
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
    precision: Any = None,
) -> list[dict[str, np.ndarray]]:
    """Detections per image (``boxes`` (N, 4) xyxy pixels, ``scores``, ``labels``), through ``model(images)``
    (``precision`` bf16: the backbone under autocast, see :func:`kfgnet.precision.backbone_autocast`)."""
    from kfgnet.devices import loader_kwargs
    from kfgnet.precision import backbone_autocast

    model.eval()
    loader = DataLoader(
        DetectionDataset(items),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_detection,
        **loader_kwargs(device, num_workers),
    )
    out: list[dict[str, np.ndarray]] = []
    it: Any = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="detect", unit="batch", leave=False)
    for imgs, _ in it:
        with backbone_autocast(model, precision):
            dets = model([im.to(device, non_blocking=True) for im in imgs])
        for d in dets:
            out.append(
                {
                    k: d[k].float().cpu().numpy() if k != "labels" else d[k].cpu().numpy()
                    for k in ("boxes", "scores", "labels")
                }
            )
    return out


def ground_truths(items: list[DetectionItem]) -> list[dict[str, np.ndarray]]:
    """Ground truth per image in ``coco_map``'s format (label 1 = nodule)."""
    return [{"boxes": it.boxes.reshape(-1, 4), "labels": np.ones(len(it.boxes), np.int64)} for it in items]


def coco_summary(dets: list[dict[str, Any]], gts: list[dict[str, Any]]) -> dict[str, float]:
    """``{"ap": AP@[.5:.95], "ap50", "ap75"}`` (COCO protocol, class 1)."""
    from medshared.coco import coco_map

    r = coco_map(dets, gts, class_ids=[1])
    return {"ap": float(r["map"]), "ap50": float(r["map50"]), "ap75": float(r["map75"])}


def fixed_box_predictions(items: list[DetectionItem], box: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The same box with score 1 on every image (boxes clipped to nothing: the images of DDTI share one size)."""
    b = np.asarray(box, np.float32).reshape(1, 4)
    return [{"boxes": b.copy(), "scores": np.ones(1, np.float32), "labels": np.ones(1, np.int64)} for _ in items]


def hit_rates(dets: list[dict[str, Any]], gts: list[dict[str, Any]]) -> dict[str, float]:
    """Fraction of ground-truth boxes whose image's top-scoring detection has IoU >= 0.5 / >= 0.75 with them, and
    the mean over IoU 0.50:0.05:0.95 (a COCO-style mean hit rate); images without detections count as misses."""
    from medshared.metrics import box_iou

    ious = []
    for d, g in zip(dets, gts):
        for gb in np.asarray(g["boxes"]).reshape(-1, 4):
            if len(d["scores"]) == 0:
                ious.append(0.0)
                continue
            top = np.asarray(d["boxes"])[int(np.argmax(d["scores"]))]
            ious.append(float(box_iou(top[None], gb[None])[0, 0]))
    a = np.asarray(ious)
    if a.size == 0:
        return {"hit50": float("nan"), "hit75": float("nan"), "hit_mean": float("nan"), "n_boxes": 0}
    thr = np.linspace(0.5, 0.95, 10)
    return {
        "hit50": float((a >= 0.5).mean()),
        "hit75": float((a >= 0.75).mean()),
        "hit_mean": float(np.mean([(a >= t).mean() for t in thr])),
        "n_boxes": int(a.size),
    }


def evaluate_detector(
    model: torch.nn.Module,
    items: list[DetectionItem],
    device: torch.device,
    fixed_box: np.ndarray | None,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
    precision: Any = None,
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """COCO AP / AP50 / AP75 and top-box hit rates of the detector and of the fixed box on ``items``.

    Returns:
        (metrics with a ``headline`` = COCO AP with the fixed box's COCO AP as chance, the detections).
    """
    dets = predict_items(model, items, device, batch_size, num_workers, progress, precision)
    gts = ground_truths(items)
    out: dict[str, Any] = {
        "detector": {**coco_summary(dets, gts), **hit_rates(dets, gts)},
        "n_images": len(items),
        "n_boxes": int(sum(len(it.boxes) for it in items)),
        "n_images_without_box": int(sum(len(it.boxes) == 0 for it in items)),
        "n_cases": len({it.case for it in items}),
    }
    if fixed_box is not None:
        fb = fixed_box_predictions(items, fixed_box)
        out["fixed_box"] = {
            "box": [float(v) for v in np.asarray(fixed_box).reshape(-1)],
            **coco_summary(fb, gts),
            **hit_rates(fb, gts),
        }
    out["headline"] = {
        "metric": "coco_ap",
        "value": out["detector"]["ap"],
        "chance": out["fixed_box"]["ap"] if fixed_box is not None else None,
        "chance_is": "COCO AP of the training set's median box predicted on every image",
    }
    return out, dets


def plot_detections(
    items: list[DetectionItem], dets: list[dict[str, Any]], path: Path, fixed_box: np.ndarray | None = None, n: int = 8
) -> Path:
    """PNG grid of ``n`` images: ground truth (green), top detection (red, with its score), fixed box (dashed)."""
    import matplotlib
    from medshared.runtime import atomic_path

    from kfgnet.detection_data import read_image_rgb

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(items))
    cols = min(4, max(n, 1))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    sel = np.linspace(0, len(items) - 1, n).round().astype(int) if n else []
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, sel):
        it, d = items[i], dets[i]
        ax.imshow(read_image_rgb(it.path))
        for b in it.boxes:
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=1.5))
        if fixed_box is not None:
            b = fixed_box
            ax.add_patch(
                plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="yellow", lw=1, ls="--")
            )
        if len(d["scores"]):
            k = int(np.argmax(d["scores"]))
            b = d["boxes"][k]
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=1.5))
            ax.set_title(f"{it.path.stem}: {d['scores'][k]:.2f}", fontsize=8)
        else:
            ax.set_title(f"{it.path.stem}: no detection", fontsize=8)
    fig.suptitle("green: annotation, red: top detection, yellow dashed: fixed median box", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
