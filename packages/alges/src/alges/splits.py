"""Case-disjoint splits of a folder dataset: an image's case from its file name, a seeded group split, and a split
written out as two folder datasets (``alges split``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from alges.index import scan_folder

__all__ = ["case_of", "group_split", "split_folder"]


def case_of(image_id: str, pattern: str) -> str:
    """The group (patient, case, video) of an image id: the first capture group of ``pattern`` searched in its
    file name (e.g. ``r"^(\\d+)_"`` on DDTI's ``100_1(2)`` -> ``"100"``). No match raises ``ValueError``."""
    m = re.search(pattern, image_id.rsplit("/", 1)[-1])
    if m is None or not m.groups():
        raise ValueError(f"image id {image_id!r} does not match the case pattern {pattern!r} (one capture group)")
    return m.group(1)


def group_split(ids: Sequence[str], pattern: str, test_fraction: float, seed: int = 0) -> dict[str, list[str]]:
    """Case-disjoint ``{"train", "test"}`` split of ``ids`` (cases from :func:`case_of`), seeded."""
    from medshared.splits import ratio_split

    groups = [case_of(i, pattern) for i in ids]
    sp = ratio_split(list(ids), (1.0 - test_fraction, test_fraction), seed=seed, groups=groups, names=("train", "test"))
    return sp


def split_folder(
    root: str | Path, out: str | Path, pattern: str, test_fraction: float, *, seed: int = 0, copy: bool = False
) -> dict[str, int]:
    """Write a case-disjoint split of a folder dataset as two folder datasets ``out/train`` and ``out/test`` (same
    layout; symlinks, or copies with ``copy``), each with the source's ``classes.json`` when it has one."""
    import shutil

    index = scan_folder(root)
    sp = group_split(list(index.ids), pattern, test_fraction, seed=seed)
    out = Path(out)
    for part, ids in sp.items():
        for i in ids:
            for kind, table in (("images", index.images), ("masks", index.masks)):
                if i not in table:
                    continue
                src = table[i].resolve()
                dst = out / part / kind / table[i].relative_to(table[i].parents[len(Path(i).parts) - 1])
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.exists() or dst.is_symlink():
                    dst.unlink()
                if copy:
                    shutil.copy2(src, dst)
                else:
                    dst.symlink_to(src)
        cm = Path(root) / "classes.json"
        if cm.is_file():
            shutil.copy2(cm, out / part / "classes.json")
    return {k: len(v) for k, v in sp.items()}
