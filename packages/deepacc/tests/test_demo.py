"""The demo's headline (mAP@0.5 on held-out synthetic images) beats the computed chance level.

The demo's own training length (864 iterations; 336 gave mAP@0.5 0.08 and no score >= 0.5), 4 test images, no A.tif
step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deepacc.demo import run_demo


@pytest.mark.slow
def test_demo_beats_chance(tmp_path: Path) -> None:
    metrics = run_demo(tmp_path / "demo", device="cpu", seed=0, n_test=4, progress=False, predict_real=False)
    head = metrics["headline"]
    assert head["metric"] == "map50"
    assert 0.0 <= head["chance"] < 0.05
    assert head["value"] > 5 * head["chance"] and head["value"] > 0.15, head
    assert metrics["acc"] > 0.2 and metrics["aer"] < 1.0  # some top-1 detections reach p >= 0.5 and are correct
    on_disk = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert on_disk["headline"]["value"] == pytest.approx(head["value"])
    for name in ("report.md", "loss_curves.png", "ap_per_class.png", "test0_overlay.png", "test0_karyogram.png"):
        assert (tmp_path / "demo" / name).is_file(), name
