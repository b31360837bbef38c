"""Benchmark: peak memory of preparing detector training data from N videos, flat in N.

kfgnet decodes each video once and writes only its annotated frames to a frame cache; the training dataset holds
paths and reads one image per item (``kfgnet.detection_data``). The naive way (the package before this change) kept
every decoded video alive, because a frame view holds its whole array. Each measurement runs in a fresh process
(peak RSS, ``VmHWM``), preparing the data and reading every training item once.

    uv run python packages/kfgnet/bench/detector_memory.py [--quick]

Last line: JSON {"bench": "detector_memory", "ratio": naive / kfgnet peak above the imports at the largest N (at
least 1 MB), "target": 2.0, "kfgnet_mb_per_video": the slope, "flat_target_mb_per_video": 5 % of one decoded
video, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FRAMES, SIZE = 48, 192  # 5.3 MB per decoded video


def write_videos(folder: Path, n: int) -> Path:
    """``n`` MJPG videos with a bright box on 8 annotated frames each, and their manifest."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = folder / f"v{i:03d}.avi"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE, SIZE))
        boxes = {}
        for t in range(FRAMES):
            f = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
            if 10 <= t < 18:
                f[50:110, 60:140] = 220
                boxes[str(t)] = [60.0, 50.0, 140.0, 110.0]
            w.write(f)
        w.release()
        rows.append({"video": p.name, "patient_id": f"p{i}", "label": "benign", "key_frame": 14, "boxes": boxes})
    man = folder / "manifest.json"
    man.write_text(json.dumps({"videos": rows}))
    return man


CHILD = r"""
import sys, json
from pathlib import Path
import numpy as np
from kfgnet.data import read_manifest, read_video
recs = read_manifest(sys.argv[1])
mode, cache = sys.argv[2], Path(sys.argv[3])
if mode == "base":  # imports and the manifest only: what every mode pays before any frame
    import kfgnet.detection_data  # noqa: F401
    import torch  # noqa: F401
    n = 0
elif mode == "kfgnet":
    from kfgnet.detection_data import DetectionDataset, extract_annotated_frames
    ds = DetectionDataset(extract_annotated_frames(recs, cache, max_per_video=8))
    n = sum(int(ds[i][0].shape[0]) for i in range(len(ds)))
else:  # naive: annotated frames as views of the decoded video (each video stays alive)
    samples = []
    for r in recs:
        frames = read_video(r.path)
        samples += [(frames[k], np.asarray([b], np.float32)) for k, b in r.boxes.items()]
    n = len(samples)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"peak_mb": hwm / 1024, "items": n}))
"""


def peak_mb(manifest: Path, mode: str, cache: Path) -> float:
    out = (
        subprocess.run(
            [sys.executable, "-c", CHILD, str(manifest), mode, str(cache)], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return float(json.loads(out)["peak_mb"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    counts = (4, 16, 32) if a.quick else (4, 16, 64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kfgnet-mem-") as tmp:
        base = None
        for n in counts:
            man = write_videos(Path(tmp) / f"n{n}", n)
            base = base or peak_mb(man, "base", Path(tmp) / "none")
            ours = peak_mb(man, "kfgnet", Path(tmp) / f"cache{n}")
            naive = peak_mb(man, "naive", Path(tmp) / f"cache{n}")
            rows.append((n, ours - base, naive - base))
    video_mb = FRAMES * SIZE * SIZE * 3 / 2**20
    print(
        f"peak RSS above imports (MB; imports {base:.0f} MB) preparing detector data, {FRAMES} frames of "
        f"{SIZE} x {SIZE} per video ({video_mb:.1f} MB decoded), 8 annotated frames each"
    )
    print(f"{'videos':>7}{'kfgnet':>10}{'naive':>10}")
    for n, ours, naive in rows:
        print(f"{n:>7}{ours:>10.1f}{naive:>10.1f}")
    slope = (rows[-1][1] - rows[0][1]) / (counts[-1] - counts[0])
    naive_slope = (rows[-1][2] - rows[0][2]) / (counts[-1] - counts[0])
    print(f"growth per video: kfgnet {slope:.3f} MB, naive {naive_slope:.2f} MB")
    print(
        json.dumps(
            {
                "bench": "detector_memory",
                "ratio": round(rows[-1][2] / max(rows[-1][1], 1.0), 2),
                "target": 2.0,
                "kfgnet_mb_per_video": round(slope, 4),
                "naive_mb_per_video": round(naive_slope, 3),
                "flat_target_mb_per_video": round(0.05 * video_mb, 3),
                "videos": list(counts),
                "kfgnet_above_imports_mb": [round(r[1], 1) for r in rows],
                "naive_above_imports_mb": [round(r[2], 1) for r in rows],
                "imports_mb": round(base, 1),
                "video_mb": round(video_mb, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
