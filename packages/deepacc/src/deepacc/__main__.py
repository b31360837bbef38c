"""``python -m deepacc`` (also what ``torchrun -m deepacc train ...`` runs)."""

from deepacc.cli import main

raise SystemExit(main())
