"""CUDA semantics checked on the CPU: the training and embedding paths run on the ``meta`` device (a stand-in for
CUDA: no data, so any host read such as ``float(t)`` / ``.item()`` raises) under a mode that refuses an op mixing
tensors of two devices (a CPU tensor built beside device tensors crashes on a GPU), and the DDP step runs no
collective of its own (only DDP's gradient all-reduce)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from alges.config import IGNORE_INDEX, config_from_dict, create_config
from alges.embeddings import alges_img, alges_sem
from alges.model import build_model
from alges.strategies import HeadBatch, get_strategy
from alges.train import load_resume_state, make_optimizer, save_resume_state, train_model
from medshared.distributed import run_local
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

META = torch.device("meta")


class _StrictDevices(TorchFunctionMode):
    """Raise when one op gets tensors on two devices (a CPU 0-dim tensor is allowed, as CUDA allows it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        devs = {t.device for t in flat if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.ndim == 0)}
        if len(devs) > 1:
            raise RuntimeError(f"{func} mixes tensors on {sorted(map(str, devs))}")
        return func(*args, **kwargs)


def strict_devices():
    try:  # the shared helper once it lands (CONTRACT: medshared.testing.strict_devices)
        from medshared.testing import strict_devices as shared

        return shared()
    except ImportError:
        return _StrictDevices()


def _data(n=8, size=32, k=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size)).astype(np.uint8)
    masks = rng.integers(0, k, (n, size, size)).astype(np.uint8)
    masks[:, :2] = IGNORE_INDEX
    return images, masks


def test_strict_mode_catches_a_cpu_tensor_beside_a_device_tensor():
    with strict_devices(), pytest.raises(RuntimeError, match="mixes tensors|device"):
        torch.ones(3, device=META) + torch.ones(3)


def test_training_runs_on_a_device_without_host_reads_or_cpu_tensors():
    """The old loop read the loss back every step (``float(loss)``: a host sync per step on a GPU); on ``meta`` that
    raises. Now the loss is summed on the device and read once per epoch. (DEAL's head is left out: its PAM gate
    reads ``gamma`` on the host in every forward, the original's rule, kept.)"""
    cfg = create_config("alges_tiny", num_classes=3, epochs=2, batch_size=4, train_steps=0)
    images, masks = _data()
    model = build_model(cfg)
    with strict_devices():
        hist = train_model(model, images, masks, cfg, META, seed=0)
    assert len(hist) == 2 and all(np.isnan(h) for h in hist)  # meta has no values: the epoch losses are NaN
    assert all(p.device.type == "meta" for p in model.parameters())


def test_closed_forms_and_strategies_stay_on_the_device():
    b, k, d, h = 2, 4, 5, 8
    logits, z = torch.randn(b, k, h, h, device=META), torch.randn(b, d, h, h, device=META)
    cfg = create_config("alges_tiny", num_classes=k)
    with strict_devices():
        for ks in (1, 3):
            assert alges_img(logits, z, kernel_size=ks, include_bias=True).device == META
            assert alges_sem(logits, z, kernel_size=ks, include_bias=True).device == META
        hb = HeadBatch(z=z, logits=logits, kernel_size=1, model=None, cfg=cfg)
        for name in ("entropy", "margin", "least-confidence", "coreset", "badge", "alges-img", "alges-sem"):
            assert get_strategy(name).compute(hb).device == META, name


def test_resume_state_is_read_on_the_cpu(tmp_path):
    """``train_state.pt`` is loaded on the CPU (it was ``map_location=device``): Adam's step counters then stay CPU
    tensors after ``load_state_dict`` whatever device the model is on (on a GPU they would be read back with
    ``.item()`` every step)."""
    cfg = create_config("alges_tiny", num_classes=3, epochs=1, batch_size=4, train_steps=0)
    images, masks = _data()
    model = build_model(cfg)
    opt = make_optimizer(model, cfg)
    train_model(model, images, masks, cfg, torch.device("cpu"), optimizer=opt)
    save_resume_state(tmp_path / "s.pt", 0, opt, model, {"key": 1})
    st = load_resume_state(tmp_path / "s.pt")
    assert all(t.device.type == "cpu" for t in st["model"].values())
    moved = build_model(cfg).to(META)
    opt2 = make_optimizer(moved, cfg)
    with warnings.catch_warnings():  # "copying ... to a meta parameter is a no-op": expected on the stand-in
        warnings.simplefilter("ignore", UserWarning)
        moved.load_state_dict(st["model"])
    opt2.load_state_dict(st["optimizer"])
    states = list(opt2.state.values())
    assert states and all(s["step"].device.type == "cpu" for s in states)  # PyTorch's place for the counter
    assert all(s["exp_avg"].device == META for s in states)  # the moments follow their parameters


def _count_collectives_worker(ctx, cfg_dict, images, masks):
    import torch.distributed as dist

    calls = []
    orig = dist.all_reduce

    def counting(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    dist.all_reduce = counting
    try:
        cfg = config_from_dict(cfg_dict)
        torch.manual_seed(0)
        hist = train_model(build_model(cfg), images, masks, cfg, torch.device("cpu"), seed=3, ctx=ctx)
    finally:
        dist.all_reduce = orig
    return len(calls), hist


def test_ddp_step_runs_no_collective_of_its_own():
    """Per step only DDP's gradient all-reduce (inside the reducer) runs: the valid-pixel count of the global batch
    comes from the host masks, and the logged loss is all-reduced once per epoch (it was two all-reduces, each with
    a host read, per step)."""
    cfg = create_config("alges_tiny", num_classes=3, epochs=2, batch_size=4, train_steps=0)
    images, masks = _data(n=12)
    (c0, h0), (c1, h1) = run_local(_count_collectives_worker, 2, cfg.to_dict(), images, masks)
    assert c0 == c1 == cfg.epochs  # 3 steps per epoch, one all-reduce per epoch
    assert h0 == h1 and all(np.isfinite(h0))
