"""Motion index (V_motion) of the motion attention branch [P §2, Fig. 2; brief §4].

Per frame i, M_i is the mean over the neighbours j in {i-2, i-1, i+1, i+2} that exist of
``(SSIM(f_i, f_j) + HistSim(f_i, f_j)) / 2``; V_motion averages M_i over T / T' consecutive frames (T' = V_temp length).
The official ``generate_sim`` was never published [V]; this follows the paper and the brief's recommendations:
gray frames, ``data_range=255``, each unordered pair computed once, vectorised in float32 torch, computed once per
clip and cached by the dataset (never per batch).

``motion_index_reference`` is the per-pair scikit-image / OpenCV loop used to check values and speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from kfgnet.config import MotionConfig

__all__ = [
    "ssim_pairs",
    "hist_correl_pairs",
    "frame_motion_index",
    "window_average",
    "motion_vector",
    "motion_index_reference",
    "to_gray",
]


def to_gray(frames: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Gray frames.

    Args:
        frames: uint8/float ``(T, H, W)`` or ``(T, H, W, 3)`` (RGB), values 0..255.
        dtype: output dtype (gray frames are converted directly, RGB is weighted in float64 then cast).

    Returns:
        ``(T, H, W)`` tensor of ``dtype``, 0..255 (ITU-R 601 luma, the OpenCV convention).
    """
    x = torch.as_tensor(np.asarray(frames))
    if x.ndim == 4:
        if x.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) RGB frames, got shape {tuple(x.shape)}")
        x = x.to(torch.float64)
        x = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114  # (T, H, W)
    if x.ndim != 3:
        raise ValueError(f"expected (T, H, W) or (T, H, W, 3) frames, got shape {tuple(x.shape)}")
    return x.to(dtype)


def _box_mean(maps: torch.Tensor, win: int) -> torch.Tensor:
    """Mean over every ``win x win`` window (valid region) of each map, all maps in one OpenCV call.

    The maps are stacked into one tall ``(N * H, W)`` image and filtered by ``cv2.blur`` (a running-sum box filter,
    O(1) per pixel, accumulated in double for float32 input). A valid-region window of one map never reaches the next
    map, so stacking changes nothing; only the valid region is returned. 3.8x faster than two cumulative-sum
    differences in torch on the 125 maps of a 32-frame 112 px clip (2.2 against 8.4 ms, one thread).

    Args:
        maps: ``(N, H, W)`` float32, contiguous.

    Returns:
        ``(N, H - win + 1, W - win + 1)`` float32, a view into one new buffer.
    """
    import cv2

    n, h, w = maps.shape
    p = win // 2  # odd win (scikit-image requires it): a centred window
    flat = cv2.blur(maps.numpy().reshape(n * h, w), (win, win), borderType=cv2.BORDER_REFLECT)
    return torch.from_numpy(flat.reshape(n, h, w))[:, p : h - p, p : w - p]


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 255.0) -> torch.Tensor:
    """Mean SSIM of frame pairs, identical to ``skimage.metrics.structural_similarity`` defaults.

    Uniform ``win x win`` window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the valid region.

    Args:
        a, b: ``(N, H, W)`` float frames (0..data_range).

    Returns:
        ``(N,)`` SSIM per pair.
    """
    n = a.shape[0]
    g = torch.stack([a, b], 1).reshape(2 * n, *a.shape[1:])  # a[k], b[k] at 2k, 2k + 1: neighbours at offset 1
    return _ssim_maps(g.to(torch.float32), [1], win, data_range)[0][::2].to(a.dtype)


