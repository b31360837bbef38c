"""Streaming latency benchmark (run by hand): ``uv run python packages/pocapnet/bench/stream.py [--quick]``.

Per-second latency of :class:`pocapnet.stream.StreamingPredictor.step` after feature extraction, with the paper's
full-size network (2.8 M parameters, 3 x (349, 1024) audio + 7 x 1024 image features per second), at several
positions in a 512-second chunk (the MS-TCN runs over the chunk so far, so the last second of a chunk is the worst
case). Target: < 20 ms on CPU. Side by side: the naive per-second update that re-runs the whole model (branches +
MS-TCN) on every second of the chunk so far; the JSON's ``ratio`` is naive / streaming at the end of a chunk.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pocapnet.config import get_config
from pocapnet.model import PoCaPNet
from pocapnet.stream import StreamingPredictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=512)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_config("pocapnet").model
    model = PoCaPNet(cfg).eval()
    B = a.batch_size
    reps = 5 if a.quick else 20
    img = torch.randn(cfg.image_dim)
    aud = torch.randn(cfg.num_mics, cfg.audio_frames, cfg.audio_dim)
    sp = StreamingPredictor(model, B)
    positions = [1, B // 4, B // 2, B]
    rows = []
    stream_ms = {}
    with torch.no_grad():
        fused = model.forward_features(img.expand(1, 7, -1).contiguous(), aud[None])[0]
        for pos in positions:
            lat = []
            for _ in range(reps):
                sp.reset()
                sp.chunk = [fused.clone() for _ in range(pos - 1)]  # a chunk already holding pos-1 seconds
                sp.t = pos - 1
                sp.chunk_preds = [0] * (pos - 1)
                sp.images.extend([img] * 7)
                t0 = time.perf_counter()
                sp.step(img, aud)
                lat.append((time.perf_counter() - t0) * 1e3)
            stream_ms[pos] = float(np.median(lat))
            rows.append((f"streaming step, second {pos} of a {B}-s chunk (median of {reps})", stream_ms[pos]))
        # causal variant (pocapnet_causal): incremental MS-TCN, O(layers) per second
        ccfg = get_config("pocapnet_causal").model
        cmodel = PoCaPNet(ccfg).eval()
        csp = StreamingPredictor(cmodel, B)
        lat = []
        for _ in range(reps * 4):
            t0 = time.perf_counter()
            csp.step(img, aud)
            lat.append((time.perf_counter() - t0) * 1e3)
        causal_ms = float(np.median(lat))
        rows.append((f"causal TCN (pocapnet_causal), incremental step (median of {reps * 4})", causal_ms))
        # naive: whole model over the chunk so far, at the end of a chunk
        n = B if not a.quick else B // 4
        imgs = img.expand(n, 7, -1).contiguous()
        auds = aud.expand(n, -1, -1, -1).contiguous()
        lat = []
        for _ in range(max(2, reps // 3)):
            t0 = time.perf_counter()
            model(imgs, auds, torch.arange(n), torch.zeros(cfg.hidden_dim))
            lat.append((time.perf_counter() - t0) * 1e3)
        naive = float(np.median(lat))
        rows.append((f"naive: whole model over {n} seconds", naive))
    print(f"{'measurement':70s} ms")
    for name, v in rows:
        print(f"{name:70s} {v:.2f}")
    worst = max(stream_ms.values())
    ref = stream_ms[B] if n == B else stream_ms[B // 4]
    print(json.dumps({"bench": "stream", "ratio": round(naive / ref, 2), "target": 1.0,
                      "latency_ms_worst": round(worst, 2), "latency_target_ms": 20.0,
                      "latency_ms_causal_incremental": round(causal_ms, 2),
                      "latency_ok": worst < 20.0, "batch_size": B, "threads": torch.get_num_threads(),
                      "quick": a.quick}))


if __name__ == "__main__":
    main()
