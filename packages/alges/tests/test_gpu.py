"""CUDA paths (``@pytest.mark.gpu``: skipped by the root conftest without CUDA; not run in this project's sessions,
which had no GPU): closed-form embeddings on CUDA agree with the CPU's in fp32 (TF32 off), and a tiny train +
query on CUDA with ``--precision auto``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from alges.cli import main
from alges.config import create_config
from alges.inference import infer
from alges.model import build_model
from alges.precision import resolve_alges_precision

pytestmark = pytest.mark.gpu


def test_embeddings_on_cuda_match_the_cpu():
    cfg = create_config("alges_tiny", num_classes=5)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
    out = {}
    for dev in ("cpu", "cuda"):
        prec = resolve_alges_precision("auto", torch.device(dev)).select  # fp32; on CUDA with TF32 off
        assert prec.name == "fp32"
        res = infer(model, images, cfg, torch.device(dev), ("alges-img", "alges-sem", "entropy"), precision=prec)
        out[dev] = res.values
    for k in out["cpu"]:
        np.testing.assert_allclose(out["cuda"][k], out["cpu"][k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_tiny_train_and_query_on_cuda(syn_root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MEDREPRO_PRECISION")  # auto as a user gets it: bf16 training where the GPU has it
    run = tmp_path / "run"
    base = ["--preset", "alges_tiny", "--device", "cuda", "--workers", "2"]
    assert main(["train", "--data", str(syn_root), "--out", str(run), "--epochs", "2", *base]) == 0
    log = json.loads((run / "train.json").read_text())
    want = "bf16" if torch.cuda.is_bf16_supported() else "tf32"
    assert log["precision"]["name"] == want and np.isfinite(log["losses"]).all()
    assert main(["train", "--data", str(syn_root), "--out", str(run), "--epochs", "3", "--resume", *base]) == 0
    q = tmp_path / "q.csv"
    args = ["query", "--checkpoint", str(run / "best.safetensors"), "--pool", str(syn_root), "--budget", "3"]
    assert main([*args, "--out", str(q), "--device", "cuda", "--keep-checkpoint-labeled"]) == 0
    assert "precision (selection): fp32" in capsys.readouterr().out
    rows = list(csv.DictReader(q.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and len({r["image"] for r in rows}) == 3
