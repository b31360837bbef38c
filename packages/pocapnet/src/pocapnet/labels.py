"""Per-second phase labels: phase names, the corpus's ``annotations.json`` (inclusive ``MM:SS`` ranges + the headset
wearers) and CSV labels (``second,phase`` or ``start,end,phase``).

Closing runs to the end of the recording (the corpus's convention, code). Labels past the recording's end are an
error unless ``trim`` (logged, recorded); unlabelled seconds and unknown phase names are errors.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocapnet.config import PHASES
from pocapnet.errors import DataError

__all__ = ["phase_index", "parse_time", "Annotation", "read_annotations", "labels_from_ranges", "read_label_csv"]

log = logging.getLogger("pocapnet")

_ALIASES = {
    "preperation": 0,  # the official code's spelling
    "guidewire": 2,
    "positioningoftheguidewire": 2,
    "cathplacement": 3,
    "pouchpreparationandcatheterplacement": 3,
    "catheterplacement": 3,
    "cathpositioning": 4,
    "catheterpositioning": 4,
    "cathadjustment": 5,
    "catheteradjustment": 5,
    "cathcontrol": 6,
    "cathetercontrol": 6,
}


def phase_index(name: str | int) -> int:
    """Map a phase name (canonical, the paper's long form, or an index 0..8) to its class index."""
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.strip().isdigit()):
        i = int(name)
        if 0 <= i < len(PHASES):
            return i
        raise DataError(f"phase index {i} out of range 0..{len(PHASES) - 1}")
    key = re.sub(r"[^a-z]", "", str(name).lower())
    for i, p in enumerate(PHASES):
        if key == p.lower():
            return i
    if key in _ALIASES:
        return _ALIASES[key]
    raise DataError(f"unknown phase name {name!r}; valid names: {', '.join(PHASES)}")


def parse_time(s: str) -> int:
    """``"MM:SS"``, ``"HH:MM:SS"`` or plain seconds -> seconds."""
    parts = str(s).strip().split(":")
    if len(parts) not in (1, 2, 3) or not all(p.strip().isdigit() for p in parts):
        raise DataError(f"bad time {s!r}; expected MM:SS, HH:MM:SS or whole seconds")
    v = 0
    for p in parts:
        v = v * 60 + int(p)
    return v


@dataclass(frozen=True)
class Annotation:
    """One entry of the corpus's ``annotations.json``: inclusive time ranges, their phases and the headset wearers."""

    op: str
    ranges: list[str]
    phases: list[str]
    wearers: tuple[str, ...] = ()


def read_annotations(path: str | Path) -> dict[str, Annotation]:
    """Read the corpus's ``annotations.json`` (``[op, ch1_wearer, ch2_wearer, [ranges], [phases]]`` entries)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataError(f"cannot parse {path}: {e}") from e
    out: dict[str, Annotation] = {}
    for k, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == 5 and len(e[3]) == len(e[4])):
            raise DataError(
                f"{path}: entry {k} must be [op, ch1_wearer, ch2_wearer, [ranges], [phases]] with as "
                "many ranges as phases"
            )
        out[str(e[0])] = Annotation(str(e[0]), list(e[3]), list(e[4]), (str(e[1]), str(e[2])))
    return out


def _past_end(what: str, last: int, n_seconds: int, trim: bool, changes: list[str] | None) -> None:
    if last < n_seconds:
        return
    msg = f"{what}: labels run to {last} s but the recording has {n_seconds} s ({last - n_seconds + 1} s past its end)"
    if not trim:
        raise DataError(f"{msg}; fix the annotations, or pass --trim to drop the labels past the end")
    log.warning("%s; dropped (--trim)", msg)
    if changes is not None:
        changes.append(f"labels after {n_seconds} s dropped ({last - n_seconds + 1} s)")


def labels_from_ranges(
    ranges: Sequence[str],
    phases: Sequence[str],
    n_seconds: int,
    op: str = "",
    *,
    trim: bool = False,
    changes: list[str] | None = None,
) -> np.ndarray:
    """Per-second labels from inclusive ``"start-end"`` ranges; Closing runs to the end of the recording (code).

    Raises:
        DataError: unknown phase name, seconds that no range covers, or a range past the recording's end (allowed
            with ``trim``, logged).
    """
    y = np.full(n_seconds, -1, dtype=np.int64)
    last = -1
    for r, ph in zip(ranges, phases, strict=True):
        a, _, b = str(r).partition("-")
        s, e = parse_time(a), parse_time(b)
        if e < s:
            raise DataError(f"{op}: range {r!r} ends before it starts")
        c = phase_index(ph)
        last = max(last, e)
        if c == phase_index("Closing"):
            e = max(e, n_seconds - 1)
        y[s : min(e, n_seconds - 1) + 1] = c
    _past_end(op, last, n_seconds, trim, changes)
    missing = np.flatnonzero(y < 0)
    if missing.size:
        raise DataError(
            f"{op}: {missing.size} unlabelled seconds (first at {int(missing[0])} s, "
            f"{missing[0] // 60:02d}:{missing[0] % 60:02d}); every second needs a phase or Transition"
        )
    return y


def read_label_csv(
    path: str | Path, n_seconds: int, *, trim: bool = False, changes: list[str] | None = None
) -> np.ndarray:
    """Per-second labels from a CSV: ``second,phase`` rows, or inclusive ``start,end,phase`` ranges (MM:SS or s)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        rows = list(reader)
    if {"start", "end", "phase"} <= cols:
        return labels_from_ranges(
            [f"{r['start']}-{r['end']}" for r in rows],
            [r["phase"] for r in rows],
            n_seconds,
            str(path),
            trim=trim,
            changes=changes,
        )
    if not {"second", "phase"} <= cols:
        raise DataError(f"{path}: needs a header with columns 'second,phase' or 'start,end,phase'")
    y = np.full(n_seconds, -1, dtype=np.int64)
    last = -1
    for row in rows:
        t = parse_time(row["second"])
        last = max(last, t)
        if t < n_seconds:
            y[t] = phase_index(row["phase"])
    _past_end(str(path), last, n_seconds, trim, changes)
    missing = np.flatnonzero(y < 0)
    if missing.size:
        raise DataError(f"{path}: {missing.size} unlabelled seconds (first at {int(missing[0])} s)")
    return y
