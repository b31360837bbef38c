"""scripts/gpu_check.sh: the one-command GPU check, run here in its --cpu mode (gloo DDP, tiny sizes, one thread)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHON": sys.executable})
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_says_to_use_cpu():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2 and "run with --cpu" in r.stderr


@pytest.mark.slow
def test_cpu_mode_passes_every_step(tmp_path):
    """Every step of ``gpu_check.sh --cpu`` prints PASS or SKIP (the CUDA-only ones, with their reason), the summary
    table lists them all, and the exit status is 0."""
    r = subprocess.run(
        ["bash", str(SCRIPT), "--cpu", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1500,
    )
    out = r.stdout
    lines = [x for x in out.splitlines() if re.match(r"^(PASS|FAIL|SKIP)  ", x)]
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    assert lines and all(x.startswith(("PASS", "SKIP")) for x in lines), "\n".join(lines)
    for must in (
        "pocapnet train again (resume)",
        "kfgnet train-classifier again (resume)",
        "deepacc train DDP (gloo, 1 process)",
        "lungcvt features torch",
        "alges embeddings",
        "kfgnet-detector tiny step bf16",
    ):
        assert any(must in x and x.startswith("PASS") for x in lines), must
    skips = [x for x in lines if x.startswith("SKIP")]
    assert skips and all("TF32" in x or "pinned" in x for x in skips), skips  # only the CUDA-only meanings
    table = out[out.index("gpu_check summary") :]
    assert re.search(r"\d+ PASS, 0 FAIL, \d+ SKIP", table) and table.count("\n| ") == len(lines) + 1
