"""Chromosome label names: normalisation to 1..24 (X = 23, Y = 24), the known-invalid AutoKary2022 labels and the
``--label-map`` file that maps other names (or drops them)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from deepacc.samples import DataError

__all__ = ["INVALID_LABELS", "load_label_map", "normalize_label"]

#: Known wrong labels of AutoKary2022 (README of the dataset): dropped with a warning.
INVALID_LABELS = frozenset({"-1", "119"})
_GROUP_OF = {  # Denver group letter of each autosome (Tseng et al. names like "A1", "C7", "G22")
    **{i: "A" for i in (1, 2, 3)},
    **{i: "B" for i in (4, 5)},
    **{i: "C" for i in range(6, 13)},
    **{i: "D" for i in (13, 14, 15)},
    **{i: "E" for i in (16, 17, 18)},
    **{i: "F" for i in (19, 20)},
    **{i: "G" for i in (21, 22)},
}


def load_label_map(path: str | Path) -> dict[str, Any]:
    """Read a ``--label-map`` file (YAML or JSON): ``{source label: target}``, target 1..22, "X"/23, "Y"/24, or
    ``null`` / "ignore" to drop that label (logged). Every target is checked here."""
    from medshared.config import load_config_file

    raw = load_config_file(path)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None or str(v).lower() == "ignore":
            out[str(k)] = None
            continue
        normalize_label(v, f"{path}: target of {k!r}")
        out[str(k)] = v
    if not out:
        raise DataError(f"{path}: the label map is empty; expected lines like 'chr_01: 1'")
    return out


def _label_map_lookup(name: str, label_map: dict[str, Any]) -> tuple[bool, Any]:
    if name in label_map:
        return True, label_map[name]
    low = {k.lower(): v for k, v in label_map.items()}
    if name.lower() in low:
        return True, low[name.lower()]
    return False, None


def normalize_label(name: Any, source: str = "", label_map: dict[str, Any] | None = None) -> int | None:
    """Map a label to 1..24 (X = 23, Y = 24).

    Accepts ``1``..``24``, ``"1"``..``"22"``, ``"23"``/``"X"``, ``"24"``/``"Y"``, ``"chr1"``/``"chrX"``,
    ``"chromosome1"``/``"Chromosome_X"``, and Tseng et al.'s ``"A1"``..``"G22"`` (the group letter must match).
    ``label_map`` is applied first (see :func:`load_label_map`); a label it maps to ``None`` returns ``None``. The known
    invalid AutoKary2022 labels ``-1`` and ``119`` return ``None`` with a warning; anything else raises
    :class:`DataError` naming ``source`` and the ``--label-map`` fix.
    """
    s = str(name).strip()
    if label_map:
        hit, target = _label_map_lookup(s, label_map)
        if hit:
            if target is None or str(target).lower() == "ignore":
                return None
            s = str(target).strip()
    if s in INVALID_LABELS:
        warnings.warn(f"{source}: dropping annotation with known-invalid label {s!r}", stacklevel=2)
        return None
    t = s.upper()
    t = t.removeprefix("CHROMOSOME").removeprefix("CHR").strip(" _-")  # the longer prefix first
    if t in ("X", "23"):
        return 23
    if t in ("Y", "24"):
        return 24
    if t.isdigit() and 1 <= int(t) <= 22:
        return int(t)
    mt = re.fullmatch(r"([A-G])\s*[-_]?\s*(\d{1,2})", t)
    if mt and int(mt.group(2)) in _GROUP_OF and _GROUP_OF[int(mt.group(2))] == mt.group(1):
        return int(mt.group(2))
    raise DataError(
        f"{source}: unknown chromosome label {s!r}; expected 1..22, 23/X, 24/Y, chr1/chromosome_1 or A1..G22. "
        "Map other names with --label-map FILE (YAML/JSON 'name: class', null to drop), or fix the annotation"
    )
