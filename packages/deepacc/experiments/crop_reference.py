"""The crop-classifier reference at the detector's scale, longer than the table's 6 epochs (README: 0.562 at 16).

    OMP_NUM_THREADS=1 uv run python packages/deepacc/experiments/crop_reference.py \
        --crops ../shared/data/chromosome/cells --split /work/runs/deepacc_table2/data/split.json --epochs 16

The small stride-1 CNN (``deepacc.crop_classifier.SmallCNN``) on single crops of the table's training cells at 0.5x
(80x40 canvas), tested on the crops of its 19 test cells; seed 0. Prints and writes the result JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", required=True)
    ap.add_argument("--split", required=True, help="split.json of the table's data (parts train / test)")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    from deepacc.compose import index_cells
    from deepacc.crop_classifier import train_crop_classifier

    torch.set_num_threads(1)
    split = json.loads(Path(args.split).read_text())["parts"]
    cells = index_cells(args.crops)
    tr = [c for k in split["train"] for c in cells[k]]
    te = [c for k in split["test"] for c in cells[k]]
    r = train_crop_classifier(tr, te, epochs=args.epochs, size=(80, 40), seed=args.seed)
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1))
    print({k: r[k] for k in ("accuracy", "errors_within_group", "train_seconds", "n_train", "n_test", "epochs")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
