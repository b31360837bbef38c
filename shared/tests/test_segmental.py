"""medshared.segmental against examples worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import numpy as np
import pytest
from medshared import segmental as S

# 10 frames. Truth: A A A B B B B C C C ; prediction: A A B B B B C C C A
TRUE = ["A", "A", "A", "B", "B", "B", "B", "C", "C", "C"]
PRED = ["A", "A", "B", "B", "B", "B", "C", "C", "C", "A"]


def test_per_class_scores_worked_example():
    r = S.per_class_scores(TRUE, PRED)
    # A: TP 2 (frames 0,1), FP 1 (frame 9), FN 1 (frame 2) -> P 2/3, R 2/3, F1 2/3, J 2/4
    a = r["per_class"]["A"]
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(2 / 3) and a["jaccard"] == pytest.approx(0.5) and a["support"] == 3
    # B: TP 3 (3,4,5), FP 1 (2), FN 1 (6) -> P 3/4, R 3/4, F1 3/4, J 3/5
    b = r["per_class"]["B"]
    assert (b["precision"], b["recall"], b["f1"], b["jaccard"]) == pytest.approx((0.75, 0.75, 0.75, 0.6))
    # C: TP 2 (7,8), FP 1 (6), FN 1 (9) -> P 2/3, R 2/3, J 2/4
    c = r["per_class"]["C"]
    assert (c["precision"], c["recall"], c["jaccard"]) == pytest.approx((2 / 3, 2 / 3, 0.5))
    # macro = plain mean over A, B, C
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 0.75 + 2 / 3) / 3)
    assert r["macro"]["jaccard"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)


def test_per_class_with_explicit_labels_counts_absent_class_as_zero():
    r = S.per_class_scores([0, 0, 1], [0, 1, 1], labels=[0, 1, 2])
    # 0: TP1 FN1 -> P 1, R .5, F1 2/3, J .5 ; 1: TP1 FP1 -> P .5, R 1, F1 2/3, J .5 ; 2: absent -> all 0
    assert r["per_class"][2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "jaccard": 0.0, "support": 0}
    assert r["macro"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert r["macro"]["recall"] == pytest.approx((0.5 + 1.0) / 3)


def test_per_class_agrees_with_sklearn_on_random_labels():
    from sklearn.metrics import jaccard_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    r = S.per_class_scores(t, p, labels=[0, 1, 2, 3])
    pr, rc, f1, _ = precision_recall_fscore_support(t, p, labels=[0, 1, 2, 3], zero_division=0)
    js = jaccard_score(t, p, labels=[0, 1, 2, 3], average=None)
    for c in range(4):
        got = r["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["jaccard"]) == pytest.approx(
            (pr[c], rc[c], f1[c], js[c])
        )


def test_segments_and_background():
    assert S.segments(TRUE) == [("A", 0, 3), ("B", 3, 7), ("C", 7, 10)]
    assert S.segments([0, 0, 8, 1, 8, 8, 1], background=[8]) == [(0, 0, 2), (1, 3, 4), (1, 6, 7)]
    assert S.segments([]) == []


def test_edit_score_worked_example():
    # truth segments A B C; prediction A B C A: one insertion -> 1 - 1/4 = 0.75
    assert S.edit_score(TRUE, PRED) == pytest.approx(0.75)
    # over-segmentation: truth A (6), prediction A B A B A C -> labels A B A B A C vs A: distance 5, max 6
    assert S.edit_score(list("AAAAAA"), list("ABABAC")) == pytest.approx(1 - 5 / 6)
    assert S.edit_score(TRUE, TRUE) == 1.0
    # background runs are dropped before comparing: X runs removed, A X A -> A A (2 segments) vs A (1): 1 - 1/2
    assert S.edit_score(list("AAAA"), list("AXXA"), background=["X"]) == pytest.approx(0.5)


def test_f1_at_k_worked_example():
    # pred segments: A[0,2) B[2,6) C[6,9) A[9,10); true: A[0,3) B[3,7) C[7,10)
    # IoU: A[0,2) vs A[0,3) = 2/3 ; B[2,6) vs B[3,7) = 3/5 ; C[6,9) vs C[7,10) = 2/4 ; A[9,10) vs A[0,3) = 0
    assert S.f1_counts(TRUE, PRED, 0.10) == (3, 1, 0)  # last A is an FP -> P 3/4, R 1, F1 6/7
    assert S.segmental_f1(TRUE, PRED, 0.10) == pytest.approx(6 / 7)
    assert S.f1_counts(TRUE, PRED, 0.50) == (3, 1, 0)  # C's IoU 0.5 >= 0.5 counts
    assert S.f1_counts(TRUE, PRED, 0.60) == (2, 2, 1)  # A (2/3) and B (3/5) pass, C fails -> P 2/4, R 2/3
    assert S.segmental_f1(TRUE, PRED, 0.60) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert S.f1_counts(TRUE, PRED, 0.70) == (0, 4, 3)


def test_f1_second_match_of_same_true_segment_is_false_positive():
    # truth A x6 ; prediction A A B A A A: pred A[0,2) IoU 2/6, A[3,6) IoU 3/6 -> best is the same true segment
    assert S.f1_counts(list("AAAAAA"), list("AABAAA"), 0.25) == (1, 2, 0)  # 1 TP, 2nd A and B are FPs


def test_segmental_metrics_pools_counts_and_averages_edit():
    pairs = [(TRUE, PRED), (TRUE, TRUE)]
    m = S.segmental_metrics(pairs)
    assert m["edit"] == pytest.approx((0.75 + 1.0) / 2)
    # F1@10 pooled: (3,1,0) + (3,0,0) = (6,1,0) -> P 6/7, R 1 -> F1 12/13 (not the mean of 6/7 and 1)
    assert m["f1@10"] == pytest.approx(12 / 13)
    assert m["f1@50"] == pytest.approx(12 / 13) and m["sequences"] == 2
    assert set(m) == {"edit", "f1@10", "f1@25", "f1@50", "sequences"}


def test_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        S.edit_score([0, 1], [0])
    with pytest.raises(ValueError, match="overlap"):
        S.f1_counts([0], [0], 1.5)
    with pytest.raises(ValueError, match="at least one"):
        S.segmental_metrics([])
