"""``python -m alges`` (and ``torchrun --nproc_per_node=N -m alges train ...``)."""

from alges.cli import main

raise SystemExit(main())
