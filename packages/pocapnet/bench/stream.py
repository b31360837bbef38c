"""Streaming latency benchmark (run by hand): ``uv run python packages/pocapnet/bench/stream.py [--quick]``.

Per-second latency of :class:`pocapnet.stream.StreamingPredictor.step` after feature extraction, with the paper's
full-size network (2.8 M parameters, 3 x (349, 1024) audio + 7 x 1024 image features per second), at seconds
1 / 128 / 256 / 512 of a 512-second chunk (the paper's acausal MS-TCN runs over the chunk so far, so the last second
of a chunk is the worst case). Target: < 20 ms on CPU. Side by side in one run:

- ``reference``: the ``nn.Module`` path (``fast=False``; the previous default);
- ``fast``: :class:`pocapnet.stream.FrozenPoCaPNet` (BatchNorm folded, every convolution one GEMM, the three audio
  branches batched, stage 1's input convolution computed once per second, and per second only the MS-TCN columns
  the new second changes, the rest cached per chunk), fp32 (the default of ``StreamingPredictor``);
- ``fast bf16``: the same with the audio branches on bf16 weights; its predictions are compared with fp32 over a
  stream of ``--agree-seconds`` seconds (argmax agreement, max probability difference);
- the causal preset (``pocapnet_causal``) with the incremental MS-TCN;
- the naive per-second update that re-runs the whole model over the chunk so far.

Timings are medians over interleaved repetitions, as wall time and as the process's CPU time (with one thread the
CPU time is what the step costs on an idle core; on a shared machine the wall time also counts waiting for a core).
The JSON's ``ratio`` is naive / fast at the end of a chunk.
With ``--checkpoint CK --features DIR`` the three paths are also compared on a trained model's real feature stream
(every operation in ``DIR``; e.g. the demo's ``best.safetensors`` and ``features/``): prediction agreement with the
reference path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from pocapnet.config import get_config
from pocapnet.model import PoCaPNet
from pocapnet.stream import StreamingPredictor


def _prefill(sp: StreamingPredictor, fused: torch.Tensor, img: torch.Tensor, n: int, caches: dict) -> None:
    """Put ``sp`` at second ``n`` of its first chunk, as if ``n`` seconds with features ``fused`` had been streamed."""
    sp.reset()
    sp.chunk = [fused.clone() for _ in range(n)]
    if sp.frozen is not None and n > 0:
        key = (id(sp.frozen), n)
        if key not in caches:  # the full chunk forward once, its per-layer columns copied for each repetition
            hist = sp.memory.vector if sp.model.cfg.delayed_estimation else 0.0
            h0 = sp.frozen.stage1_input(fused + hist)[:, None].expand(-1, n)
            caches[key] = sp.frozen.fill_chunk_cache(h0, sp.batch_size)
        c = caches[key]
        sp.tcn_cache = {"n": c["n"], "h": [[None if h is None else h.clone() for h in hs] for hs in c["h"]]}
    sp.t = n
    sp.chunk_preds = [0] * n
    sp.images.extend([img] * 7)


def _trained_agreement(checkpoint: Path, features: Path) -> dict:
    """Stream every operation of ``features`` through the reference, fast and fast-bf16 paths of a trained model."""
    from pocapnet.features import load_feature_operation
    from pocapnet.train import load_model

    model, cfg, _ = load_model(checkpoint)
    ways = {"reference": {"fast": False}, "fast": {}, "fast bf16": {"bf16": True}}
    same = dict.fromkeys(ways, 0)
    n = 0
    for op_dir in sorted(p for p in features.iterdir() if (p / "meta.json").is_file()):
        fop = load_feature_operation(features, op_dir.name)
        sps = {k: StreamingPredictor(model, cfg.train.batch_size, **kw) for k, kw in ways.items()}
        for t in range(len(fop)):
            img = torch.as_tensor(np.array(fop.xray[t], dtype=np.float32))
            _, aud = fop.chunk(t, t + 1)
            preds = {k: sp.step(img, aud[0])[0] for k, sp in sps.items()}
            for k in ways:
                same[k] += int(preds[k] == preds["reference"])
            n += 1
    return {"seconds": n, **{k: round(v / n, 4) for k, v in same.items() if k != "reference"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--agree-seconds", type=int, default=None, help="bf16 vs fp32 prediction comparison length")
    ap.add_argument("--checkpoint", type=Path, help="trained checkpoint for the agreement check on real features")
    ap.add_argument("--features", type=Path, help="feature folder (OP_xxx/) matching --checkpoint")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_config("pocapnet").model
    model = PoCaPNet(cfg).eval()
    B = a.batch_size
    reps = 7 if a.quick else 21
    img = torch.randn(cfg.image_dim)
    aud = torch.randn(cfg.num_mics, cfg.audio_frames, cfg.audio_dim)
    sps = {
        "reference": StreamingPredictor(model, B, fast=False),
        "fast": StreamingPredictor(model, B),
        "fast bf16": StreamingPredictor(model, B, bf16=True),
    }
    positions = [1, B // 4, B // 2, B]
    rows = []
    ms: dict[tuple[str, int], float] = {}
    cpu_ms: dict[tuple[str, int], float] = {}
    caches: dict = {}
    with torch.no_grad():
        fused = model.forward_features(img.expand(1, 7, -1).contiguous(), aud[None])[0]
        for pos in positions:
            lat: dict[str, list[float]] = {k: [] for k in sps}
            cpu: dict[str, list[float]] = {k: [] for k in sps}
            for _ in range(reps):  # interleaved: the three ways see the same load
                for k, sp in sps.items():
                    _prefill(sp, fused, img, pos - 1, caches)
                    t0, c0 = time.perf_counter(), time.process_time()
                    sp.step(img, aud)
                    cpu[k].append((time.process_time() - c0) * 1e3)
                    lat[k].append((time.perf_counter() - t0) * 1e3)
            for k in sps:
                ms[(k, pos)] = float(np.median(lat[k]))
                cpu_ms[(k, pos)] = float(np.median(cpu[k]))
        for k in sps:
            rows.append(
                (
                    f"{k}: step at second " + " / ".join(map(str, positions)) + f" of a {B}-s chunk, wall",
                    " / ".join(f"{ms[(k, p)]:.1f}" for p in positions),
                )
            )
            rows.append(
                (
                    f"{k}: same, CPU time of the process (insensitive to other jobs' load)",
                    " / ".join(f"{cpu_ms[(k, p)]:.1f}" for p in positions),
                )
            )
        # causal variant (pocapnet_causal): incremental MS-TCN, O(layers) per second
        cmodel = PoCaPNet(get_config("pocapnet_causal").model).eval()
        causal = {
            "reference": StreamingPredictor(cmodel, B, fast=False),
            "fast": StreamingPredictor(cmodel, B),
            "fast bf16": StreamingPredictor(cmodel, B, bf16=True),
        }
        clat: dict[str, list[float]] = {k: [] for k in causal}
        ccpu: dict[str, list[float]] = {k: [] for k in causal}
        for _ in range(reps * 3):
            for k, sp in causal.items():
                t0, c0 = time.perf_counter(), time.process_time()
                sp.step(img, aud)
                ccpu[k].append((time.process_time() - c0) * 1e3)
                clat[k].append((time.perf_counter() - t0) * 1e3)
        causal_ms = {k: float(np.median(v)) for k, v in clat.items()}
        causal_cpu = {k: float(np.median(v)) for k, v in ccpu.items()}
        rows.append(
            (
                "pocapnet_causal, incremental MS-TCN: reference / fast / fast bf16, wall",
                " / ".join(f"{causal_ms[k]:.1f}" for k in causal),
            )
        )
        rows.append(
            (
                "pocapnet_causal, incremental MS-TCN: reference / fast / fast bf16, CPU time",
                " / ".join(f"{causal_cpu[k]:.1f}" for k in causal),
            )
        )
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
        rows.append(
            (
                f"random model: fast bf16 vs fast fp32 over {n_agree} s (chunks of 128): argmax agreement, max |dprob|",
                f"{same / n_agree:.4f}, {dmax:.2e}",
            )
        )
        trained = _trained_agreement(a.checkpoint, a.features) if a.checkpoint and a.features else None
        if trained is not None:
            rows.append(
                (
                    f"trained model ({trained['seconds']} s of real features): fast fp32 / fast bf16 agreement "
                    "with reference",
                    f"{trained['fast']:.4f} / {trained['fast bf16']:.4f}",
                )
            )
    print(f"{'measurement':96s} ms")
    for name, v in rows:
        print(f"{name:96s} {v}")
    worst = max(ms[("fast", p)] for p in positions)
    worst_cpu = {k: max(cpu_ms[(k, p)] for p in positions) for k in sps}
    ref = ms[("fast", B)] if n == B else ms[("fast", B // 4)]
    print(
        json.dumps(
            {
                "bench": "stream",
                "ratio": round(naive / ref, 2),
                "target": 1.0,
                "latency_ms": {k: [round(ms[(k, p)], 2) for p in positions] for k in sps},
                "cpu_ms": {k: [round(cpu_ms[(k, p)], 2) for p in positions] for k in sps},
                "positions": positions,
                "latency_ms_worst_fast": round(worst, 2),
                "latency_target_ms": 20.0,
                "cpu_ms_worst": {k: round(v, 2) for k, v in worst_cpu.items()},
                "latency_ok": worst < 20.0,
                "cpu_ok": {k: v < 20.0 for k, v in worst_cpu.items()},
                "causal_ms": {k: round(v, 2) for k, v in causal_ms.items()},
                "causal_cpu_ms": {k: round(v, 2) for k, v in causal_cpu.items()},
                "bf16_agreement": round(same / n_agree, 4),
                "bf16_max_dprob": float(f"{dmax:.3g}"),
                "trained_agreement": trained,
                "batch_size": B,
                "threads": torch.get_num_threads(),
                "quick": a.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
