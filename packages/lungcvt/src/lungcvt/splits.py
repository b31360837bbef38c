"""Evaluation protocols of the ICBHI field and the stratified, patient-grouped validation split.

Protocols (``--protocol``):

- ``official``: the challenge's 60/40 split file ``ICBHI_challenge_train_test.txt`` (Rocha et al. 2019).
- ``fold0`` .. ``fold4``: the patient-wise 5-fold assignment of RespireNet (Gairola et al. 2021), also used by
  Patch-Mix; ``patient_list_foldwise.txt`` holds 126 lines ``patient fold``. Fold ``k`` is the test part, the other
  four folds train.
- ``random80-20``: 20 % of the patients drawn as the test part, stratified by cycle class and grouped by patient
  (``medshared.splits.stratified_group_kfold`` with 5 folds, fold ``seed % 5``), re-drawn with every seed. Papers that
  report "random 80-20" often split cycles, not patients; this one never puts a patient on both sides.

Validation for model selection is drawn inside the training part by :func:`validation_split`: stratified by cycle
class and grouped by patient, and a class missing from the training part is an error unless ``allow_missing_class``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungcvt.config import CLASSES
from lungcvt.data import DataError, Recording

__all__ = [
    "DataOptions",
    "select_recordings",
    "FOLD_FILE_NAME",
    "PROTOCOLS",
    "parse_protocol",
    "read_fold_file",
    "find_fold_file",
    "apply_protocol",
    "class_counts",
    "check_classes",
    "validation_split",
]

log = logging.getLogger(__name__)

FOLD_FILE_NAME = "patient_list_foldwise.txt"
PROTOCOLS = ("official", "fold0", "fold1", "fold2", "fold3", "fold4", "random80-20")
_FOLD_RE = re.compile(r"^fold(\d+)$")


def parse_protocol(protocol: str) -> tuple[str, int | None]:
    """``"official"`` -> ("official", None); ``"fold3"`` -> ("fold", 3); ``"random80-20"`` -> ("random80-20", None).

    Raises:
        ValueError: any other name (listing the valid ones).
    """
    m = _FOLD_RE.match(protocol)
    if m:
        return "fold", int(m.group(1))
    if protocol in ("official", "random80-20"):
        return protocol, None
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def read_fold_file(path: str | Path) -> dict[int, int]:
    """Read a patient-wise fold file (``patient fold`` per line) -> {patient: fold}.

    Raises:
        DataError: missing file, malformed line (named by number) or a patient listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"fold file not found: {path} (the RespireNet 5-fold assignment {FOLD_FILE_NAME}; pass --fold-file PATH)"
        )
    out: dict[int, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            raise DataError(f"{path}:{lineno}: expected 'patient fold' (two integers), got {line!r}")
        p, k = int(parts[0]), int(parts[1])
        if p in out:
            raise DataError(f"{path}:{lineno}: patient {p} listed twice")
        out[p] = k
    if not out:
        raise DataError(f"{path}: empty fold file")
    return out


def find_fold_file(data_dir: str | Path) -> Path | None:
    """``data_dir/patient_list_foldwise.txt`` or the same name one level up, else ``None``."""
    data_dir = Path(data_dir)
    for cand in (data_dir / FOLD_FILE_NAME, data_dir.parent / FOLD_FILE_NAME):
        if cand.is_file():
            return cand
    return None


def class_counts(recordings: Sequence[Recording], n_classes: int = len(CLASSES)) -> list[int]:
    """Cycles per class over ``recordings``."""
    labels = [c.label for r in recordings for c in r.cycles]
    return np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).tolist()


def _with_split(recordings: Sequence[Recording], assign: dict[str, str]) -> list[Recording]:
    return [dataclasses.replace(r, split=assign[r.stem]) for r in recordings]


