"""Per-recording channel compensation of the features (``features.band_norm="recording"``; ours).

Shapes: one recording's cycles, float [3, F, T_i] each (MFCC, mel dB, CQT dB), as :mod:`lungcvt.features` makes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["band_normalise"]


def band_normalise(feats: Sequence[np.ndarray], level_db: float = -40.0) -> list[np.ndarray]:
    """Channel compensation over one recording (``features.band_norm="recording"``; ours, CMN style).

    A fixed per-band gain of the stethoscope (g_f dB) adds g_f to row f of every frame of the mel and CQT channels
    and a constant vector (its DCT) to the MFCCs; each cycle's own dB reference (its maximum) adds a per-cycle
    constant. Subtracting each row's mean over all frames of all the recording's cycles removes g_f; then each
    cycle's mel and CQT channel is centred on ``level_db`` (its mean over bands and frames, which a single loud
    frame moves less than its maximum), removing the per-cycle constant, so the result does not depend on such a
    gain (up to frames on the -80 dB floor and the filter's smear at cycle edges). ``level_db`` -40 is the middle
    of the [-80, 0] dB range that clean mode maps to [-1, 1]. The MFCC channel is only mean-removed (clean mode
    standardises it per cycle afterwards).

    Args:
        feats: one recording's cycles, float [3, F, T_i] each (MFCC, mel dB, CQT dB).

    Returns:
        float32 [3, F, T_i] each.
    """
    if not feats:
        return []
    x = [np.asarray(f, dtype=np.float32) for f in feats]
    total = sum(f.shape[2] for f in x)
    mean = (sum(f.sum(axis=2, dtype=np.float64) for f in x) / total).astype(np.float32)  # [3, F] row means
    out = []
    for f in x:
        g = f - mean[:, :, None]  # [3, F, T_i]
        spec = g[1:] - g[1:].mean(axis=(1, 2), keepdims=True) + level_db  # mel, CQT centred on level_db
        out.append(np.concatenate([g[:1], spec]).astype(np.float32))
    return out
