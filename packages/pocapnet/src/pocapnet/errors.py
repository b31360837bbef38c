"""The package's error for bad input data."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data (the message names the file and the fix)."""
