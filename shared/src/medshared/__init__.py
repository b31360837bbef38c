"""medshared: metrics, split utilities and runtime helpers shared by the medrepro packages.

Submodules: :mod:`medshared.metrics`, :mod:`medshared.splits`, :mod:`medshared.runtime`,
:mod:`medshared.checkpoint`, :mod:`medshared.config`, :mod:`medshared.plots`, :mod:`medshared.testing`.
Nothing here is specific to one paper beyond a metric's published definition.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
