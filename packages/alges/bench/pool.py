"""Pools of any size: peak memory and speed of a query on a synthetic pool on disk, streamed vs load-everything.

Writes N synthetic 64x64 PNG frames (``alges.synthetic.render_video`` scenes), then, each in a fresh subprocess
(so peak RSS is that query's alone), selects 10 images with ALGES-img on a random-init ``alges_demo`` model:

* **streamed** (the package's ``query``): files decoded batch by batch (:class:`alges.pool.FileSource`), embeddings
  in a memory-mapped ``.npy``, chunked k-means++ (:func:`alges.selection.kmeans_pp`);
* **load-everything** (the previous implementation): every image decoded into one array, the unlabelled subset
  copied (``images[unlabeled]``), embeddings concatenated in memory.

Reports peak RSS (``ru_maxrss``) and CPU seconds per 1,000 images for each pool size; the streamed path runs on
every size (default 2,000 / 5,000 / 20,000), the load-everything path on the sizes that still fit (default up to
5,000). Targets: streamed peak RSS flat in pool size (20k / 2k <= 1.15) and < 2 GB. Last line: a JSON summary.

    uv run python packages/alges/bench/pool.py [--sizes 2000,5000,20000] [--load-all-sizes 2000,5000] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from alges.config import create_config
from alges.model import build_model
mode, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = create_config("alges_demo", amp=False)
torch.manual_seed(0)
model = build_model(cfg)
paths = [f"{root}/{i:06d}.png" for i in range(n)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
if mode == "stream":
    from alges.active import select_batch
    from alges.inference import temp_workdir
    from alges.pool import FileSource
    src = FileSource(paths, cfg.image_size)
    with temp_workdir(root + "/x") as wd:
        chosen, _, fails = select_batch("alges-img", model, src, np.arange(n), np.empty(0, np.int64), 10, cfg,
                                        torch.device("cpu"), seed=0, workdir=wd)
else:
    import cv2
    from alges.data import read_image
    from alges.inference import infer
    from alges.selection import kmeans_pp
    images = np.empty((n, 3, cfg.image_size, cfg.image_size), np.uint8)
    for j, p in enumerate(paths):
        images[j] = cv2.resize(read_image(p), (cfg.image_size,) * 2).transpose(2, 0, 1)
    unl = np.arange(n)
    sub = images[unl]  # the old code's copy of the unlabelled subset
    emb = np.asarray(infer(model, sub, cfg, torch.device("cpu"), ("alges-img",)).values["alges-img"])
    chosen = unl[kmeans_pp(emb, 10, seed=0)]
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "n": n, "peak_mib": peak / 1024, "startup_mib": base / 1024, "wall_s": wall,
                  "cpu_s": cpu, "chosen": [int(c) for c in chosen]}))
"""


def write_pool(root: Path, n: int) -> None:
    """n synthetic 64x64 frames (8 scenes x n/8 frames), written once; existing files are kept."""
    import cv2
    from alges.synthetic import render_video

    root.mkdir(parents=True, exist_ok=True)
    if (root / f"{n - 1:06d}.png").is_file():
        return
    per = -(-n // 8)
    k = 0
    for v in range(8):
        frames, _ = render_video(100 + v, min(per, n - k), width=64, height=64)
        for f in frames:
            cv2.imwrite(str(root / f"{k:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            k += 1
        if k >= n:
            break


def run(mode: str, root: Path, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(root), str(n)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} n={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,5000,20000")
    ap.add_argument("--load-all-sizes", default="2000,5000")
    ap.add_argument("--dir", help="where to write the synthetic pool (default: a temporary folder)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_sizes = [int(s) for s in args.load_all_sizes.split(",") if s]
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="alges-pool-")
    root = Path(args.dir or tmp.name)
    t0 = time.perf_counter()
    write_pool(root, max(sizes + load_sizes))
    print(f"pool of {max(sizes + load_sizes)} frames written to {root} in {time.perf_counter() - t0:.0f} s")
    rows = []
    for n in sorted(set(sizes + load_sizes)):
        for mode in ("stream", "load_all"):
            if (mode == "stream" and n in sizes) or (mode == "load_all" and n in load_sizes):
                r = run(mode, root, n)
                rows.append(r)
                print(
                    f"{mode:>9} n={n:>6}: peak RSS {r['peak_mib']:7.0f} MiB (after imports {r['startup_mib']:.0f}), "
                    f"{1000 * r['cpu_s'] / n:6.2f} CPU s / 1000 images ({1000 * r['wall_s'] / n:.2f} wall)"
                )
    st = {r["n"]: r for r in rows if r["mode"] == "stream"}
    la = {r["n"]: r for r in rows if r["mode"] == "load_all"}
    lo, hi = min(st), max(st)
    flat = st[hi]["peak_mib"] / st[lo]["peak_mib"]
    common = max(set(st) & set(la)) if set(st) & set(la) else None
    same = common is not None and st[common]["chosen"] == la[common]["chosen"]
    print(
        f"streamed peak RSS {hi} vs {lo} images: x{flat:.3f} (target <= 1.15); peak {st[hi]['peak_mib']:.0f} MiB "
        "(target < 2048)"
    )
    if common is not None:
        print(
            f"at {common} images: load-everything {la[common]['peak_mib']:.0f} MiB vs streamed "
            f"{st[common]['peak_mib']:.0f} MiB; same picks: {same}"
        )
    ok = flat <= 1.15 and st[hi]["peak_mib"] < 2048 and (common is None or same)
    print(
        json.dumps(
            {
                "bench": "alges_pool_memory",
                "ratio": round(flat, 4),
                "target": "streamed RSS(max n) / RSS(min n) <= 1.15, peak < 2048 MiB, same picks as load-all",
                "met": ok,
                "streamed": {
                    n: {"peak_mib": round(r["peak_mib"]), "cpu_s_per_1000": round(1000 * r["cpu_s"] / n, 2)}
                    for n, r in st.items()
                },
                "load_all": {
                    n: {"peak_mib": round(r["peak_mib"]), "cpu_s_per_1000": round(1000 * r["cpu_s"] / n, 2)}
                    for n, r in la.items()
                },
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
