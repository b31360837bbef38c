"""medshared.testing.strict_devices: a CPU-side stand-in for CUDA's refusal of mixed-device ops."""

from __future__ import annotations

import pytest
import torch
from medshared.testing import strict_devices


def test_meta_with_non_scalar_cpu_tensor_raises():
    m = torch.zeros(3, device="meta")
    with strict_devices():
        with pytest.raises(RuntimeError, match=r"strict_devices: .*add.* devices cpu and meta"):
            m + torch.ones(3)
        with pytest.raises(RuntimeError, match=r"strict_devices: .*mul_.* devices cpu and meta"):
            m.clone().mul_(torch.ones(3))
        with pytest.raises(RuntimeError, match="devices cpu and meta"):
            torch.where(torch.ones(3, dtype=torch.bool, device="meta"), torch.ones(3), m)
        lin = torch.nn.Linear(3, 2)  # weights on the CPU, input on meta
        with pytest.raises(RuntimeError, match="linear"):
            lin(torch.zeros(4, 3, device="meta"))
    # without the mode, meta's in-place kernels let a CPU tensor through (CUDA would refuse it)
    assert m.clone().mul_(torch.ones(3)).is_meta


def test_cpu_scalar_same_device_and_moves_pass():
    m = torch.zeros(3, device="meta")
    with strict_devices():
        assert m.clone().mul_(torch.tensor(2.0)).is_meta  # 0-dim CPU tensor: allowed, as on CUDA
        assert (m + m).is_meta
        assert (torch.ones(3) + torch.ones(3)).sum().item() == 6.0
        assert (m + torch.ones(3).to(m.device)).is_meta
        assert (m + torch.ones(3, device=m.device)).is_meta
        x = torch.arange(4.0)
        x[torch.tensor([0, 1])] = torch.tensor([9.0, 9.0])
        assert x.tolist() == [9.0, 9.0, 2.0, 3.0]
        lin = torch.nn.Linear(3, 2).to("meta")
        assert lin(torch.zeros(4, 3, device="meta")).shape == (4, 2)


def test_allow_lets_a_named_op_through():
    m = torch.zeros(3, device="meta")
    with strict_devices(allow=[torch.Tensor.mul_]):
        assert m.clone().mul_(torch.ones(3)).is_meta
        with pytest.raises(RuntimeError, match="strict_devices"):
            m.clone().sub_(torch.ones(3))