def _ssim_maps(g: torch.Tensor, offsets: list[int], win: int, data_range: float) -> list[torch.Tensor]:
    """Mean SSIM of every frame pair ``(g[i], g[i + d])`` for each offset ``d`` -> one ``(T - d,)`` per offset.

    Float32 throughout: the frames are centred at 128 (variances and covariances are shift-invariant), the local
    means of x and x^2 of every frame are filtered once and only the cross products x*y per pair; the
    ``win x win`` uniform filter runs over all maps in one OpenCV call (:func:`_box_mean`).
    Pairs are strided views (``g[:-d]``, ``g[d:]``), never gathered copies.
    """
    t, h, w = g.shape
    npair = sum(t - d for d in offsets)
    buf = torch.empty(2 * t + npair, h, w, dtype=torch.float32)  # [x | x^2 | x*y per pair], no torch.cat
    c = torch.sub(g, 128.0, out=buf[:t])
    torch.mul(c, c, out=buf[t : 2 * t])
    o = 2 * t
    for d in offsets:
        torch.mul(c[:-d], c[d:], out=buf[o : o + t - d])
        o += t - d
    m = _box_mean(buf, win)  # local means, valid region
    mu, mxx, mxy = m[:t], m[t : 2 * t], m[2 * t :]
    cov_norm = win * win / (win * win - 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    # per frame (T maps): sqrt(2) mu, mu^2 + c1 / 2, var + c2 / 2, so that each pair needs ~8 element-wise ops
    var_h = torch.addcmul(mxx, mu, mu, value=-1.0).mul_(cov_norm).add_(c2 / 2)  # (T, h', w')
    mu_abs = mu + 128.0
    sq_h = torch.addcmul(torch.tensor(c1 / 2), mu_abs, mu_abs)
    mu_abs.mul_(2.0**0.5)
    mxy.mul_(2.0 * cov_norm).add_(c2)  # all pairs at once: 2 cov_norm E[xy] + c2
    out, o = [], 0
    for d in offsets:
        n = t - d
        num1 = torch.addcmul(torch.tensor(c1), mu_abs[:-d], mu_abs[d:])  # 2 ux uy + c1
        num2 = torch.addcmul(mxy[o : o + n], mu[:-d], mu[d:], value=-2.0 * cov_norm)  # 2 cov_xy + c2
        den = torch.add(sq_h[:-d], sq_h[d:]).mul_(torch.add(var_h[:-d], var_h[d:]))
        out.append(num1.mul_(num2).div_(den).mean((1, 2)).to(torch.float64))
        o += n
    return out


_CHUNK = 16  # frames per block of _ssim_chunked: the working set stays in cache (8.4 ms against 8.9 for one block)


def _ssim_chunked(
    g: torch.Tensor, offsets: list[int], win: int, data_range: float, chunk: int = _CHUNK
) -> list[torch.Tensor]:
    """:func:`_ssim_maps` over blocks of ``chunk`` first frames (each block reads ``max(offsets)`` frames more), so
    the temporaries stay in cache; same values, every pair still computed once. A loop over ~T / 8 blocks."""
    t = g.shape[0]
    dmax = max(offsets)
    parts: list[list[torch.Tensor]] = [[] for _ in offsets]
    for s in range(0, t, chunk):
        e = min(t, s + chunk + dmax)
        inner = [d for d in offsets if d < e - s]  # the last block may be shorter than an offset
        for d, r in zip(inner, _ssim_maps(g[s:e], inner, win, data_range)):
            parts[offsets.index(d)].append(r[: min(chunk, t - d - s)])  # pairs whose first frame is in s..s+chunk
    return [torch.cat(p) for p in parts]


def _histograms_u8(frames: np.ndarray, bins: int) -> torch.Tensor:
    """:func:`_histograms` of ``(T, H, W)`` uint8 gray frames: OpenCV's per-frame lookup-table histogram, 6x faster
    than the float path on a 32-frame clip fresh from decoding (0.4 against 2.5 ms), the same counts."""
    import cv2

    h = np.stack([cv2.calcHist([np.ascontiguousarray(f)], [0], None, [bins], [0, 256]).ravel() for f in frames])
    return torch.from_numpy(h.astype(np.float64))


def _histograms(frames: torch.Tensor, bins: int) -> torch.Tensor:
    """``(T, bins)`` float64 gray histograms over 0..256 (OpenCV ``calcHist(..., [bins], [0, 256])`` binning),
    all frames in one ``scatter_add_``."""
    t = frames.shape[0]
    idx = (frames * (bins / 256.0)).floor_().clamp_(0, bins - 1).to(torch.int64).view(t, -1)  # (T, H*W)
    idx += torch.arange(t).unsqueeze(1) * bins  # one row of bins per frame
    h = torch.zeros(t * bins, dtype=torch.float32)
    h.scatter_add_(0, idx.view(-1), torch.ones(idx.numel(), dtype=torch.float32))
    return h.view(t, bins).to(torch.float64)


def hist_correl_pairs(ha: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """OpenCV ``HISTCMP_CORREL`` between histogram rows ``(N, bins)`` -> ``(N,)``; 1 for identical histograms."""
    da = ha - ha.mean(1, keepdim=True)
    db = hb - hb.mean(1, keepdim=True)
    num = (da * db).sum(1)
    den = torch.sqrt((da * da).sum(1) * (db * db).sum(1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch and OpenCV single-threaded inside the block (both restored after).

    The motion index is ~40 element-wise ops of ~1 M floats (a few ms each): with several OpenMP threads on a busy
    CPU every op waits at a barrier for a descheduled thread, which measured 10-15x slower than one thread here.
    """
    import cv2

    n, n_cv = torch.get_num_threads(), cv2.getNumThreads()
    if n > 1:
        torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)
        cv2.setNumThreads(n_cv)


def frame_motion_index(frames: np.ndarray | torch.Tensor, cfg: MotionConfig | None = None) -> np.ndarray:
    """Per-frame motion index M_i, vectorised over all frame pairs.

    Each unordered pair (i, i + d), d in ``cfg.neighbours``, is computed once (SSIM and histogram correlation are
    symmetric: about 2T pairs, not 4T), in float32 (agrees with the float64 scikit-image / OpenCV loop within 1e-6
    on uint8 frames); no Python loop over pairs, SSIM in cache-sized 16-frame blocks, box filter by OpenCV. Runs on
    one thread (see :func:`_one_thread`).

    Args:
        frames: ``(T, H, W)`` gray or ``(T, H, W, 3)`` RGB, 0..255.
        cfg: neighbour offsets, SSIM window, data range, histogram bins.

    Returns:
        ``(T,)`` float64 array in [-1, 1]; 1 for a still clip, low at a cut.
    """
    cfg = cfg or MotionConfig()
    with _one_thread():
        return _frame_motion_index(frames, cfg)


def _frame_motion_index(frames: np.ndarray | torch.Tensor, cfg: MotionConfig) -> np.ndarray:
    g = to_gray(frames, torch.float32)  # (T, H, W)
    t = g.shape[0]
    if t < 2:
        return np.ones(t)
    offsets = [d for d in cfg.neighbours if d < t]
    if not offsets:  # no neighbour inside the clip: nothing moves, as in the reference loop
        return np.ones(t)
    ssim = _ssim_chunked(g, offsets, cfg.ssim_win, cfg.data_range)  # pairs (i, i + d), each computed once
    raw = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if raw.dtype == np.uint8 and raw.ndim == 3:  # gray uint8, the usual decoded clip: OpenCV's histogram
        hist = _histograms_u8(raw, cfg.hist_bins)
    else:
        hist = _histograms(g, cfg.hist_bins)  # (T, bins)
    total = torch.zeros(t, dtype=torch.float64)
    count = torch.zeros(t, dtype=torch.float64)
    for d, s in zip(offsets, ssim):  # a loop over the offsets (1, 2), not over pairs
        sim = (s + hist_correl_pairs(hist[:-d], hist[d:])) / 2  # (T - d,)
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
