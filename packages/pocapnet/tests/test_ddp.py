"""torchrun / DDP (gloo on CPU): 2 processes x 1 chunk per step take the same steps as 1 process x 2 chunks per
step; BatchNorm statistics are per chunk by design, so the running statistics follow rank 0's chunks (the documented
difference); fit() under DDP writes train.json and resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from medshared.distributed import DistContext, run_local
from pocapnet.features import load_feature_operation
from pocapnet.losses import build_criterion, class_counts
from pocapnet.model import DelayedMemory, PoCaPNet
from pocapnet.train import fit, make_streams, model_config_for_features, train_step

STEPS = 3
TRAIN = ["OP_001", "OP_002", "OP_003", "OP_004"]


def _setup(feats, tiny_cfg):
    ops = [load_feature_operation(feats, o) for o in TRAIN]
    cfg = model_config_for_features(tiny_cfg, ops[0])
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, dropout=0.0), train=dataclasses.replace(cfg.train, batch_size=8)
    )
    return ops, cfg


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _load(item, cfg):
    fop, a, b = item
    return (fop, a, b, *fop.chunk(a, b, cfg.model.num_images))


def _ddp_steps(ctx, feats, tiny_cfg):
    from medshared.distributed import unwrap_model, wrap_model

    ops, cfg = _setup(feats, tiny_cfg)
    torch.manual_seed(0)
    net = PoCaPNet(cfg.model)
    model = wrap_model(net, ctx)
    crit = build_criterion(cfg.train, class_counts([f.labels for f in ops]), cfg.model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    streams = make_streams(ops, 2, 8)
    mem = [DelayedMemory(cfg.model.hidden_dim)]
    model.train()
    for s in range(STEPS):
        opt.zero_grad()
        train_step(model, [_load(streams[ctx.rank][s], cfg)], mem, crit, 2, torch.device("cpu"))
        opt.step()
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


def _one_process(feats, tiny_cfg, rank0_bn_only: bool):
    """One process, two streams per step (the loss averaged over them); with ``rank0_bn_only`` each step's
    BatchNorm update comes from stream 0's chunk only (what DDP keeps)."""
    ops, cfg = _setup(feats, tiny_cfg)
    torch.manual_seed(0)
    model = PoCaPNet(cfg.model)
    crit = build_criterion(cfg.train, class_counts([f.labels for f in ops]), cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    streams = make_streams(ops, 2, 8)
    mems = [DelayedMemory(cfg.model.hidden_dim) for _ in range(2)]
    model.train()
    for s in range(STEPS):
        chunks = [_load(streams[j][s], cfg) for j in range(2)]
        before = _bn_buffers(model)
        opt.zero_grad()
        train_step(model, chunks, mems, crit, 2, torch.device("cpu"))
        if rank0_bn_only:
            model.load_state_dict({**model.state_dict(), **before})
            with torch.no_grad():  # same weights, same chunk -> the same batch statistics as in the step
                _, a, b, img, aud = chunks[0]
                model(img, aud, torch.arange(a, b), None)
        opt.step()
    return model.state_dict()


def test_two_ranks_equal_one_process_with_two_streams(syn_feats, tiny_cfg):
    ddp = run_local(_ddp_steps, 2, syn_feats, tiny_cfg)
    ref = _one_process(syn_feats, tiny_cfg, rank0_bn_only=False)
    for r in (0, 1):
        for k, v in ref.items():
            if "running" not in k and "num_batches" not in k:  # the weights: equal within float rounding
                torch.testing.assert_close(ddp[r][k], v, rtol=1e-4, atol=2e-5, msg=f"rank {r} {k}")
    # documented difference: BatchNorm statistics are per chunk (no SyncBatchNorm), and DDP broadcasts rank 0's
    # running statistics at every forward, so they follow rank 0's chunks instead of every chunk
    rank0 = _one_process(syn_feats, tiny_cfg, rank0_bn_only=True)
    keys = [k for k in ref if k.endswith("running_mean") or k.endswith("running_var")]
    assert keys and not all(torch.allclose(ddp[0][k], ref[k], atol=1e-6) for k in keys)
    for k in keys:
        torch.testing.assert_close(ddp[0][k], rank0[k], rtol=1e-4, atol=1e-6, msg=k)


def _fit(ctx, feats, out, tiny_cfg, epochs):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_epochs=epochs, batch_size=16))
    split = {"train": TRAIN[:2] + TRAIN[3:], "val": ["OP_003"], "test": []}
    res = fit(feats, out, cfg, split, ctx=ctx, progress=False)
    return [h["val_loss"] for h in res["history"]]


def test_fit_under_ddp_writes_train_json_and_resumes(syn_feats, tiny_cfg, tmp_path):
    first = run_local(_fit, 2, syn_feats, tmp_path, tiny_cfg, 1)
    assert first[0] == first[1] and len(first[0]) == 1  # every rank saw the same (gathered) validation
    info = json.loads((tmp_path / "train.json").read_text())
    assert info["world_size"] == 2 and info["streams"] == 2 and info["effective_batch_seconds"] == 32
    assert info["lr_rule"] == "none" and info["lr"] == tiny_cfg.train.lr and info["sync_batchnorm"] is False
    second = run_local(_fit, 2, syn_feats, tmp_path, tiny_cfg, 2)
    assert second[0][:1] == first[0] and len(second[0]) == 2  # resumed at epoch 1, epoch 0 kept
    acc = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, accumulate=4))
    with pytest.raises(ValueError, match="3 training operations for 4 streams.*every stream needs"):
        _fit(DistContext(), syn_feats, tmp_path / "x", acc, 1)
