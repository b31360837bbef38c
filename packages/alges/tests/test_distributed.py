"""Past one process: a round's training under DDP (2 CPU ranks with gloo) against the documented single-process
equivalent, `alges simulate` sharded over ranks == unsharded, `alges train` resuming under DDP, and the ImageNet
encoder downloaded through torch.hub's cache from a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from alges.cli import main
from alges.config import IGNORE_INDEX, config_from_dict, create_config
from alges.data import cholec_split, scan_cholecseg8k
from alges.model import build_model
from alges.study import run_simulation
from alges.train import make_optimizer, train_model
from medshared.distributed import run_local
from medshared.testing import serve_files

CPU = torch.device("cpu")


def _data(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size)).astype(np.uint8)
    masks = rng.integers(0, 3, (n, size, size)).astype(np.uint8)
    masks[:, :2] = IGNORE_INDEX  # ignored pixels: the global valid count matters
    masks[0, :10] = IGNORE_INDEX
    return images, masks


def _cfg():
    return create_config("alges_tiny", num_classes=3, epochs=2, batch_size=6, train_steps=0)


def _ddp_worker(ctx, cfg_dict, images, masks):
    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    model = build_model(cfg)
    train_model(model, images, masks, cfg, CPU, seed=3, ctx=ctx)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _ghost_batch_reference(cfg, images, masks, world):
    """One process doing what W ranks do on CPU: each rank's part of a batch normalised with its own BatchNorm
    statistics (ghost batches), loss = sum over the whole batch / its valid pixel count, one Adam step."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = make_optimizer(model, cfg)
    m = len(images)
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([3, epoch]).permutation(m)
        for s in range(0, m, cfg.batch_size):
            idx = np.sort(order[s : s + cfg.batch_size])
            n_valid = float((masks[idx] != IGNORE_INDEX).sum())
            opt.zero_grad()
            for r in range(world):
                part = idx[r::world]
                x = torch.from_numpy(images[part]).float()
                y = torch.from_numpy(masks[part]).long()
                loss = F.cross_entropy(model(x).logits, y, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid
                loss.backward()
            opt.step()
    return dict(model.named_parameters())


def test_ddp_round_training_matches_its_single_process_equivalent():
    cfg = _cfg()
    images, masks = _data()
    ranks = run_local(_ddp_worker, 2, cfg.to_dict(), images, masks)
    for k in ranks[0]:
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)  # DDP keeps the ranks identical
    ref = _ghost_batch_reference(cfg, images, masks, 2)
    for k, v in ref.items():  # 4 Adam steps; float sums in another order
        torch.testing.assert_close(ranks[0][k], v.detach(), rtol=1e-4, atol=1e-5, msg=k)
    # the documented difference: one process with the full batch normalises with the whole batch's statistics
    torch.manual_seed(0)
    single = build_model(cfg)
    train_model(single, images, masks, cfg, CPU, seed=3)
    diff = max((ranks[0][k] - v).abs().max().item() for k, v in single.named_parameters())
    assert diff > 1e-4


def _no_collectives(ctx):
    """Leave the process group and make every collective raise: the ranked simulation must not use one."""
    import torch.distributed as dist

    ctx.close()

    def refuse(*a, **kw):
        raise AssertionError("a collective was called")

    for name in ("all_gather_object", "all_reduce", "barrier", "broadcast_object_list", "init_process_group"):
        setattr(dist, name, refuse)


def _sim_worker(ctx, root, out, cfg_dict, strategies, late_rank=None, late_s=0.0, fail_rank=None, die_rank=None):
    import os
    import time

    import alges.active

    _no_collectives(ctx)
    idx = scan_cholecseg8k(root)
    split = cholec_split(idx, {"train": ["video01", "video02"], "test": ["video03"]}, max_test_frames=4)
    cfg = config_from_dict(cfg_dict)
    orig = alges.active.run_strategy
    slept = []

    def patched(*a, **kw):
        if ctx.rank == fail_rank:
            raise ValueError("disk full (a test failure)")
        if ctx.rank == die_rank:
            os._exit(3)  # killed: no status update, no exception
        st = orig(*a, **kw)
        if ctx.rank == late_rank and not slept:
            time.sleep(late_s)  # this rank finishes long after the others
            slept.append(1)
        return st

    alges.active.run_strategy = patched
    try:
        res = run_simulation(
            idx, split, cfg, strategies, CPU, out, full=True, ranked=True, shard=(ctx.rank, ctx.world_size),
            progress=False,
        )  # fmt: skip
    except (RuntimeError, ValueError) as e:
        (Path(out) / f"rank{ctx.rank}_error.txt").write_text(str(e))
        return f"error: {e}"
    return res.get("rounds")


