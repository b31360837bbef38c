from __future__ import annotations

import dataclasses

import pytest
from lungcvt.data import Cycle, DataError, load_dataset
from lungcvt.splits import (
    DataOptions,
    apply_protocol,
    class_counts,
    parse_protocol,
    read_fold_file,
    select_recordings,
    validation_split,
)


def _fold_file_patients(path, k):
    """Independent parse of the fold file: the patients of fold k."""
    return {int(a) for a, b in (ln.split() for ln in path.read_text().splitlines() if ln.strip()) if int(b) == k}


def test_stratified_validation_keeps_every_class_on_real_samples(icbhi_real):
    """The shared samples' training part: 'both' occurs only in patient 107 and wheeze only in 103 and 106, so a
    random 20 % of patients can empty a class (the old split left [13, 8, 11, 0]); the stratified split never does."""
    recs, _ = load_dataset(icbhi_real, allow_partial=True)
    pool = [r for r in recs if r.split == "train"]
    total = class_counts(pool)
    assert all(n > 0 for n in total)
    for seed in range(5):
        tr, va, info = validation_split(recs, 0.2, seed=seed)
        assert all(n > 0 for n in info["train_counts"]), info
        assert info["train_counts"] == class_counts(tr) and info["val_counts"] == class_counts(va)
        assert [a + b for a, b in zip(info["train_counts"], info["val_counts"])] == total
        assert not set(info["train_patients"]) & set(info["val_patients"])
        assert 107 in info["train_patients"]  # the only patient with 'both' cycles stays in training
        # the validation part holds the most classes a one-patient fold can: patient 106 (normal, crackle, wheeze)
        assert sum(n > 0 for n in info["val_counts"]) == 3


def test_missing_class_is_an_error_naming_it(icbhi_real):
    recs, _ = load_dataset(icbhi_real, allow_partial=True)
    # only patients 103 (normal, wheeze) and 107 (normal, crackle, both): either validation choice empties a class
    two = [r for r in recs if r.split == "train" and r.info.patient in (103, 107)]
    with pytest.raises(
        DataError, match=r"class\(es\) \['both', 'crackle', 'wheeze'\] occur in too few.*--allow-missing"
    ):
        validation_split(two, 0.2, seed=0)
    tr, va, info = validation_split(two, 0.2, seed=0, allow_missing_class=True)
    assert tr and va and any(n == 0 for n in info["train_counts"])
    # a class absent from the whole training pool
    no_both = [dataclasses.replace(r, cycles=[c for c in r.cycles if c.label != 3]) for r in recs]
    no_both = [r for r in no_both if r.cycles]
    with pytest.raises(DataError, match="'both'"):
        validation_split(no_both, 0.2, seed=0)


def test_fold_protocol_on_real_fold_file(icbhi_real):
    fold_file = icbhi_real / "patient_list_foldwise.txt"
    folds = read_fold_file(fold_file)
    assert len(folds) == 126 and set(folds.values()) == {0, 1, 2, 3, 4}
    recs, _ = load_dataset(icbhi_real, allow_partial=True, use_split_file=False)
    with pytest.raises(DataError, match="no recordings.*--allow-partial"):
        apply_protocol(recs, "fold3", data_dir=icbhi_real)  # 126 patients, 8 here
    for k in range(5):
        parts = apply_protocol(recs, f"fold{k}", data_dir=icbhi_real, allow_partial=True)
        test_patients = {r.info.patient for r in parts if r.split == "test"}
        assert test_patients == _fold_file_patients(fold_file, k) & {r.info.patient for r in recs}
        assert not test_patients & {r.info.patient for r in parts if r.split == "train"}
    # the CLI path: select_recordings finds the fold file next to the data and ignores the partial official split
    sel = select_recordings(icbhi_real, DataOptions(protocol="fold3", allow_partial=True))
    assert {r.info.patient for r in sel if r.split == "test"} == {103, 104, 106}


def test_fold_file_errors(tmp_path, syn_dir):
    bad = tmp_path / "f.txt"
    bad.write_text("101 0\n102 x\n")
    with pytest.raises(DataError, match=r"f\.txt:2: expected 'patient fold'"):
        read_fold_file(bad)
    bad.write_text("101 0\n101 1\n")
    with pytest.raises(DataError, match="listed twice"):
        read_fold_file(bad)
    recs, _ = load_dataset(syn_dir)
    with pytest.raises(DataError, match="--fold-file"):
        apply_protocol(recs, "fold0", data_dir=tmp_path)
    partial = tmp_path / "p.txt"
    partial.write_text("101 0\n")
    with pytest.raises(DataError, match="have recordings but no fold"):
        apply_protocol(recs, "fold0", fold_file=partial)
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_protocol("fold-1")


def test_random_80_20_is_patient_grouped_and_seeded(syn_dir):
    recs, _ = load_dataset(syn_dir)
    draws = []
    for seed in (0, 1, 2):
        parts = apply_protocol(recs, "random80-20", seed=seed)
        test = {r.info.patient for r in parts if r.split == "test"}
        train = {r.info.patient for r in parts if r.split == "train"}
        assert test and train and not test & train
        draws.append(frozenset(test))
    assert apply_protocol(recs, "random80-20", seed=1) == apply_protocol(recs, "random80-20", seed=1)
    assert len(set(draws)) > 1  # the split is re-drawn with the seed


def test_device_filter(icbhi_real):
    sel = select_recordings(icbhi_real, DataOptions(allow_partial=True, devices=("Litt3200",)))
    assert {r.stem for r in sel} == {"104_1b1_Ar_sc_Litt3200", "104_1b1_Ll_sc_Litt3200"}
    with pytest.raises(DataError, match=r"--devices \['Litt3100'\].*devices present"):
        select_recordings(icbhi_real, DataOptions(allow_partial=True, devices=("Litt3100",)))


def test_cycles_label_property():
    assert [Cycle(0, 1, c, w).label for c, w in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 1, 2, 3]
