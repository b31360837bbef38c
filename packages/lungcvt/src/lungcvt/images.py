"""Feature maps -> model input images: resize to ``image_size`` squared and normalise (official ``T.Resize`` +
``T.Normalize``), per cycle (:func:`to_image`) or for a padded batch on the training device (:func:`batch_to_image`).

Faithful mode: antialiased bilinear resize, then ImageNet mean/std applied to the dB values (code). Clean mode:
mel/CQT dB in [-80, 0] mapped to [-1, 1]; MFCC standardised per cycle (``mfcc_norm="cycle"``) or per coefficient over
time before the resize (``mfcc_norm="coefficient"``).

On a GPU the batched path writes the antialiased bilinear resize as two batched matrix products,
``A_f @ x_i @ A_t(T_i)^T`` with ``A_t(T_i)`` zero beyond each cycle's own length ``T_i`` (the weights read off
``F.interpolate``), so cycles of different lengths share one padded batch and the resize leaves the CPU (1.4-2.6 ms
per cycle at 224 px there). On a CPU it runs one ``F.interpolate`` per distinct length, the cheapest form there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lungcvt.config import FeatureConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "to_image",
    "resize_matrix",
    "batch_to_image",
    "collate_cycles",
    "collate_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _coefficient_norm(mfcc: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Standardise each MFCC track over time (over the ``valid`` frames [B, 1, 1, T] when given; std with ddof 1)."""
    if valid is None:  # a one-frame cycle has no spread: nan -> 0 -> the 1e-3 floor, as the masked branch
        sd = torch.nan_to_num(mfcc.std(dim=3, keepdim=True), nan=0.0)
        return (mfcc - mfcc.mean(dim=3, keepdim=True)) / sd.clamp_min(1e-3)
    n = valid.sum(dim=3, keepdim=True).clamp_min(1)
    mu = (mfcc * valid).sum(dim=3, keepdim=True) / n
    var = (((mfcc - mu) * valid) ** 2).sum(dim=3, keepdim=True) / (n - 1).clamp_min(1)
    return (mfcc - mu) / var.sqrt().clamp_min(1e-3) * valid


