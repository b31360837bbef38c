"""Resumable runs that refuse stale results: every saved state and finished result carries the hash of the config
that made it, and a run under another config stops with a message (or starts over with ``--restart``)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["config_hash", "StaleRunError", "check_resumable"]

log = logging.getLogger("kfgnet")


class StaleRunError(ValueError):
    """A saved state or result was made under another config."""


def config_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys; tuples as lists; paths as strings)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_resumable(path: Path, stored_hash: str | None, expected: str, restart: bool) -> bool:
    """Whether the state/result at ``path`` (stored under ``stored_hash``) may be reused for config ``expected``.

    Returns True when the hashes match. A mismatch (or a file without a hash) raises :class:`StaleRunError` naming
    the file and both ways out, unless ``restart``: then the file is ignored (logged) and False is returned.
    """
    if stored_hash == expected:
        return True
    if restart:
        log.warning("--restart: ignoring %s (made under config %s, now %s)", path, stored_hash, expected)
        return False
    raise StaleRunError(
        f"{path} was made under another config (hash {stored_hash or 'missing'}, now {expected}); "
        f"re-run with --restart to start over, or use another --out folder (or the old config)"
    )
