"""AUROCs (overall and per device), the validation-chosen normal bias, device notes and the baseline's features,
against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from lungcvt.config import CLASSES
from lungcvt.cv import summarise
from lungcvt.data import device_notes, load_dataset
from lungcvt.evaluate import group_scores
from lungcvt.scoring import apply_normal_bias, auroc, auroc_scores, icbhi_score, tune_normal_bias


def test_auroc_hand_values():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert auroc([0, 1, 1], [0.3, 0.3, 0.9]) == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert auroc([1, 1], [0.1, 0.2]) is None
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # many ties
    from sklearn.metrics import roc_auc_score

    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_auroc_scores_abnormal_and_macro():
    labels = [0, 0, 1, 2, 3]
    p = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # normal, p(abn) 0.3
            [0.4, 0.3, 0.2, 0.1],  # normal, p(abn) 0.6
            [0.5, 0.4, 0.05, 0.05],  # crackle, p(abn) 0.5
            [0.2, 0.1, 0.6, 0.1],  # wheeze, p(abn) 0.8
            [0.1, 0.2, 0.2, 0.5],  # both, p(abn) 0.9
        ]
    )
    a = auroc_scores(labels, p, CLASSES)
    # abnormal {0.5, 0.8, 0.9} vs normal {0.3, 0.6}: 0.5 beats 0.3 only -> (1 + 2 + 2) / 6
    assert a["auroc_abnormal"] == pytest.approx(5 / 6)
    # normal: p0 of normals {0.7, 0.4} vs others {0.5, 0.2, 0.1}: 0.7 beats 3, 0.4 beats 2 -> 5/6
    # crackle: 0.4 vs {0.1, 0.3, 0.1, 0.2} -> 1; wheeze: 0.6 vs {0.1, 0.2, 0.05, 0.2} -> 1; both: 0.5 vs all -> 1
    assert a["auroc_per_class"] == pytest.approx({"normal": 5 / 6, "crackle": 1.0, "wheeze": 1.0, "both": 1.0})
    assert a["auroc_macro_ovr"] == pytest.approx((5 / 6 + 3) / 4)
    # a class without cycles is left out of the macro mean, and a one-class set has no abnormal AUROC
    b = auroc_scores([0, 0, 1], p[:3], CLASSES)
    assert b["auroc_classes_used"] == ["normal", "crackle"] and b["auroc_per_class"]["wheeze"] is None
    assert auroc_scores([1, 2], p[2:4], CLASSES)["auroc_abnormal"] is None


def test_group_scores_per_device_aurocs():
    y = np.array([0, 1, 0, 2, 0, 3])
    p = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.6, 0.4, 0, 0], [0.7, 0, 0.3, 0], [0.5, 0, 0, 0.5],
                  [0.4, 0, 0, 0.6]])  # fmt: skip
    dev = ["A", "A", "B", "B", "A", "B"]
    by = group_scores(y, p.argmax(1), dev, p)
    # A: normals p(abn) {0.1, 0.5}, crackle 0.8 -> 1.0; B: normal 0.4, abnormal {0.3, 0.6} -> 0.5
    assert by["A"]["auroc_abnormal"] == pytest.approx(1.0)
    assert by["B"]["auroc_abnormal"] == pytest.approx(0.5)
    # B: Se = exact hits of {wheeze->normal, both->both} = 1/2, Sp = 1/1
    assert (by["B"]["se"], by["B"]["sp"], by["B"]["score"]) == (0.5, 1.0, 0.75)


def test_tune_normal_bias_hand_case():
    # normal logit 0 everywhere; crackle logits: two normals at 1.0 and 2.0, two crackles at 3.0 and 0.5
    labels = [0, 0, 1, 1]
    z = np.array([[0, 1.0, -9, -9], [0, 2.0, -9, -9], [0, 3.0, -9, -9], [0, 0.5, -9, -9]])
    # bias 0: crackle for all (1, 2, 3, 0.5 > 0): Se 1, Sp 0 -> 0.5
    assert icbhi_score(np.array(labels), z.argmax(1)) == 0.5
    bias, score = tune_normal_bias(labels, z)
    # bias in [2, 3): normals right (Sp 1; at 2.0 the tie goes to arg max's first class, normal), crackle 3.0 right,
    # 0.5 wrong (Se 0.5) -> 0.75; the smallest such bias is 2.0
    assert score == pytest.approx(0.75) and bias == pytest.approx(2.0)
    assert apply_normal_bias(z, bias).argmax(1).tolist() == [0, 0, 1, 0]
    assert z[0, 0] == 0  # a copy


def test_cv_summary_aurocs_skip_undefined_runs():
    rows = [
        {**{f"{v}_{m}": 0.5 for v in ("icbhi", "macro_ovr", "two_class") for m in ("se", "sp", "score")},
         "accuracy": 0.5, "auroc_abnormal": a, "auroc_macro_ovr": 0.6}
        for a in (0.6, 0.8, None)
    ]  # fmt: skip
    s = summarise(rows)
    assert s["auroc_abnormal"] == pytest.approx({"mean": 0.7, "std": 0.1, "runs": 2})
    assert s["auroc_macro_ovr"]["runs"] == 3


def test_device_notes_name_the_device_the_quirk_recording_is_counted_under(tmp_path):
    for stem in ("226_1b1_Pl_sc_LittC2SE", "101_1b1_Al_sc_Meditron"):
        (tmp_path / f"{stem}.wav").write_bytes(b"")
        (tmp_path / f"{stem}.txt").write_text("0.1\t1.0\t0\t0\n")
    (tmp_path / "ICBHI_challenge_train_test.txt").write_text(
        "226_1b1_Pl_sc_Meditron\ttrain\n101_1b1_Al_sc_Meditron\ttest\n"
    )
    recs, _ = load_dataset(tmp_path)
    notes = device_notes(recs)
    assert notes == [
        "226_1b1_Pl_sc_LittC2SE: listed in the split file as 226_1b1_Pl_sc_Meditron; counted under LittC2SE (the "
        "device in its file name)"
    ]
    (tmp_path / "226_1b1_Pl_sc_LittC2SE.wav").rename(tmp_path / "226_1b1_Pl_sc_Meditron.wav")
    (tmp_path / "226_1b1_Pl_sc_LittC2SE.txt").rename(tmp_path / "226_1b1_Pl_sc_Meditron.txt")
    recs, _ = load_dataset(tmp_path)
    assert "counted under Meditron" in device_notes(recs)[0] and "Kaggle copy names it" in device_notes(recs)[0]


def test_baseline_features_hand_case():
    from lungcvt.baseline import logmel_stats

    sr = 4000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    x = logmel_stats(tone, sr)
    assert x.shape == (256,) and np.isfinite(x).all()
    mean, std, delta, p90 = x.reshape(4, 64)
    import librosa

    band = int(np.argmin(np.abs(librosa.mel_frequencies(66, fmax=2000)[1:-1] - 500)))
    assert abs(int(mean.argmax()) - band) <= 1  # the tone's band is the loudest
    assert (std >= 0).all() and (delta >= 0).all() and abs(int(p90.argmax()) - band) <= 1


def test_icbhi_score_matches_medshared():
    """The fast grid-search ``icbhi_score`` is the official ``medshared.metrics.icbhi_scores`` Score."""
    from medshared.metrics import icbhi_scores

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 4, 50)
        p = rng.integers(0, 4, 50)
        assert icbhi_score(y, p) == pytest.approx(icbhi_scores(y, p)["score"])
