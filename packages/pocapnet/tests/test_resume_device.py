"""Resume onto another device than the CPU, checked without a GPU: the ``meta`` device stands in for CUDA.

The crash (issue 22): ``last.pt`` loaded with ``map_location=<training device>`` put the saved CPU RNG state on the
GPU, and ``torch.set_rng_state`` refused it. A ``meta`` map location does to the tensors what a CUDA one does (they
leave the CPU), so the old way raises here too, and the resume path must not.
"""

from __future__ import annotations

import pytest
import torch
from pocapnet.config import PocapConfig
from pocapnet.model import PoCaPNet
from pocapnet.resume import load_resume, restore_resume, rng_state, set_rng


@pytest.fixture
def last_pt(tiny_ckpt):
    return tiny_ckpt.parent / "last.pt"


def test_old_way_raises_off_cpu(last_pt):
    """The premise: RNG states mapped off the CPU (as map_location=cuda did) are refused by set_rng_state."""
    st = torch.load(last_pt, map_location="meta", weights_only=False)
    with pytest.raises((TypeError, RuntimeError)):
        torch.set_rng_state(st["rng_per_rank"][0]["cpu"])


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_onto_meta_model(last_pt):
    """The resume path with the model and optimizer on a non-CPU device: RNG states stay CPU ByteTensors, the
    model's and the optimizer's states land on the parameters' device, and the CPU generator is restored."""
    st = load_resume(last_pt)
    state = st["rng_per_rank"][0]
    assert state["cpu"].device.type == "cpu" and state["cpu"].dtype == torch.uint8
    cfg = PocapConfig.from_dict(st["config"])
    net = PoCaPNet(cfg.model).to("meta")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    torch.manual_seed(123)  # something else than the saved state
    restore_resume(st, net, opt, rank=0, device="meta")
    assert torch.equal(torch.get_rng_state(), state["cpu"])
    exp_avg = [s["exp_avg"] for s in opt.state.values()]
    assert exp_avg and all(t.device.type == "meta" for t in exp_avg)  # optimizer state follows the parameters


def test_rng_state_roundtrip_and_old_files(last_pt):
    """A bare CPU state (last.pt written before the per-device dict) is still accepted."""
    saved = rng_state("cpu")
    torch.rand(5)
    set_rng(saved["cpu"], "cpu")
    a = torch.rand(3)
    set_rng(saved, "cpu")
    assert torch.equal(a, torch.rand(3))
