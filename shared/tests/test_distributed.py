"""medshared.distributed: contexts, sharding, collectives and DDP equivalence on CPU (gloo, forked ranks)."""

from __future__ import annotations

import pytest
import torch
from medshared import distributed as D


def test_disabled_context_without_torchrun(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    ctx = D.init_distributed("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1 and ctx.device.type == "cpu"
    m = torch.nn.Linear(2, 2)
    assert D.wrap_model(m, ctx) is m and D.unwrap_model(m) is m
    assert D.make_sampler(list(range(5)), ctx) is None
    assert D.all_reduce_mean(3.0, ctx) == 3.0 and D.all_gather_object("x", ctx) == ["x"]
    assert D.resolve_shard(None) == (0, 1)


def test_world_size_one_under_torchrun_is_not_distributed(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = D.init_distributed("cpu")
    assert not ctx.enabled and ctx.world_size == 1
    assert D.resolve_shard(None) == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert D.resolve_shard(None) == (2, 3)
    assert D.resolve_shard("1/4") == (1, 4)  # the flag wins over the environment


def test_parse_and_shard_items():
    assert D.parse_shard("0/3") == (0, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            D.parse_shard(bad)
    items = [f"op{i:02d}" for i in range(11)]
    shuffled = items[::-1]
    parts = [D.shard_items(shuffled, i, 3) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items  # every item exactly once
    assert [len(p) for p in parts] == [4, 4, 3]
    assert D.shard_items(items, 1, 3) == parts[1]  # independent of the caller's order


def test_lr_rules_and_effective_batch():
    ctx = D.DistContext(rank=1, world_size=4, enabled=True)
    assert D.effective_batch(8, ctx, accumulation=2) == 64
    assert D.scale_lr(0.1, 16, 64, "linear") == pytest.approx(0.4)
    assert D.scale_lr(0.1, 16, 64, "sqrt") == pytest.approx(0.2)
    assert D.scale_lr(0.1, 16, 64, "none") == 0.1
    with pytest.raises(ValueError, match="unknown lr scaling"):
        D.scale_lr(0.1, 16, 64, "cubic")
    assert D.rank_seed(7, ctx) == 8
    calls = []
    assert D.main_only(ctx)(calls.append)(1) is None and calls == []


def _collectives(ctx, base):
    t = torch.tensor([float(ctx.rank + base)])
    return {
        "rank": ctx.rank,
        "enabled": ctx.enabled,
        "sum": D.all_reduce_sum(t, ctx).item(),
        "mean": D.all_reduce_mean(float(ctx.rank), ctx),
        "gather": D.all_gather_object(ctx.rank * 10, ctx),
        "bcast": D.broadcast_object(f"from {ctx.rank}", ctx),
    }


def test_run_local_collectives():
    out = D.run_local(_collectives, 2, 1.0, timeout_s=120)
    assert [o["rank"] for o in out] == [0, 1] and all(o["enabled"] for o in out)
    assert all(o["sum"] == 3.0 and o["mean"] == 0.5 and o["gather"] == [0, 10] for o in out)
    assert all(o["bcast"] == "from 0" for o in out)


def _fails(ctx):
    if ctx.rank == 1:
        raise ValueError("rank one is broken")
    return ctx.rank


def test_run_local_reports_failures():
    with pytest.raises(RuntimeError, match="rank one is broken"):
        D.run_local(_fails, 2, timeout_s=120)


def _train(ctx, x, y, steps):
    """K SGD steps of a small MLP on this rank's share of (x, y); returns the final weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = D.wrap_model(model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    n = len(x) // ctx.world_size
    xs, ys = x[ctx.rank * n : (ctx.rank + 1) * n], y[ctx.rank * n : (ctx.rank + 1) * n]
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()  # DDP averages the gradients over ranks
        opt.step()
    return {k: v.detach().clone() for k, v in D.unwrap_model(model).state_dict().items()}


def test_ddp_two_ranks_half_batch_equal_one_rank_full_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    single = _train(D.DistContext(), x, y, 5)
    two = D.run_local(_train, 2, x, y, 5, timeout_s=120)
    for k in single:
        torch.testing.assert_close(two[0][k], single[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(two[1][k], two[0][k], rtol=0, atol=0)  # ranks stay identical
    # and the run really moved the weights (the comparison is not between two untouched models)
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).state_dict()
    assert (single["0.weight"] - init["0.weight"]).abs().max() > 1e-3


def test_sync_batchnorm_refused_on_cpu():
    ctx = D.DistContext(rank=0, world_size=2, device=torch.device("cpu"), enabled=True)
    with pytest.raises(ValueError, match="SyncBatchNorm needs CUDA"):
        D.wrap_model(torch.nn.BatchNorm1d(3), ctx, sync_batchnorm=True)


# --------------------------------------------------------------------------------------------------------------------
# MEDREPRO_FORCE_DDP, timeout, device_id
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def plain_launch(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MEDREPRO_DIST_TIMEOUT_MIN"):
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_force_ddp_one_process_gloo_group_trains_a_step(plain_launch):
    import torch.distributed as dist

    plain_launch.setenv("MEDREPRO_FORCE_DDP", "1")
    plain_launch.setenv("MEDREPRO_DIST_TIMEOUT_MIN", "7")
    calls = []
    real = dist.init_process_group
    plain_launch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw) or real(**kw))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
    ctx = D.init_distributed("cpu")
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1 and dist.get_backend() == "gloo"
        assert (ctx.enabled, ctx.world_size, ctx.rank, ctx.backend) == (True, 1, 0, "gloo")
        (kw,) = calls
        assert kw["timeout"].total_seconds() == 7 * 60 and "device_id" not in kw
        assert kw["init_method"].startswith("tcp://127.0.0.1:")
        ddp = _train(ctx, x, y, 1)  # wrap_model gives a real DDP module: one SGD step through it
        model = D.wrap_model(torch.nn.Linear(2, 2), ctx)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
        assert D.all_reduce_sum(2.5, ctx) == 2.5 and D.make_sampler(list(range(4)), ctx) is not None
    finally:
        ctx.close()
    assert not dist.is_initialized()  # the group is cleaned up
    plain = _train(D.DistContext(), x, y, 1)
    for k in plain:
        torch.testing.assert_close(ddp[k], plain[k], rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).state_dict()
    assert (ddp["0.weight"] - init["0.weight"]).abs().max() > 1e-4  # the step moved the weights


def test_force_ddp_values_and_timeout_errors(plain_launch):
    plain_launch.setenv("MEDREPRO_FORCE_DDP", "0")
    assert not D.force_ddp() and not D.init_distributed("cpu").enabled
    plain_launch.setenv("MEDREPRO_FORCE_DDP", "maybe")
    with pytest.raises(ValueError, match="MEDREPRO_FORCE_DDP='maybe'"):
        D.init_distributed("cpu")
    plain_launch.delenv("MEDREPRO_FORCE_DDP")
    assert D.dist_timeout_s() == 180 * 60
    for bad in ("0", "-3", "soon", "inf"):
        plain_launch.setenv("MEDREPRO_DIST_TIMEOUT_MIN", bad)
        with pytest.raises(ValueError, match="MEDREPRO_DIST_TIMEOUT_MIN"):
            D.dist_timeout_s()
    plain_launch.setenv("MEDREPRO_DIST_TIMEOUT_MIN", "2.5")
    assert D.dist_timeout_s() == 150.0


def _fake_cuda(monkeypatch, n_gpus: int) -> list[dict]:
    """CUDA present as far as init_distributed can tell; init_process_group records its arguments."""
    import torch.distributed as dist

    calls: list[dict] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    return calls


def test_cuda_group_gets_device_id_nccl_and_long_timeout(plain_launch):
    calls = _fake_cuda(plain_launch, 4)
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}.items():
        plain_launch.setenv(k, v)
    ctx = D.init_distributed("cuda")
    (kw,) = calls
    assert kw["backend"] == "nccl" and kw["device_id"] == torch.device("cuda", 2) and ctx.device == kw["device_id"]
    assert kw["timeout"].total_seconds() == 180 * 60 and "init_method" not in kw  # torchrun's env:// rendezvous
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled) == (3, 4, 2, True)


def test_forced_cuda_group_at_world_size_one(plain_launch):
    calls = _fake_cuda(plain_launch, 2)
    plain_launch.setenv("MEDREPRO_FORCE_DDP", "1")
    ctx = D.init_distributed("cuda:1", timeout_s=60)
    (kw,) = calls
    assert (kw["backend"], kw["world_size"], kw["rank"]) == ("nccl", 1, 0)
    assert kw["device_id"] == torch.device("cuda", 1) and kw["timeout"].total_seconds() == 60
    assert ctx.enabled and ctx.world_size == 1 and ctx.device == torch.device("cuda", 1)
