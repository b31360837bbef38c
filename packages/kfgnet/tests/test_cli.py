"""CLI smoke tests: every command on a tiny synthetic cohort, and bad input -> one error line, non-zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfgnet.cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    assert (
        main(
            [
                "make-synthetic",
                "--out",
                str(out / "data"),
                "--patients",
                "6",
                "--frames",
                "16",
                "--size",
                "64",
                "--no-real-backgrounds",
            ]
        )
        == 0
    )
    (out / "cfg.yaml").write_text(
        "clip:\n  num_frames: 16\n  size: 32\ntrain:\n  epochs: 1\n  epochs2: 0\n"
        "  batch_size: 4\ndetector:\n  min_size: 64\n  max_size: 64\n"
        "  score_threshold: 0.0\n  epochs: 1\n"
    )
    return out


def test_train_evaluate_predict_pipeline(cohort: Path, capsys: pytest.CaptureFixture) -> None:
    """The paper's chain from the CLI: detector -> key-frame model -> stage-1 key frames -> classifier on nodule crops
    around them -> evaluate / predict (one video and a folder)."""
    m, cfg, out = cohort / "data" / "manifest.json", cohort / "cfg.yaml", cohort / "run"
    common = ["--manifest", str(m), "--config", str(cfg), "--device", "cpu", "--no-progress"]
    assert (
        main(
            [
                "train-detector",
                *common,
                "--preset",
                "tiny",
                "--epochs",
                "1",
                "--images-per-video",
                "1",
                "--out",
                str(out / "det"),
            ]
        )
        == 0
    )
    det = out / "det" / "detector_best.safetensors"
    assert det.is_file() and json.loads((out / "det" / "train.json").read_text())["effective_batch"] == 8
    assert (
        main(
            [
                "train-keyframe",
                *common,
                "--detector",
                str(det),
                "--preset",
                "kfgnet_keyframe_tiny",
                "--epochs",
                "2",
                "--val-fraction",
                "0.34",
                "--out",
                str(out / "kf"),
            ]
        )
        == 0
    )
    rep = json.loads((out / "kf" / "keyframe_train.json").read_text())
    assert rep["n_val_videos"] > 0 and len(rep["validation"]["table"]) == 9  # D = 0..8 vs the middle frame
    kf = out / "kf" / "keyframe.safetensors"
    assert (
        main(
            ["evaluate-keyframe", *common, "--detector", str(det), "--keyframe", str(kf), "--out", str(out / "kfpred")]
        )
        == 0
    )
    ev = json.loads((out / "kfpred" / "metrics.json").read_text())
    assert len(ev["tolerance_accuracy"]) == 33 and ev["table"]["D=0"]["middle_frame"] >= 0
    assert "middle frame" in capsys.readouterr().out
    assert (
        main(
            [
                "train-classifier",
                *common,
                "--preset",
                "kfgnet_tiny",
                "--folds",
                "2",
                "--keyframes",
                str(out / "kfpred" / "keyframes.csv"),
                "--out",
                str(out / "cls"),
            ]
        )
        == 0
    )
    cv = json.loads((out / "cls" / "cv_metrics.json").read_text())
    assert set(cv["summary"]) >= {"accuracy", "sensitivity", "specificity", "precision", "f1", "auroc"}
    assert cv["key_frames"].endswith("keyframes.csv") and cv["crop"] == "nodule"
    assert set(cv["pooled"]["auroc"]) >= {"value", "ci_low", "ci_high"}
    assert (out / "cls" / "fold0.safetensors").is_file() and (out / "cls" / "fold1.safetensors").is_file()
    assert not list((out / "cls").glob("*.state.pt"))  # resumable states removed once a fold is done
    ckpts = ["--classifier", str(out / "cls" / "fold0.safetensors"), "--detector", str(det), "--keyframe", str(kf)]
    assert main(["evaluate", *common, *ckpts, "--out", str(out / "eval")]) == 0
    ev = json.loads((out / "eval" / "evaluation.json").read_text())
    assert ev["key_frames"] == "stage1" and len(ev["keyframe"]["tolerance_accuracy"]) == 33
    assert 0 <= ev["classification"]["accuracy"] <= 1 and "auroc" in ev["classification_ci"]
    videos = sorted((cohort / "data" / "videos").glob("*.avi"))
    assert main(["predict", str(videos[0]), *ckpts, "--out", str(out / "pred"), "--device", "cpu"]) == 0
    pred = json.loads((out / "pred" / "prediction.json").read_text())
    assert 0 <= pred["key_frame"] < pred["num_frames"] and 0 <= pred["p_malignant"] <= 1
    assert pred["key_source"] in ("stage1", "fallback_middle")
    assert (out / "pred" / "prediction.png").stat().st_size > 1000
    assert main(["predict", str(cohort / "data" / "videos"), *ckpts, "--out", str(out / "predall")]) == 0
    import csv

    rows = list(csv.DictReader((out / "predall" / "predictions.csv").open()))
    assert len(rows) == len(videos) and all(r["error"] == "" for r in rows)

    # bad input: missing checkpoint, unreadable video, unknown label, missing manifest
    capsys.readouterr()
    video = videos[0]
    assert (
        main(["predict", str(video), *ckpts[:1], str(out / "none.safetensors"), *ckpts[2:], "--out", str(out / "p2")])
        == 1
    )
    err = capsys.readouterr().err
    assert "none.safetensors" in err and "Traceback" not in err and not (out / "p2" / "prediction.json").exists()
    broken = cohort / "broken.avi"
    broken.write_bytes(b"garbage")
    assert main(["predict", str(broken), *ckpts, "--out", str(out / "p3")]) == 1
    assert "broken.avi" in capsys.readouterr().err
    rows = json.loads(m.read_text())["videos"]
    rows[0]["label"] = "weird"
    bad = m.parent / "bad.json"
    bad.write_text(json.dumps({"videos": rows}))
    assert main(["train-classifier", "--manifest", str(bad), "--out", str(out / "x")]) == 1
    assert "unknown label 'weird'" in capsys.readouterr().err
    assert main(["train-classifier", "--manifest", str(m.parent / "nope.json"), "--out", str(out / "x")]) == 1
    assert "not found" in capsys.readouterr().err


def test_no_command_and_version() -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0


def test_bad_config_key(cohort: Path, capsys: pytest.CaptureFixture) -> None:
    bad = cohort / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 3\n")
    assert (
        main(
            [
                "train-classifier",
                "--manifest",
                str(cohort / "data" / "manifest.json"),
                "--config",
                str(bad),
                "--out",
                str(cohort / "y"),
            ]
        )
        == 1
    )
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_quick_beats_chance(tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    h = m["headline"]
    assert h["metric"] == "cv_accuracy_stage1_keyframes" and h["value"] > h["chance"] + 0.05
    for f in ("report.md", "tolerance.png", "confusion.png", "prediction.png", "keyframes.csv"):
        assert (tmp_path / f).is_file()
    k = m["keyframe"]  # stage 1 trained on cohort A, scored on cohort B (the classification cohort)
    assert k["n_videos"] == m["classification"]["n_videos"] == len(k["pred"]) == len(k["true"])
    assert k["n_stage1_train_videos"] > 0 and m["classification"]["key_frames"].startswith("stage 1")
    import torch
    from kfgnet.precision import classifier_precision

    # --precision auto: what the (session-cached) measurement of the classifier's op mix chose, never a CPU flag
    auto = classifier_precision("auto", torch.device("cpu"))
    assert m["config"]["demo"]["bf16"] is (auto.name == "bf16")
    assert m["config"]["demo"]["channels_last"] is True


@pytest.mark.parametrize(
    ("flag", "native", "bf16", "channels_last"),
    [
        ([], True, True, True),  # auto on a CPU with native bf16
        ([], False, False, True),  # auto without it: fp32 + channels_last_3d (emulated bf16 is slower)
        (["--precision", "bf16"], False, True, True),
        (["--precision", "fp32"], True, False, False),
    ],
)
def test_demo_precision_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], native: bool, bf16: bool, channels_last: bool
) -> None:
    import kfgnet.demo
    import medshared.runtime

    monkeypatch.setattr(medshared.runtime, "native_bf16", lambda device: native)

    seen = {}

    def fake_run_demo(out: Path, device: object, seed: int, cfg: kfgnet.demo.DemoConfig, progress: bool) -> dict:
        seen["cfg"] = cfg
        (out / "report.md").write_text("report")
        return {"headline": {"metric": "cv_accuracy_stage1_keyframes", "value": 0.5, "chance": 0.5}}

    monkeypatch.setattr(kfgnet.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu", "--no-progress", *flag]) == 0
    assert seen["cfg"].bf16 is bf16 and seen["cfg"].channels_last is channels_last
    assert seen["cfg"].det_size == 128 and seen["cfg"].kf_geo_dim == 6  # the stage-1 settings of the full demo
