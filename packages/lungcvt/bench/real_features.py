"""Measurements on real ICBHI recordings: what 4 kHz files look like after upsampling, the paper's Hamming/HTK
against the code's Hann/Slaney, and the model-input statistics of the two feature modes.

Run: ``OMP_NUM_THREADS=1 uv run python packages/lungcvt/bench/real_features.py [--data ../shared/data/icbhi]``
(default: the shared samples, 11 recordings, 100 cycles, all four devices). Every cycle goes through the package's
own loader and the librosa reference features (``features.backend: librosa``).

1. Devices: per device, the mean mel-channel dB (``power_to_db(ref=max)``, floor -80) of the bands above 2 kHz,
   the share of those bands at the -80 dB floor, and the same for the CQT bins above 2 kHz; then the same with
   ``features.band_limit_hz: 2000`` (every device low-passed as the 4 kHz files are) and with ``features.fmax: 2000``
   (all 96 mel bands below 2 kHz).
2. Window and mel scale: mean / 99th-percentile |dB difference| of the mel and MFCC channels between the code
   (Hann window, Slaney mel for the mel channel) and the paper's Eq. 2-3 (Hamming, HTK), per channel, and each
   alone.
3. Input statistics: mean and std per channel of the model input (after resize to 224 and normalisation) in the
   ``faithful`` mode (ImageNet mean/std applied to dB values, as the code) and the ``clean`` mode.

Last line: ``{"bench": "real_features", "ratio": share of Litt3200 mel bands above 2 kHz at the floor, "target": 0.9,
...}``: the check that the upsampled 4 kHz files really are empty there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def _cycles(data: Path, cfg):
    from lungcvt.data import check_cycles_within, load_dataset
    from lungcvt.dataset import cut_cycles, load_recording_audio

    recs, _ = load_dataset(data, allow_partial=True, use_split_file=False)
    out = []
    for r in recs:
        audio, sr = load_recording_audio(r.wav, cfg)
        cyc = check_cycles_within(r, len(audio) / sr)
        out += [(r.info.device, y) for y in cut_cycles(audio, sr, [(c.start, c.end) for c in cyc])]
    return out


def _feats(data: Path, cfg) -> list[tuple[str, np.ndarray]]:
    from lungcvt.features import compute_features

    cyc = _cycles(data, cfg)
    feats = compute_features([y for _, y in cyc], cfg)
    return [(d, f) for (d, _), f in zip(cyc, feats)]


def device_table(data: Path, cfg) -> dict:
    import librosa

    mel_f = librosa.mel_frequencies(
        n_mels=cfg.n_mels + 2, fmin=0.0, fmax=cfg.fmax or cfg.sample_rate / 2, htk=cfg.mel_htk
    )[1:-1]
    cqt_f = librosa.cqt_frequencies(n_bins=cfg.cqt_bins, fmin=cfg.cqt_fmin, bins_per_octave=cfg.cqt_bins_per_octave)
    hi_mel, hi_cqt = mel_f > 2000, cqt_f > 2000
    rows: dict[str, dict] = {}
    for dev, f in _feats(data, cfg):
        r = rows.setdefault(dev, {"cycles": 0, "mel_db": [], "mel_floor": [], "cqt_db": [], "cqt_floor": []})
        r["cycles"] += 1
        mel, cqt = f[1][hi_mel], f[2][hi_cqt]
        r["mel_db"].append(float(mel.mean()) if mel.size else float("nan"))
        r["mel_floor"].append(float((mel <= -79.9).mean()) if mel.size else float("nan"))
        r["cqt_db"].append(float(cqt.mean()))
        r["cqt_floor"].append(float((cqt <= -79.9).mean()))
    out = {"mel_bands_above_2k": int(hi_mel.sum()), "cqt_bins_above_2k": int(hi_cqt.sum()), "devices": {}}
    for dev, r in sorted(rows.items()):
        out["devices"][dev] = {
            "cycles": r["cycles"],
            **{k: float(np.mean(r[k])) for k in ("mel_db", "mel_floor", "cqt_db", "cqt_floor")},
        }
    return out


def window_table(data: Path, base) -> dict:
    variants = {
        "hamming+htk (paper)": dataclasses.replace(base, window="hamming", mel_htk=True),
        "hamming only": dataclasses.replace(base, window="hamming"),
        "htk mel only": dataclasses.replace(base, mel_htk=True),
    }
    ref = [f for _, f in _feats(data, base)]
    out = {}
    for name, cfg in variants.items():
        other = [f for _, f in _feats(data, cfg)]
        d = {
            ch: np.concatenate([np.abs(a[i] - b[i]).ravel() for a, b in zip(ref, other)])
            for i, ch in ((0, "mfcc"), (1, "mel"))
        }
        out[name] = {
            ch: {"mean": float(v.mean()), "p99": float(np.percentile(v, 99)), "max": float(v.max())}
            for ch, v in d.items()
        }
    return out


def input_stats(data: Path, base) -> dict:
    import torch
    from lungcvt.images import to_image

    out = {}
    for mode in ("faithful", "clean"):
        cfg = dataclasses.replace(base, mode=mode)
        imgs = torch.stack([to_image(f, cfg) for _, f in _feats(data, cfg)])  # [N, 3, 224, 224]
        per_cycle_mean = imgs.mean(dim=(2, 3))  # [N, 3]
        out[mode] = {
            ch: {
                "mean": float(imgs[:, i].mean()),
                "std": float(imgs[:, i].std()),
                "cycle_mean_range": [float(per_cycle_mean[:, i].min()), float(per_cycle_mean[:, i].max())],
                "min": float(imgs[:, i].min()),
                "max": float(imgs[:, i].max()),
            }
            for i, ch in enumerate(("mfcc", "mel", "cqt"))
        }
    return out


def main() -> None:
    from lungcvt.config import FeatureConfig
    from medshared.testing import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = shared_data_dir()
    ap.add_argument("--data", default=str(root / "icbhi") if root else None)
    ap.add_argument("--backend", default="librosa")
    args = ap.parse_args()
    if not args.data:
        raise SystemExit("no data: pass --data ICBHI_FOLDER")
    data = Path(args.data)
    base = FeatureConfig(backend=args.backend)
    res: dict = {"data": str(data)}
    for name, cfg in (
        ("default", base),
        ("band_limit_hz=2000", dataclasses.replace(base, band_limit_hz=2000.0)),
        ("fmax=2000", dataclasses.replace(base, fmax=2000.0)),
    ):
        t = device_table(data, cfg)
        res.setdefault("devices", {})[name] = t
        print(f"\n[{name}] mel bands above 2 kHz: {t['mel_bands_above_2k']} of {base.n_mels}; CQT bins above 2 kHz: "
              f"{t['cqt_bins_above_2k']} of {base.cqt_bins}")  # fmt: skip
        print(
            f"{'device':10s} {'cycles':>6s} {'mel dB >2k':>10s} {'at floor':>9s} {'CQT dB >2k':>10s} {'at floor':>9s}"
        )
        for dev, r in t["devices"].items():
            print(f"{dev:10s} {r['cycles']:6d} {r['mel_db']:10.1f} {100 * r['mel_floor']:8.0f}% {r['cqt_db']:10.1f} "
                  f"{100 * r['cqt_floor']:8.0f}%")  # fmt: skip
    w = window_table(data, base)
    res["window"] = w
    print("\nmean / p99 / max |dB difference| against the code's Hann + Slaney (faithful mode)")
    for name, d in w.items():
        print(f"{name:22s} mel {d['mel']['mean']:.2f} / {d['mel']['p99']:.2f} / {d['mel']['max']:.1f}   "
              f"MFCC {d['mfcc']['mean']:.2f} / {d['mfcc']['p99']:.2f} / {d['mfcc']['max']:.1f}")  # fmt: skip
    s = input_stats(data, base)
    res["input_stats"] = s
    print("\nmodel input (224 x 224, after normalisation): mean / std, range of per-cycle means")
    for mode, d in s.items():
        for ch, v in d.items():
            lo, hi = v["cycle_mean_range"]
            print(f"{mode:9s} {ch:5s} {v['mean']:9.2f} / {v['std']:7.2f}   cycle means {lo:8.2f} .. {hi:8.2f}")
    litt = res["devices"]["default"]["devices"].get("Litt3200", {})
    metric = "share of Litt3200 mel bands above 2 kHz at the -80 dB floor"
    ratio = round(litt.get("mel_floor", float("nan")), 3)
    print(json.dumps({"bench": "real_features", "ratio": ratio, "target": 0.9, "metric": metric, "results": res}))


if __name__ == "__main__":
    main()
