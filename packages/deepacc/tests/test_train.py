"""Training loop: validation + best checkpoint, mid-epoch resume equal to an uninterrupted run, resume refused under
a changed config, nothing left behind on failure, train.json, umask-respecting outputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from deepacc.config import create_config
from deepacc.data import load_dataset
from deepacc.synthetic import SynthConfig, write_synthetic
from deepacc.train import load_model, train


def tiny_cfg(**train_kw: object):
    cfg = create_config("deepacc_tiny")
    model = dataclasses.replace(cfg.model, min_size=96, max_size=96, box_batch_size_per_image=32,
                                rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=30)  # fmt: skip
    t = dict(epochs=2, batch_size=2, warmup_iters=2, milestones=(1,), checkpoint_every=2)
    t.update(train_kw)
    return dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, **t))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("tr")
    return load_dataset(write_synthetic(out, 6, seed=2, cfg=SynthConfig(height=96, width=96, scale=0.22),
                                        source="procedural"))  # fmt: skip


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_mid_epoch_resume_equals_uninterrupted_run(samples, tmp_path: Path) -> None:
    cfg = tiny_cfg()  # 3 iterations per epoch, resume points every 2 iterations
    full, _ = train(cfg, samples, tmp_path / "full", progress=False, log=lambda m: None)
    part, _ = train(cfg, samples, tmp_path / "part", progress=False, log=lambda m: None, stop_after_iters=5)
    st = torch.load(tmp_path / "part" / "train_state.pt", weights_only=False)
    assert (st["epoch"], st["batch"], st["iteration"]) == (1, 1, 4)  # saved mid-epoch 2, after iteration 4
    msgs: list[str] = []
    resumed, hist = train(cfg, samples, tmp_path / "part", progress=False, log=msgs.append)
    assert any("batch 1" in m for m in msgs)
    assert [r["epoch"] for r in hist] == [1, 2]
    a, b = _weights(full), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_validation_every_epoch_keeps_best_checkpoint(samples, tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=3)
    _, hist = train(cfg, samples[:4], tmp_path / "r", progress=False, val_samples=samples[4:], log=lambda m: None)
    assert all("val_map50" in r and "val_acc" in r for r in hist)
    best = max(range(3), key=lambda i: hist[i]["val_map50"])
    _, _, extra = load_model(tmp_path / "r" / "best.safetensors")
    assert extra["epoch"] == best + 1 and extra["val_map50"] == pytest.approx(hist[best]["val_map50"])
    info = json.loads((tmp_path / "r" / "train.json").read_text())
    assert info["world_size"] == 1 and info["effective_batch"] == 2 and info["lr_rule"] == "literal"
    assert info["lr"] == pytest.approx(0.02) and "BatchNorm" in info["batchnorm"]


def test_resume_refused_under_changed_config(samples, tmp_path: Path) -> None:
    train(tiny_cfg(epochs=1), samples, tmp_path / "r", progress=False, log=lambda m: None)
    more = tiny_cfg(epochs=2)  # more epochs: allowed
    _, hist = train(more, samples, tmp_path / "r", progress=False, log=lambda m: None)
    assert [r["epoch"] for r in hist] == [1, 2]
    changed = dataclasses.replace(more, model=dataclasses.replace(more.model, delta=0.7))
    with pytest.raises(ValueError, match=r"model\.delta: 0\.5 -> 0\.7.*--no-resume"):
        train(changed, samples, tmp_path / "r", progress=False, log=lambda m: None)


def test_failed_run_leaves_nothing_behind(samples, tmp_path: Path) -> None:
    cfg = tiny_cfg(lr=1e9, grad_clip=0.0, warmup_iters=0)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train(cfg, samples, tmp_path / "boom", progress=False, log=lambda m: None)
    assert not (tmp_path / "boom").exists()


def test_outputs_respect_umask(samples, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        train(tiny_cfg(epochs=1), samples[:2], tmp_path / "r", progress=False, log=lambda m: None)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "r").iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "train_state.pt", "history.csv", "config.json",
                                        "train.json"}  # fmt: skip
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o640, (p.name, oct(p.stat().st_mode))


def test_lr_rules() -> None:
    from deepacc.train import effective_lr

    paper = create_config("deepacc_r101")
    assert (paper.model.min_size, paper.model.max_size) == (1200, 1600)  # the paper's 1600x1200 images, native
    linear = paper.train  # pretrained R101: mmdet's 0.02 per 16 images, scaled linearly
    assert linear.lr_scaling == "linear" and effective_lr(linear) == pytest.approx(0.02 / 16)
    assert effective_lr(linear, world_size=8) == pytest.approx(0.02 * 8 / 16)
    literal = dataclasses.replace(linear, lr_scaling="literal")  # the random-init tiny config's rule
    assert effective_lr(literal) == pytest.approx(0.02) and effective_lr(literal, world_size=8) == pytest.approx(0.02)
    assert create_config("deepacc_tiny").train.lr_scaling == "literal"


def _as_16bit(samples: list, folder: Path) -> list:
    """The samples with their images saved as 16-bit grey TIFFs (value x 200)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    out = []
    for s in samples:
        p = folder / f"{s.image_path.stem}.tif"
        Image.fromarray(np.asarray(Image.open(s.image_path).convert("L"), np.uint16) * 200).save(p)
        out.append(dataclasses.replace(s, image_path=p))
    return out


def test_16bit_images_need_the_flag_which_is_logged_and_recorded(samples, tmp_path: Path) -> None:
    from deepacc.data import DataError

    s16 = _as_16bit(samples, tmp_path / "img16")
    with pytest.raises(DataError, match=r"(?s)^6 of 6 images cannot be used.*img16/.*16-bit.*--rescale-16bit"):
        train(tiny_cfg(epochs=1), s16, tmp_path / "r", progress=False, log=lambda m: None)
    assert not (tmp_path / "r").exists()  # refused before anything is written
    msgs: list[str] = []
    train(tiny_cfg(epochs=1), s16, tmp_path / "r", progress=False, log=msgs.append, rescale_16bit=True)
    assert any(m.startswith("--rescale-16bit: rescaled 6 of 6 images (uint16)") for m in msgs)
    info = json.loads((tmp_path / "r" / "train.json").read_text())
    assert info["rescale_16bit"] is True and info["rescaled_images"] == 6
    assert load_model(tmp_path / "r" / "model.safetensors")[2]["rescale_16bit"] is True


def test_resume_refused_with_another_rescale_setting(samples, tmp_path: Path) -> None:
    train(tiny_cfg(epochs=1), samples, tmp_path / "r", progress=False, log=lambda m: None, rescale_16bit=True)
    assert json.loads((tmp_path / "r" / "train.json").read_text())["rescaled_images"] == 0  # 8-bit: none rescaled
    with pytest.raises(ValueError, match=r"run with --rescale-16bit.*resume with it, or use --no-resume"):
        train(tiny_cfg(epochs=2), samples, tmp_path / "r", progress=False, log=lambda m: None)
