from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from pocapnet.cli import main
from pocapnet.evaluate import evaluate_operations, majority_rate, operation_metrics
from pocapnet.features import load_feature_operation
from pocapnet.model import PoCaPNet
from pocapnet.train import fit, load_model, model_config_for_features, run_operation, split_operations


def test_operation_metrics_drop_transitions_worked_example():
    y = np.array([0, 0, 8, 1, 1, 1])
    p = np.array([0, 1, 0, 1, 1, 8])
    m = operation_metrics(y, p)
    # 5 scored frames: correct 0,1,1 of [0,0,1,1,1] -> 3/5; predicting Transition counts as an error
    assert m["accuracy"] == pytest.approx(0.6) and m["seconds"] == 5
    chance = majority_rate([np.array([1, 1, 1, 0, 8, 8, 8, 8])], [y])
    assert chance["phase"] == "Puncture" and chance["accuracy"] == pytest.approx(0.6)


def test_split_is_seeded_and_by_operation(tiny_cfg):
    ops = [f"OP_{i:03d}" for i in range(1, 11)]
    a, b = split_operations(ops, tiny_cfg), split_operations(ops, tiny_cfg)
    assert a == b and sorted(sum(a.values(), [])) == ops
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (6, 2, 2)
    real = [f"OP_{i:03d}" for i in range(1, 41)]
    off = split_operations(real, tiny_cfg, "official")
    assert (len(off["train"]), len(off["val"]), len(off["test"])) == (16, 6, 5) and "OP_028" in off["test"]
    with pytest.raises(ValueError, match="without features"):
        split_operations(ops, tiny_cfg, "official")


def _model(cfg, feats, **kw):
    cfg = model_config_for_features(cfg, load_feature_operation(feats, "OP_001"))
    return PoCaPNet(dataclasses.replace(cfg.model, **kw)).eval()


def test_memory_reset_between_operations(syn_feats, tiny_cfg):
    model = _model(tiny_cfg, syn_feats)
    f1, f2 = load_feature_operation(syn_feats, "OP_001"), load_feature_operation(syn_feats, "OP_002")
    with torch.no_grad():
        alone = run_operation(model, f2, 8, "cpu")["prob"]
        run_operation(model, f1, 8, "cpu")
        after = run_operation(model, f2, 8, "cpu")["prob"]
    np.testing.assert_allclose(alone, after, rtol=1e-5, atol=1e-6)


def test_fit_resume_and_evaluate(syn_feats, tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_epochs=2, batch_size=16))
    split = {"train": ["OP_001", "OP_002"], "val": ["OP_003"], "test": ["OP_004"]}
    res = fit(syn_feats, tmp_path, cfg, split, "cpu", progress=False)
    assert len(res["history"]) == 2 and (tmp_path / "best.safetensors").is_file()
    # resume: more epochs continue from last.pt instead of starting over
    cfg3 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=3))
    res3 = fit(syn_feats, tmp_path, cfg3, split, "cpu", progress=False)
    assert [h["epoch"] for h in res3["history"]] == [0, 1, 2]
    assert res3["history"][:2] == res["history"][:2]
    model, cfg_loaded, extra = load_model(tmp_path / "best.safetensors")
    assert cfg_loaded.model.image_dim == 32 and extra["split"]["test"] == ["OP_004"]
    ev = evaluate_operations(model, syn_feats, ["OP_004"], 16)
    assert 0.0 <= ev["summary"]["accuracy"]["mean"] <= 1.0
    assert ev["confusion"].shape == (9, 9) and ev["confusion"][8].sum() == 0


def _cli(cmd: str) -> int:
    return main(cmd.split())


