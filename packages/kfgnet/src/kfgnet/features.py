"""Motion index (V_motion) of the motion attention branch [P §2, Fig. 2; brief §4].

Per frame i, M_i is the mean over the neighbours j in {i-2, i-1, i+1, i+2} that exist of
``(SSIM(f_i, f_j) + HistSim(f_i, f_j)) / 2``; V_motion averages M_i over T / T' consecutive frames (T' = V_temp length).
The official ``generate_sim`` was never published [V]; this follows the paper and the brief's recommendations:
gray frames, ``data_range=255``, each unordered pair computed once, vectorised in torch, computed once per clip and
cached by the dataset (never per batch).

``motion_index_reference`` is the per-pair scikit-image / OpenCV loop used to check values and speed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kfgnet.config import MotionConfig

__all__ = ["ssim_pairs", "hist_correl_pairs", "frame_motion_index", "window_average", "motion_vector",
           "motion_index_reference", "to_gray"]


def to_gray(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Gray float64 frames.

    Args:
        frames: uint8/float ``(T, H, W)`` or ``(T, H, W, 3)`` (RGB), values 0..255.

    Returns:
        ``(T, H, W)`` float64 tensor, 0..255 (ITU-R 601 luma, the OpenCV convention).
    """
    x = torch.as_tensor(np.asarray(frames)).to(torch.float64)
    if x.ndim == 4:
        if x.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) RGB frames, got shape {tuple(x.shape)}")
        x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114  # (T, H, W)
    if x.ndim != 3:
        raise ValueError(f"expected (T, H, W) or (T, H, W, 3) frames, got shape {tuple(x.shape)}")
    return x


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 255.0) -> torch.Tensor:
    """Mean SSIM of frame pairs, identical to ``skimage.metrics.structural_similarity`` defaults.

    Uniform ``win x win`` window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the valid region.

    Args:
        a, b: ``(N, H, W)`` float frames (0..data_range).

    Returns:
        ``(N,)`` SSIM per pair.
    """
    x = a.unsqueeze(1)  # (N, 1, H, W)
    y = b.unsqueeze(1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    m = F.avg_pool2d(stack, win, stride=1)  # (N, 5, H - win + 1, W - win + 1): valid region only
    ux, uy, uxx, uyy, uxy = m.unbind(1)
    np_ = win * win
    cov_norm = np_ / (np_ - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _histograms(frames: torch.Tensor, bins: int) -> torch.Tensor:
    """``(T, bins)`` gray histograms over 0..256 (OpenCV ``calcHist(..., [bins], [0, 256])`` binning)."""
    t = frames.shape[0]
    idx = torch.clamp((frames * (bins / 256.0)).floor().long(), 0, bins - 1).flatten(1)  # (T, H*W)
    h = torch.zeros(t, bins, dtype=torch.float64)
    h.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return h


def hist_correl_pairs(ha: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """OpenCV ``HISTCMP_CORREL`` between histogram rows ``(N, bins)`` -> ``(N,)``; 1 for identical histograms."""
    da = ha - ha.mean(1, keepdim=True)
    db = hb - hb.mean(1, keepdim=True)
    num = (da * db).sum(1)
    den = torch.sqrt((da * da).sum(1) * (db * db).sum(1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))


def frame_motion_index(frames: np.ndarray | torch.Tensor, cfg: MotionConfig | None = None) -> np.ndarray:
    """Per-frame motion index M_i (vectorised: each unordered pair at distance d computed once).

    Args:
        frames: ``(T, H, W)`` gray or ``(T, H, W, 3)`` RGB, 0..255.
        cfg: neighbour offsets, SSIM window, data range, histogram bins.

    Returns:
        ``(T,)`` float64 array in [-1, 1]; 1 for a still clip, low at a cut.
    """
    cfg = cfg or MotionConfig()
    g = to_gray(frames)  # (T, H, W)
    t = g.shape[0]
    if t < 2:
        return np.ones(t)
    hist = _histograms(g, cfg.hist_bins)  # (T, bins)
    total = torch.zeros(t, dtype=torch.float64)
    count = torch.zeros(t, dtype=torch.float64)
    for d in cfg.neighbours:
        if d >= t:
            continue
        s = ssim_pairs(g[:-d], g[d:], cfg.ssim_win, cfg.data_range)  # (T - d,)
        h = hist_correl_pairs(hist[:-d], hist[d:])  # (T - d,)
        sim = (s + h) / 2
        total[:-d] += sim  # pair (i, i + d) counts for frame i ...
        total[d:] += sim  # ... and for frame i + d
        count[:-d] += 1
        count[d:] += 1
    return (total / count.clamp_min(1)).numpy()


def window_average(m: np.ndarray, steps: int) -> np.ndarray:
    """Average the per-frame index over ``steps`` equal windows (32 frames -> 8 windows of 4) [P §2].

    Args:
        m: ``(T,)`` per-frame values; ``T`` need not divide evenly (windows by ``np.array_split``).

    Returns:
        ``(steps,)`` float32.
    """
    return np.array([w.mean() for w in np.array_split(np.asarray(m, dtype=np.float64), steps)], dtype=np.float32)


def motion_vector(frames: np.ndarray | torch.Tensor, steps: int, cfg: MotionConfig | None = None) -> np.ndarray:
    """V_motion of a clip: :func:`frame_motion_index` then :func:`window_average` -> ``(steps,)`` float32."""
    return window_average(frame_motion_index(frames, cfg), steps)


def motion_index_reference(frames: np.ndarray, cfg: MotionConfig | None = None) -> np.ndarray:
    """Per-pair loop with scikit-image SSIM and OpenCV histograms (slow reference of :func:`frame_motion_index`)."""
    import cv2
    from skimage.metrics import structural_similarity

    cfg = cfg or MotionConfig()
    g = to_gray(frames).numpy()  # (T, H, W) float64
    t = g.shape[0]
    out = np.ones(t)
    for i in range(t):
        sims = []
        for d in cfg.neighbours:
            for j in (i - d, i + d):
                if 0 <= j < t:
                    s = structural_similarity(g[i], g[j], win_size=cfg.ssim_win, data_range=cfg.data_range)
                    hi = cv2.calcHist([g[i].astype(np.float32)], [0], None, [cfg.hist_bins], [0, 256])
                    hj = cv2.calcHist([g[j].astype(np.float32)], [0], None, [cfg.hist_bins], [0, 256])
                    h = cv2.compareHist(hi, hj, cv2.HISTCMP_CORREL)
                    sims.append((s + h) / 2)
        if sims:
            out[i] = float(np.mean(sims))
    return out
