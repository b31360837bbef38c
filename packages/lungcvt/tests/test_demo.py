from __future__ import annotations

import json

import pytest
from lungcvt.cli import main


@pytest.mark.slow
def test_quick_demo_beats_chance(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--seed", "0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    h = m["headline"]
    assert h["metric"] == "icbhi_score"
    assert h["chance"] == pytest.approx(0.5)  # always 'normal': Sp 1, Se 0
    assert h["value"] > h["chance"] + 0.1, m["test"]["confusion_matrix"]
    for f in ("report.md", "confusion_matrix.png", "training_curve.png", "feature_examples.png"):
        assert (out / f).stat().st_size > 0
    assert {"icbhi", "macro_ovr", "two_class"} <= set(m["test"])
