"""Command-line interface of ``kfgnet``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kfgnet import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the ``kfgnet`` argument parser."""
    parser = argparse.ArgumentParser(prog="kfgnet", description="KFGNet (MICCAI 2022): key-frame guided thyroid nodule recognition from ultrasound video.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
