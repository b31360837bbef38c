from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from lungcvt.cli import main
from lungcvt.cv import parse_folds, parse_seeds


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    """15 patients, one recording each: every fold's training part holds every class."""
    from lungcvt.synthetic import generate_icbhi

    d = tmp_path_factory.mktemp("icbhi_cv")
    generate_icbhi(d, n_patients=15, recordings_per_patient=(1, 1), cycles_per_recording=(5, 7), seed=4)
    return d


def test_parse_folds_and_seeds():
    assert parse_folds("0-4") == [f"fold{k}" for k in range(5)]
    assert parse_folds("0,2") == ["fold0", "fold2"] and parse_folds("official") == ["official"]
    assert parse_seeds("0,1,2") == parse_seeds("0-2") == [0, 1, 2]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a")


def test_tiny_cv_on_synthetic_data(cv_dir, tmp_path, capsys):
    """The whole 5-fold CV of the tiny preset (1 epoch each): every run trained and evaluated on its fold's patients,
    the summary is the mean and std of the runs; then a 2-fold x 2-seed grid in the same folder reads the two
    finished runs back and trains only the new seed."""
    out = tmp_path / "cv"
    args = ["cv", "--data", str(cv_dir), "--out", str(out), "--preset", "lungcvt_tiny", "--epochs", "1"]
    args += ["--device", "cpu", "--allow-missing-class"]
    assert main(args + ["--folds", "0-4", "--seeds", "0"]) == 0
    res = json.loads((out / "cv.json").read_text())
    assert len(res["runs"]) == 5 and res["complete"] and res["folds"] == [f"fold{k}" for k in range(5)]
    folds = {
        int(a): int(b)
        for a, b in (ln.split() for ln in (cv_dir / "patient_list_foldwise.txt").read_text().splitlines())
    }
    tested = []
    for r in res["runs"]:
        m = json.loads((out / r["protocol"] / f"seed{r['seed']}" / "eval" / "metrics.json").read_text())
        k = int(r["protocol"][4:])
        assert {int(p) for p in m["by_patient"]} == {p for p, f in folds.items() if f == k}
        tested += list(m["by_patient"])
        assert r["icbhi_score"] == m["icbhi"]["score"] and r["macro_ovr_se"] == m["macro_ovr"]["se"]
        tj = json.loads((out / r["protocol"] / f"seed{r['seed']}" / "train.json").read_text())
        assert tj["config"]["train"]["seed"] == r["seed"] and tj["split"]["protocol"] == r["protocol"]
        assert not set(tj["val_patients"]) & {int(p) for p in m["by_patient"]}
    assert sorted(map(int, tested)) == sorted(folds)  # every patient tested exactly once over the 5 folds
    for key in ("icbhi_score", "icbhi_se", "macro_ovr_score", "two_class_sp"):
        vals = [r[key] for r in res["runs"]]
        assert res["summary"][key]["mean"] == pytest.approx(np.mean(vals))
        assert res["summary"][key]["std"] == pytest.approx(np.std(vals))
    rows = list(csv.DictReader(open(out / "cv.csv")))
    assert len(rows) == 7 and rows[-2]["protocol"] == "mean" and rows[-1]["protocol"] == "std"
    table = (out / "cv.md").read_text()
    s = res["summary"]["icbhi_score"]
    assert f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" in table and "5 runs" in table
    assert f"{100 * s['mean']:.2f} ±" in capsys.readouterr().out

    mtime = (out / "fold1" / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns
    assert main(args + ["--folds", "0,1", "--seeds", "0,1"]) == 0  # seed 0 read back, seed 1 trained
    assert (out / "fold1" / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns == mtime
    res2 = json.loads((out / "cv.json").read_text())
    assert [(r["protocol"], r["seed"]) for r in res2["runs"]] == [
        ("fold0", 0),
        ("fold0", 1),
        ("fold1", 0),
        ("fold1", 1),
    ]
    assert res2["runs"][2] == res["runs"][1]
    # evaluate without --protocol uses the checkpoint's (fold2), so it scores that fold's test patients again
    ck = out / "fold2" / "seed0" / "best.safetensors"
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(cv_dir), "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["protocol"] == "fold2" and {int(p) for p in m["by_patient"]} == {p for p, f in folds.items() if f == 2}
    assert main(args + ["--seeds", "0", "--protocol", "fold1"]) == 2  # cv takes --folds
    assert "--folds" in capsys.readouterr().err
    # other settings in the same folder are refused
    assert main(args + ["--seeds", "0", "--config", str(_yaml(tmp_path, "train: {lr: 1e-4}"))]) == 2
    assert "different settings" in capsys.readouterr().err


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    return p
