"""Streaming benchmark (run by hand): ``uv run python packages/pocapnet/bench/stream.py [--quick]``.

1. Step latency after feature extraction (:meth:`pocapnet.stream.StreamingPredictor.step`), the paper's full-size
   network (2.8 M parameters, random weights), through a whole 512-s chunk (the paper's acausal MS-TCN runs over the
   chunk so far, so the end of a chunk is the worst case); medians of the 8 consecutive steps ending at seconds
   8 / 128 / 256 / 512, CPU time and wall time, after an untimed 8-s warm-up stream (the process's first calls
   set up the convolution kernels once; they are not a per-second cost):
   - ``fast``: the default: BatchNorm folded into a copy of the module (:func:`pocapnet.model.fold_batchnorm`) and
     the incremental MS-TCN (:class:`pocapnet.stream.IncrementalMSTCN`, the module's own layers on the columns a
     new second changes, the acausal last stage only on the columns its newest output reads);
   - ``fast, last stage on every changed column``: the same without that column restriction (``last_only=False``,
     the fast path before it; what the restriction saves, side by side);
   - ``module``: the ``nn.Module`` as trained (unfolded) with the same incremental MS-TCN (what folding saves);
   - ``reference``: ``fast=False``, the module's ``forward_temporal`` over the chunk so far at every second;
   - the causal preset (``pocapnet_causal``);
   - ``naive``: the whole model (per-second branches + MS-TCN) over the chunk so far, at second 512 (JSON
     ``ratio`` = naive / fast there).
   Predictions: fast (and the unrestricted fast path) vs reference argmax agreement over the 512-s stream.
2. End to end per second (the live path): online feature extraction of the new second (wav2vec2 on the 7 s window
   of each of the 3 channels + DenseNet on the new frame) plus the step, at tiny size (the demo's extractors) and
   at full size (XLSR-53 and DenseNet121 architectures, random weights): latency and real-time factor (compute
   time per second of audio; < 1 keeps up with a live recording on this machine, one thread).

Targets (can fail, and do where the hardware is too slow): fast step at the worst position < 20 ms CPU time, and
real-time factor < 1 at full size. The JSON on the last line gives both, with ``met`` for each.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pocapnet.config import get_config
from pocapnet.model import PoCaPNet
from pocapnet.stream import IncrementalMSTCN, OnlineExtractor, StreamingPredictor

POSITIONS = (8, 128, 256, 512)


class _AllColumns(StreamingPredictor):
    """The fast path with the last stage updated on every changed column (no column restriction)."""

    def reset(self) -> None:
        super().reset()
        self.tcn = IncrementalMSTCN(self.net.tcn, self.batch_size, last_only=False)


def _features(cfg, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random per-second features with a slow drift (so predictions change along the stream)."""
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    drift = torch.linspace(0, 3, T)
    img = torch.randn(T, m.image_dim, generator=g) + drift[:, None]
    aud = torch.randn(T, m.num_mics, m.audio_frames, m.audio_dim, generator=g) * 0.5 + drift[:, None, None, None]
    return img, aud


def _run(sp: StreamingPredictor, img: torch.Tensor, aud: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list]:
    """Stream every second after an untimed 8-s warm-up; per-step CPU and wall times."""
    sp.reset()
    for t in range(8):
        sp.step(img[t], aud[t])
    sp.reset()
    cpu, wall, preds = [], [], []
    for t in range(len(img)):
        c0, w0 = time.process_time(), time.perf_counter()
        p, _ = sp.step(img[t], aud[t])
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        preds.append(p)
    return np.array(cpu), np.array(wall), preds


def _at(x: np.ndarray, pos: int) -> float:
    """Median of the 8 steps ending at second ``pos`` (1-based, >= 8)."""
    return float(np.median(x[pos - 8 : pos])) * 1e3


def _e2e(size: str, seconds: int) -> dict:
    """Online extraction + step per second, at ``tiny`` or ``full`` size."""
    import dataclasses
    import tempfile

    from pocapnet.data import load_operation, read_frame
    from pocapnet.extractors import AudioExtractor, XrayExtractor
    from pocapnet.synthetic import make_synthetic_dataset
    from pocapnet.weights import load_densenet, load_wav2vec2

    tmp = tempfile.mkdtemp(prefix="pocap_stream_")
    make_synthetic_dataset(tmp, n_ops=1, seconds=(max(seconds + 1, 8), max(seconds + 1, 8)), seed=1, progress=False)
    op = load_operation(tmp, "OP_001")
    if size == "tiny":
        cfg = get_config("pocapnet_demo")
        w2v, dn = load_wav2vec2("tiny-random"), load_densenet("tiny-random")
    else:
        cfg = get_config("pocapnet")
        w2v, dn = load_wav2vec2("random-xlsr53"), load_densenet("random")
    fx = dataclasses.replace(cfg.features, bf16=None)
    b16 = _auto_extract_bf16() and size != "tiny"  # what `predict --stream --precision auto` runs (tiny: fp32 preset)
    online = OnlineExtractor(AudioExtractor(w2v, fx, bf16=b16), XrayExtractor(dn, fx, bf16=b16), fx)
    model = PoCaPNet(cfg.model).eval()
    sp = StreamingPredictor(model, cfg.train.batch_size)
    sr = fx.sample_rate
    cpu, wall = [], []
    for t in range(seconds + 1):  # second 0 warms up (the bf16 copy, if any, is built there)
        c0, w0 = time.process_time(), time.perf_counter()
        img, a = online.step(op.audio[:, t * sr : (t + 1) * sr], read_frame(op.frames[t]))
        sp.step(img, a)
        if t:
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return {"cpu_s": float(np.median(cpu)), "wall_s": float(np.median(wall)), "seconds": seconds}


