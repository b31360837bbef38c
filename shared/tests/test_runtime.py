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
    with pytest.raises(ValueError, match="not a readable.*pass the .safetensors file a `train` run wrote"):
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


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_umask(tmp_path, mask):
    import os

    old = os.umask(mask)
    try:
        assert runtime.current_umask() == mask
        runtime.atomic_write_json(tmp_path / "m.json", {"a": 1})
        runtime.atomic_write_text(tmp_path / "t.txt", "x")
        lin = torch.nn.Linear(2, 2)
        checkpoint.save_checkpoint(tmp_path / "c.safetensors", lin.state_dict(), {})
        ref = tmp_path / "ref"
        ref.write_text("x")  # what open() gives under the same umask
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    for name in ("m.json", "t.txt", "c.safetensors", "ref"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name


def test_yaml_scientific_notation(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 10\noptim:\n  lr: 1e-4\n  sizes: [3, 4]\nname: '1e-4'\n")
    raw = config.load_config_file(f)
    assert raw["optim"]["lr"] == 1e-4 and isinstance(raw["optim"]["lr"], float)
    assert raw["epochs"] == 10 and isinstance(raw["epochs"], int)
    assert raw["name"] == "1e-4"  # quoted stays a string
    cfg = config.override_dataclass(_Outer(), raw)
    assert cfg.optim.lr == 1e-4 and cfg.name == "1e-4"
    loaded = config.yaml_load("a: 5E+3\nb: -2.5e-3\nc: .5\nd: 1_000\ne: abc\nf: 1e4x\n")
    assert loaded == {"a": 5000.0, "b": -0.0025, "c": 0.5, "d": 1000, "e": "abc", "f": "1e4x"}


def test_tests_run_on_one_torch_thread():
    assert torch.get_num_threads() == 1  # the root conftest pins it


class _Aug(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return float(runtime.worker_rng().random())


class _AugOnce(_Aug):
    """The anti-pattern: one generator made in __init__, copied into every worker."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __getitem__(self, i):
        return float(self.rng.random())


def test_worker_rng_differs_per_worker_and_epoch():
    from torch.utils.data import DataLoader

    def draws(ds, workers):
        loader = DataLoader(ds, batch_size=None, num_workers=workers, generator=torch.Generator().manual_seed(0))
        return list(loader) + list(loader)  # two epochs

    assert len(set(draws(_Aug(), 2))) == 8  # 2 workers x 2 items x 2 epochs, no repeat
    assert len(set(draws(_Aug(), 0))) == 8  # main process: continues across epochs
    assert len(set(draws(_AugOnce(), 2))) < 8  # the failure this helper exists for: workers repeat each other


@pytest.mark.threads
def test_threads_marker_gets_the_default_thread_count(_one_torch_thread_session):
    # the root conftest gives a `threads` test the process's own count back (and pins every other test to 1)
    assert torch.get_num_threads() == _one_torch_thread_session


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    import builtins
    import io

    real_open = builtins.open

    def fake(flags):
        def _open(path, *a, **k):
            if str(path) == "/proc/cpuinfo":
                return io.StringIO(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
            return real_open(path, *a, **k)

        return _open

    monkeypatch.setattr(builtins, "open", fake("avx512f avx512_bf16"))
    assert runtime.native_bf16("cpu") is True
    monkeypatch.setattr(builtins, "open", fake("avx512f amx_bf16 amx_tile"))
    assert runtime.native_bf16("cpu") is True
    monkeypatch.setattr(builtins, "open", fake("avx512f avx2"))  # this session's CPU: emulated bf16
    assert runtime.native_bf16("cpu") is False
