"""End to end: raw recordings -> ingest -> extract -> train -> evaluate --stream; checkpoints that carry their
feature settings and weights identity (pooled features through every command; mismatches refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pocapnet.cli import main
from pocapnet.rawsynth import make_raw_operation


def _split(path, train, val, test):
    path.write_text(json.dumps({"parts": {"train": train, "val": val, "test": test}}))
    return str(path)


def _tiny_overrides(path, **train):
    t = {"max_epochs": 1, "batch_size": 8, **train}
    path.write_text("train:\n" + "".join(f"  {k}: {v}\n" for k, v in t.items()))
    return str(path)


def _cli(cmd: str) -> int:
    return main(cmd.split())


def test_raw_recordings_to_streamed_evaluation(tmp_path, capsys):
    data, feats, run = tmp_path / "data", tmp_path / "feats", tmp_path / "run"
    for i in range(4):
        op = f"OP_{i + 1:03d}"
        raw = make_raw_operation(
            tmp_path / f"raw{i}", seconds=12, seed=20 + i, xray="video" if i % 2 else "dicom", frame_size=32, op=op
        )
        h, a = raw["headsets"], raw["ambient"]
        assert (
            _cli(
                f"ingest --out {data} --op {op} --channel physician={h}:0 --channel assistant={h}:1 --channel "
                f"ambient={a} --xray {raw['xray']} --labels {raw['annotations']} --align-to physician "
                "--peak-normalize"
            )
            == 0
        )
    assert _cli(f"extract --data {data} --out {feats} --preset pocapnet_tiny --device cpu") == 0
    split = _split(tmp_path / "split.json", ["OP_001", "OP_002"], ["OP_003"], ["OP_004"])
    assert (
        _cli(
            f"train --features {feats} --out {run} --preset pocapnet_tiny --config "
            f"{_tiny_overrides(tmp_path / 'o.yaml')} --split {split} --device cpu"
        )
        == 0
    )
    capsys.readouterr()
    assert (
        _cli(f"evaluate --checkpoint {run / 'best.safetensors'} --features {feats} --stream --out {tmp_path / 'ev'}")
        == 0
    )
    out = capsys.readouterr()
    assert "streaming an acausal checkpoint" in out.err and "online (streaming) metrics" in out.out
    m = json.loads((tmp_path / "ev" / "stream_metrics.json").read_text())
    assert m["mode"] == "stream" and m["per_operation"][0]["op"] == "OP_004"
    assert {"accuracy", "f1_macro", "jaccard_macro", "edit", "f1@10", "f1@25", "f1@50"} <= set(m["summary"])
    assert m["segmental"]["sequences"] == 1 and all("jaccard" in r for r in m["per_phase"])
    assert (tmp_path / "ev" / "stream_ribbons.png").is_file()
    train_json = json.loads((run / "train.json").read_text())
    assert train_json["world_size"] == 1 and train_json["effective_batch_seconds"] == 8


def test_pooled_features_end_to_end_and_mismatches_refused(syn_data, syn_feats, tmp_path, capsys):
    pooled, run = tmp_path / "pooled", tmp_path / "run"
    assert _cli(f"extract --data {syn_data} --out {pooled} --preset pocapnet_tiny --pooled --device cpu") == 0
    split = _split(tmp_path / "split.json", ["OP_001", "OP_002"], ["OP_003"], ["OP_004"])
    assert (
        _cli(
            f"train --features {pooled} --out {run} --preset pocapnet_tiny --config "
            f"{_tiny_overrides(tmp_path / 'o.yaml')} --split {split} --device cpu"
        )
        == 0
    )
    ck = str(run / "best.safetensors")
    from pocapnet.train import load_model

    _, cfg, extra = load_model(ck)
    assert cfg.features.pooled and cfg.model.audio_frames == 1  # the extraction's settings, not the preset's
    assert extra["weights"]["wav2vec2"]["source"] == "tiny-random" and len(extra["weights"]["xray"]["sha256"]) == 16
    op = syn_data / "OP_004"
    assert _cli(f"evaluate --checkpoint {ck} --features {pooled} --out {tmp_path / 'ev'}") == 0
    assert _cli(f"predict --checkpoint {ck} --op {op} --quiet --out {tmp_path / 'p1'}") == 0
    assert _cli(f"predict --checkpoint {ck} --op {op} --stream --quiet --out {tmp_path / 'p2'}") == 0
    a = np.loadtxt(tmp_path / "p1" / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    b = np.loadtxt(tmp_path / "p2" / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    assert len(a) == len(b) > 20
    capsys.readouterr()
    # features made with other settings: refused with the differing setting named
    assert _cli(f"evaluate --checkpoint {ck} --features {syn_feats} --out {tmp_path / 'ev2'}") == 1
    err = capsys.readouterr().err
    assert "other settings than the checkpoint" in err and "pooled" in err and not (tmp_path / "ev2").exists()
    # other extractor weights: refused by their SHA-256
    from pocapnet.weights import load_wav2vec2

    w = load_wav2vec2("tiny-random")
    w.encoder.layers[0].attention.q_proj.weight.data += 0.01
    w.save_pretrained(tmp_path / "w2v")
    assert (
        _cli(f"predict --checkpoint {ck} --op {op} --stream --wav2vec2 {tmp_path / 'w2v'} --out {tmp_path / 'p3'}") == 1
    )
    assert "are not the ones this checkpoint was trained with" in capsys.readouterr().err
    m = json.loads((pooled / "OP_001" / "meta.json").read_text())
    m["weights"]["xray"]["sha256"] = "0" * 16
    (pooled / "OP_001" / "meta.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="xray weights differ from the checkpoint's"):
        from pocapnet.evaluate import evaluate_operations

        model, cfg, extra = load_model(ck)
        evaluate_operations(model, pooled, ["OP_001"], 8, checkpoint_extra=extra, cfg=cfg)
