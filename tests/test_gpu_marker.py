"""The root conftest skips ``gpu``-marked tests, with a reason, when CUDA is absent (and runs them where it is)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_gpu_marked_runs_only_with_cuda():
    # Without CUDA this would fail; the conftest hook must have skipped it. With CUDA it runs and passes.
    assert torch.cuda.is_available()
    assert (torch.ones(2, device="cuda") * 2).sum().item() == 4.0


@pytest.mark.gpu
class TestGpuClass:
    def test_inherits_the_mark(self):
        assert torch.cuda.is_available()


def test_hook_marks_collected_gpu_tests(request):
    gpu_items = [i for i in request.session.items if i.get_closest_marker("gpu") is not None]
    ours = {i.name for i in gpu_items if i.path == request.path}
    assert ours == {"test_gpu_marked_runs_only_with_cuda", "test_inherits_the_mark"}
    for item in gpu_items:
        reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skip")]
        if torch.cuda.is_available():
            assert not any("gpu test" in r for r in reasons), item.nodeid
        else:
            assert any("no CUDA device" in r for r in reasons), item.nodeid
    plain = [i for i in request.session.items if i.get_closest_marker("gpu") is None]
    assert request.node in plain and not list(request.node.iter_markers("skip"))
