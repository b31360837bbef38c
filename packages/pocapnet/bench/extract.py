"""Feature-extraction benchmark (run by hand): ``uv run python packages/pocapnet/bench/extract.py [--quick]``.

On the same synthetic operation:
1. X-ray: DenseNet121 (random weights, the paper's architecture) once per frame vs once per 7-image window
   (the naive way recomputes each frame 7 times). Target >= 5x.
2. Audio: windows batched (with and without bf16 autocast) vs one window at a time in fp32, same features
   (cosine to the fp32 single-window features). Target >= 2x. Measured with the XLSR-53-size architecture
   (random weights) on a few windows, which also gives the real-time factor per channel (one 7 s window per
   second of audio), and with the tiny model.
3. Whole extraction of the operation (X-ray + 3 channels), new way vs naive way, from the per-item times above.
   Target >= 3x. The JSON on the last line carries this ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch
from pocapnet.config import FeatureConfig
from pocapnet.data import load_operation, read_frame
from pocapnet.features import AudioExtractor, XrayExtractor, audio_windows, load_densenet, load_wav2vec2
from pocapnet.synthetic import make_synthetic_dataset


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).min())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    secs = 16 if a.quick else 60
    n_xlsr = 2 if a.quick else 8
    cfg = FeatureConfig(batch_windows=8)
    tmp = tempfile.mkdtemp(prefix="pocap_bench_")
    make_synthetic_dataset(tmp, n_ops=1, seconds=(secs, secs), seed=0, progress=False)
    op = load_operation(tmp, "OP_001")
    frames = [read_frame(p) for p in op.frames]
    rows = []

    # 1. X-ray
    xr = XrayExtractor(load_densenet("random"), cfg, a.device)
    xr(frames[:2])  # warm-up
    n_x = min(secs, 8 if a.quick else secs)
    t_frame = _time(lambda: [xr(frames[i : i + 8]) for i in range(0, n_x, 8)]) / n_x

    def naive_x() -> None:
        for t in range(n_x):
            idx = [max(t - k, 0) for k in range(6, -1, -1)]
            xr([frames[i] for i in idx])

    t_window = _time(naive_x) / n_x
    rows.append(("xray per second: once per frame", t_frame * 1e3, "ms"))
    rows.append(("xray per second: once per 7-image window", t_window * 1e3, "ms"))
    ratio_x = t_window / t_frame

    # 2. Audio, tiny model (all windows of the op) and XLSR-53 size (a few windows)
    res = {}
    for name, src, n in (("tiny", "tiny-random", secs), ("xlsr53-size", "random-xlsr53", n_xlsr)):
        ext = AudioExtractor(load_wav2vec2(src), dataclasses.replace(cfg, batch_windows=n), a.device)
        w = audio_windows(op.audio[0], np.arange(n), cfg)
        ext(w[:1], bf16=False)
        t0 = time.perf_counter()
        single = torch.cat([ext(w[i : i + 1], bf16=False) for i in range(n)])
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        fp32 = ext(w, bf16=False)
        t_b32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        bf16 = ext(w, bf16=True)
        t_b16 = time.perf_counter() - t0
        out = {"fp32": fp32, "bf16": bf16}
        res[name] = {"single_fp32_s": t_single / n, "batched_fp32_s": t_b32 / n, "batched_bf16_s": t_b16 / n,
                     "cos_fp32": _cos(out["fp32"], single), "cos_bf16": _cos(out["bf16"], single)}
        for k in ("single_fp32_s", "batched_fp32_s", "batched_bf16_s"):
            rows.append((f"audio {name} per window: {k[:-2]}", res[name][k] * 1e3, "ms"))
        rows.append((f"audio {name} cosine batched fp32 / bf16 vs single fp32",
                     f"{res[name]['cos_fp32']:.5f} / {res[name]['cos_bf16']:.5f}", ""))
    big = res["xlsr53-size"]
    best_new_audio = min(big["batched_fp32_s"], big["batched_bf16_s"] if big["cos_bf16"] >= 0.99 else np.inf)
    ratio_audio = big["single_fp32_s"] / best_new_audio
    rtf = big["batched_fp32_s"]  # seconds of compute per second of audio and channel (one window per second)

    # 3. whole extraction per second of operation: 1 frame + 3 channels
    new = t_frame + 3 * best_new_audio
    naive = t_window + 3 * big["single_fp32_s"]
    ratio = naive / new
    rows.append(("whole extraction per op-second (xlsr53-size): new", new * 1e3, "ms"))
    rows.append(("whole extraction per op-second (xlsr53-size): naive", naive * 1e3, "ms"))
    rows.append(("real-time factor, XLSR-53-size audio, one channel (batched fp32)", rtf, "x"))

    print(f"{'measurement':70s} value")
    for name, v, unit in rows:
        print(f"{name:70s} {v:.2f} {unit}" if isinstance(v, float) else f"{name:70s} {v}")
    print(json.dumps({
        "bench": "extract", "ratio": round(ratio, 2), "target": 3.0, "xray_ratio": round(ratio_x, 2),
        "xray_target": 5.0, "audio_ratio": round(ratio_audio, 2), "audio_target": 2.0,
        "audio_cos_bf16": round(big["cos_bf16"], 5), "audio_cos_fp32": round(big["cos_fp32"], 5),
        "rtf_xlsr53_per_channel": round(rtf, 3), "threads": torch.get_num_threads(), "quick": a.quick,
        "device": a.device,
    }))


if __name__ == "__main__":
    main()