def test_cli_smoke_and_bad_inputs(syn_data, syn_feats, tmp_path, capsys):
    d, ck = tmp_path / "d", tmp_path / "run" / "best.safetensors"
    assert _cli(f"make-synthetic --out {d} --n-ops 1 --seconds 16 16") == 0
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"parts": {"train": ["OP_001", "OP_002"], "val": ["OP_003"], "test": ["OP_004"]}}))
    cfgfile = tmp_path / "o.yaml"
    cfgfile.write_text("train:\n  max_epochs: 1\n  batch_size: 16\n")
    assert (
        _cli(
            f"train --features {syn_feats} --out {ck.parent} --preset pocapnet_tiny --config {cfgfile} "
            f"--split {split} --device cpu"
        )
        == 0
    )
    assert _cli(f"evaluate --checkpoint {ck} --features {syn_feats} --out {tmp_path / 'ev'}") == 0
    assert (tmp_path / "ev" / "test_metrics.json").is_file() and (tmp_path / "ev" / "test_ribbons.png").is_file()
    assert (tmp_path / "ev" / "test_per_phase.csv").read_text().startswith("phase,precision,recall,f1,jaccard")
    assert (
        _cli(
            f"predict --checkpoint {ck} --op {syn_data / 'OP_004'} --features {syn_feats / 'OP_004'} "
            f"--out {tmp_path / 'p1'}"
        )
        == 0
    )
    assert _cli(f"predict --checkpoint {ck} --op {d / 'OP_001'} --stream --quiet --out {tmp_path / 'p2'}") == 0
    rows = (tmp_path / "p2" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("second,phase") and len(rows) == 17
    # wav2vec2 in float32 (the default follows the checkpoint: bf16 only where the hardware has it)
    assert _cli(f"predict --checkpoint {ck} --op {d / 'OP_001'} --stream --quiet --fp32 --out {tmp_path / 'p2f'}") == 0
    assert len((tmp_path / "p2f" / "predictions.csv").read_text().splitlines()) == 17
    # whole-operation predict from the raw files (features extracted on the fly into a temporary folder)
    assert _cli(f"predict --checkpoint {ck} --op {d / 'OP_001'} --quiet --out {tmp_path / 'p4'}") == 0
    assert len((tmp_path / "p4" / "predictions.csv").read_text().splitlines()) == 17
    # extract CLI: pooled fp16 features (349x smaller audio arrays)
    assert _cli(f"extract --data {d} --out {tmp_path / 'fp'} --preset pocapnet_tiny --pooled --fp16 --device cpu") == 0
    pooled = load_feature_operation(tmp_path / "fp", "OP_001")
    assert pooled.audio[0].shape == (16, 1, 32) and pooled.audio[0].dtype == np.float16
    assert pooled.meta["audio_frames"] == 1
    capsys.readouterr()
    # bad inputs: one clear message, non-zero, no output written
    assert _cli(f"train --features {tmp_path / 'missing'} --out {tmp_path / 'x'}") == 1
    assert "run `pocapnet extract` first" in capsys.readouterr().err
    assert (
        _cli(f"evaluate --checkpoint {tmp_path / 'nope.safetensors'} --features {syn_feats} --out {tmp_path / 'x2'}")
        == 1
    )
    assert "checkpoint not found" in capsys.readouterr().err
    (d / "OP_001" / "Channel_3.wav").unlink()
    assert _cli(f"predict --checkpoint {ck} --op {d / 'OP_001'} --out {tmp_path / 'p3'}") == 1
    assert "Channel_3.wav" in capsys.readouterr().err and not (tmp_path / "p3").exists()
    assert (
        _cli(
            f"extract --data {d} --out {tmp_path / 'f'} --xray-weights {tmp_path / 'missing.pt'} --wav2vec2 tiny-random"
        )
        == 1
    )
    assert "missing.pt" in capsys.readouterr().err
    assert _cli(f"train --features {syn_feats} --out {tmp_path / 'x3'} --preset nope") == 1
    assert "valid names" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr_typo: 1\n")
    assert _cli(f"train --features {syn_feats} --out {tmp_path / 'x4'} --config {bad}") == 1
    assert "lr_typo" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_beats_chance(tmp_path):
    from pocapnet.demo import run_demo

    m = run_demo(tmp_path, device="cpu", seed=0, quick=True)
    head = m["headline"]
    assert head["value"] > head["chance"] + 0.3, head
    # the model reads its inputs: shuffling each test operation's features in time destroys the accuracy
    assert m["control_inputs_shuffled_accuracy"]["mean"] < head["value"] - 0.15, m["control_inputs_shuffled_accuracy"]
    for f in ("metrics.json", "report.md", "test_ribbons.png", "test_confusion.png", "loss_curves.png"):
        assert (tmp_path / f).is_file()
