"""CLI smoke tests: train -> evaluate -> predict -> query on synthetic data, bad inputs, the demo beats chance."""

from __future__ import annotations

import csv
import json

import pytest
from alges.cli import main


@pytest.fixture(scope="module")
def trained(syn_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    lst = out / "labeled.txt"
    lst.write_text("video01/video01_00000/frame_0_endo\nvideo02/video02_00004/frame_5_endo\n")
    rc = main(
        [
            "train",
            "--data",
            str(syn_root),
            "--labeled",
            str(lst),
            "--out",
            str(out / "run"),
            "--preset",
            "alges_tiny",
            "--epochs",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    return out


def test_train_evaluate_predict_query(trained, syn_root, tmp_path):
    ck = trained / "run" / "model.safetensors"
    assert ck.is_file() and (trained / "run" / "train_state.pt").is_file()
    log = json.loads((trained / "run" / "train.json").read_text())
    assert len(log["losses"]) == 2
    # resume after the last epoch: nothing left to do, the checkpoint is rewritten
    assert (
        main(
            [
                "train",
                "--data",
                str(syn_root),
                "--labeled",
                str(trained / "labeled.txt"),
                "--out",
                str(trained / "run"),
                "--preset",
                "alges_tiny",
                "--epochs",
                "2",
                "--resume",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads((trained / "run" / "train.json").read_text())["start_epoch"] == 2
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(syn_root), "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= m["dice_macro"] <= 1.0 and m["n_images"] == 24
    assert main(["predict", "--checkpoint", str(ck), "--images", str(syn_root), "--out", str(tmp_path / "pr")]) == 0
    assert len(list((tmp_path / "pr").rglob("*_pred.png"))) == 24
    for strategy in ("alges-img", "alges-sem", "coreset"):
        q = tmp_path / f"q_{strategy}.csv"
        rc = main(
            [
                "query",
                "--checkpoint",
                str(ck),
                "--pool",
                str(syn_root),
                "--budget",
                "5",
                "--strategy",
                strategy,
                "--labeled",
                str(trained / "labeled.txt"),
                "--out",
                str(q),
            ]
        )
        assert rc == 0
        rows = list(csv.DictReader(q.open()))
        assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
        assert len({r["image"] for r in rows}) == 5
        assert "video01/video01_00000/frame_0_endo" not in {r["image"] for r in rows}


def test_bad_inputs_fail_cleanly(trained, syn_root, tmp_path, capsys):
    ck = trained / "run" / "model.safetensors"
    lab = trained / "labeled.txt"
    cases = [
        (
            ["query", "--checkpoint", str(tmp_path / "none.safetensors"), "--pool", str(syn_root), "--budget", "2"],
            "checkpoint not found",
        ),
        (["query", "--checkpoint", str(ck), "--pool", str(syn_root), "--budget", "100"], "budget 100"),
        (["query", "--checkpoint", str(ck), "--pool", str(tmp_path), "--budget", "1"], "empty"),
        (["query", "--checkpoint", str(ck), "--pool", str(syn_root), "--budget", "1", "--strategy", "bogus"], "valid"),
        (["query", "--checkpoint", str(ck), "--pool", str(syn_root), "--budget", "1", "--strategy", "deal"], "DEAL"),
        (["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "t")], "not found"),
        (
            [
                "evaluate",
                "--checkpoint",
                str(ck),
                "--data",
                str(syn_root),
                "--list",
                str(tmp_path / "x.txt"),
                "--out",
                str(tmp_path / "e"),
            ],
            "image list not found",
        ),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("video09/video09_00000/frame_0_endo\n")
    cases.append(
        (
            ["query", "--checkpoint", str(ck), "--pool", str(syn_root), "--budget", "1", "--labeled", str(bad)],
            "not in the pool",
        )
    )
    cases.append(
        (
            [
                "train",
                "--data",
                str(syn_root),
                "--labeled",
                str(bad),
                "--out",
                str(tmp_path / "t2"),
                "--preset",
                "alges_tiny",
            ],
            "not found in",
        )
    )
    for argv, msg in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "e").exists() and not (tmp_path / "t2" / "model.safetensors").exists()
    assert lab.is_file()


@pytest.mark.slow
def test_demo_quick_beats_chance(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    h = m["headline"]
    assert h["value"] > h["chance"] + 0.05, h
    for f in ("report.md", "learning_curve.png", "rounds.csv"):
        assert (tmp_path / "demo" / f).is_file()


def test_simulate_cli_writes_curves_and_table(syn_root, tmp_path, simulate_argv):
    out = tmp_path / "sim"
    argv = simulate_argv(syn_root, out, "random,alges-sem", "0", "--epochs", "1")
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [(r["strategy"], r["round"], r["n_labeled"]) for r in rows] == [
        ("random", "0", "4"),
        ("random", "1", "7"),
        ("alges-sem", "0", "4"),
        ("alges-sem", "1", "7"),
    ]
    for f in ("learning_curve.png", "table.md", "results.json", "config.json"):
        assert (out / f).is_file()
    assert "alges-sem" in (out / "table.md").read_text()
    assert main(argv) == 0  # a rerun resumes from the saved state (nothing left to train)
    assert main(argv[:4] + ["random,bogus"] + argv[5:]) == 1


def test_offline_flag_does_not_outlive_its_command(tmp_path, monkeypatch, capsys):
    """``--offline`` sets MEDREPRO_OFFLINE for the command (medshared.weights reads it) and main() restores the
    environment after, so a later call in the same process may download again (and a value set before stays)."""
    import os

    monkeypatch.delenv("MEDREPRO_OFFLINE", raising=False)
    seen = {}
    import alges.data

    def spy(path):
        seen["during"] = os.environ.get("MEDREPRO_OFFLINE")
        raise FileNotFoundError(f"no dataset at {path}")

    monkeypatch.setattr(alges.data, "open_dataset", spy)
    rc = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--offline"])
    assert rc == 1 and seen["during"] == "1"
    assert "MEDREPRO_OFFLINE" not in os.environ
    monkeypatch.setenv("MEDREPRO_OFFLINE", "0")
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--offline"]) == 1
    assert os.environ["MEDREPRO_OFFLINE"] == "0"
