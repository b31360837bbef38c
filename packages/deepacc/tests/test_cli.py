"""CLI smoke tests: make-synthetic -> train (+ resume) -> evaluate -> predict, and bad inputs (non-zero, no output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deepacc.cli import main

TINY_YAML = """
base: deepacc_tiny
model:
  min_size: 160
  max_size: 160
  box_batch_size_per_image: 32
  rpn_post_nms_top_n_train: 100
  rpn_post_nms_top_n_test: 60
train:
  epochs: 1
  batch_size: 2
  warmup_iters: 2
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    assert main(["make-synthetic", "--out", str(data), "--n-images", "2", "--height", "160", "--width", "160",
                 "--source", "procedural", "--seed", "3"]) == 0  # fmt: skip
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = root / "run"
    args = ["train", "--data", str(data / "annotations.json"), "--out", str(out), "--model", "deepacc_tiny",
            "--config", str(cfg), "--pretrained", "none", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return {"root": root, "data": data, "cfg": cfg, "out": out, "args": args}  # type: ignore[dict-item]


def test_train_writes_checkpoint_and_resumes(run: dict) -> None:
    out = run["out"]
    assert (out / "model.safetensors").is_file() and (out / "train_state.pt").is_file()
    assert (out / "history.csv").read_text().count("\n") == 2  # header + 1 epoch
    # resume: a second call with 2 epochs continues at epoch 2 instead of starting over
    assert main([*run["args"], "--epochs", "2"]) == 0
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("2,")


def test_evaluate_and_predict(run: dict) -> None:
    ev = run["root"] / "eval"
    ckpt = str(run["out"] / "model.safetensors")
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(run["data"]), "--out", str(ev), "--quiet", "--coco",
                 "--karyotype-prior"]) == 0  # fmt: skip
    m = json.loads((ev / "metrics.json").read_text())
    for key in ("map50", "map50_max", "acc", "aer", "wcr", "chance", "coco", "acc_prior", "aer_prior"):
        assert key in m
    assert 0.0 <= m["coco"]["map"] <= m["coco"]["map50"] <= 1.0
    assert (ev / "per_class_ap.csv").is_file()
    # issue 20 / 22: margin_health, class-agnostic AP, both caps; the precision auto chose is recorded in train.json
    assert set(m["margin_health"]) >= {"own_class_cos", "centre_pairwise_cos", "template_local_fraction", "collapsed"}
    assert 0.0 <= m["class_agnostic_ap50"] <= 1.0 and set(m["map50_at"]) == {"100", "300"}
    # a higher cap only appends lower-scored detections (AP cannot fall); the config's own cap is the headline map50
    assert m["map50_at"]["300"] >= m["map50_at"]["100"] - 1e-12
    assert m["map50_at"][str(m["detections_per_img"])] == pytest.approx(m["map50"])
    tj = json.loads((run["out"] / "train.json").read_text())
    assert tj["precision"]["requested"] == "auto" and tj["precision"]["name"] in ("fp32", "bf16") and tj["workers"] == 0
    assert "own_class_cos" in (run["out"] / "history.csv").read_text().splitlines()[0]
    # --amp is --precision bf16: contradicting it is an error naming both
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(run["data"]), "--out", str(ev), "--amp",
                 "--precision", "fp32"]) == 1  # fmt: skip
    img = sorted((run["data"] / "images").glob("*.png"))[0]
    pr = run["root"] / "pred"
    assert main(["predict", str(img), "--checkpoint", ckpt, "--out", str(pr), "--score-thresh", "0.0"]) == 0
    det = json.loads((pr / f"{img.stem}_detections.json").read_text())
    assert det["width"] == 160 and isinstance(det["detections"], list)
    pr16 = run["root"] / "pred_bf16"  # --amp: bf16 weights cast once
    assert main(["predict", str(img), "--checkpoint", ckpt, "--out", str(pr16), "--score-thresh", "0.0", "--amp"]) == 0
    det16 = json.loads((pr16 / f"{img.stem}_detections.json").read_text())
    n32, n16 = det["n_detections"], det16["n_detections"]
    assert det16["width"] == 160 and abs(n16 - n32) <= max(2, n32 // 4)
    assert (pr / f"{img.stem}_overlay.png").is_file() and (pr / f"{img.stem}_karyogram.png").is_file()


def test_evaluate_16bit_data_needs_the_flag(run: dict, tmp_path: Path, capsys) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "data16"
    shutil.copytree(run["data"], data)
    img = sorted((data / "images").glob("*.png"))[0]
    Image.fromarray(np.asarray(Image.open(img).convert("L"), np.uint16) * 100).save(img)  # 16-bit PNG, same name
    ckpt = str(run["out"] / "model.safetensors")
    args = ["evaluate", "--checkpoint", ckpt, "--data", str(data), "--out", str(tmp_path / "ev"), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 2 images cannot be used" in err and f"{img}: is 16-bit (uint16), not 8-bit" in err
    assert "--rescale-16bit" in err and not (tmp_path / "ev").exists()
    assert main([*args, "--rescale-16bit"]) == 0
    err = capsys.readouterr().err
    assert f"--rescale-16bit: rescaled 1 of 2 images (uint16) to 0-255, each by its own maximum: {img}" in err
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_predict_real_metaphase(run: dict) -> None:
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "chromosome" / "A.tif").is_file():
        pytest.skip("../shared/data/chromosome/A.tif absent")
    pr = run["root"] / "pred_real"
    ckpt = str(run["out"] / "model.safetensors")
    assert main(["predict", str(root / "chromosome" / "A.tif"), "--checkpoint", ckpt, "--out", str(pr),
                 "--score-thresh", "0.0"]) == 0  # fmt: skip
    det = json.loads((pr / "A_detections.json").read_text())
    assert (det["width"], det["height"]) == (1600, 1200)
    for d in det["detections"]:  # boxes in original 1600x1200 pixels
        x1, y1, x2, y2 = d["box_xyxy"]
        assert 0 <= x1 < x2 <= 1600 and 0 <= y1 < y2 <= 1200 and d["class_name"]
    assert (pr / "A_karyogram.png").is_file()


def test_bad_inputs_return_nonzero_without_output(run: dict, tmp_path: Path, capsys) -> None:
    ckpt = str(run["out"] / "model.safetensors")
    # unreadable image
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), "--checkpoint", ckpt, "--out", str(tmp_path / "p1")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "p1").exists() or not any((tmp_path / "p1").iterdir())
    # missing image / missing checkpoint
    assert main(["predict", str(tmp_path / "nope.png"), "--checkpoint", ckpt, "--out", str(tmp_path / "p2")]) == 1
    assert "image not found" in capsys.readouterr().err
    img = sorted((run["data"] / "images").glob("*.png"))[0]
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    # corrupt checkpoint
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path)]) == 1
    # missing dataset, unknown config key, missing backbone weights
    assert main(["train", "--data", str(tmp_path / "none.json"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "dataset not found" in err and "make-synthetic" in err  # the thing and a fix
    yaml = tmp_path / "bad.yaml"
    yaml.write_text("model:\n  marginn: 0.3\n")
    assert main(["train", "--data", str(run["data"]), "--out", str(tmp_path / "r"), "--config", str(yaml)]) == 1
    assert "marginn" in capsys.readouterr().err
    assert main(["train", "--data", str(run["data"]), "--out", str(tmp_path / "r"), "--model", "deepacc_r101",
                 "--pretrained", str(tmp_path / "missing.pth")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "resnet101-63fe2227.pth" in err and "--pretrained none" in err
    assert not (tmp_path / "r" / "model.safetensors").exists()
    # no command -> usage
    assert main([]) == 2


def test_make_synthetic_bad_count(tmp_path: Path) -> None:
    assert main(["make-synthetic", "--out", str(tmp_path / "s"), "--n-images", "0"]) == 1
