"""medshared: metrics, split utilities and runtime helpers shared by the medrepro packages.

Submodules: :mod:`medshared.metrics`, :mod:`medshared.splits`, :mod:`medshared.runtime`,
:mod:`medshared.checkpoint`, :mod:`medshared.config`, :mod:`medshared.plots`, :mod:`medshared.testing`.
:mod:`medshared.boundary`: HD95 / Hausdorff / ASSD between mask boundaries (pixels or spacing; empty masks defined).
:mod:`medshared.segmental`: per-class P/R/F1/Jaccard with macro averages, MS-TCN's Edit score and F1@{10,25,50}.
Nothing here is specific to one paper beyond a metric's published definition.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
