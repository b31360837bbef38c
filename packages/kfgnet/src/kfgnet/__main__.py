"""``python -m kfgnet`` (and ``torchrun --nproc_per_node=N -m kfgnet train-detector ...``)."""

from kfgnet.cli import main

raise SystemExit(main())
