"""--precision: lungcvt's resolve (train.bf16 alias, explicit specs, measured CPU auto and its cache) and the CLI."""

from __future__ import annotations

import json

import pytest
from lungcvt.cli import main
from lungcvt.precision import PROBE_KEY, resolve, train_probe


def test_explicit_specs_and_the_bf16_alias(monkeypatch):
    monkeypatch.delenv("MEDREPRO_PRECISION", raising=False)
    assert resolve("fp32", "cpu").name == "fp32"
    assert resolve("tf32", "cpu").name == "fp32"  # no TF32 on a CPU
    assert resolve("bf16", "cpu").name == "bf16"
    assert resolve("auto", "cpu", bf16_alias=True).name == "bf16"  # train.bf16: true with --precision auto
    assert resolve("fp32", "cpu", bf16_alias=True).name == "fp32"  # an explicit spec wins over the old setting
    monkeypatch.setenv("MEDREPRO_PRECISION", "fp32")
    p = resolve("auto", "cpu")
    assert p.name == "fp32" and "MEDREPRO_PRECISION" in p.reason
    with pytest.raises(ValueError, match="fp16"):
        resolve("fp16", "cpu")


def test_cpu_auto_measures_the_probe_once_then_reads_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDREPRO_PRECISION", raising=False)
    monkeypatch.setenv("MEDREPRO_CACHE_DIR", str(tmp_path))
    from medshared.runtime import native_bf16

    first = resolve("auto", "cpu")
    assert first.name in ("fp32", "bf16")
    if not native_bf16("cpu"):
        assert first.name == "fp32"
        return
    assert "measured" in first.reason and PROBE_KEY in first.reason
    cached = json.loads((tmp_path / "precision.json").read_text())
    assert any(PROBE_KEY in k for k in cached)
    again = resolve("auto", "cpu")
    assert again.name == first.name and "cached" in again.reason


def test_probe_is_one_training_step():
    step = train_probe(batch=2)
    step()  # runs (fwd + bwd + Adam) without error


def test_cli_rejects_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--checkpoint", "x", "--data", "y", "--out", "z", "--precision", "fp16"])
    assert e.value.code == 2 and "fp16" in capsys.readouterr().err
