"""Command-line interface of ``deepacc``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepacc import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the ``deepacc`` argument parser."""
    parser = argparse.ArgumentParser(prog="deepacc", description="DeepACC: chromosome detection and 24-class classification on metaphase images (torchvision Faster R-CNN).")
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
