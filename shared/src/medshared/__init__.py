"""medshared: metrics, split utilities and runtime helpers shared by the medrepro packages.

Submodules:
- :mod:`medshared.metrics`: classification, ICBHI, Dice, key-frame tolerance, mean ± std.
- :mod:`medshared.detection`: box IoU, VOC mAP, Acc/AER matching (re-exported by :mod:`medshared.metrics`).
- :mod:`medshared.coco`: COCO box AP@[.5:.95] / AP50 / AP75 (pycocotools' protocol, no pycocotools needed).
- :mod:`medshared.splits`: patient/video-aware splits and split files.
- :mod:`medshared.runtime`: seeding, devices, bf16 autocast, atomic writes with the umask's mode, worker RNG.
- :mod:`medshared.precision`: ``auto | fp32 | tf32 | bf16`` resolved per device (CPU auto by a cached measurement).
- :mod:`medshared.distributed`: torchrun / DDP (gloo on CPU, nccl on CUDA), sharded work.
- :mod:`medshared.launch`: ``run_local``, N forked CPU ranks joined by gloo (tests).
- :mod:`medshared.weights`: pretrained weights through torch.hub / huggingface_hub caches, the offline error.
- :mod:`medshared.arrays`, :mod:`medshared.checkpoint`, :mod:`medshared.config` (YAML 1.2 numbers),
  :mod:`medshared.cli`, :mod:`medshared.plots`, :mod:`medshared.registry`, :mod:`medshared.testing` (shared data,
  loopback server).
- :mod:`medshared.boundary`: HD95 / Hausdorff / ASSD between mask boundaries (pixels or spacing; empty masks
  defined).
- :mod:`medshared.segmental`: per-class P/R/F1/Jaccard with macro averages, MS-TCN's Edit score and F1@{10,25,50}.
- :mod:`medshared.bootstrap`: accuracy, sensitivity, specificity, AUROC (any positive label) with
  percentile-bootstrap CIs.

Nothing here is specific to one paper beyond a metric's published definition.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
