"""``python -m pocapnet`` (and ``torchrun -m pocapnet train ...``)."""

from pocapnet.cli import main

raise SystemExit(main())
