"""Cost of reading frame timestamps in ``ingest`` (by hand): ``uv run python packages/pocapnet/bench/video_timing.py``.

On a constant-frame-rate screen recording (1280 x 720, 30 fps, H.264 with x264's ``veryfast`` preset, OBS's
default; written with PyAV, a dev dependency), CPU time of ``ingest`` of the X-ray alone (decoding, 1-fps sampling,
PNG frames) and of its demux-only timestamp pass (:func:`pocapnet.screenvideo.video_frame_times`), which is all that
placing frames by their timestamps adds to the previous k / fps reading. Best of ``--rounds``.
Target: the timestamp pass costs < 5 % of ``ingest`` (JSON ``ratio`` = pass / ingest).
"""

from __future__ import annotations

import argparse
import fractions
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from pocapnet.ingest import ingest_operation
from pocapnet.screenvideo import video_frame_times


def _recording(path: Path, seconds: int) -> None:
    import av

    rng = np.random.default_rng(0)
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
    s.options = {"preset": "veryfast"}
    base = np.zeros((720, 1280, 3), np.uint8)
    base[..., 2] = 120
    for t in range(seconds):
        img = base.copy()
        img[100:612, 384:896] = (rng.random((64, 64)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)[..., None]
        for j in range(30):
            img[700:710, :40] = 8 * j  # a ticking clock: every frame differs
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t * 30 + j, fractions.Fraction(1, 30)
            for p in s.encode(f):
                out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        video = tmp / "screen.mp4"
        _recording(video, a.seconds)
        ing, stamp = [], []
        for r in range(a.rounds):
            stamp.append(_cpu(lambda: video_frame_times(video)))
            ing.append(_cpu(lambda r=r: ingest_operation(tmp / "out", f"OP_{r:03d}", [], video)))
        rec = json.loads((tmp / "out" / "OP_000" / "ingest.json").read_text())["xray"]["timing"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.seconds} s at 30 fps, 720p H.264: ingest {min(ing):.3f} s CPU, timestamp pass {min(stamp):.4f} s CPU")
    print(f"timing recorded: {rec['frame_rate']}, {rec['frames']} frames, {rec['first_s']}-{rec['last_s']} s")
    ratio = min(stamp) / min(ing)
    print(
        json.dumps(
            {
                "bench": "pocapnet_video_timing",
                "ratio": round(ratio, 4),
                "target": 0.05,
                "met": ratio < 0.05,
                "ingest_cpu_s": round(min(ing), 3),
                "timestamp_pass_cpu_s": round(min(stamp), 4),
                "seconds": a.seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
