"""``python -m lungcvt`` (also ``torchrun --nproc_per_node=N -m lungcvt train ...``)."""

from lungcvt.cli import main

raise SystemExit(main())
