"""Training: resume from the saved state (identical to an uninterrupted run), stale results refused under another
config, per-worker augmentation, stage-1 key frames feeding the classifier, majority-rate chance."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from kfgnet.config import ClassifierTrainConfig, ClipConfig, MotionConfig
from kfgnet.data import ClipDataset, KeyFrame, read_manifest
from kfgnet.presets import get_classifier_config
from kfgnet.runstate import StaleRunError
from kfgnet.train import classifier_run_hash, cross_validate, majority_chance, train_classifier

CLIP = ClipConfig(num_frames=16, size=32)
CFG = get_classifier_config("kfgnet_tiny", size=32, dropout=0.0)


def test_resume_equals_an_uninterrupted_run_and_refuses_another_config(synth: Path, tmp_path: Path) -> None:
    recs = read_manifest(synth)[:4]
    ds = ClipDataset(recs, CLIP, CFG.attention_steps, augment=True)
    tcfg = ClassifierTrainConfig(epochs=1, epochs2=1, batch_size=4, seed=3)
    full = train_classifier(ds, CFG, tcfg, "cpu", progress=False, run_hash="h")
    state = tmp_path / "s.pt"
    # "interrupted" after epoch 1: the same schedule, stopped early, state saved
    train_classifier(ds, CFG, replace(tcfg, epochs2=0), "cpu", state_path=state, progress=False, run_hash="h")
    assert torch.load(state, weights_only=False)["epoch"] == 1
    log: list[dict] = []
    resumed = train_classifier(ds, CFG, tcfg, "cpu", state_path=state, progress=False, log=log, run_hash="h")
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["lr"] == 1e-4  # epoch 1 from the state, 2 trained
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)  # augmentation of epoch 2 drawn as uninterrupted
    with pytest.raises(StaleRunError, match="--restart"):
        train_classifier(ds, CFG, tcfg, "cpu", state_path=state, progress=False, run_hash="other")
    log2: list[dict] = []
    train_classifier(ds, CFG, tcfg, "cpu", state_path=state, progress=False, log=log2, run_hash="other", restart=True)
    assert [r["epoch"] for r in log2] == [1, 2]  # started over


def test_cross_validation_refuses_stale_folds(synth: Path, tmp_path: Path) -> None:
    recs = read_manifest(synth)
    tcfg = ClassifierTrainConfig(epochs=1, epochs2=0, batch_size=4, folds=2)
    cv = cross_validate(recs, CFG, tcfg, CLIP, "cpu", out_dir=tmp_path, progress=False, n_boot=50)
    fold0 = json.loads((tmp_path / "fold0.json").read_text())
    assert fold0["config_hash"] and set(cv["pooled"]) >= {"accuracy", "sensitivity", "specificity", "auroc"}
    assert 0 <= cv["pooled"]["auroc"]["ci_low"] <= cv["pooled"]["auroc"]["value"] <= cv["pooled"]["auroc"]["ci_high"]
    again = cross_validate(recs, CFG, tcfg, CLIP, "cpu", out_dir=tmp_path, progress=False, n_boot=50)
    assert again["predictions"] == cv["predictions"]  # same config: finished folds reused
    with pytest.raises(StaleRunError, match="fold0.json was made under another config"):
        cross_validate(recs, CFG, replace(tcfg, epochs=2), CLIP, "cpu", out_dir=tmp_path, progress=False)
    redo = cross_validate(
        recs, CFG, replace(tcfg, epochs=2), CLIP, "cpu", out_dir=tmp_path, progress=False, restart=True, n_boot=50
    )
    assert (
        len(redo["folds"][0])
        and json.loads((tmp_path / "fold0.json").read_text())["config_hash"] != fold0["config_hash"]
    )


def test_run_hash_covers_key_frames(synth: Path) -> None:
    recs = read_manifest(synth)[:2]
    keys = [KeyFrame(r.key_frame, tuple(r.boxes[r.key_frame]), "annotation") for r in recs]
    h = classifier_run_hash(CFG, ClassifierTrainConfig(), CLIP, MotionConfig(), recs, keys)
    moved = [replace(keys[0], frame=keys[0].frame + 1), keys[1]]
    assert h != classifier_run_hash(CFG, ClassifierTrainConfig(), CLIP, MotionConfig(), recs, moved)


def test_augmentation_differs_per_worker_and_epoch(synth: Path) -> None:
    """Identical clips through 2 workers over 2 epochs: with a generator made in the dataset's __init__, every
    worker and every epoch drew the same flips / intensity shifts, so the outputs repeated."""
    from medshared.runtime import seed_everything
    from torch.utils.data import DataLoader

    rec = read_manifest(synth)[0]
    ds = ClipDataset([rec] * 8, CLIP, CFG.attention_steps, augment=True, flip_prob=0.5, intensity_prob=1.0)
    seed_everything(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    epochs = [[x[0] for x, _, _ in loader] for _ in range(2)]
    outs = [o for ep in epochs for o in ep]
    distinct = {round(float(o.sum()), 3) for o in outs}
    assert len(distinct) >= 12  # 16 draws of a continuous intensity scale: (almost) all different
    assert not torch.equal(epochs[0][0], epochs[0][1])  # first item of worker 0 vs worker 1
    assert not torch.equal(epochs[0][0], epochs[1][0])  # epoch 1 vs epoch 2


def test_stage1_keyframes_feed_the_classifier(synth: Path, tmp_path: Path) -> None:
    """A keyframes.csv (stage 1's output) moves the clips: the dataset centres on its frames and crops its boxes,
    and videos without a detection take the whole-frame fallback."""
    from kfgnet.pipeline import KeyFramePrediction, read_keyframes_csv, write_keyframes_csv

    recs = read_manifest(synth)[:3]
    n = [len(__import__("kfgnet.data", fromlist=["read_video"]).read_video(r.path)) for r in recs]
    preds = [
        KeyFramePrediction(str(recs[0].path), 3, (10.0, 12.0, 30.0, 34.0), 0.9, "stage1", n[0]),
        KeyFramePrediction(str(recs[1].path), n[1] - 2, (5.0, 5.0, 25.0, 25.0), 0.8, "stage1", n[1]),
        KeyFramePrediction(str(recs[2].path), (n[2] - 1) // 2, None, None, "fallback_middle", n[2]),
    ]
    write_keyframes_csv(preds, tmp_path / "keyframes.csv")
    keys = read_keyframes_csv(tmp_path / "keyframes.csv", recs)
    assert [k.frame for k in keys] == [3, n[1] - 2, (n[2] - 1) // 2]
    assert keys[0].box == (10.0, 12.0, 30.0, 34.0) and keys[2].box is None and keys[2].source == "fallback_middle"
    ds = ClipDataset(recs, CLIP, CFG.attention_steps, keys=keys)
    ann = ClipDataset(recs, CLIP, CFG.attention_steps)
    assert not np.array_equal(ds.clips[0], ann.clips[0])
    from kfgnet.data import clip_indices, cut_clip, read_video

    frames = read_video(recs[0].path)
    idx, pos = clip_indices(len(frames), 3, CLIP)
    np.testing.assert_array_equal(ds.clips[0], cut_clip(frames, idx, 32, (10.0, 12.0, 30.0, 34.0)))
    with pytest.raises(ValueError, match="no row in"):
        read_keyframes_csv(tmp_path / "keyframes.csv", read_manifest(synth)[:4])


def test_short_videos_padded_with_warning_or_refused(synth: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kfgnet.data import DataError

    recs = read_manifest(synth)[:1]
    with caplog.at_level("WARNING", logger="kfgnet"):
        ds = ClipDataset(recs, ClipConfig(num_frames=64, size=32, min_frames=8), 16)
    assert ds.padded == [recs[0].name] and "repeat-padded" in caplog.text
    with pytest.raises(DataError, match="shorter than the 64-frame clip"):
        ClipDataset(recs, ClipConfig(num_frames=64, size=32), 16, allow_pad=False)
    with pytest.raises(DataError, match="fewer than clip.min_frames = 60"):
        ClipDataset(recs, ClipConfig(num_frames=64, size=32, min_frames=60), 16)


def test_majority_chance() -> None:
    assert majority_chance(np.array([1, 1, 0]), np.array([1, 0, 0, 0])) == 0.25
    assert majority_chance(np.array([0, 0, 1]), np.array([1, 0, 0, 0])) == 0.75
