"""Fidelity fixes: DEAL as the original (probability attention, data-range histogram), resume restoring the previous
round's model, input normalisation following the encoder weights, Table 1 at the paper's percentages with a Full
line, the CholecSeg8k split-count check, boundary metrics and the prior-mask chance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from alges.active import run_strategy
from alges.config import create_config
from alges.data import DatasetIndex, SegArrays, check_cholec_split_counts
from alges.evaluate import decode_map, encode_map, prior_mask, prior_scores, segmentation_scores
from alges.model import DealHead, build_model
from alges.report import PAPER_PERCENTAGES, auc_table, curve_auc, summarize, table_markdown
from alges.selection import deal_scores

CPU = torch.device("cpu")


def test_deal_attention_runs_on_probabilities():
    torch.manual_seed(0)
    head = DealHead(num_classes=3, attention_size=4)
    logits = torch.randn(2, 3, 4, 4) * 5
    p = logits.softmax(dim=1)
    # gamma = 0 (its init): the attended map is the class probabilities, not the logits
    torch.testing.assert_close(head.attend(logits), p)
    with torch.no_grad():
        head.gamma.fill_(0.7)
    pf = p.reshape(2, 3, 16)
    attn = torch.softmax(torch.einsum("bkn,bkm->bnm", pf, pf), dim=-1)  # [B, n, n] probability similarity
    expect = (0.7 * torch.einsum("bkm,bnm->bkn", pf, attn) + pf).reshape(2, 3, 4, 4)
    torch.testing.assert_close(head.attend(logits), expect)
    with torch.no_grad():
        head.gamma.fill_(-0.5)  # the original switches the attention off below -0.01
    torch.testing.assert_close(head.attend(logits), p)
    d = head(torch.randn(1, 3, 9, 9))
    assert d.shape == (1, 1, 9, 9) and ((d > 0) & (d < 1)).all()


def test_deal_histogram_spans_each_maps_own_range():
    narrow = np.linspace(0.20, 0.30, 100)[None]  # a difficulty map using only [0.2, 0.3]
    # a fixed [0, 1] range puts it in 1-2 bins (entropy <= log 2); the original's data range spreads it over 10
    assert deal_scores(narrow, 10)[0] == pytest.approx(math.log(10))
    assert deal_scores(np.full((1, 50), 0.4), 10)[0] == pytest.approx(0.0)
    two = np.concatenate([np.full(30, 0.1), np.full(10, 0.9)])[None]
    q = np.array([0.75, 0.25])
    assert deal_scores(two, 10)[0] == pytest.approx(float(-(q * np.log(q)).sum()))


def test_resume_continues_from_the_previous_rounds_model(tmp_path, arrays):
    pool, test = arrays
    cfg = create_config("alges_tiny", n_rounds=3, retrain_from_init=False, epochs=2)
    full = run_strategy("alges-sem", 0, pool, test, cfg, CPU, tmp_path / "a")
    run_strategy("alges-sem", 0, pool, test, cfg, CPU, tmp_path / "b", max_rounds_this_call=2)
    assert sorted(p.name for p in (tmp_path / "b" / "state").glob("*.safetensors")) == [
        "alges-sem_seed0_round1.safetensors"
    ]
    resumed = run_strategy("alges-sem", 0, pool, test, cfg, CPU, tmp_path / "b")
    assert full["labeled"] == resumed["labeled"]
    for a, b in zip(full["rounds"], resumed["rounds"]):
        assert a.get("selected") == b.get("selected")
        assert a["dice_macro"] == pytest.approx(b["dice_macro"], abs=1e-9)
    # the resumed run's last model is the uninterrupted one's, and it differs from a run retrained from init
    from medshared.checkpoint import load_checkpoint

    fresh_cfg = create_config("alges_tiny", n_rounds=3, epochs=2)
    run_strategy("alges-sem", 0, pool, test, fresh_cfg, CPU, tmp_path / "c")
    a, b, c = (load_checkpoint(tmp_path / d / "models" / "alges-sem_seed0.safetensors")[0] for d in "abc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert max((a[k].float() - c[k].float()).abs().max().item() for k in a) > 1e-3
    # the round model is required when resuming without retraining from init
    (tmp_path / "b" / "state" / "alges-sem_seed0_round2.safetensors").unlink()
    st = json.loads((tmp_path / "b" / "state" / "alges-sem_seed0.json").read_text())
    st["rounds"] = st["rounds"][:2]
    (tmp_path / "b" / "state" / "alges-sem_seed0.json").write_text(json.dumps(st))
    with pytest.raises(ValueError, match="round 1's model"):
        run_strategy("alges-sem", 0, pool, test, cfg, CPU, tmp_path / "b")


def test_input_norm_follows_encoder_weights(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    scratch = create_config("alges_paper")
    assert scratch.effective_input_norm == "raw"
    pre = create_config("alges_paper", encoder_weights=str(tmp_path / "r18.pth"))
    assert pre.effective_input_norm == "imagenet"
    m = build_model(create_config("alges_tiny", encoder_weights=str(tmp_path / "r18.pth")))
    x = torch.full((1, 3, 32, 32), 255.0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(m.normalize(x), ((1.0 - mean) / std).expand(1, 3, 32, 32))


def _rows():
    rows = []
    for s, base in (("random", 0.4), ("alges-img", 0.5)):
        for seed in (0, 1):
            for r, n in enumerate((20, 90, 140, 230, 300)):
                rows.append(
                    {
                        "strategy": s,
                        "seed": seed,
                        "round": r,
                        "frac_labeled": n / 4640,
                        "dice_macro": base + 0.01 * r + 0.01 * seed,
                    }
                )
    return rows


def test_table_at_the_papers_percentages_with_full_and_auc():
    summ = summarize(_rows())
    t = table_markdown(summ, percentages=PAPER_PERCENTAGES, extra_rows={"Full (100%)": (0.61, 0.01)})
    head = t.splitlines()[0]
    assert "0.43% labeled" in head and "1.94% labeled" in head and "3.02% labeled" in head and "4.96% labeled" in head
    assert "6.47%" not in head  # the 5th round (300 frames) is not a paper column
    assert "| alges-img | 0.505 ± 0.005 | 0.515 ± 0.005 | 0.525 ± 0.005 | 0.535 ± 0.005 |" in t  # std over seeds
    assert "| Full (100%) | 0.610 ± 0.010 |" in t
    assert curve_auc([0, 1, 3], [1, 3, 3]) == pytest.approx((2 + 6) / 3)
    text, res = auc_table(_rows(), "dice_macro", chance=0.3)
    assert res["alges-img"]["mean"] > res["random"]["mean"] and "gain over chance" in text


def test_cholecseg8k_split_count_check():
    from alges.data import CHOLEC_CLASS_MAP, DEFAULT_VIDEO_SPLIT

    counts = {"train": 4640, "val": 1600, "test": 1840}
    ids, split = [], {}
    for part, vids in DEFAULT_VIDEO_SPLIT.items():
        per = [counts[part] // len(vids)] * len(vids)
        per[0] += counts[part] - sum(per)
        split[part] = [f"{v}/{v}_00000/frame_{i}_endo" for v, n in zip(vids, per) for i in range(n)]
        ids += split[part]
    full = DatasetIndex(None, "cholecseg8k", tuple(ids), CHOLEC_CLASS_MAP)
    assert check_cholec_split_counts(full, split)["match"] is True
    moved = {**split, "train": split["train"][:-80], "test": split["test"] + split["train"][-80:]}
    res = check_cholec_split_counts(full, moved)
    assert res["match"] is False and res["counts"]["train"] == 4560
    small = DatasetIndex(None, "cholecseg8k", tuple(ids[:100]), CHOLEC_CLASS_MAP)
    assert check_cholec_split_counts(small, {"train": ids[:100]})["checked"] is False


def test_boundary_metrics_and_prior_mask():
    cfg = create_config("alges_tiny", num_classes=2)
    truth = np.zeros((2, 8, 8), np.uint8)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[1] = 0
    pred[1, 2:6, 3:7] = 1  # shifted one column right
    res = segmentation_scores(pred, truth, cfg, orig_hw=np.array([[8, 8], [16, 8]]))
    assert res["scored_classes"] == [1]
    assert res["dice_image"] == pytest.approx((1.0 + 2 * 12 / 32) / 2)
    # image 1's one-column shift is one original pixel (width 8 -> 8); its HD95 (pooled) is 1.0
    assert res["hd95"] == pytest.approx((0.0 + 1.0) / 2)
    empty = np.zeros_like(pred)
    worst = segmentation_scores(empty, truth, cfg, orig_hw=np.array([[8, 8], [8, 8]]))
    assert worst["dice_image"] == 0.0 and worst["hd95"] == pytest.approx(math.sqrt(128))  # the image diagonal
    masks = np.zeros((5, 8, 8), np.uint8)
    masks[:4, 2:6, 2:6] = 1
    masks[4, 0:2, 0:2] = 1
    prior, info = prior_mask(
        masks, 2
    )  # mean 0.8 on the square, 0.2 in the corner: the fitted threshold drops the corner
    assert (prior == masks[0]).all() and 0.2 <= info["threshold"] < 0.8 and info["train_dice"] == pytest.approx(0.8)
    assert (decode_map(encode_map(prior)) == prior).all()
    sc = prior_scores(prior, SegArrays(["a"], np.zeros((1, 3, 8, 8), np.uint8), masks[:1], None), cfg)
    assert sc["dice_image"] == pytest.approx(1.0)
