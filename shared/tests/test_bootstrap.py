"""medshared.bootstrap: worked examples for the point metrics and AUROC, and properties of the bootstrap intervals
that fail when the resampling or the quantiles are wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medshared.bootstrap import auroc, binary_metrics_ci, binary_point_metrics, bootstrap_ci, resample_indices

# Worked example: positives score {0.35, 0.8, 0.9}, negatives {0.1, 0.4, 0.5}.
# Pairs won by the positive: 0.35 beats 0.1 (1); 0.8 beats all three (3); 0.9 beats all three (3) -> AUROC 7/9.
# At threshold 0.5 the predictions are [-, -, -, +, +, +]: TP 2 (0.8, 0.9), FN 1 (0.35), FP 1 (0.5), TN 2.
Y = [0, 0, 1, 1, 0, 1]
S = [0.1, 0.4, 0.35, 0.8, 0.5, 0.9]


def test_auroc_worked_example() -> None:
    assert auroc(Y, S) == pytest.approx(7 / 9)
    # ties count one half: positive 0.5 vs negative 0.5 -> 0.5, vs 0.1 -> 1; positive 0.9 wins both -> 3.5 / 4
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(0.875)
    assert auroc([1, 1, 0], [0.2, 0.9, 0.5]) == pytest.approx(0.5)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_any_label_is_positive() -> None:
    labels = ["malignant" if y else "benign" for y in Y]
    assert auroc(labels, S, positive="malignant") == pytest.approx(7 / 9)
    # benign as positive with its own score 1 - s: the same ranking seen from the other side
    assert auroc(labels, [1 - s for s in S], positive="benign") == pytest.approx(7 / 9)
    m = binary_point_metrics(labels, [1 - s for s in S], positive="benign", threshold=0.5)
    # benign predicted where 1 - s >= 0.5, i.e. s <= 0.5: cases 0, 1, 2, 4 -> benign cases 0, 1, 4 all found
    assert m["sensitivity"] == pytest.approx(1.0) and m["specificity"] == pytest.approx(2 / 3)


def test_point_metrics_worked_example() -> None:
    m = binary_point_metrics(Y, S, positive=1, threshold=0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(7 / 9)


def test_all_correct_interval_is_degenerate_and_point_inside() -> None:
    y = np.array([0, 1] * 20)
    s = y * 0.8 + 0.1
    r = binary_metrics_ci(y, s, n_boot=300, seed=1)
    for k in ("accuracy", "sensitivity", "specificity", "auroc"):
        assert r[k]["value"] == 1.0 and r[k]["ci_low"] == 1.0 and r[k]["ci_high"] == 1.0
    r = binary_metrics_ci(Y * 5, S * 5, n_boot=500, seed=0)
    for k in ("accuracy", "sensitivity", "specificity", "auroc"):
        assert r[k]["ci_low"] <= r[k]["value"] <= r[k]["ci_high"]
        assert r[k]["ci_low"] < r[k]["ci_high"]


def test_seeded_and_reported() -> None:
    a = binary_metrics_ci(Y * 4, S * 4, n_boot=200, seed=3)
    b = binary_metrics_ci(Y * 4, S * 4, n_boot=200, seed=3)
    c = binary_metrics_ci(Y * 4, S * 4, n_boot=200, seed=4)
    assert a == b
    assert any(a[k]["ci_low"] != c[k]["ci_low"] or a[k]["ci_high"] != c[k]["ci_high"] for k in ("auroc", "accuracy"))
    assert a["n"] == 24 and a["n_positive"] == 12 and a["resampled"] == "cases"


def test_undefined_metrics_are_nan_with_no_valid_resamples() -> None:
    r = binary_metrics_ci([0, 0, 0, 0], [0.1, 0.6, 0.2, 0.3], n_boot=50)
    assert math.isnan(r["sensitivity"]["value"]) and r["sensitivity"]["n_valid"] == 0
    assert math.isnan(r["auroc"]["ci_low"])
    assert r["specificity"]["value"] == pytest.approx(0.75)


def test_accuracy_interval_covers_the_truth_at_its_level() -> None:
    """95 % percentile intervals of a proportion (p = 0.8, n = 80) cover p in about 95 % of repeated samples, and
    their width matches the binomial 2 * 1.96 * sqrt(p (1 - p) / n) (a wrong resample size or quantile fails)."""
    rng = np.random.default_rng(0)
    p, n, reps = 0.8, 80, 300
    covered, widths = 0, []
    for r in range(reps):
        correct = (rng.random(n) < p).astype(float)
        lo, hi, valid = bootstrap_ci(lambda idx, c=correct: float(c[idx].mean()), n, n_boot=400, seed=r)
        assert valid == 400
        covered += lo <= p <= hi
        widths.append(hi - lo)
    assert 0.89 <= covered / reps <= 0.985
    assert np.mean(widths) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.12)


def test_group_resampling_moves_duplicates_together() -> None:
    """Each case duplicated, grouped by case: the group bootstrap is as wide as the case bootstrap of the original
    data; resampling the duplicated cases one by one would be too narrow by about sqrt(2)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    base = binary_metrics_ci(y, s, n_boot=1500, seed=0)
    dup_y, dup_s, groups = np.repeat(y, 2), np.repeat(s, 2), np.repeat(np.arange(60), 2)
    grouped = binary_metrics_ci(dup_y, dup_s, n_boot=1500, seed=0, groups=groups.tolist())
    naive = binary_metrics_ci(dup_y, dup_s, n_boot=1500, seed=0)
    assert grouped["resampled"] == "groups"
    for k in ("accuracy", "auroc"):
        w_base = base[k]["ci_high"] - base[k]["ci_low"]
        w_group = grouped[k]["ci_high"] - grouped[k]["ci_low"]
        w_naive = naive[k]["ci_high"] - naive[k]["ci_low"]
        assert w_group == pytest.approx(w_base, rel=0.2)
        assert w_naive < 0.85 * w_group


def test_resample_indices_shapes_and_errors() -> None:
    idx = resample_indices(5, 3, seed=0)
    assert len(idx) == 3 and all(len(i) == 5 and i.min() >= 0 and i.max() < 5 for i in idx)
    g = resample_indices(4, 10, seed=0, groups=["a", "a", "b", "c"])
    assert all(set(np.bincount(i, minlength=4)[:2].tolist()) <= {0, 1, 2, 3} for i in g)
    for i in g:  # cases 0 and 1 (group a) always appear together, equally often
        c = np.bincount(i, minlength=4)
        assert c[0] == c[1]
    with pytest.raises(ValueError, match="groups"):
        resample_indices(3, 2, groups=["a"])
    with pytest.raises(ValueError, match="shape"):
        auroc([0, 1], [0.3])
