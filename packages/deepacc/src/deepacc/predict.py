"""Prediction on metaphase images: one library function used by the CLI and the demo.

:func:`predict_image` runs a loaded model on one image (top-1 class per RoI, score threshold, class-agnostic NMS:
the Acc/AER protocol of Sec. 3.1), optionally under the karyotype prior. :func:`predict_paths` loads nothing itself:
it takes the model once and writes ``<stem>_detections.json``, ``<stem>_overlay.png`` and ``<stem>_karyogram.png``
for every image of a list of files and folders, all images checked before the first is predicted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepacc.config import CLASS_NAMES, DeepACCConfig
from deepacc.images import IMAGE_EXTS, read_image_and_depth, rescale_summary
from deepacc.samples import DataError

__all__ = ["list_images", "predict_image", "predict_paths", "write_prediction"]


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (their images with a known extension, sorted, not recursive) into image paths.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            imgs = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not imgs:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {p}")
            out.extend(imgs)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    stems = [p.stem for p in out]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"several inputs share the file stem(s) {dup[:5]}; their outputs would overwrite each other")
    return out


@torch.no_grad()
def predict_image(
    model: torch.nn.Module,
    cfg: DeepACCConfig,
    image: str | Path | np.ndarray,
    device: torch.device | str = "cpu",
    score_thresh: float | None = None,
    short_side: int | None = None,
    karyotype_prior: bool = False,
    rescale_16bit: bool = False,
) -> dict[str, Any]:
    """Detect and classify the chromosomes of one metaphase.

    Args:
        model: a trained detector (:func:`deepacc.train.load_model`), in eval mode.
        image: a path, or an RGB / grey ``uint8`` array.
        score_thresh: top-1 score threshold (default: ``cfg.eval.acc_score_thresh`` = 0.5).
        short_side: resize the short side to this many pixels inside the model (default: the config's ``min_size``).
        karyotype_prior: relabel under "two of each autosome, XX or XY" (:mod:`deepacc.karyotype`).
        rescale_16bit: a path to an image deeper than 8 bits is divided by its own maximum to 0-255
            (:func:`deepacc.images.read_image`); the result then says ``rescaled_from`` (the stored dtype).

    Returns:
        JSON-able dict: ``detections`` (box, class, score, RoI index), ``count_per_class``, image size, and
        ``image_array`` (the RGB ``uint8`` image, removed by :func:`write_prediction` before writing).
    """
    from deepacc.evaluate import apply_karyotype_prior
    from deepacc.model import set_output_mode
    from deepacc.postprocess import agnostic_top1, postprocess_detections

    stored = "uint8"
    if isinstance(image, np.ndarray):
        img = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image
        name = "<array>"
    else:
        img, stored = read_image_and_depth(image, rescale_16bit)  # [H, W, 3]
        name = str(image)
    thr = cfg.eval.acc_score_thresh if score_thresh is None else score_thresh
    if short_side is not None and short_side < 32:
        raise ValueError(f"--short-side must be >= 32 pixels, got {short_side}")
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0).to(device)  # [3, H, W]
    tr = model.transform
    old_sizes = (tr.min_size, tr.max_size)
    if short_side is not None:
        tr.min_size, tr.max_size = (short_side,), int(short_side * 1333 / 800)  # torchvision default aspect
    set_output_mode(model, "raw")
    try:
        out = model([x])[0]
    finally:
        set_output_mode(model, "standard")
        tr.min_size, tr.max_size = old_sizes
    out = {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}
    m = cfg.model
    if "max_boxes" in out:  # RetinaNet: top-1 class per anchor, no per-RoI probabilities
        if karyotype_prior:
            raise ValueError("the karyotype prior needs a two-stage model (DeepACC / Faster R-CNN), not RetinaNet")
        det = {k: out[f"max_{k}"] for k in ("boxes", "scores", "labels")}
        raw = None
    else:
        k = out["scores"].shape[1]
        raw = (out["boxes"].reshape(-1, k, 4), out["scores"])  # [R, K, 4], [R, K]
        det = postprocess_detections(raw[0], raw[1], "max", m.score_thresh, m.nms_thresh, m.detections_per_img)
    det = agnostic_top1(det, thr, cfg.eval.agnostic_nms_thresh)
    det_np = {k: v.numpy() for k, v in det.items()}
    if karyotype_prior:
        det_np = apply_karyotype_prior([raw], [det_np])[0]
    items = []
    for i in range(len(det_np["labels"])):
        lab = int(det_np["labels"][i])
        item = {"box_xyxy": [round(float(v), 2) for v in det_np["boxes"][i]], "class_id": lab,
                "class_name": CLASS_NAMES[lab], "score": round(float(det_np["scores"][i]), 5),
                "roi_index": int(det_np["roi_indices"][i]) if "roi_indices" in det_np else None}  # fmt: skip
        if "prior_assigned" in det_np:
            item["prior_assigned"] = bool(det_np["prior_assigned"][i])
        items.append(item)
    counts = {CLASS_NAMES[c]: sum(1 for it in items if it["class_id"] == c) for c in range(1, 25)}
    res = {"image": name, "height": int(img.shape[0]), "width": int(img.shape[1]), "score_thresh": thr,
           "karyotype_prior": karyotype_prior, "n_detections": len(items), "count_per_class": counts,
           "detections": items, "image_array": img}  # fmt: skip
    if stored != "uint8":
        res["rescaled_from"] = stored  # --rescale-16bit: divided by its own maximum to 0-255
    return res


def write_prediction(result: dict[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>_detections.json``, ``<stem>_overlay.png`` and ``<stem>_karyogram.png`` (atomic each)."""
    from medshared.runtime import atomic_write_json

    from deepacc.viz import draw_detections, karyogram, save_png

    result = dict(result)
    img = result.pop("image_array")
    boxes = np.array([d["box_xyxy"] for d in result["detections"]], np.float32).reshape(-1, 4)
    labels = np.array([d["class_id"] for d in result["detections"]], dtype=np.int64)
    scores = np.array([d["score"] for d in result["detections"]], np.float32)
    out = Path(out_dir)
    paths = [out / f"{stem}_overlay.png", out / f"{stem}_karyogram.png", out / f"{stem}_detections.json"]
    save_png(paths[0], draw_detections(img, boxes, labels, scores))
    save_png(paths[1], karyogram(img, boxes, labels, scores))
    atomic_write_json(paths[2], result)
    return paths


def predict_paths(
    model: torch.nn.Module,
    cfg: DeepACCConfig,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    score_thresh: float | None = None,
    short_side: int | None = None,
    karyotype_prior: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    rescale_16bit: bool = False,
) -> list[dict[str, Any]]:
    """Predict every image of ``inputs`` (files and folders) with one loaded ``model`` and write its outputs.

    Every image is decoded first; unreadable ones (and, without ``rescale_16bit``, those deeper than 8 bits) are all
    reported together before any output is written. Rescaled images are summarised in one ``log`` line (stderr when
    ``log`` is None).

    Returns:
        the per-image result dicts (without the image arrays).
    """
    from tqdm.auto import tqdm

    paths = list_images(inputs)
    bad, rescaled = [], []
    for p in paths:
        try:
            stored = read_image_and_depth(p, rescale_16bit)[1]
        except (DataError, FileNotFoundError) as exc:
            bad.append(str(exc))
            continue
        if stored != "uint8":
            rescaled.append((p, stored))
    if bad:
        raise DataError(f"{len(bad)} of {len(paths)} images cannot be read:\n  " + "\n  ".join(bad[:20]))
    if rescaled:
        (log or _stderr)(rescale_summary(rescaled, len(paths)))
    results = []
    for p in tqdm(paths, desc="predict", disable=not progress, leave=False):
        res = predict_image(model, cfg, p, device, score_thresh, short_side, karyotype_prior, rescale_16bit)
        write_prediction(res, out_dir, p.stem)
        res.pop("image_array")
        results.append(res)
        if log is not None:
            log(f"{p.name}: {res['n_detections']} chromosomes")
    return results


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
