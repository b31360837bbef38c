"""scripts/gpu_check.sh: the one-command GPU check, run here in its --cpu mode (gloo DDP, tiny sizes, one thread)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_flag_the_check_passes_exists(tmp_path):
    """Cheap guard against drift: each package command gpu_check runs exists, with every flag it passes (the slow
    test below runs them)."""
    gc = _load_gpu_check()
    seen = 0
    for dev in ("cpu", "cuda"):
        for chain in gc.build_steps(tmp_path, dev):
            for step in chain:
                argv = step.argv
                if "-m" not in argv:
                    continue
                pkg, cmd, *rest = argv[argv.index("-m") + 1 :]
                parser = importlib.import_module(f"{pkg}.cli").build_parser()
                sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
                assert cmd in sub, f"{step.name}: `{pkg} {cmd}` is not a command"
                options = {o for a in sub[cmd]._actions for o in a.option_strings}
                for flag in (x for x in rest if x.startswith("--")):
                    seen += 1
                    assert flag in options, f"{step.name}: `{pkg} {cmd} {flag}` is not an option"
    assert seen > 50


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
