"""``train.select_on``: which validation measure keeps the best epoch (``last`` keeps the last one)."""

from __future__ import annotations

import csv
import json

import pytest
from lungcvt.cli import main
from lungcvt.config import TrainConfig


def test_select_on_last_keeps_the_last_epoch_and_still_tunes_its_bias(syn_dir, tmp_path, monkeypatch):
    import lungcvt.train

    real = lungcvt.train.validation_scores
    calls = []

    def falling(*a, **k):  # validation Scores 0.9, 0.8, 0.7: selection by score would keep epoch 1
        sc = real(*a, **k)
        calls.append(1)
        sc["icbhi"] = {**sc["icbhi"], "score": 1.0 - 0.1 * len(calls)}
        return sc

    monkeypatch.setattr(lungcvt.train, "validation_scores", falling)
    run = tmp_path / "run"
    yaml = tmp_path / "s.yaml"
    yaml.write_text("train:\n  select_on: last\n")
    args = ["train", "--data", str(syn_dir), "--out", str(run), "--preset", "lungcvt_tiny", "--cache",
            str(tmp_path / "cache"), "--device", "cpu", "--config", str(yaml), "--precision", "fp32",
            "--epochs", "3"]  # fmt: skip
    assert main(args) == 0
    hist = list(csv.DictReader(open(run / "history.csv")))
    tj = json.loads((run / "train.json").read_text())
    assert [round(float(h["val_icbhi_score"]), 3) for h in hist] == [0.9, 0.8, 0.7]
    assert len(hist) == 3 and tj["best_epoch"] == 3
    from lungcvt.evaluate import load_model

    _, _, extra = load_model(run / "best.safetensors")
    assert extra["epoch"] == 3 and extra["normal_bias"] == float(hist[-1]["normal_bias"])
    with pytest.raises(ValueError, match="select_on"):
        TrainConfig(select_on="first")
