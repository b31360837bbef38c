"""Chunked, resumable extraction benchmark (run by hand): ``uv run python packages/pocapnet/bench/extract_resume.py``.

On one synthetic operation (``--seconds``, default 600) with the demo's tiny extractors (the cheapest compute per
second, so the bookkeeping of chunking is the largest share it can be), CPU time of:

- ``whole``: one chunk for the whole operation (no intermediate flushes or progress records);
- ``chunked``: the default ``chunk_s`` (64 s) and ``--chunk`` seconds, uninterrupted;
- ``interrupted + resumed``: chunks of ``--chunk`` seconds, interrupted half-way through a chunk past the middle of
  the operation, then resumed (the unfinished chunk's work is lost and redone).

A resume costs the lost part of one chunk, on average half a chunk, so its share scales with ``chunk_s`` / the
operation's length. ``--chunk`` defaults to the default 64 s scaled from an hour-long operation (the corpus's
mean is 65 min) to ``--seconds``, rounded up to a multiple of the batch of windows as 64 is (16 s for 300 s), so the
bench's share is about the one a real operation would see.
Target: interrupted + resumed costs < 5 % over the uninterrupted whole-operation extraction (JSON ``ratio`` = that
cost / whole). Rounds are interleaved; best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from pocapnet.config import get_config
from pocapnet.data import load_operation
from pocapnet.extractors import AudioExtractor, XrayExtractor
from pocapnet.features import extract_operation
from pocapnet.synthetic import make_synthetic_dataset
from pocapnet.weights import load_densenet, load_wav2vec2


class _Stop(Exception):
    pass


class _StopAfter:
    """The extractor, raising after ``n`` calls (a power cut mid-chunk)."""

    def __init__(self, base: AudioExtractor, n: int) -> None:
        self.base, self.n = base, n
        self.dim, self.frames = base.dim, base.frames

    def __call__(self, windows):
        self.n -= 1
        if self.n < 0:
            raise _Stop
        return self.base(windows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--chunk",
        type=int,
        help="chunk seconds of the interrupted run (default: the default chunk_s scaled from 3600 s)",
    )
    a = ap.parse_args()
    bw = get_config("pocapnet_demo").features.batch_windows
    # the default chunk scaled from an hour to --seconds, kept a multiple of the batch (as 64 is of 8 and 16)
    default = get_config("pocapnet_demo").features.chunk_s
    chunk = a.chunk or max(bw, round(a.seconds * default / 3600 / bw) * bw)
    tmp = Path(tempfile.mkdtemp(prefix="pocap_resume_"))
    make_synthetic_dataset(tmp / "d", n_ops=1, seconds=(a.seconds, a.seconds), seed=0, frame_size=64, progress=False)
    base = get_config("pocapnet_demo").features
    op = load_operation(tmp / "d", "OP_001")
    audio = AudioExtractor(load_wav2vec2("tiny-random"), base)
    xray = XrayExtractor(load_densenet("tiny-random"), base)
    T = op.seconds
    calls_per_s = 3 / base.batch_windows  # audio extractor calls per second of operation

    def run(chunk_s: int, interrupt: bool) -> float:
        cfg = dataclasses.replace(base, chunk_s=chunk_s)
        out = tmp / "out"
        shutil.rmtree(out, ignore_errors=True)
        c0 = time.process_time()
        if interrupt:
            k = T // chunk_s // 2 + 1  # a chunk past the middle, cut half-way through its audio
            n = int((k * chunk_s + chunk_s / 2) * calls_per_s)
            try:
                extract_operation(op, out, _StopAfter(audio, n), xray, cfg, {"id": 0}, progress=False)
            except _Stop:
                pass
        extract_operation(op, out, audio, xray, cfg, {"id": 0}, progress=False)
        return time.process_time() - c0

    resumed = f"{chunk} s chunks, interrupted + resumed"
    ways = {
        "whole (one chunk)": (T, False),
        f"chunked {default} s (default)": (default, False),
        f"chunked {chunk} s": (chunk, False),
        resumed: (chunk, True),
    }
    best = {k: float("inf") for k in ways}
    run(chunk, False)  # warm-up
    for _ in range(a.rounds):
        for k, (c, i) in ways.items():
            best[k] = min(best[k], run(c, i))
    w = best["whole (one chunk)"]
    for k, v in best.items():
        print(f"{k:45s} {v:7.2f} s CPU  ({100 * (v / w - 1):+.1f} %)")
    ratio = best[resumed] / w
    print(
        json.dumps(
            {
                "bench": "pocapnet-extract-resume",
                "ratio": round(ratio, 4),
                "target": "< 1.05",
                "met": ratio < 1.05,
                "seconds": T,
                "chunked_default_overhead": round(best[f"chunked {default} s (default)"] / w - 1, 4),
                "chunk_s": chunk,
                "chunked_overhead": round(best[f"chunked {chunk} s"] / w - 1, 4),
            }
        )
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
