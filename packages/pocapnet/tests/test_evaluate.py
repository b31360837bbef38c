"""evaluate's metrics on a worked example, and the paper's Fig. 3 ribbon colours."""

from __future__ import annotations

import numpy as np
import pytest
from pocapnet.evaluate import PHASE_COLOURS, operation_metrics, plot_ribbons, pooled_metrics


def test_operation_metrics_worked_example():
    # truth: Prep x3, Transition, Puncture x4 ; prediction: Prep x2, Puncture x2 (one on the transition), Puncture x3,
    # then GuideWire
    y = np.array([0, 0, 0, 8, 1, 1, 1, 1])
    p = np.array([0, 0, 1, 1, 1, 1, 1, 2])
    m = operation_metrics(y, p)
    # 7 scored frames (the transition removed): correct 0,0,1,1,1 -> 5/7
    assert m["accuracy"] == pytest.approx(5 / 7) and m["seconds"] == 7
    # macro over the phases present (0, 1, 2): F1_0 = 2*1*(2/3)/(1+2/3) = 0.8; F1_1: TP 3, FP 1, FN 1 -> 0.75; F1_2 = 0
    assert m["f1_macro"] == pytest.approx((0.8 + 0.75 + 0.0) / 3)
    assert m["jaccard_macro"] == pytest.approx((2 / 3 + 3 / 5 + 0.0) / 3)
    # segments with Transition as background: truth [0, 1], prediction [0, 1, 2] -> Edit 1 - 1/3
    assert m["edit"] == pytest.approx(2 / 3)
    # F1@50: pred 0 [0,2) vs true 0 [0,3): IoU 2/3 TP; pred 1 [2,7) vs true 1 [4,8): IoU 3/6 TP; pred 2 FP -> 0.8
    assert m["f1@50"] == pytest.approx(0.8)
    pooled = pooled_metrics({"a": y, "b": y}, {"a": p, "b": y})
    assert [r["phase"] for r in pooled["per_phase"]] == ["Preparation", "Puncture", "GuideWire"]
    assert pooled["segmental"]["sequences"] == 2


def test_ribbon_colours_are_the_papers_fig3(tmp_path):
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt

    # paper §3.3: Preparation blue, Puncture orange, Guide Wire green, Catheter Placement red, Catheter Positioning
    # brown, Catheter Adjustment pink, Catheter Control grey, Closing yellow: tab10 resampled to 9 (the code's map)
    assert list(PHASE_COLOURS) == [mc.to_hex(plt.get_cmap("tab10").resampled(9)(i)) for i in range(9)]
    assert PHASE_COLOURS[4] == "#8c564b" and PHASE_COLOURS[7] == "#bcbd22"  # brown, olive-yellow (not tab10's 4, 7)
    path = plot_ribbons({"OP_1": np.array([0, 4, 7, 8])}, {"OP_1": np.array([0, 4, 7, 7])}, tmp_path / "r.png")
    img = plt.imread(path)[..., :3]
    found = {mc.to_hex(tuple(c)) for c in img.reshape(-1, 3)[::7]}
    assert {"#1f77b4", "#8c564b", "#bcbd22"} <= found
