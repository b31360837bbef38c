"""``model.ensemble``: M LungCVT members trained side by side; a prediction is the log of their mean probability."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from lungcvt.cli import main
from lungcvt.config import get_config
from lungcvt.losses import ClassBalancedCE
from lungcvt.model import LungCVT, LungCVTEnsemble, build_lungcvt, create_model

TINY = get_config("lungcvt_tiny").model


def test_members_differ_and_outputs_are_per_member_in_training_and_mean_probability_in_eval():
    torch.manual_seed(0)
    ens = build_lungcvt(dataclasses.replace(TINY, ensemble=3))
    assert isinstance(ens, LungCVTEnsemble) and len(ens.members) == 3
    assert isinstance(build_lungcvt(TINY), LungCVT)  # ensemble 1: the paper's single model, same state-dict keys
    w = [m.head[-1].weight for m in ens.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # different random inits
    x = torch.randn(5, 3, 64, 64)
    ens.train()
    assert ens(x).shape == (3, 5, 4)
    ens.eval()
    out = ens(x)
    per = torch.stack([torch.softmax(m(x), -1) for m in ens.members])  # [3, 5, 4]
    assert out.shape == (5, 4)
    torch.testing.assert_close(torch.softmax(out, -1), per.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5), rtol=1e-5, atol=1e-6)  # log-probabilities
    with pytest.raises(ValueError, match="ensemble"):
        dataclasses.replace(TINY, ensemble=0)


def test_loss_is_the_mean_of_the_members_own_losses():
    crit = ClassBalancedCE([30, 10, 5, 2], 0.999)
    torch.manual_seed(1)
    logits, y = torch.randn(3, 8, 4), torch.randint(0, 4, (8,))
    want = sum(float(crit(logits[m], y)) for m in range(3)) / 3
    assert math.isclose(float(crit(logits, y)), want, rel_tol=1e-6)
    # not the loss of the averaged logits (that would train the members as one model)
    assert not math.isclose(float(crit(logits, y)), float(crit(logits.mean(0), y)), rel_tol=1e-3)


def test_an_ensemble_trains_saves_and_reloads_for_evaluate(syn_dir, tmp_path):
    from lungcvt.evaluate import load_model

    run, cache = tmp_path / "run", tmp_path / "cache"
    yaml = tmp_path / "e.yaml"
    yaml.write_text("model:\n  ensemble: 2\n")
    args = ["train", "--data", str(syn_dir), "--out", str(run), "--preset", "lungcvt_tiny", "--cache", str(cache),
            "--device", "cpu", "--config", str(yaml), "--precision", "fp32", "--epochs", "1"]  # fmt: skip
    assert main(args) == 0
    model, cfg, _ = load_model(run / "best.safetensors")
    assert cfg.model.ensemble == 2 and isinstance(model, LungCVTEnsemble) and not model.training
    x = torch.randn(2, 3, 64, 64)
    fresh = create_model(cfg, pretrained=False).eval()
    assert not torch.allclose(model(x), fresh(x))  # the trained weights, not a new init
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(syn_dir), "--out", str(ev),
                 "--cache", str(cache), "--device", "cpu"]) == 0  # fmt: skip
    m = json.loads((ev / "metrics.json").read_text())
    assert 0.0 <= m["icbhi"]["score"] <= 1.0 and m["auroc_abnormal"] is not None


def test_independent_members_are_separate_runs_put_together_with_a_bias_tuned_on_the_ensemble(
    syn_dir, tmp_path, monkeypatch
):
    """``train.ensemble_training: independent``: member k is the single model a run with seed + 1000 k trains on the
    run's own split; ``best.safetensors`` holds their best weights as one ensemble, with its own validation bias."""
    from lungcvt.evaluate import load_model
    from lungcvt.members import member_config
    from medshared.checkpoint import load_checkpoint

    run, cache = tmp_path / "run", tmp_path / "cache"
    yaml = tmp_path / "e.yaml"
    yaml.write_text(
        "model:\n  ensemble: 2\ntrain:\n  ensemble_training: independent\n  tune_normal_bias: true\n  seed: 3\n"
    )
    args = ["train", "--data", str(syn_dir), "--out", str(run), "--preset", "lungcvt_tiny", "--cache", str(cache),
            "--device", "cpu", "--config", str(yaml), "--precision", "fp32", "--epochs", "2"]  # fmt: skip
    import lungcvt.validation

    scored, plain = [], lungcvt.validation.validate_logits

    def spy(model, *a, **k):  # what the validation cycles are scored with
        scored.append(model)
        return plain(model, *a, **k)

    monkeypatch.setattr(lungcvt.validation, "validate_logits", spy)
    import lungcvt.train

    reads, plain_cycles = [], lungcvt.validation.training_cycles

    def count_reads(*a, **k):  # the run's cycles are read once, for all members and the ensemble
        reads.append(1)
        return plain_cycles(*a, **k)

    monkeypatch.setattr(lungcvt.validation, "training_cycles", count_reads)
    monkeypatch.setattr(lungcvt.train, "training_cycles", count_reads)
    assert main(args) == 0
    assert len(reads) == 1
    monkeypatch.undo()
    model, cfg, extra = load_model(run / "best.safetensors")
    scored = [m for m in scored if isinstance(m, LungCVTEnsemble)]  # (the members' own epochs may be seen too)
    assert len(scored) == 1  # the bias is tuned on the whole ensemble
    for name, w in model.state_dict().items():
        torch.testing.assert_close(scored[0].state_dict()[name], w)
    assert isinstance(model, LungCVTEnsemble) and len(model.members) == 2
    assert cfg.train.ensemble_training == "independent"
    tj = json.loads((run / "train.json").read_text())
    assert [m["seed"] for m in tj["members"]] == [3, 1003]
    assert member_config(cfg, 1).train.seed == 1003 and member_config(cfg, 1).model.ensemble == 1
    for k in range(2):  # each member is its own run's selected checkpoint, and all members saw the same split
        msd, mcfg, _ = load_checkpoint(run / f"member{k}" / "best.safetensors")
        assert mcfg["model"]["ensemble"] == 1 and mcfg["train"]["seed"] == 3 + 1000 * k
        for name, w in msd.items():
            torch.testing.assert_close(model.members[k].state_dict()[name], w)
        mj = json.loads((run / f"member{k}" / "train.json").read_text())
        assert mj["val_patients"] == tj["val_patients"]
    m0 = model.members[0].state_dict()
    assert any(not torch.equal(w, model.members[1].state_dict()[n]) for n, w in m0.items())  # not one model twice
    # the stored bias is the ensemble's own: tuned on the ensemble's logits over the run's validation cycles
    from lungcvt.splits import DataOptions
    from lungcvt.validation import selection_cycles, training_cycles, validate_logits, validation_scores
    from medshared.distributed import init_distributed

    ctx = init_distributed("cpu")
    try:
        cpu = torch.device("cpu")
        _, va, _, _ = training_cycles(cfg, syn_dir, DataOptions(), cache, cpu, ctx, False)
        va_sel = selection_cycles(va, cfg)
        z = validate_logits(model, va_sel, cfg, cpu, ctx)
    finally:
        ctx.close()
    want = validation_scores(va_sel.labels, z, len(va), True, cfg.train.min_normal_bias)
    assert extra["normal_bias"] == pytest.approx(want["normal_bias"])
    assert tj["best_val"]["icbhi"] == pytest.approx(want["icbhi"])
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[0].startswith("member,") and len(rows) == 1 + 2 * 2
    # a second call resumes: the members are finished, nothing is retrained and the ensemble is the same
    before = (run / "member0" / "last_state.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (run / "member0" / "last_state.pt").stat().st_mtime_ns == before
    again, _, _ = load_model(run / "best.safetensors")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(ValueError, match="ensemble_training"):
        dataclasses.replace(get_config("lungcvt_tiny").train, ensemble_training="bagged")
