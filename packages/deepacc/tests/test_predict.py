"""Prediction: folders with the model loaded once, all unreadable images reported first, the karyotype prior."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deepacc.config import create_config
from deepacc.data import load_dataset
from deepacc.karyotype import assign_karyotype, karyotype_slots
from deepacc.synthetic import SynthConfig, write_synthetic


def _probs(top: list[int], second: list[int] | None = None, p1: float = 0.8, p2: float = 0.15) -> np.ndarray:
    probs = np.full((len(top), 25), 0.05 / 23)
    for i, c in enumerate(top):
        probs[i, c] = p1
        if second is not None:
            probs[i, second[i]] = p2
    return probs / probs.sum(1, keepdims=True)


def test_karyotype_prior_moves_the_third_copy_to_its_second_choice() -> None:
    top = [c for c in range(1, 23) for _ in range(2)] + [23, 24]
    second = [c % 22 + 1 for c in top]
    top[3], second[3] = 1, 2  # a third "1" whose second choice is 2 (the true class of that slot)
    probs = _probs(top, second)
    probs[3, 1], probs[3, 2] = 0.5, 0.45  # uncertain between 1 and 2
    labels, assigned, sex = assign_karyotype(probs)
    assert assigned.all() and sex == "XY"
    assert labels[3] == 2 and np.bincount(labels, minlength=25)[1:23].tolist() == [2] * 22
    assert sorted(labels.tolist()) == sorted(karyotype_slots("XY").tolist())


def test_karyotype_prior_sex_and_surplus_detections() -> None:
    top = [c for c in range(1, 23) for _ in range(2)] + [23, 23]
    labels, assigned, sex = assign_karyotype(_probs(top))
    assert sex == "XX" and (labels == np.array(top)).all()
    extra = _probs([*top, 5, 5])  # two surplus detections: no slot left, they keep their top-1 class
    labels, assigned, _ = assign_karyotype(extra)
    assert assigned.sum() == 46 and (labels[~assigned] == 5).all()
    labels, assigned, _ = assign_karyotype(np.zeros((0, 25)))
    assert labels.shape == (0,)
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        assign_karyotype(np.zeros((3, 24)))


def test_apply_prior_takes_the_class_specific_box() -> None:
    from deepacc.evaluate import apply_karyotype_prior

    k = 25
    scores = torch.tensor(_probs([1, 1, 1], [2, 2, 2]), dtype=torch.float32)
    scores[2, 1], scores[2, 2] = 0.4, 0.55 - 1e-3  # third RoI: 1 by a hair, 2 close behind
    boxes = torch.zeros(3, k, 4)
    boxes[:, :, 2:] = 10.0
    boxes[2, 2] = torch.tensor([1.0, 2.0, 11.0, 12.0])  # the RoI's box for class 2
    det = {"boxes": boxes[[0, 1, 2], [1, 1, 1]].numpy(), "labels": np.array([1, 1, 1]),
           "scores": scores[:, 1].numpy(), "roi_indices": np.array([0, 1, 2])}  # fmt: skip
    out = apply_karyotype_prior([(boxes, scores)], [det])[0]
    assert out["labels"].tolist() == [1, 1, 2]
    assert out["boxes"][2].tolist() == [1.0, 2.0, 11.0, 12.0] and out["scores"][2] == pytest.approx(0.549, abs=1e-3)
    with pytest.raises(ValueError, match="two-stage"):
        apply_karyotype_prior([{"boxes": torch.zeros(0, 4)}], [det])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from deepacc.train import train

    root = tmp_path_factory.mktemp("pred")
    path = write_synthetic(root / "data", 3, seed=5, cfg=SynthConfig(height=96, width=96, scale=0.22),
                           source="procedural")  # fmt: skip
    cfg = create_config("deepacc_tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, min_size=96, max_size=96,
                              box_batch_size_per_image=32), train=dataclasses.replace(cfg.train, epochs=1))  # fmt: skip
    train(cfg, load_dataset(path), root / "run", progress=False, log=lambda m: None)
    return {"root": root, "images": root / "data" / "images", "ckpt": root / "run" / "model.safetensors"}


def test_predict_folder_loads_the_model_once(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepacc.train
    from deepacc.cli import main

    calls = []
    real = deepacc.train.load_model
    monkeypatch.setattr(deepacc.train, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = tmp_path / "pred"
    assert main(["predict", str(trained["images"]), "--checkpoint", str(trained["ckpt"]), "--out", str(out),
                 "--score-thresh", "0.0", "--karyotype-prior", "--quiet"]) == 0  # fmt: skip
    assert len(calls) == 1
    stems = sorted(p.stem for p in trained["images"].glob("*.png"))
    assert len(stems) == 3
    for stem in stems:
        det = json.loads((out / f"{stem}_detections.json").read_text())
        assert det["karyotype_prior"] and det["n_detections"] > 0
        assert all("prior_assigned" in d for d in det["detections"])
        counts = np.bincount([d["class_id"] for d in det["detections"] if d["prior_assigned"]], minlength=25)
        assert counts[1:23].max() <= 2 and counts[23] + counts[24] <= 2  # the prior's constraint
        assert (out / f"{stem}_overlay.png").is_file() and (out / f"{stem}_karyogram.png").is_file()


def test_predict_reports_every_unreadable_image_before_writing(trained: dict, tmp_path: Path, capsys) -> None:
    import shutil

    from deepacc.cli import main

    folder = tmp_path / "imgs"
    shutil.copytree(trained["images"], folder)
    (folder / "broken1.png").write_bytes(b"not a png")
    (folder / "broken2.jpg").write_bytes(b"nor a jpeg")
    out = tmp_path / "pred"
    assert main(["predict", str(folder), "--checkpoint", str(trained["ckpt"]), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 of 5 images cannot be read" in err and "broken1.png" in err and "broken2.jpg" in err
    assert not out.exists()
    assert main(["predict", str(tmp_path / "missing.png"), "--checkpoint", str(trained["ckpt"]), "--out",
                 str(out)]) == 1  # fmt: skip


def test_predict_16bit_needs_the_flag(trained: dict, tmp_path: Path, capsys) -> None:
    from deepacc.cli import main
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(sorted(trained["images"].glob("*.png"))[:2]):
        a = np.asarray(Image.open(p).convert("L"), np.uint16) * 40
        Image.fromarray(a).save(folder / f"m{i}{'.tif' if i else '.png'}")
    out = tmp_path / "pred"
    args = ["predict", str(folder), "--checkpoint", str(trained["ckpt"]), "--out", str(out), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 of 2 images cannot be read" in err and "--rescale-16bit" in err
    assert f"{folder / 'm0.png'} is 16-bit (uint16)" in err and f"{folder / 'm1.tif'} is 16-bit (uint16)" in err
    assert not out.exists()
    assert main([*args, "--rescale-16bit"]) == 0
    cap = capsys.readouterr()
    assert (
        f"--rescale-16bit: rescaled 2 of 2 images (uint16) to 0-255, each by its own maximum: {folder / 'm0.png'}"
        in cap.out
    )
    assert "trained without --rescale-16bit" in cap.err  # the checkpoint's setting differs: a note, not followed
    assert json.loads((out / "m1_detections.json").read_text())["rescaled_from"] == "uint16"