def _normalise(x: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Normalisation after the resize: [B, 3, S, S] -> [B, 3, S, S]."""
    if cfg.mode == "faithful":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    mfcc = x[:, :1]
    if cfg.mfcc_norm == "cycle":
        mu = mfcc.mean(dim=(2, 3), keepdim=True)
        sd = mfcc.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        mfcc = (mfcc - mu) / sd
    return torch.cat([mfcc, x[:, 1:] / 40.0 + 1.0], dim=1)  # [B, 1+2, S, S]


def to_image(feat: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Resize [3, 96, T] (or [B, 3, 96, T]) features to ``image_size`` squared and normalise -> float32 tensor."""
    x = torch.as_tensor(feat, dtype=torch.float32)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)  # [3, F, T] -> [1, 3, F, T]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected features [3, F, T] or [B, 3, F, T], got {tuple(x.shape)}")
    s = cfg.image_size
    if cfg.mode == "clean" and cfg.mfcc_norm == "coefficient":
        x = torch.cat([_coefficient_norm(x[:, :1]), x[:, 1:]], dim=1)
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)  # [B, 3, S, S]
    x = _normalise(x, cfg)
    return x[0] if squeeze else x


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The 1-D antialiased bilinear resize ``n_in -> n_out`` as a float64 matrix [n_out, n_in].

    Column j is the resize of the unit vector e_j, taken from ``F.interpolate`` itself, so applying the matrix
    reproduces it (torch computes the 2-D resize separably, height and width) up to float rounding.
    """
    eye = torch.eye(n_in, dtype=torch.float64).view(1, 1, n_in, n_in)  # row j = e_j
    a_t = F.interpolate(eye, size=(n_in, n_out), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return a_t.T.contiguous()  # [n_out, n_in]


_MATRICES: dict[tuple[int, int, str], torch.Tensor] = {}


def _matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    key = (n_in, n_out, str(device))
    if key not in _MATRICES:
        if len(_MATRICES) > 4096:
            _MATRICES.clear()
        _MATRICES[key] = resize_matrix(n_in, n_out).to(device=device, dtype=torch.float32)
    return _MATRICES[key]


def batch_to_image(
    x: torch.Tensor, lengths: Sequence[int] | torch.Tensor, cfg: FeatureConfig, method: str = "auto"
) -> torch.Tensor:
    """:func:`to_image` for a zero-padded batch, on ``x``'s device.

    Args:
        x: features [B, 3, F, T_max] (any float dtype; computed in float32), item i valid up to ``lengths[i]``.
        lengths: frames per item.
        cfg: feature settings (``image_size``, ``mode``, ``mfcc_norm``).
        method: ``"matmul"``: the resize as two batched products ``A_f @ x_i @ A_t(T_i)^T`` with ``A_t`` zero on
            padded frames (one kernel each on a GPU); ``"loop"``: one ``F.interpolate`` per distinct length (fewest
            operations: the cheaper one on a CPU, where the dense products cost about 3x); ``"auto"``: matmul on
            CUDA, loop elsewhere.

    Returns:
        float32 [B, 3, S, S], equal to ``to_image`` of each item cropped to its length (``test_batch_to_image``).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected features [B, 3, F, T], got {tuple(x.shape)}")
    if method not in ("auto", "matmul", "loop"):
        raise ValueError(f"method must be auto, matmul or loop, got {method!r}")
    x = x.float()
    b, _, f, t_max = x.shape
    lens = [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths) else lengths)]
    if len(lens) != b or min(lens, default=1) < 1 or max(lens, default=0) > t_max:
        raise ValueError(f"lengths {lens} do not fit a batch of {b} items with {t_max} frames")
    s, dev = cfg.image_size, x.device
    if cfg.mode == "clean" and cfg.mfcc_norm == "coefficient":
        valid = (torch.arange(t_max, device=dev) < torch.tensor(lens, device=dev)[:, None]).float()[:, None, None]
        x = torch.cat([_coefficient_norm(x[:, :1], valid), x[:, 1:]], dim=1)
    if method == "auto":
        method = "matmul" if dev.type == "cuda" else "loop"
    if method == "loop":
        y = x.new_empty(b, 3, s, s)
        for n in sorted(set(lens)):
            idx = [i for i, m in enumerate(lens) if m == n]
            y[idx] = F.interpolate(x[idx, :, :, :n], size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    else:
        a_t = torch.zeros(b, t_max, s, device=dev)  # [B, T_max, S]: each item's time resize, zero on padded frames
        for n in sorted(set(lens)):
            a_t[[i for i, m in enumerate(lens) if m == n], :n] = _matrix(n, s, dev).T
        y = torch.matmul(_matrix(f, s, dev), x)  # [S, F] @ [B, 3, F, T] -> [B, 3, S, T]
        y = torch.matmul(y, a_t[:, None])  # [B, 3, S, T] @ [B, 1, T, S] -> [B, 3, S, S]
    return _normalise(y, cfg)


def collate_cycles(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """DataLoader collate: items (features [3, F, T_i], label) -> (zero-padded [B, 3, F, T_max], lengths [B], labels
    [B]); the features keep their dtype (float16 from the cache), the resize happens on the device."""
    lens = torch.tensor([int(f.shape[-1]) for f, _ in batch], dtype=torch.long)
    f0 = batch[0][0]
    x = f0.new_zeros((len(batch), *f0.shape[:-1], int(lens.max())))
    for i, (f, _) in enumerate(batch):
        x[i, ..., : f.shape[-1]] = f
    return x, lens, torch.tensor([int(y) for _, y in batch], dtype=torch.long)


def collate_images(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, None, torch.Tensor]:
    """DataLoader collate for items that are already images [3, S, S]: (stacked [B, 3, S, S], None, labels [B])."""
    return torch.stack([f for f, _ in batch]), None, torch.tensor([int(y) for _, y in batch], dtype=torch.long)
