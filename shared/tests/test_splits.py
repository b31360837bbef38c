"""medshared.splits: group-aware, seeded, leak-free."""

from __future__ import annotations

import numpy as np
import pytest
from medshared import splits as S


def test_ratio_split_items_deterministic_and_complete():
    items = list(range(100))
    a = S.ratio_split(items, (0.6, 0.2, 0.2), seed=3)
    b = S.ratio_split(items, (0.6, 0.2, 0.2), seed=3)
    c = S.ratio_split(items, (0.6, 0.2, 0.2), seed=4)
    assert a == b and a != c
    assert [len(a[k]) for k in ("train", "val", "test")] == [60, 20, 20]
    assert sorted(a["train"] + a["val"] + a["test"]) == items


def test_ratio_split_groups_never_straddle():
    items = [f"img{i}" for i in range(50)]
    groups = [f"video{i // 5}" for i in range(50)]  # 10 videos of 5 frames
    sp = S.ratio_split(items, (0.6, 0.2, 0.2), seed=0, groups=groups)
    gmap = dict(zip(items, groups))
    S.check_no_leak(sp, gmap)
    vids = {k: {gmap[i] for i in v} for k, v in sp.items()}
    assert [len(vids[k]) for k in ("train", "val", "test")] == [6, 2, 2]


def test_ratio_split_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        S.ratio_split([1, 2, 3], (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty group"):
        S.ratio_split([1, 2, 3], groups=["a", "", "b"])
    with pytest.raises(ValueError, match="cannot fill"):
        S.ratio_split([1, 2], groups=["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        S.ratio_split([])


def test_check_no_leak_names_group():
    with pytest.raises(ValueError, match="patient7"):
        S.check_no_leak({"train": ["a", "b"], "test": ["c"]}, {"a": "patient1", "b": "patient7", "c": "patient7"})


def test_kfold_groups():
    items = list(range(20))
    groups = [i // 2 for i in items]
    folds = S.kfold(items, n_splits=5, seed=1, groups=groups)
    tests = sorted(x for _, te in folds for x in te)
    assert tests == items
    for tr, te in folds:
        assert not ({groups[i] for i in tr} & {groups[i] for i in te})


def test_stratified_group_kfold():
    labels = [i % 2 for i in range(40)]
    groups = [i // 2 for i in range(40)]  # each patient has one benign and one malignant? no: pairs (0,1)
    labels = [0] * 20 + [1] * 20
    groups = [f"p{i // 2}" for i in range(40)]
    folds = S.stratified_group_kfold(labels, groups, n_splits=5, seed=0)
    assert len(folds) == 5
    y = np.array(labels)
    g = np.array(groups)
    for tr, te in folds:
        assert not set(g[tr]) & set(g[te])
        assert 0 < y[te].mean() < 1  # both classes in every test fold
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(40))


def test_read_split_file_and_manifest(tmp_path):
    f = tmp_path / "split.txt"
    f.write_text("101_1b1_Al_sc_Meditron\ttest\n102_1b1_Ar_sc_Meditron\ttrain\n\n")
    assert S.read_split_file(f) == {"101_1b1_Al_sc_Meditron": "test", "102_1b1_Ar_sc_Meditron": "train"}
    bad = tmp_path / "bad.txt"
    bad.write_text("a\ttrain\nb\tvalidation\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        S.read_split_file(bad)
    with pytest.raises(FileNotFoundError):
        S.read_split_file(tmp_path / "none.txt")
    S.save_split({"train": ["a"], "test": ["b"]}, tmp_path / "m.json", meta={"seed": 1})
    assert S.load_split(tmp_path / "m.json") == {"train": ["a"], "test": ["b"]}


def test_official_icbhi_split_file_parses():
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "icbhi" / "ICBHI_challenge_train_test.txt").is_file():
        pytest.skip("../shared/data/icbhi is absent (real-data samples live outside the repository)")
    sp = S.read_split_file(root / "icbhi" / "ICBHI_challenge_train_test.txt")
    assert len(sp) == 920 and set(sp.values()) == {"train", "test"}
