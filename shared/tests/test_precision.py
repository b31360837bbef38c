"""medshared.precision: spec checks, CPU auto by measurement (with its cache), CUDA rules, TF32 switches."""

from __future__ import annotations

import json
import time

import pytest
import torch
from medshared import precision, runtime
from medshared.precision import Precision, resolve_precision


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache folder, no env override, and a CPU that reports native bf16 (so auto measures)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDREPRO_CACHE_DIR", str(d))
    monkeypatch.delenv("MEDREPRO_PRECISION", raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": True)
    return d


class Probe:
    """Sleeps ``fp32_s`` normally and ``bf16_s`` under CPU autocast; counts calls."""

    def __init__(self, fp32_s: float, bf16_s: float) -> None:
        self.fp32_s, self.bf16_s, self.calls, self.autocast_calls = fp32_s, bf16_s, 0, 0

    def __call__(self) -> None:
        self.calls += 1
        if torch.is_autocast_enabled("cpu"):
            self.autocast_calls += 1
            time.sleep(self.bf16_s)
        else:
            time.sleep(self.fp32_s)


def test_auto_cpu_picks_fp32_when_bf16_is_slower(cache_dir):
    probe = Probe(fp32_s=0.004, bf16_s=0.012)
    p = resolve_precision("auto", "cpu", key="t.slow", probe=probe)
    assert (p.name, p.requested, p.device_type) == ("fp32", "auto", "cpu")
    assert "slower" in p.reason and "measured" in p.reason and "t.slow" in p.reason
    assert probe.autocast_calls >= 3 and probe.calls - probe.autocast_calls >= 3


def test_auto_cpu_picks_bf16_when_faster_and_caches(cache_dir):
    probe = Probe(fp32_s=0.012, bf16_s=0.004)
    p = resolve_precision("auto", torch.device("cpu"), key="t.fast", probe=probe)
    assert p.name == "bf16" and "faster" in p.reason and "measured" in p.reason
    n = probe.calls
    again = resolve_precision("auto", "cpu", key="t.fast", probe=probe)
    assert probe.calls == n  # cache hit: the probe is not called again
    assert again.name == "bf16" and "cached" in again.reason
    entries = json.loads((cache_dir / "precision.json").read_text())
    ((k, v),) = entries.items()
    assert k == precision.cache_key("t.fast") and k.startswith("t.fast | ") and torch.__version__ in k
    assert v["name"] == "bf16" and v["ratio"] < 0.95


def test_cache_key_changes_with_thread_count_and_key(cache_dir):
    probe = Probe(fp32_s=0.003, bf16_s=0.009)
    resolve_precision("auto", "cpu", key="t.threads", probe=probe)
    n1 = probe.calls
    torch.set_num_threads(2)  # the root conftest puts it back to 1
    resolve_precision("auto", "cpu", key="t.threads", probe=probe)
    assert probe.calls > n1  # another thread count: measured again
    n2 = probe.calls
    resolve_precision("auto", "cpu", key="t.other", probe=probe)
    assert probe.calls > n2  # another key: measured again
    assert len(json.loads((cache_dir / "precision.json").read_text())) == 3


def test_near_tie_stays_fp32(cache_dir):
    """bf16 must be more than 5 % faster: a tie (same sleep) resolves to fp32."""
    p = resolve_precision("auto", "cpu", key="t.tie", probe=Probe(0.004, 0.004))
    assert p.name == "fp32"


def test_env_override_wins_without_measuring(cache_dir, monkeypatch):
    probe = Probe(0.001, 0.001)
    monkeypatch.setenv("MEDREPRO_PRECISION", "bf16")
    p = resolve_precision("auto", "cpu", key="t.env", probe=probe)
    assert p.name == "bf16" and "MEDREPRO_PRECISION" in p.reason and probe.calls == 0
    monkeypatch.setenv("MEDREPRO_PRECISION", "FP32")
    assert resolve_precision("auto", "cpu", key="t.env", probe=probe).name == "fp32"
    monkeypatch.setenv("MEDREPRO_PRECISION", "tf32")
    assert resolve_precision("auto", "cpu", key="t.env", probe=probe).name == "fp32"
    # explicit specs are not overridden
    assert resolve_precision("bf16", "cpu", key="t.env").name == "bf16"
    monkeypatch.setenv("MEDREPRO_PRECISION", "fast")
    with pytest.raises(ValueError, match=r"MEDREPRO_PRECISION.*'fast'.*auto, fp32, tf32, bf16"):
        resolve_precision("auto", "cpu", key="t.env", probe=probe)
    assert probe.calls == 0 and not (cache_dir / "precision.json").exists()


def test_bad_spec_names_value_and_choices():
    with pytest.raises(ValueError, match=r"'half'.*auto, fp32, tf32, bf16"):
        resolve_precision("half", "cpu", key="t")


def test_cpu_tf32_is_fp32_with_reason():
    p = resolve_precision("tf32", "cpu", key="t")
    assert (p.name, p.requested) == ("fp32", "tf32") and "no TF32" in p.reason
    assert resolve_precision("fp32", "cpu", key="t").name == "fp32"


def test_no_native_bf16_gives_fp32_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDREPRO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MEDREPRO_PRECISION", raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": False)
    probe = Probe(0.01, 0.0)
    p = resolve_precision("auto", "cpu", key="t", probe=probe)
    assert p.name == "fp32" and "no native bf16" in p.reason and probe.calls == 0
    assert "emulated" in resolve_precision("bf16", "cpu", key="t").reason  # explicit bf16 still bf16, with a warning