def _auto_extract_bf16() -> bool:
    from pocapnet.precision import resolve

    return resolve("auto", "cpu", "pocapnet.extract").name == "bf16"


def main() -> None:
    from medshared.precision import cpu_model
    from pocapnet.precision import resolve

    prec_x = resolve("auto", "cpu", "pocapnet.extract")
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} thread(s)")
    print(f"precision auto for the live extractors (full size) -> {prec_x.name}: {prec_x.reason}")
    print("the streaming step itself runs fp32 here (the folded module; --precision bf16 casts its audio branches)")
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer end-to-end seconds at full size")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_config("pocapnet")
    T = 512
    img, aud = _features(cfg, T)
    model = PoCaPNet(cfg.model).eval()
    rows, res = [], {}
    ways = {"fast": StreamingPredictor(model, T), "reference": StreamingPredictor(model, T, fast=False)}
    ways["fast, last stage on every changed column"] = _AllColumns(model, T)
    ways["module"] = StreamingPredictor(model, T)
    ways["module"].net = model  # the unfolded module with the same incremental MS-TCN
    ways["module"].reset()
    for name, sp in ways.items():
        cpu, wall, preds = _run(sp, img, aud)
        res[name] = {"cpu": cpu, "wall": wall, "preds": preds}
        rows.append(
            (
                f"acausal (paper), {name}: CPU ms at s " + " / ".join(map(str, POSITIONS)),
                " / ".join(f"{_at(cpu, p):.1f}" for p in POSITIONS),
            )
        )
        rows.append((f"acausal (paper), {name}: wall ms", " / ".join(f"{_at(wall, p):.1f}" for p in POSITIONS)))
    ref_preds = np.array(res["reference"]["preds"])
    agree = float(np.mean(np.array(res["fast"]["preds"]) == ref_preds))
    agree_all = float(np.mean(np.array(res["fast, last stage on every changed column"]["preds"]) == ref_preds))
    rows.append(("fast vs reference argmax agreement over 512 s", f"{agree:.4f}"))
    rows.append(("fast, last stage on every changed column, vs reference agreement", f"{agree_all:.4f}"))
    last_saves = _at(res["fast, last stage on every changed column"]["cpu"], 512) / _at(res["fast"]["cpu"], 512)
    rows.append(("column restriction of the last stage: step CPU time at s 512, without / with", f"{last_saves:.2f}x"))
    ccfg = get_config("pocapnet_causal")
    cmodel = PoCaPNet(ccfg.model).eval()
    for name, sp in (("fast", StreamingPredictor(cmodel, T)), ("reference", StreamingPredictor(cmodel, T, fast=False))):
        cpu, _, _ = _run(sp, img, aud)
        rows.append(
            (
                f"causal (pocapnet_causal), {name}: CPU ms at s " + " / ".join(map(str, POSITIONS)),
                " / ".join(f"{_at(cpu, p):.1f}" for p in POSITIONS),
            )
        )
    with torch.no_grad():  # naive: the whole model over the 512 s so far, at second 512
        from pocapnet.extractors import image_windows

        imgs = image_windows(img.numpy(), np.arange(T))
        ts = []
        for _ in range(3):
            c0 = time.process_time()
            model(imgs, aud, torch.arange(T), torch.zeros(cfg.model.hidden_dim))
            ts.append(time.process_time() - c0)
    naive = float(np.median(ts)) * 1e3
    fast_worst = max(_at(res["fast"]["cpu"], p) for p in POSITIONS)
    rows.append(("naive: whole model over the chunk so far at s 512, CPU ms", f"{naive:.0f}"))
    tiny = _e2e("tiny", 8)
    full = _e2e("full", 2 if a.quick else 5)
    rows.append(
        (
            "end to end per second, tiny extractors (demo): CPU / wall ms",
            f"{tiny['cpu_s'] * 1e3:.0f} / {tiny['wall_s'] * 1e3:.0f}",
        )
    )
    rows.append(
        (
            "end to end per second, full size (XLSR-53 + DenseNet121, random weights): CPU / wall s",
            f"{full['cpu_s']:.2f} / {full['wall_s']:.2f}",
        )
    )
    rows.append(
        ("real-time factor (CPU time per second of audio): tiny / full", f"{tiny['cpu_s']:.3f} / {full['cpu_s']:.2f}")
    )
    print(f"{'measurement':100s} value")
    for name, v in rows:
        print(f"{name:100s} {v}")
    print(
        json.dumps(
            {
                "bench": "pocapnet-stream",
                "ratio": round(naive / _at(res["fast"]["cpu"], 512), 1),
                "target": "fast step < 20 ms CPU at the worst position; real-time factor < 1 at full size",
                "step_ms_worst": round(fast_worst, 2),
                "step_met": fast_worst < 20.0,
                "rtf_full": round(full["cpu_s"], 3),
                "rtf_tiny": round(tiny["cpu_s"], 4),
                "rtf_met": full["cpu_s"] < 1.0,
                "agreement": agree,
                "last_stage_restriction_x": round(last_saves, 2),
                "threads": torch.get_num_threads(),
                "cpu": cpu_model(),
                "precision_extractors": prec_x.name,
                "precision_reason": prec_x.reason,
            }
        )
    )


if __name__ == "__main__":
    main()
