from __future__ import annotations

import json

import pytest
from lungcvt.cli import build_parser, main


def test_help_and_no_command(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    for cmd in ("demo", "dataset-stats", "features", "train", "evaluate", "predict"):
        assert cmd in build_parser().format_help()


def test_dataset_stats(syn_dir, capsys):
    assert main(["dataset-stats", "--data", str(syn_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    n_txt = sum(
        len([ln for ln in p.read_text().splitlines() if ln.strip()])
        for p in syn_dir.glob("*.txt")
        if p.with_suffix(".wav").is_file()  # annotation files, not the split or fold file
    )
    assert out["cycles"] == n_txt
    assert set(out["splits"]) == {"train", "test"}
    assert sum(s["n_cycles"] for s in out["splits"].values()) == n_txt
    assert main(["dataset-stats", "--data", str(syn_dir)]) == 0
    assert "recordings" in capsys.readouterr().out


def test_dataset_stats_real(icbhi_real, capsys):
    assert main(["dataset-stats", "--data", str(icbhi_real), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recordings"] == 11 and out["cycles"] == 100
    assert out["split_entries_without_recordings"] == 909


def _err(capsys):
    return capsys.readouterr().err


def test_bad_inputs(tmp_path, syn_dir, capsys):
    import shutil

    assert main(["dataset-stats", "--data", str(tmp_path / "nope")]) == 2
    assert "data folder not found" in _err(capsys)

    # a wrong --data fails before the pretrained DeiT is looked up (offline: that error would come first) and
    # before the output folder exists
    out = tmp_path / "out_missing_data"
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(out), "--offline"]) == 2
    err = _err(capsys)
    assert "data folder not found" in err and "weights" not in err
    assert not out.exists()
    assert main(["cv", "--data", str(tmp_path / "nope"), "--out", str(out), "--folds", "0-1", "--offline"]) == 2
    assert "data folder not found" in _err(capsys)
    assert not out.exists()

    bad = tmp_path / "bad"
    shutil.copytree(syn_dir, bad)
    txt = sorted(p for p in bad.glob("*.txt") if p.with_suffix(".wav").is_file())[0]
    txt.write_text("0.1\t0.9\t0\t0\n0.9\tabc\t0\t0\n")
    assert main(["dataset-stats", "--data", str(bad)]) == 2
    err = _err(capsys)
    assert f"{txt.name}:2: non-numeric" in err and "Traceback" not in err

    # split-file entries without recordings
    part = tmp_path / "part"
    shutil.copytree(syn_dir, part)
    wav = sorted(part.glob("*.wav"))[0]
    wav.unlink()
    wav.with_suffix(".txt").unlink()
    cache = tmp_path / "cache"
    assert main(["features", "--data", str(part), "--cache", str(cache), "--preset", "lungcvt_tiny"]) == 2
    assert "without recordings" in _err(capsys)

    # CQT at a rate too low for 96 bins
    cfg = tmp_path / "low.yaml"
    cfg.write_text("features:\n  sample_rate: 4000\n")
    assert (
        main(
            [
                "features",
                "--data",
                str(syn_dir),
                "--cache",
                str(cache),
                "--config",
                str(cfg),
                "--preset",
                "lungcvt_tiny",
            ]
        )
        == 2
    )
    assert "Nyquist" in _err(capsys)
    assert not cache.exists() or not any(cache.rglob("*.npz"))

    # unknown config key
    cfg.write_text("train:\n  learning_rate: 0.1\n")
    assert main(["features", "--data", str(syn_dir), "--cache", str(cache), "--config", str(cfg)]) == 2
    assert "learning_rate" in _err(capsys)

    # unreadable wav
    broken = tmp_path / "broken"
    shutil.copytree(syn_dir, broken)
    w = sorted(broken.glob("*.wav"))[0]
    w.write_bytes(b"not a wav at all")
    assert main(["features", "--data", str(broken), "--cache", str(tmp_path / "c2"), "--preset", "lungcvt_tiny"]) == 2
    assert f"{w.name}: unreadable WAV" in _err(capsys)

    # missing weights: fails before any feature work, naming the file and the flag
    empty = tmp_path / "weights"
    empty.mkdir()
    import os

    env = {k: os.environ.get(k) for k in ("LUNGCVT_WEIGHTS_DIR", "TORCH_HOME", "HF_HOME")}
    os.environ.update(LUNGCVT_WEIGHTS_DIR=str(empty), TORCH_HOME=str(empty), HF_HOME=str(empty))
    try:
        assert main(["train", "--data", str(syn_dir), "--out", str(tmp_path / "run"), "--offline"]) == 2
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    err = _err(capsys)
    assert "deit_base_patch16_224-b5f2ef4d.pth" in err and "--pretrained none" in err
    assert "--pretrained PATH" in err and "--weights" not in err  # the hint names a flag the CLI accepts
    assert not (tmp_path / "run" / "best.safetensors").exists()
    assert (
        main(["train", "--data", str(syn_dir), "--out", str(tmp_path / "run"), "--pretrained", str(empty / "x.pth")])
        == 2
    )
    assert "x.pth" in _err(capsys)


def test_train_evaluate_predict_resume(syn_dir, tmp_path, capsys):
    import csv

    from lungcvt.evaluate import load_model

    run = tmp_path / "run"
    cache = tmp_path / "cache"
    yaml = tmp_path / "o.yaml"
    yaml.write_text("train:\n  lr: 1e-3\n  cb_beta: 0.999\n")  # YAML 1.2 floats: 1e-3 is a number, not a string
    args = ["train", "--data", str(syn_dir), "--out", str(run), "--preset", "lungcvt_tiny", "--cache", str(cache)]
    args += ["--device", "cpu", "--config", str(yaml), "--precision", "fp32"]
    assert main(args + ["--epochs", "1"]) == 0
    assert (run / "best.safetensors").is_file() and (run / "last_state.pt").is_file()
    first = list(csv.DictReader(open(run / "history.csv")))
    assert len(first) == 1
    tj = json.loads((run / "train.json").read_text())
    assert tj["config"]["train"]["lr"] == 1e-3
    val = tj["split"]["validation"]
    assert val["method"] == "stratified_group_kfold" and all(n > 0 for n in val["train_counts"])
    assert tj["train_counts"] == val["train_counts"] and sum(val["val_counts"]) == tj["n_val"]
    assert tj["distributed"]["world_size"] == 1 and tj["distributed"]["effective_batch"] == 16
    assert tj["precision"]["requested"] == "fp32" and tj["precision"]["name"] == "fp32"
    assert tj["split"]["audio_by_device"]
    assert [n.split(":")[0] for n in tj["split"]["device_notes"]] == ["226_1b1_Pl_sc_LittC2SE"]  # the quirk
    assert "counted under LittC2SE" in tj["split"]["device_notes"][0]
    assert main(args + ["--epochs", "2"]) == 0  # resumes at epoch 2
    hist = list(csv.DictReader(open(run / "history.csv")))
    assert [h["epoch"] for h in hist] == ["1", "2"] and hist[0] == first[0]
    model, cfg, extra = load_model(run / "best.safetensors")
    assert cfg.name == "lungcvt_tiny" and extra["classes"] == ["normal", "crackle", "wheeze", "both"]
    # a changed config never resumes silently
    yaml.write_text("train:\n  lr: 2e-3\n")
    assert main(args + ["--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "config.train.lr" in err and "--no-resume" in err

    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(syn_dir), "--out", str(ev),
                 "--cache", str(cache), "--device", "cpu"]) == 0  # fmt: skip
    m = json.loads((ev / "metrics.json").read_text())
    assert {"icbhi", "macro_ovr", "two_class", "confusion_matrix", "by_device", "by_patient"} <= set(m)
    assert {"auroc_macro_ovr", "auroc_abnormal", "precision", "normal_bias", "audio_by_device"} <= set(m)
    assert all("auroc_abnormal" in d for d in m["by_device"].values())
    rows = list(csv.DictReader(open(ev / "predictions.csv")))
    assert len(rows) == m["n"] and (ev / "confusion_matrix.png").stat().st_size > 0
    # per-device numbers recomputed from the per-cycle predictions
    for dev, d in m["by_device"].items():
        mine = [r for r in rows if r["device"] == dev]
        assert d["n"] == len(mine) and d["accuracy"] == pytest.approx(
            sum(r["true"] == r["pred"] for r in mine) / len(mine)
        )
    assert sum(d["n"] for d in m["by_patient"].values()) == m["n"]
    for f in ("per_device.png", "per_patient.png", "per_device.csv", "per_patient.csv"):
        assert (ev / f).stat().st_size > 0

    wav = sorted(syn_dir.glob("*.wav"))[0]
    out = tmp_path / "pred"
    assert main(["predict", str(wav), "--checkpoint", str(run / "best.safetensors"), "--annotations",
                 str(wav.with_suffix(".txt")), "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    n_cycles = len([ln for ln in wav.with_suffix(".txt").read_text().splitlines() if ln.strip()])
    assert len(list(csv.DictReader(open(out / f"{wav.stem}_windows.csv")))) == n_cycles
    rec = json.loads((out / f"{wav.stem}.json").read_text())
    assert rec["n_windows"] == n_cycles and rec["pred"] in ("normal", "crackle", "wheeze", "both") and "true" in rec

    assert main(["predict", str(wav), "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_predict_on_real_files(icbhi_real, tmp_path, capsys):
    """Windows cover the whole of a real 4 kHz recording (the last one ends at the end of the file); annotated cycles
    on a real 44.1 kHz one; one JSON per recording."""
    import csv

    import soundfile as sf
    from lungcvt.config import get_config
    from lungcvt.model import LungCVT
    from medshared.checkpoint import save_checkpoint

    cfg = get_config("lungcvt_tiny")
    ck = tmp_path / "m.safetensors"
    save_checkpoint(ck, LungCVT(cfg.model).state_dict(), cfg.to_dict())
    litt = icbhi_real / "104_1b1_Ar_sc_Litt3200.wav"
    dur = sf.info(litt).duration  # 25.584 s
    assert main(["predict", str(litt), "--checkpoint", str(ck), "--window", "2.7", "--out", str(tmp_path / "w")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "w" / "104_1b1_Ar_sc_Litt3200_windows.csv")))
    assert len(rows) == int((dur - 2.7) // 1.35) + 2  # the hop grid plus a last window flush with the end
    assert float(rows[-1]["end"]) == pytest.approx(dur, abs=1e-3) and float(rows[-1]["start"]) == pytest.approx(
        dur - 2.7, abs=1e-3
    )
    rec = json.loads((tmp_path / "w" / "104_1b1_Ar_sc_Litt3200.json").read_text())
    assert rec["n_windows"] == len(rows) and rec["aggregate"] == "any" and rec["window_s"] == 2.7
    capsys.readouterr()
    stem = icbhi_real / "101_1b1_Al_sc_Meditron"
    assert main(["predict", f"{stem}.wav", "--annotations", f"{stem}.txt", "--checkpoint", str(ck)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n = len([ln for ln in stem.with_suffix(".txt").read_text().splitlines() if ln.strip()])
    assert len(lines) == n + 1 and lines[-1].startswith("101_1b1_Al_sc_Meditron: ")
