"""Streaming latency benchmark (run by hand): ``uv run python packages/pocapnet/bench/stream.py [--quick]``.

Per-second latency of :class:`pocapnet.stream.StreamingPredictor.step` after feature extraction, with the paper's
full-size network (2.8 M parameters, 3 x (349, 1024) audio + 7 x 1024 image features per second), at seconds
1 / 128 / 256 / 512 of a 512-second chunk (the paper's acausal MS-TCN runs over the chunk so far, so the last second
of a chunk is the worst case). Target: < 20 ms on CPU. Side by side in one run:

- ``reference``: the ``nn.Module`` path (``fast=False``; the previous default);
- ``fast``: :class:`pocapnet.stream.FrozenPoCaPNet` (BatchNorm folded, every convolution one GEMM, the three audio
  branches batched, stage 1's input convolution computed once per second and cached), fp32 (the default);
- ``fast bf16``: the same with the audio branches on bf16 weights; its predictions are compared with fp32 over a
  stream of ``--agree-seconds`` seconds (argmax agreement, max probability difference);
- the causal preset (``pocapnet_causal``) with the incremental MS-TCN;
- the naive per-second update that re-runs the whole model over the chunk so far.

Timings are medians over interleaved repetitions. The JSON's ``ratio`` is naive / fast at the end of a chunk.
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


def _prefill(sp: StreamingPredictor, fused: torch.Tensor, img: torch.Tensor, n: int) -> None:
    """Put ``sp`` at second ``n`` of its first chunk, as if ``n`` seconds with features ``fused`` had been streamed."""
    sp.reset()
    sp.chunk = [fused.clone() for _ in range(n)]
    if sp.frozen is not None:
        hist = sp.memory.vector if sp.model.cfg.delayed_estimation else 0.0
        sp.chunk_h0 = [sp.frozen.stage1_input(fused + hist) for _ in range(n)]
    sp.t = n
    sp.chunk_preds = [0] * n
    sp.images.extend([img] * 7)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--agree-seconds", type=int, default=None, help="bf16 vs fp32 prediction comparison length")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_config("pocapnet").model
    model = PoCaPNet(cfg).eval()
    B = a.batch_size
    reps = 7 if a.quick else 21
    img = torch.randn(cfg.image_dim)
    aud = torch.randn(cfg.num_mics, cfg.audio_frames, cfg.audio_dim)
    sps = {"reference": StreamingPredictor(model, B, fast=False), "fast": StreamingPredictor(model, B),
           "fast bf16": StreamingPredictor(model, B, bf16=True)}
    positions = [1, B // 4, B // 2, B]
    rows = []
    ms: dict[tuple[str, int], float] = {}
    with torch.no_grad():
        fused = model.forward_features(img.expand(1, 7, -1).contiguous(), aud[None])[0]
        for pos in positions:
            lat: dict[str, list[float]] = {k: [] for k in sps}
            for _ in range(reps):  # interleaved: the three ways see the same load
                for k, sp in sps.items():
                    _prefill(sp, fused, img, pos - 1)
                    t0 = time.perf_counter()
                    sp.step(img, aud)
                    lat[k].append((time.perf_counter() - t0) * 1e3)
            for k in sps:
                ms[(k, pos)] = float(np.median(lat[k]))
        for k in sps:
            rows.append((f"{k}: step at second " + " / ".join(map(str, positions)) + f" of a {B}-s chunk",
                         " / ".join(f"{ms[(k, p)]:.1f}" for p in positions)))
        # causal variant (pocapnet_causal): incremental MS-TCN, O(layers) per second
        cmodel = PoCaPNet(get_config("pocapnet_causal").model).eval()
        causal = {"reference": StreamingPredictor(cmodel, B, fast=False), "fast": StreamingPredictor(cmodel, B),
                  "fast bf16": StreamingPredictor(cmodel, B, bf16=True)}
        clat: dict[str, list[float]] = {k: [] for k in causal}
        for _ in range(reps * 3):
            for k, sp in causal.items():
                t0 = time.perf_counter()
                sp.step(img, aud)
                clat[k].append((time.perf_counter() - t0) * 1e3)
        causal_ms = {k: float(np.median(v)) for k, v in clat.items()}
        rows.append(("pocapnet_causal, incremental MS-TCN: reference / fast / fast bf16",
                     " / ".join(f"{causal_ms[k]:.1f}" for k in causal)))
        # naive: whole model over the chunk so far, at the end of a chunk
        n = B if not a.quick else B // 4
        imgs = img.expand(n, 7, -1).contiguous()
        auds = aud.expand(n, -1, -1, -1).contiguous()
        lat_naive = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(imgs, auds, torch.arange(n), torch.zeros(cfg.hidden_dim))
            lat_naive.append((time.perf_counter() - t0) * 1e3)
        naive = float(np.median(lat_naive))
        rows.append((f"naive: whole model over {n} seconds", f"{naive:.1f}"))
        # bf16 vs fp32 predictions over a stream (random weights, random features with a slow drift)
        n_agree = a.agree_seconds or (160 if a.quick else 600)
        g = torch.Generator().manual_seed(1)
        f32, f16 = StreamingPredictor(model, 128), StreamingPredictor(model, 128, bf16=True)
        base_i, base_a = torch.randn(cfg.image_dim, generator=g), torch.randn(aud.shape, generator=g)
        same, dmax = 0, 0.0
        for t in range(n_agree):
            drift = 0.5 * np.sin(t / 40.0)
            xi = base_i + drift + 0.3 * torch.randn(cfg.image_dim, generator=g)
            xa = base_a * (1 + drift) + 0.3 * torch.randn(aud.shape, generator=g)
            (p1, q1), (p2, q2) = f32.step(xi, xa), f16.step(xi, xa)
            same += int(p1 == p2)
            dmax = max(dmax, float(np.abs(q1 - q2).max()))
        rows.append((f"fast bf16 vs fast fp32 over {n_agree} s (chunks of 128): argmax agreement, max |dprob|",
                     f"{same / n_agree:.4f}, {dmax:.2e}"))
    print(f"{'measurement':96s} ms")
    for name, v in rows:
        print(f"{name:96s} {v}")
    worst = max(ms[("fast", p)] for p in positions)
    ref = ms[("fast", B)] if n == B else ms[("fast", B // 4)]
    print(json.dumps({"bench": "stream", "ratio": round(naive / ref, 2), "target": 1.0,
                      "latency_ms": {k: [round(ms[(k, p)], 2) for p in positions] for k in sps},
                      "positions": positions, "latency_ms_worst_fast": round(worst, 2), "latency_target_ms": 20.0,
                      "latency_ok": worst < 20.0, "causal_ms": {k: round(v, 2) for k, v in causal_ms.items()},
                      "bf16_agreement": round(same / n_agree, 4), "bf16_max_dprob": round(dmax, 5),
                      "batch_size": B, "threads": torch.get_num_threads(), "quick": a.quick}))


if __name__ == "__main__":
    main()