def apply_protocol(
    recordings: Sequence[Recording],
    protocol: str = "official",
    fold_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    allow_partial: bool = False,
) -> list[Recording]:
    """Return copies of ``recordings`` whose ``split`` is "train" or "test" as ``protocol`` says.

    Args:
        recordings: from :func:`lungcvt.data.load_dataset` (their ``split`` is the official one, or ``None``).
        protocol: see :data:`PROTOCOLS` (``None``: ``evaluate`` takes the checkpoint's, elsewhere ``official``).
        fold_file: the fold file for ``foldK`` (default: :func:`find_fold_file` on ``data_dir``).
        data_dir: where to look for the fold file.
        seed: draws the ``random80-20`` test patients.
        allow_partial: fold-file patients without recordings are accepted (a subset of the database).

    Raises:
        DataError: no official split for ``official``; no fold file, a recording whose patient has no fold, a fold
            number absent from the file, or (without ``allow_partial``) fold-file patients without recordings.
    """
    kind, k = parse_protocol(protocol)
    if kind == "official":
        unsplit = [r.stem for r in recordings if r.split not in ("train", "test")]
        if unsplit:
            raise DataError(
                f"{len(unsplit)} recording(s) have no official split (e.g. {unsplit[:3]}); put "
                "ICBHI_challenge_train_test.txt next to the data, pass --split-file, or use --protocol fold0..fold4"
            )
        return list(recordings)
    if kind == "fold":
        path = Path(fold_file) if fold_file is not None else (find_fold_file(data_dir) if data_dir else None)
        if path is None:
            raise DataError(
                f"--protocol {protocol} needs the patient-wise fold file {FOLD_FILE_NAME} (next to the data or one "
                "level up), or pass --fold-file PATH"
            )
        folds = read_fold_file(path)
        if k not in set(folds.values()):
            raise DataError(f"{path}: no patient in fold {k} (folds present: {sorted(set(folds.values()))})")
        patients = {r.info.patient for r in recordings}
        unassigned = sorted(patients - set(folds))
        if unassigned:
            raise DataError(f"{path}: patient(s) {unassigned[:5]} have recordings but no fold; add them to the file")
        missing = sorted(set(folds) - patients)
        if missing and not allow_partial:
            raise DataError(
                f"{path}: {len(missing)} patient(s) of the fold file have no recordings (e.g. {missing[:3]}); check "
                "the download is complete, or pass --allow-partial to use a subset"
            )
        assign = {r.stem: ("test" if folds[r.info.patient] == k else "train") for r in recordings}
        return _with_split(recordings, assign)
    # random80-20: stratified by cycle class, grouped by patient
    labels = [c.label for r in recordings for c in r.cycles]
    groups = [r.info.patient for r in recordings for c in r.cycles]
    n_groups = len(set(groups))
    if n_groups < 2:
        raise DataError("--protocol random80-20 needs recordings from at least 2 patients")
    k = min(5, n_groups)
    _, test_idx = _sgkf(labels, groups, k, seed)[seed % k]  # the greedy fold order barely moves with the shuffle
    test_patients = {groups[i] for i in test_idx}
    assign = {r.stem: ("test" if r.info.patient in test_patients else "train") for r in recordings}
    return _with_split(recordings, assign)


@dataclass(frozen=True)
class DataOptions:
    """Which recordings a command uses and how they are split (the CLI's data flags).

    Attributes:
        split_file: the official split file (default: found next to the data); used by ``protocol="official"``.
        protocol: see :data:`PROTOCOLS` (``None``: ``evaluate`` takes the checkpoint's, elsewhere ``official``).
        fold_file: the patient-wise fold file for ``foldK`` (default: found next to the data).
        allow_partial: accept split/fold-file entries without recordings (a subset of the database).
        allow_missing_class: train even when a class has no training cycles (logged).
        devices: keep only recordings of these devices (e.g. ``("Litt3200",)`` for per-device fine-tuning).
    """

    split_file: str | None = None
    protocol: str | None = "official"
    fold_file: str | None = None
    allow_partial: bool = False
    allow_missing_class: bool = False
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.protocol is not None:
            parse_protocol(self.protocol)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["devices"] = list(self.devices) if self.devices else None
        return d


def select_recordings(data_dir: str | Path, opts: DataOptions, seed: int = 0) -> list[Recording]:
    """Index ``data_dir``, split it by ``opts.protocol`` (``seed`` draws ``random80-20``), keep ``opts.devices``.

    Raises:
        DataError: see :func:`lungcvt.data.load_dataset` and :func:`apply_protocol`; a device that no recording has
            (naming the devices present).
    """
    from lungcvt.data import load_dataset

    protocol = opts.protocol or "official"
    official = parse_protocol(protocol)[0] == "official"
    recs, _ = load_dataset(data_dir, opts.split_file, allow_partial=opts.allow_partial, use_split_file=official)
    recs = apply_protocol(recs, protocol, opts.fold_file, data_dir, seed, opts.allow_partial)
    if opts.devices:
        present = sorted({r.info.device for r in recs})
        unknown = sorted(set(opts.devices) - set(present))
        if unknown:
            raise DataError(f"--devices {unknown}: no such recordings under {data_dir} (devices present: {present})")
        recs = [r for r in recs if r.info.device in opts.devices]
        log.info("kept %d recordings of device(s) %s", len(recs), list(opts.devices))
    return recs


def _sgkf(labels: Sequence[int], groups: Sequence[int], k: int, seed: int) -> list:
    """``medshared.splits.stratified_group_kfold`` without scikit-learn's warning about classes rarer than k (expected
    on small sets: a fold then lacks the class, which the callers check)."""
    import warnings

    from medshared.splits import stratified_group_kfold

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return stratified_group_kfold(labels, groups, n_splits=k, seed=seed)


