"""``lungcvt baseline``: a random forest on per-cycle log-mel statistics, under the same protocols as ``lungcvt cv``.

The reference point of issue 21 (its calibration on the official split: ICBHI Score 0.504, abnormal AUROC 0.608).
Features of a cycle: every recording at a common 4 kHz (the Litt3200's rate; soxr_hq as the LungCVT features), a
64-band log-mel spectrogram (n_fft 256 = 64 ms, hop 64 = 16 ms, 0-2 kHz, dB relative to 1.0 with an 80 dB floor
below the cycle's maximum), and per band the mean, the standard deviation, the mean absolute frame-to-frame
difference and the 90th percentile over time: 256 numbers per cycle. Classifier: scikit-learn's
``RandomForestClassifier`` (300 trees, ``class_weight="balanced"``, ``min_samples_leaf=2``, ``random_state`` = the
seed, one job). The prediction is the arg max of the class probabilities (no tuned threshold).

Outputs: ``OUT/<protocol>/seed<S>/metrics.json`` (what ``lungcvt evaluate`` writes: ICBHI / macro-OvR / 2-class
scores, AUROCs, by device) and ``OUT/cv.json`` / ``cv.csv`` / ``cv.md`` as ``lungcvt cv``. Features are cached per
recording in ``CACHE/logmel4k-v1/<stem>.npz``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungcvt.config import CLASSES
from lungcvt.data import Recording, check_cycles_within, find_recordings, load_audio
from lungcvt.splits import DataOptions, select_recordings

__all__ = ["LOGMEL", "logmel_stats", "recording_stats", "run_baseline"]

log = logging.getLogger(__name__)

#: the feature settings (part of the cache key and of cv_settings.json)
LOGMEL = {"sample_rate": 4000, "n_fft": 256, "hop": 64, "n_mels": 64, "fmax": 2000.0, "top_db": 80.0, "v": 1}


def logmel_stats(cycle: np.ndarray, sr: int = 4000) -> np.ndarray:
    """256 statistics of one cycle (float32 [N] at ``sr``): per mel band mean, std, mean |delta|, p90 of the dB
    values over time -> float32 [4 * 64]."""
    import librosa

    y = cycle if len(cycle) >= LOGMEL["n_fft"] else np.pad(cycle, (0, LOGMEL["n_fft"] - len(cycle)))
    m = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=LOGMEL["n_fft"], hop_length=LOGMEL["hop"], n_mels=LOGMEL["n_mels"], fmax=LOGMEL["fmax"]
    )
    db = librosa.power_to_db(m, ref=1.0, top_db=LOGMEL["top_db"])  # [64, T]
    delta = np.abs(np.diff(db, axis=1)).mean(axis=1) if db.shape[1] > 1 else np.zeros(db.shape[0])
    return np.concatenate([db.mean(1), db.std(1), delta, np.percentile(db, 90, axis=1)]).astype(np.float32)


def recording_stats(rec: Recording, cache_dir: Path | None) -> np.ndarray:
    """[cycles, 256] statistics of one recording's cycles (cached, keyed by the wav's size/mtime and the spans)."""
    spans = np.array([[c.start, c.end] for c in rec.cycles], dtype=np.float64)
    st = rec.wav.stat()
    fp = np.concatenate([[st.st_size, st.st_mtime_ns % (1 << 52)], spans.ravel()])
    path = cache_dir / f"{rec.stem}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                if np.array_equal(z["fingerprint"], fp):
                    return z["x"]
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed
            pass
    audio, sr = load_audio(rec.wav, LOGMEL["sample_rate"])
    cycles = check_cycles_within(rec, len(audio) / sr)
    from lungcvt.dataset import cut_cycles

    x = np.stack([logmel_stats(a, sr) for a in cut_cycles(audio, sr, [(c.start, c.end) for c in cycles])])
    if path is not None:
        from medshared.runtime import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, fingerprint=fp)
    return x


def _stack(recs: Sequence[Recording], stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = np.concatenate([stats[r.stem] for r in recs])
    y = np.array([c.label for r in recs for c in r.cycles])
    dev = [r.info.device for r in recs for _ in r.cycles]
    return x, y, dev


def run_baseline(
    data_dir: str | Path,
    out_dir: str | Path,
    folds: Sequence[str],
    seeds: Sequence[int],
    data: DataOptions | None = None,
    cache_dir: str | Path | None = None,
    n_estimators: int = 300,
    progress: bool = True,
) -> dict:
    """Fit and score the forest on every (protocol, seed); returns the ``cv.json`` content (see :mod:`lungcvt.cv`).

    Raises:
        DataError: bad data; ValueError: ``OUT`` holds a baseline run with other settings.
    """
    import dataclasses

    from medshared.runtime import atomic_write_json
    from sklearn.ensemble import RandomForestClassifier
    from tqdm.auto import tqdm

    from lungcvt.cv import run_row, write_summary
    from lungcvt.data import audio_summary, device_notes
    from lungcvt.evaluate import group_scores, score_predictions
    from lungcvt.scoring import auroc_scores

    data = data or DataOptions()
    find_recordings(data_dir)  # a wrong --data fails before OUT is created
    out = Path(out_dir)
    settings = {"model": "random_forest", "n_estimators": n_estimators, "features": LOGMEL,
                "data": {**data.to_dict(), "protocol": None}}  # fmt: skip
    settings = json.loads(json.dumps(settings))
    marker = out / "cv_settings.json"
    if marker.is_file() and json.loads(marker.read_text()) != settings:
        raise ValueError(f"{out} holds a baseline run with different settings ({marker}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, settings)
    cache = Path(cache_dir) / "logmel4k-v1" if cache_dir is not None else out / "feature_cache"
    rows, by_device, result = [], [], {}
    stats: dict[str, np.ndarray] = {}
    t_feat = 0.0
    for protocol in folds:
        for seed in seeds:
            run_dir = out / protocol / f"seed{seed}"
            mpath = run_dir / "metrics.json"
            recs = select_recordings(data_dir, dataclasses.replace(data, protocol=protocol), seed=int(seed))
            if mpath.is_file():
                metrics = json.loads(mpath.read_text())
            else:
                t0 = time.perf_counter()
                for r in tqdm([r for r in recs if r.stem not in stats], desc="log-mel", disable=not progress):
                    stats[r.stem] = recording_stats(r, cache)
                t_feat += time.perf_counter() - t0
                tr = [r for r in recs if r.split == "train"]
                te = [r for r in recs if r.split == "test"]
                xtr, ytr, _ = _stack(tr, stats)
                xte, yte, dte = _stack(te, stats)
                t0 = time.perf_counter()
                rf = RandomForestClassifier(n_estimators=n_estimators, class_weight="balanced", min_samples_leaf=2,
                                            random_state=int(seed), n_jobs=1).fit(xtr, ytr)  # fmt: skip
                proba = np.zeros((len(yte), len(CLASSES)))
                proba[:, rf.classes_] = rf.predict_proba(xte)
                pred = proba.argmax(1)
                metrics = score_predictions(yte, pred)
                metrics.update(auroc_scores(yte, proba, CLASSES))
                metrics.update({
                    "protocol": protocol, "seed": int(seed), "split": "test", "n_recordings": len(te),
                    "train_counts": np.bincount(ytr, minlength=len(CLASSES)).tolist(),
                    "by_device": group_scores(yte, pred, dte, proba),
                    "device_notes": device_notes(recs), "audio_by_device": audio_summary(te),
                    "fit_seconds": round(time.perf_counter() - t0, 2), "model": "random_forest",
                })  # fmt: skip
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(mpath, metrics)
            if progress:
                ic, auc = metrics["icbhi"], metrics["auroc_abnormal"]
                print(
                    f"baseline {protocol} seed {seed}: ICBHI {ic['score']:.4f} (Se {ic['se']:.3f} Sp {ic['sp']:.3f}), "
                    f"AUROC abnormal {'n/a' if auc is None else f'{auc:.4f}'}",
                    flush=True,
                )
            rows.append(run_row(protocol, int(seed), metrics, None))
            by_device.append(metrics.get("by_device", {}))
            result = write_summary(out, folds, seeds, rows, by_device, settings)
    result["feature_seconds"] = round(t_feat, 1)
    return result
