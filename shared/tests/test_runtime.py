"""medshared.runtime / checkpoint / config / plots."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from medshared import checkpoint, config, plots, runtime


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with runtime.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    runtime.atomic_write_json(target, {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 0.5, "b": None, "c": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_csv(tmp_path):
    runtime.atomic_write_csv(tmp_path / "r.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b,c", "1,2,", "3,,4"]


def test_seed_and_device():
    runtime.seed_everything(5)
    a = torch.rand(3)
    runtime.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    assert runtime.resolve_device("cpu").type == "cpu"
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        runtime.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            runtime.resolve_device("cuda")
    with runtime.autocast_context("cpu", True):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16


def test_checkpoint_round_trip(tmp_path):
    lin = torch.nn.Linear(4, 2)
    p = checkpoint.save_checkpoint(tmp_path / "m.safetensors", lin.state_dict(), {"dim": 4, "t": (1, 2)}, {"epoch": 3})
    sd, cfg, extra = checkpoint.load_checkpoint(p)
    assert cfg == {"dim": 4, "t": [1, 2]} and extra == {"epoch": 3}
    assert torch.equal(sd["weight"], lin.weight.detach())
    with pytest.raises(FileNotFoundError, match="train one first"):
        checkpoint.load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load_checkpoint(tmp_path / "bad.safetensors")


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 1e-4
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str = "x"
    epochs: int = 3
    optim: _Inner = dataclasses.field(default_factory=_Inner)
    mode: str | None = None


def test_override_dataclass(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\noptim:\n  lr: 1\n  sizes: [3, 4]\n")
    cfg = config.override_dataclass(_Outer(), config.load_config_file(f))
    assert cfg.epochs == 5 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.optim.sizes == (3, 4)
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        config.override_dataclass(_Outer(), {"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="'epochs' expects"):
        config.override_dataclass(_Outer(), {"epochs": "many"})
    assert config.override_dataclass(_Outer(), {"mode": None}).mode is None
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        config.load_config_file(tmp_path / "bad.yaml")
    assert config.config_to_dict(cfg)["optim"]["sizes"] == [3, 4]


def test_plots_write_png(tmp_path):
    p = plots.plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = plots.plot_curves([1, 2, 3], {"s": ([0.1, 0.2, 0.3], [0.01, 0.02, 0.01])}, tmp_path / "c.png", "x", "y")
    assert p.stat().st_size > 1000
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion_matrix([[1]], ["a", "b"], tmp_path / "x.png")


def test_registry_errors():
    from medshared.registry import Registry

    reg = Registry[int]("config")
    assert reg.register("b", 2) == 2 and reg.register("a", 1) == 1
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "b" in reg and reg.values() == [1, 2]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)
    with pytest.raises(ValueError, match="unknown config 'c'; valid names: a, b"):
        reg.get("c")