def check_classes(counts: Sequence[int], where: str, allow_missing_class: bool = False) -> list[str]:
    """Names of the classes with no cycle in ``counts``; an error unless ``allow_missing_class`` (then logged).

    Raises:
        DataError: naming the class(es), the part and the flag.
    """
    missing = [CLASSES[i] for i, n in enumerate(counts) if n == 0]
    if missing and not allow_missing_class:
        raise DataError(
            f"class(es) {missing} have no cycles in {where} (counts {dict(zip(CLASSES, counts))}); the model could "
            "never learn them and the class-balanced loss would count them as 1 cycle. Use more data, or pass "
            "--allow-missing-class to train anyway"
        )
    if missing:
        log.warning("training without class(es) %s in %s (--allow-missing-class)", missing, where)
    return missing


def validation_split(
    recordings: Sequence[Recording],
    val_fraction: float = 0.2,
    seed: int = 0,
    allow_missing_class: bool = False,
) -> tuple[list[Recording], list[Recording], dict]:
    """Stratified, patient-grouped validation part of the training recordings (``split == "train"``).

    The cycles are split into ``k = round(1 / val_fraction)`` folds (at most one per patient) by
    ``medshared.splits.stratified_group_kfold`` (cycle classes as strata, patients as groups, shuffled with
    ``seed``). Among the folds that leave every class of the pool in training, the one whose validation part holds
    the most classes (the first on a tie) becomes the validation part.

    Returns:
        (training recordings, validation recordings, info) with info = {"k", "fold", "train_counts", "val_counts",
        "train_patients", "val_patients", "missing_in_val"}.

    Raises:
        DataError: no training recordings, fewer than 2 patients, or every fold takes a class's only patients out of
            training (naming the class), unless ``allow_missing_class``.
    """
    pool = [r for r in recordings if r.split == "train"]
    if not pool:
        raise DataError("no training recordings (split 'train') to draw a validation set from")
    patients = sorted({r.info.patient for r in pool})
    if len(patients) < 2:
        raise DataError(
            f"need recordings from at least 2 patients in the training part to hold out validation, got {patients}"
        )
    labels = [c.label for r in pool for c in r.cycles]
    groups = [r.info.patient for r in pool for c in r.cycles]
    rec_of = [i for i, r in enumerate(pool) for _ in r.cycles]
    k = min(max(2, int(round(1.0 / val_fraction))), len(patients))
    folds = _sgkf(labels, groups, k, seed)
    present = set(labels)
    choice, best_cover = None, -1
    for f, (_, val_idx) in enumerate(folds):  # keep every class in training; then cover the most in validation
        val_recs = {rec_of[i] for i in val_idx}
        tr_labels = {c.label for i, r in enumerate(pool) if i not in val_recs for c in r.cycles}
        cover = len({labels[i] for i in val_idx})
        if tr_labels >= present and cover > best_cover:
            choice, best_cover = f, cover
    if choice is None:  # every fold removes a class from training
        only = {
            CLASSES[c]: sorted({g for g, y in zip(groups, labels) if y == c}) for c in sorted(present) if c is not None
        }
        scarce = {c: ps for c, ps in only.items() if len(ps) <= 1}
        if not allow_missing_class:
            raise DataError(
                f"no patient-grouped validation part keeps every class in training: class(es) "
                f"{sorted(scarce) or sorted(only)} occur in too few patients ({scarce or only}); add patients, or pass "
                "--allow-missing-class"
            )
        choice = 0
    val_recs = {rec_of[i] for i in folds[choice][1]}
    tr = [r for i, r in enumerate(pool) if i not in val_recs]
    va = [r for i, r in enumerate(pool) if i in val_recs]
    info = {
        "method": "stratified_group_kfold",
        "k": k,
        "fold": choice,
        "seed": seed,
        "train_counts": class_counts(tr),
        "val_counts": class_counts(va),
        "train_patients": sorted({r.info.patient for r in tr}),
        "val_patients": sorted({r.info.patient for r in va}),
    }
    info["missing_in_val"] = [CLASSES[i] for i, n in enumerate(info["val_counts"]) if n == 0 and i in present]
    check_classes(info["train_counts"], "the training part", allow_missing_class)
    log.info(
        "validation: %d of %d patients (fold %d of %d); cycles per class train %s, val %s",
        len(info["val_patients"]),
        len(patients),
        choice,
        k,
        info["train_counts"],
        info["val_counts"],
    )
    if info["missing_in_val"]:
        log.warning("validation part has no %s cycles: its score cannot reward them", info["missing_in_val"])
    return tr, va, info
