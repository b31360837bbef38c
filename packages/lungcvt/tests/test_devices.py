"""Device placement: every tensor of the batched features and the training step lives on the requested device.

Without a GPU, ``device="meta"`` stands in for CUDA and ``medshared.testing.strict_devices`` refuses any op that mixes
tensors of two devices (a CPU 0-dim tensor allowed, as CUDA allows it): the old ``features.py`` compared
``torch.arange(device=x.device)`` with a CPU ``torch.tensor(lens)`` (issue 22's crash on the first GPU run) and fails
here. The ``gpu``-marked tests run the same paths on CUDA against the CPU (skipped without CUDA).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from lungcvt.config import get_config
from lungcvt.features import BatchedFeaturizer
from lungcvt.images import batch_to_image
from lungcvt.losses import ClassBalancedCE
from lungcvt.model import LungCVT
from lungcvt.step import train_step
from medshared.testing import strict_devices

TINY = get_config("lungcvt_tiny")


def _cycles(sr, seconds=(1.0, 1.7, 2.4)):
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, int(s * sr)).astype(np.float32) for s in seconds]


@pytest.mark.parametrize("cqt", ["fft", "nnaudio"])
@pytest.mark.parametrize("preset", ["lungcvt_tiny", "lungcvt_icbhi_cpu"])
def test_batched_features_stay_on_the_device(cqt, preset):
    cfg = get_config(preset).features
    fz = BatchedFeaturizer(cfg, "meta", cqt=cqt)
    x, lens = fz.pad(_cycles(cfg.sample_rate))
    assert x.device.type == "meta"
    with strict_devices():
        out = fz.batch(x, lens)
    t_max = 1 + x.shape[1] // cfg.hop_length
    assert out.device.type == "meta" and out.shape[:3] == (3, 3, 96) and out.shape[3] <= t_max


def test_strict_mode_catches_a_cpu_tensor_beside_a_device_tensor():
    with pytest.raises(RuntimeError, match="devices"):
        with strict_devices():
            torch.arange(4, device="meta") < torch.tensor([1, 2, 3])[:, None]  # noqa: B015 - the old features.py line


@pytest.mark.parametrize("method", ["matmul", "loop"])
def test_batch_resize_stays_on_the_device(method):
    cfg = dataclasses.replace(TINY.features, mfcc_norm="coefficient")
    x = torch.zeros(2, 3, 96, 40, device="meta")
    with strict_devices():
        y = batch_to_image(x, [30, 40], cfg, method=method)
    assert y.device.type == "meta" and y.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("mixup", [False, True])
def test_train_step_stays_on_the_device(mixup):
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, mixup=mixup))
    dev = torch.device("meta")
    torch.manual_seed(0)
    model = LungCVT(cfg.model).to(dev)
    crit = ClassBalancedCE([10, 5, 3, 2], cfg.train.cb_beta).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = (torch.zeros(4, 3, 96, 30), torch.tensor([20, 25, 30, 30]), torch.tensor([0, 1, 2, 3]))
    with strict_devices():
        loss = train_step(model, opt, crit, batch, cfg, dev, None, 1e-3, torch.Generator().manual_seed(0))
    assert loss.device.type == "meta"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "nnaudio"])
def test_gpu_features_match_cpu(backend):
    cfg = dataclasses.replace(TINY.features, backend=backend)
    cycles = _cycles(cfg.sample_rate)
    cpu = BatchedFeaturizer(cfg, "cpu", cqt="fft" if backend == "torch" else "nnaudio")(cycles)
    gpu = BatchedFeaturizer(cfg, "cuda", cqt="fft" if backend == "torch" else "nnaudio")(cycles)
    for a, b in zip(cpu, gpu):
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 0.05  # dB (mel, CQT) and MFCC units; TF32 / cuFFT rounding only


@pytest.mark.gpu
@needs_cuda
def test_gpu_train_step_matches_cpu():
    cfg = TINY
    batch = (
        torch.randn(4, 3, 96, 30, generator=torch.Generator().manual_seed(1)),
        torch.tensor([20, 25, 30, 30]),
        torch.tensor([0, 1, 2, 3]),
    )
    losses = []
    for dev in (torch.device("cpu"), torch.device("cuda")):
        torch.manual_seed(0)
        model = LungCVT(cfg.model).to(dev)
        crit = ClassBalancedCE([10, 5, 3, 2], cfg.train.cb_beta).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        first = float(train_step(model, opt, crit, batch, cfg, dev, None, 1e-3))
        second = float(train_step(model, opt, crit, batch, cfg, dev, None, 1e-3))
        losses.append((first, second))
    (c1, c2), (g1, g2) = losses
    assert abs(c1 - g1) < 1e-2 and abs(c2 - g2) < 2e-2 and g2 < g1