def test_simulate_sharded_over_ranks_equals_unsharded(syn_root, tmp_path, simulate_argv):
    cfg = create_config("alges_tiny", seeds=(0, 1), n_rounds=2)
    idx = scan_cholecseg8k(syn_root)
    split = cholec_split(idx, {"train": ["video01", "video02"], "test": ["video03"]}, max_test_frames=4)
    one = run_simulation(
        idx, split, cfg, ["random", "alges-img", "entropy"], CPU, tmp_path / "one", full=True, progress=False
    )
    # no process group, no collective: rank 1 finishes its share 6 s after its work (the heartbeat every 0.2 s, a
    # rank counted dead after 3 s without one: rank 0 keeps waiting for a late rank that is alive). 6 s, not 4 s:
    # rank 0's own share can run up to 3 s longer than rank 1's on a loaded machine and the gap still passes 3 s.
    mp = pytest.MonkeyPatch()
    mp.setenv("ALGES_RANK_HEARTBEAT_S", "0.2")
    mp.setenv("ALGES_RANK_STALE_S", "3")
    try:
        strategies = ["random", "alges-img", "entropy"]
        ranks = run_local(_sim_worker, 2, str(syn_root), str(tmp_path / "two"), cfg.to_dict(), strategies, 1, 6.0)
    finally:
        mp.undo()
    assert ranks[1] is None  # rank 1 only ran its share
    status = {r: json.loads((tmp_path / "two" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert status[0]["status"] == status[1]["status"] == "done"
    # rank 1 finished more than the 3 s "dead" limit after rank 0's share: rank 0 kept waiting (heartbeats came)
    assert status[1]["heartbeat"] - status[0]["heartbeat"] > 3
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    key = ("strategy", "seed", "round", "n_labeled", "selected", "dice_macro", "hd95")
    assert [tuple(r.get(k) for k in key) for r in two["rounds"]] == [
        tuple(r.get(k) for k in key) for r in one["rounds"]
    ]
    assert [f["dice_macro"] for f in two["full"]] == [f["dice_macro"] for f in one["full"]]
    states = sorted(p.name for p in (tmp_path / "two" / "state").glob("*.json"))
    assert len(states) == 6 + 2  # one file per (strategy, seed) run and per Full seed
    # --shard i/n by hand: each shard writes its states, the plain rerun writes the report without recomputing
    out3 = tmp_path / "three"
    argv = simulate_argv(syn_root, out3, "random,alges-img", "0,1")
    assert main([*argv, "--shard", "0/2"]) == 0 and main([*argv, "--shard", "1/2"]) == 0
    assert not (out3 / "results.json").exists() and len(list((out3 / "state").glob("*.json"))) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in (out3 / "state").glob("*.json")}
    assert main(argv) == 0 and (out3 / "results.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing was recomputed


@pytest.mark.parametrize("how", ["fails", "dies"])
def test_rank_0_names_a_rank_that_failed_or_died(syn_root, tmp_path, monkeypatch, how):
    monkeypatch.setenv("ALGES_RANK_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("ALGES_RANK_STALE_S", "2")
    cfg = create_config("alges_tiny", seeds=(0, 1), n_rounds=1, epochs=1)
    args = (str(syn_root), str(tmp_path / how), cfg.to_dict(), ["random"], None, 0.0)
    if how == "fails":
        msg, own = run_local(_sim_worker, 2, *args, 1, None)
        assert own == "error: disk full (a test failure)"
        assert msg.startswith("error: rank 1 of 2 failed") and "disk full (a test failure)" in msg
        assert "rerun the same command" in msg
    else:
        with pytest.raises(RuntimeError) as e:  # run_local reports rank 1's exit; rank 0 gave up by itself
            run_local(_sim_worker, 2, *args, None, 1)
        assert "rank 1: exit code 3" in str(e.value)
        rank0 = json.loads((tmp_path / how / "ranks" / "rank0.json").read_text())
        assert rank0["status"] == "done"  # rank 0's own share finished; then it stopped waiting by itself:
        err = (tmp_path / how / "rank0_error.txt").read_text()
        assert err.startswith("rank 1 of 2 stopped: no heartbeat") and "killed or out of memory?" in err
        st1 = json.loads((tmp_path / how / "ranks" / "rank1.json").read_text())
        assert st1["status"] == "running"  # killed without a word: only the heartbeat tells


def test_waiting_rank_0_stops_on_a_silent_rank(tmp_path, monkeypatch):
    import time

    from alges.ranks import RankStatus, launch_id, wait_for_ranks

    monkeypatch.setenv("ALGES_RANK_STALE_S", "0.5")
    t0 = time.time()
    (tmp_path / "ranks").mkdir()
    rec = {"launch": launch_id(), "started": t0, "heartbeat": t0 - 5, "status": "running", "host": "h", "pid": 7}
    (tmp_path / "ranks" / "rank1.json").write_text(json.dumps(rec))
    with pytest.raises(RuntimeError, match=r"rank 1 of 3 stopped: no heartbeat .* pid 7"):
        wait_for_ranks(tmp_path, 3, since=t0, poll_s=0.05, progress=False)
    old = {**rec, "status": "failed", "started": t0 - 3600, "error": "old"}  # an earlier launch's file: ignored
    (tmp_path / "ranks" / "rank1.json").write_text(json.dumps(old))
    with pytest.raises(RuntimeError, match="rank 1 of 2 never reported"):
        wait_for_ranks(tmp_path, 2, since=t0, poll_s=0.05, progress=False)
    with RankStatus(tmp_path, 1, 2):
        pass
    wait_for_ranks(tmp_path, 2, since=t0, poll_s=0.05, progress=False)  # done: returns


def _train_cli_worker(ctx, argv):
    return main(argv)


def test_train_under_ddp_resumes(syn_root, tmp_path):
    from medshared.checkpoint import load_checkpoint

    lst = tmp_path / "l.txt"
    lst.write_text("\n".join(scan_cholecseg8k(syn_root).ids[:8]) + "\n")

    def argv(out, epochs, *extra):
        return [
            "train",
            "--data",
            str(syn_root),
            "--labeled",
            str(lst),
            "--out",
            str(tmp_path / out),
            "--preset",
            "alges_tiny",
            "--device",
            "cpu",
            "--epochs",
            str(epochs),
            *extra,
        ]

    assert run_local(_train_cli_worker, 2, argv("straight", 2)) == [0, 0]
    assert run_local(_train_cli_worker, 2, argv("resumed", 1)) == [0, 0]
    log = json.loads((tmp_path / "resumed" / "train.json").read_text())
    assert log["world_size"] == 2 and log["effective_batch"] == 8 and log["per_rank_batch"] == 4
    assert "split over the ranks" in log["lr_rule"] and "no SyncBatchNorm on CPU" in log["batchnorm"]
    assert run_local(_train_cli_worker, 2, argv("resumed", 2, "--resume")) == [0, 0]
    log2 = json.loads((tmp_path / "resumed" / "train.json").read_text())
    assert log2["start_epoch"] == 1 and len(log2["losses"]) == 2
    a, _, _ = load_checkpoint(tmp_path / "straight" / "model.safetensors")
    b, _, _ = load_checkpoint(tmp_path / "resumed" / "model.safetensors")
    for k in a:  # interrupted after epoch 1 and resumed under DDP == uninterrupted
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert main([*argv("resumed", 2, "--resume")[:-1], "--seed", "5", "--resume"]) == 1  # another seed: refused


def test_encoder_weights_download_through_torch_hub_cache(tmp_path, monkeypatch):
    sd = torchvision.models.resnet18().state_dict()
    raw = tmp_path / "r18.pth"
    torch.save(sd, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    srv = tmp_path / "srv"
    srv.mkdir()
    name = f"resnet18-{digest[:8]}.pth"
    (srv / name).write_bytes(raw.read_bytes())
    (srv / f"resnet18-{'0' * 8}.pth").write_bytes(raw.read_bytes())  # a file that does not match its hash
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ALGES_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MEDREPRO_OFFLINE", raising=False)
    cfg = create_config("alges_tiny", encoder_weights="imagenet")
    with serve_files(srv) as url:
        monkeypatch.setenv("ALGES_RESNET18_URL", f"{url}/{name}")
        m = build_model(cfg)
        torch.testing.assert_close(m.net.encoder.conv1.weight, sd["conv1.weight"])
        assert (tmp_path / "torch" / "hub" / "checkpoints" / name).is_file()
        build_model(cfg)  # second call: from the cache
        assert url.requests == [f"/{name}"]
        monkeypatch.setenv("ALGES_RESNET18_URL", f"{url}/resnet18-{'0' * 8}.pth")
        with pytest.raises(ValueError, match="does not match its sha256"):
            build_model(cfg)
        assert not list((tmp_path / "torch" / "hub" / "checkpoints").glob("resnet18-0000*"))  # nothing partial left
    monkeypatch.setenv("ALGES_RESNET18_URL", f"http://127.0.0.1:9/resnet18-{'1' * 8}.pth")
    monkeypatch.setenv("MEDREPRO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"resnet18-11111111.pth.*offline.*127.0.0.1:9.*--encoder-weights none"):
        build_model(cfg)
