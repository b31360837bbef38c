"""Why the streaming fast path is the folded module (run by hand):
``uv run python packages/pocapnet/bench/fold_vs_copy.py [--old-revision d9407f8]``.

Per-second branch + fusion features (``forward_features`` of one second) of the full-size network (random weights),
CPU time, medians of interleaved repetitions:

- ``module``: the ``nn.Module`` in eval mode;
- ``folded``: :func:`pocapnet.model.fold_batchnorm` (a copy of the module with BatchNorm folded; the default);
- ``folded bf16``: the same with the audio branches in bf16;
- ``copy fp32`` / ``copy bf16``: ``FrozenPoCaPNet``, the hand-written second definition of the network removed in
  this round (per-layer GEMMs, batched branches), loaded from ``git show <old-revision>:.../stream.py``.

The JSON ``ratio`` is copy fp32 / folded (> 1: the folded module is faster, the copy does not pay for itself);
target: >= 0.9 (a one-definition path at most 10 % slower than the copy would still be kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import types
from pathlib import Path

import torch
from pocapnet.model import PoCaPNet, fold_batchnorm


def _old_frozen(rev: str):
    root = Path(__file__).resolve().parents[3]
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:packages/pocapnet/src/pocapnet/stream.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    src = src.replace("from pocapnet.features import", "from pocapnet.extractors import")
    mod = types.ModuleType("old_stream")
    exec(compile(src, f"{rev}:stream.py", "exec"), mod.__dict__)  # noqa: S102 - our own history
    return mod.FrozenPoCaPNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-revision", default="d9407f8", help="a revision that still has FrozenPoCaPNet")
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    torch.manual_seed(0)
    m = PoCaPNet().eval()
    img, aud = torch.randn(1, 7, 1024), torch.randn(1, 3, 349, 1024)
    frozen = _old_frozen(a.old_revision)
    folded, folded16 = fold_batchnorm(m), fold_batchnorm(m, audio_dtype=torch.bfloat16)
    copy32, copy16 = frozen(m), frozen(m, bf16=True)
    ways = {
        "module": lambda: m.forward_features(img, aud),
        "folded": lambda: folded.forward_features(img, aud),
        "folded bf16": lambda: folded16.forward_features(img, aud),
        "copy fp32": lambda: copy32.features(img[0], aud[0]),
        "copy bf16": lambda: copy16.features(img[0], aud[0]),
    }
    times = {k: [] for k in ways}
    with torch.no_grad():
        ref = m.forward_features(img, aud)[0]
        err = {k: float((f().reshape(-1) - ref).abs().max()) for k, f in ways.items()}
        for _ in range(3):
            for f in ways.values():
                f()
        for _ in range(a.reps):
            for k, f in ways.items():
                c0 = time.process_time()
                f()
                times[k].append(time.process_time() - c0)
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    for k in ways:
        print(f"{k:14s} {med[k]:7.2f} ms CPU   max |diff| to the module {err[k]:.2e}")
    ratio = med["copy fp32"] / med["folded"]
    print(
        json.dumps(
            {
                "bench": "pocapnet-fold-vs-copy",
                "ratio": round(ratio, 3),
                "target": ">= 0.9",
                "met": ratio >= 0.9,
                "ms": {k: round(v, 2) for k, v in med.items()},
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