def test_fp32_reason_and_missing_probe(cache_dir):
    probe = Probe(0.01, 0.001)
    p = resolve_precision("auto", "cpu", key="t", probe=probe, fp32_reason="selection compares tiny score gaps")
    assert p.name == "fp32" and "selection compares tiny score gaps" in p.reason and probe.calls == 0
    assert resolve_precision("bf16", "cpu", key="t", fp32_reason="x").name == "bf16"
    p = resolve_precision("auto", "cpu", key="t.none")
    assert p.name == "fp32" and "no probe" in p.reason


def test_probe_failing_under_bf16_gives_fp32(cache_dir):
    def probe() -> None:
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bf16 kernel for this op")

    p = resolve_precision("auto", "cpu", key="t.fail", probe=probe)
    assert p.name == "fp32" and "no bf16 kernel" in p.reason
    assert "cached" in resolve_precision("auto", "cpu", key="t.fail", probe=probe).reason


def test_unreadable_cache_is_rewritten(cache_dir, capsys):
    cache_dir.mkdir()
    (cache_dir / "precision.json").write_text("{not json")
    p = resolve_precision("auto", "cpu", key="t.bad", probe=Probe(0.002, 0.006))
    assert p.name == "fp32" and "unreadable cache" in capsys.readouterr().err
    assert precision.cache_key("t.bad") in json.loads((cache_dir / "precision.json").read_text())


def test_cuda_rules_without_a_gpu(monkeypatch):
    monkeypatch.delenv("MEDREPRO_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    p = resolve_precision("auto", "cuda:0", key="t")
    assert (p.name, p.device_type) == ("bf16", "cuda")
    assert resolve_precision("auto", "cuda", key="t", fp32_reason="exact maths").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda", key="t").name == "tf32"
    assert resolve_precision("tf32", "cuda", key="t").name == "tf32"
    assert resolve_precision("auto", "meta", key="t").name == "fp32"


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_apply_sets_tf32_switches_on_cuda_only(tf32_flags):
    Precision("bf16", "auto", "cuda", "").apply()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    Precision("fp32", "fp32", "cuda", "").apply()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    Precision("tf32", "tf32", "cuda", "").apply()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    Precision("fp32", "fp32", "cpu", "").apply()  # no-op on CPU
    assert torch.backends.cuda.matmul.allow_tf32


def test_autocast_and_as_dict():
    bf = Precision("bf16", "auto", "cpu", "why")
    with bf.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    with Precision("fp32", "auto", "cpu", "why").autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert bf.as_dict() == {"name": "bf16", "requested": "auto", "device_type": "cpu", "reason": "why"}


def test_cpu_model_names_the_cpu():
    m = precision.cpu_model()
    assert m and "[" in m
