"""The on-disk feature cache: per-recording pre-resize features keyed by a hash of the settings that change them.

``CACHE/<feature_key>/<stem>.npz`` holds one float16 array per cycle, the cycles' (start, end) and the wav file's
size and mtime (an edited annotation or audio file is recomputed); ``settings.json`` beside them records the key's
settings. Re-exported by :mod:`lungcvt.features`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungcvt.config import FeatureConfig

__all__ = ["FeatureCache", "feature_key"]


def feature_key(cfg: FeatureConfig) -> str:
    """16-hex-digit hash of the settings that change the pre-resize features (and the package's feature code)."""
    blob = json.dumps({"v": 1, **cfg.spectral_key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureCache:
    """On-disk cache of per-recording features: ``root/<feature_key>/<stem>.npz`` with one array per cycle.

    A recording's entry also stores its cycles' (start, end) and the wav file's size and mtime, so an edited
    annotation or audio file is recomputed.
    """

    def __init__(self, root: str | Path, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.dir = Path(root) / feature_key(cfg)

    def _path(self, stem: str) -> Path:
        return self.dir / f"{stem}.npz"

    @staticmethod
    def _fingerprint(wav: Path, spans: np.ndarray) -> np.ndarray:
        st = wav.stat()
        return np.concatenate([[st.st_size, st.st_mtime_ns % (1 << 52)], spans.ravel()]).astype(np.float64)

    def get(self, stem: str, wav: Path, spans: np.ndarray) -> list[np.ndarray] | None:
        p = self._path(stem)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                if not np.array_equal(z["fingerprint"], self._fingerprint(wav, spans)):
                    return None
                return [z[f"c{i}"] for i in range(int(z["n"]))]
        except Exception:  # a corrupt cache entry is recomputed
            return None

    def put(self, stem: str, wav: Path, spans: np.ndarray, feats: Sequence[np.ndarray]) -> None:
        from medshared.runtime import atomic_path

        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"c{i}": f.astype(np.float16) for i, f in enumerate(feats)}
        with atomic_path(self._path(stem)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, n=len(feats), fingerprint=self._fingerprint(wav, spans), **arrays)
        meta = self.dir / "settings.json"
        if not meta.exists():
            from medshared.runtime import atomic_write_json

            atomic_write_json(meta, self.cfg.spectral_key())
