"""``alges query`` as a library function: which images of a team's pool to annotate next.

The pool is any folder (scanned recursively; masks not needed), streamed from disk in batches; per-image values go
to memory-mapped files in a temporary folder next to the output, removed afterwards. Images the checkpoint was
trained on (its stored ``labeled`` ids) are excluded by default, as are the ids of ``labeled_ids``; the result says
how many were excluded. Unreadable files: without ``skip_unreadable`` one error names every one of them (after a full
pass); with it they are left out and listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medshared.runtime import resolve_device

from alges.active import select_batch
from alges.data import scan_images
from alges.inference import temp_workdir
from alges.model import load_trained
from alges.pool import FileSource
from alges.strategies import get_strategy

__all__ = ["query_pool"]


def query_pool(
    checkpoint: str | Path,
    pool: str | Path,
    budget: int,
    *,
    strategy: str = "alges-img",
    labeled_ids: Sequence[str] = (),
    exclude_checkpoint_labeled: bool = True,
    skip_unreadable: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    workdir_near: str | Path = ".",
    progress: bool = True,
    precision: Any = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Rank ``budget`` images of ``pool`` to annotate next.

    Returns ``{"rows": [{"rank", "image", "path", "score"}], "excluded_checkpoint", "excluded_list",
    "skipped": [(path, reason)], "pool_size", "strategy"}``. ``precision``: an
    :class:`alges.precision.AlgesPrecision` (its ``select`` part runs the pool forward; None: fp32, or the
    checkpoint config's old ``amp`` flag); ``workers``: image-decoding threads.
    """
    s = get_strategy(strategy)
    model, cfg, extra = load_trained(checkpoint)
    dev = resolve_device(device) if isinstance(device, str) else device
    if precision is not None and cfg.amp and precision.select.requested == "auto":  # the old alias, from the config
        from alges.precision import resolve_alges_precision

        precision = resolve_alges_precision(precision.train.requested, dev, amp=True)
    if s.needs_deal_head and model.deal is None:
        raise ValueError(f"strategy {s.name} needs a checkpoint trained with the DEAL head (alges train --deal-head)")
    items = scan_images(pool)
    ids = [i for i, _ in items]
    pos = {i: k for k, i in enumerate(ids)}
    unknown = [i for i in labeled_ids if i not in pos]
    if unknown:
        raise ValueError(f"the labeled list names {len(unknown)} images not in the pool {pool}: {unknown[:5]}")
    from_list = {pos[i] for i in labeled_ids}
    ck_ids = list(extra.get("labeled") or []) if exclude_checkpoint_labeled else []
    from_ck = {pos[i] for i in ck_ids if i in pos}
    labeled = np.asarray(sorted(from_list | from_ck), dtype=np.int64)
    unlabeled = np.setdiff1d(np.arange(len(ids)), labeled)
    if len(unlabeled) == 0:
        raise ValueError(f"the unlabeled pool is empty: all {len(ids)} images of {pool} are labelled")
    if budget < 1 or budget > len(unlabeled):
        raise ValueError(f"budget {budget} must be between 1 and the unlabeled pool size ({len(unlabeled)})")
    source = FileSource([p for _, p in items], cfg.image_size, ids, workers=workers)
    with temp_workdir(workdir_near) as wd:
        chosen, scores, failures = select_batch(
            s.name,
            model,
            source,
            unlabeled,
            labeled,
            budget,
            cfg,
            dev,
            seed=seed,
            workdir=wd,
            progress=progress,
            precision=precision,
        )
    if failures and not skip_unreadable:
        listing = "\n".join(f"  {path}: {why}" for _, path, why in failures)
        raise ValueError(
            f"{len(failures)} pool images could not be read:\n{listing}\nfix or remove them, or pass --skip-unreadable"
        )
    rows = [
        {"rank": r + 1, "image": ids[c], "path": str(items[c][1]), "score": float(sc)}
        for r, (c, sc) in enumerate(zip(chosen, scores))
    ]
    return {
        "rows": rows,
        "strategy": s.name,
        "pool_size": len(ids),
        "excluded_checkpoint": len(from_ck - from_list),
        "checkpoint_labeled": len(ck_ids),
        "excluded_list": len(from_list),
        "skipped": [(path, why) for _, path, why in failures],
    }
