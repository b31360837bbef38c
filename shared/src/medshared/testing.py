"""Test helpers: where the real data samples live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]


def shared_data_dir() -> Path | None:
    """The folder of real data samples, or None when absent.

    Order: ``$MEDREPRO_SHARED_DATA``; then ``../shared/data`` next to the repository root, found by walking up from
    the current directory and from this file to the first folder holding ``pyproject.toml`` and ``packages/``.
    """
    env = os.environ.get("MEDREPRO_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.parents]:
            if (d / "pyproject.toml").is_file() and (d / "packages").is_dir():
                cand = d.parent / "shared" / "data"
                if cand.is_dir():
                    return cand
    return None
