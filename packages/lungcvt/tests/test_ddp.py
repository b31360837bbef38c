"""DDP on CPU (gloo) through ``medshared.distributed.run_local``: the training step of ``lungcvt.train`` on 2 ranks
with half the batch each equals 1 process with the whole batch, and ``train`` itself runs and resumes under 2 ranks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from lungcvt.config import get_config
from lungcvt.dataset import CycleSet
from medshared.distributed import DistContext, run_local

K_STEPS = 3
# float32 reductions in another order (gradient all-reduce, split BatchNorm sums), amplified where Adam divides a
# near-zero gradient by its own magnitude: seen max 3.2e-5 (25 of 1.04 M values above 1e-5), mean ~1e-7, while the
# weights moved by a median 2e-3; without the global BatchNorm statistics or loss normalisation the max is 5e-3-6e-3
TOL_MAX, TOL_MEAN = 1e-4, 1e-6


def _cycles(n: int = 24) -> CycleSet:
    rng = np.random.default_rng(0)
    feats = [(rng.standard_normal((3, 96, int(t))) * 20 - 40).astype(np.float16) for t in rng.integers(20, 60, n)]
    return CycleSet(feats=feats, labels=[int(v) for v in rng.integers(0, 4, n)])


def _k_steps(ctx: DistContext, per_rank_batch: int, mixup: bool = False) -> dict:
    from lungcvt.losses import ClassBalancedCE
    from lungcvt.model import LungCVT
    from lungcvt.train import build_train_loader, train_step
    from medshared.distributed import unwrap_model, wrap_model

    base = get_config("lungcvt_tiny")
    tc = dataclasses.replace(base.train, batch_size=per_rank_batch, shuffle=False, mixup=mixup)
    # dropout draws its masks from each rank's RNG, so it can never match one process: off here
    cfg = dataclasses.replace(base, train=tc, model=dataclasses.replace(base.model, head_dropout=0.0))
    torch.manual_seed(0)
    model = LungCVT(cfg.model)
    cs = _cycles()
    crit = ClassBalancedCE(cs.counts(), tc.cb_beta)
    ddp = wrap_model(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dl, sampler = build_train_loader(cs, cfg, ctx if ctx.enabled else None, torch.Generator().manual_seed(0))
    losses = []
    for _, batch in zip(range(K_STEPS), dl):
        losses.append(float(train_step(ddp, opt, crit, batch, cfg, torch.device("cpu"), ctx)))
    sd = unwrap_model(ddp).state_dict()
    return {"state": {k: v.detach().clone() for k, v in sd.items()}, "losses": losses}


def test_ddp_equivalence_two_ranks_half_batch():
    """2 ranks x batch 4 reach the same weights after 3 Adam steps as 1 process x batch 8 (max 1e-4, mean 1e-6),
    including the spatial gate's BatchNorm running statistics (taken over the global batch). Head dropout is off:
    its masks come from each rank's RNG (the one documented difference)."""
    one = _k_steps(DistContext(), 8)
    two = run_local(_k_steps, 2, 4)
    for r in two:
        diffs = {k: (r["state"][k].float() - v.float()).abs() for k, v in one["state"].items()}
        worst = max(diffs, key=lambda k: float(diffs[k].max()))
        assert float(diffs[worst].max()) < TOL_MAX, (worst, float(diffs[worst].max()))
        assert float(torch.cat([d.flatten() for d in diffs.values()]).mean()) < TOL_MEAN
    assert any("spatial.bn.running_mean" in k for k in one["state"])
    # the weights moved (so equality is not trivial) and the two ranks' losses average to the global loss
    init = _initial_state()
    assert max(float((one["state"][k].float() - init[k].float()).abs().max()) for k in init) > 1e-4
    np.testing.assert_allclose(np.mean([r["losses"] for r in two], axis=0), one["losses"], rtol=1e-5)


def _initial_state() -> dict:
    from lungcvt.model import LungCVT

    torch.manual_seed(0)
    return LungCVT(dataclasses.replace(get_config("lungcvt_tiny").model, head_dropout=0.0)).state_dict()


def _cv_ddp(ctx: DistContext, data_dir: str, out: str) -> list:
    from lungcvt.cv import run_cv

    res = run_cv(_cfg(1), data_dir, out, ["fold0"], [0], data=_data(), device="cpu", progress=False)
    return [r["icbhi_score"] for r in res["runs"]]


def _train_ddp(ctx: DistContext, data_dir: str, out: str, cache: str, epochs: int) -> dict:
    from lungcvt.train import train

    res = train(_cfg(epochs), data_dir, out, data=_data(), device="cpu", cache_dir=cache, progress=False, ctx=ctx)
    return {"epochs": [h["epoch"] for h in res.history], "best": res.best_epoch}


def _cfg(epochs: int):
    cfg = get_config("lungcvt_tiny")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs, batch_size=8))


def _data():
    from lungcvt.splits import DataOptions

    return DataOptions(protocol="fold0", allow_missing_class=True)


def test_cv_and_resume_under_two_ranks(syn_dir, tmp_path):
    """``lungcvt cv`` on 2 ranks (both train, rank 0 evaluates and writes, both get the result), then ``train`` on 2
    ranks resumes that run for a second epoch."""
    out = tmp_path / "cv"
    r = run_local(_cv_ddp, 2, str(syn_dir), str(out))
    assert r[0] == r[1] and len(r[0]) == 1
    assert json.loads((out / "cv.json").read_text())["runs"][0]["icbhi_score"] == r[0][0]
    run = out / "fold0" / "seed0"
    tj = json.loads((run / "train.json").read_text())
    d = tj["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["per_rank_batch"] == 8 and d["effective_batch"] == 16
    assert d["lr_rule"] == "none" and d["lr_used"] == tj["config"]["train"]["lr"]
    st = torch.load(run / "last_state.pt", weights_only=False)
    assert len(st["rng"]) == 2  # every rank's RNG state, for an exact resume
    assert not torch.equal(st["rng"][0]["generator"], st["rng"][1]["generator"])  # seed + rank
    r2 = run_local(_train_ddp, 2, str(syn_dir), str(run), str(out / "feature_cache"), 2)
    assert [x["epochs"] for x in r2] == [[1, 2], [1, 2]]  # epoch 1 read back, epoch 2 trained on both ranks
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp files left
