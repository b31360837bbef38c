"""The one way every medrepro command line turns expected errors into a message and an exit code.

A package builds its ``argparse`` parser with subcommands (``dest="command"``) and hands it to :func:`run_cli`
together with a ``{command: handler}`` mapping (or handlers stored as ``set_defaults(func=...)``). Expected errors
(a missing file, a bad value, an unknown class) become one line on stderr, ``"<prog> <command>: error: <message>"``,
and a non-zero exit code; anything else is a bug and keeps its traceback.

:func:`add_runtime_args` defines the flags every package's commands share (``--device``, ``--precision``,
``--workers``, ``--seed``, ``--config``) once, with one spelling, default and help text.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["EXPECTED_ERRORS", "add_runtime_args", "device_arg", "error_message", "non_negative_int", "run_cli"]

#: Errors that mean "bad input" rather than "bug" (``NotADirectoryError`` and ``PermissionError`` are ``OSError``s
#: that are not ``FileNotFoundError``; ``json.JSONDecodeError`` is a ``ValueError``).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
)

Handler = Callable[[argparse.Namespace], "int | None"]


def error_message(exc: BaseException) -> str:
    """The user-facing text of ``exc``: a ``KeyError``'s message without the quotes ``str()`` adds."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    commands: Mapping[str, Handler] | None = None,
    *,
    expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
    error_code: int = 1,
    interrupt_hint: str | None = None,
) -> int:
    """Parse ``argv``, run the chosen subcommand and return the process exit code.

    Args:
        parser: parser whose subparsers use ``dest="command"``.
        argv: arguments (``None``: ``sys.argv[1:]``).
        commands: ``{command: handler}``; when ``None`` the handler is ``args.func`` (``set_defaults(func=...)``).
        expected: exception types reported as one line instead of a traceback.
        error_code: exit code for an expected error (no subcommand gives 2, like argparse usage errors).
        interrupt_hint: appended to the message on Ctrl-C (e.g. how to resume); exit code 130.

    Returns:
        The handler's return value (``None`` counts as 0), ``error_code``, 2 or 130.
    """
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = commands[command] if commands is not None else args.func
    try:
        return int(handler(args) or 0)
    except expected as exc:
        print(f"{parser.prog} {command}: {_rank_tag()}error: {error_message(exc)}", file=sys.stderr)
        return error_code
    except KeyboardInterrupt:
        hint = f"; {interrupt_hint}" if interrupt_hint else ""
        print(f"{parser.prog} {command}: {_rank_tag()}interrupted{hint}", file=sys.stderr)
        return 130


def _rank_tag() -> str:
    """``"[rank N] "`` under torchrun with more than one process (every rank reports its own error), else ``""``."""
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        return f"[rank {os.environ.get('RANK', '?')}] "
    return ""


# --------------------------------------------------------------------------------------------------------------------
# shared runtime flags
# --------------------------------------------------------------------------------------------------------------------
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def device_arg(value: str) -> str:
    """argparse ``type`` for ``--device``: ``auto | cpu | cuda | cuda:N`` (lower-cased); anything else is a usage
    error naming the value. Whether CUDA is present is checked later, by ``medshared.runtime.resolve_device``."""
    v = str(value).strip().lower()
    if not _DEVICE_RE.match(v):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return v


def non_negative_int(value: str) -> int:
    """argparse ``type`` for counts such as ``--workers``: an integer >= 0."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return n


def add_runtime_args(
    parser: argparse.ArgumentParser,
    *,
    device: bool = True,
    precision: bool = True,
    workers: int | None = None,
    seed: int | None = 0,
    config: bool = False,
    precision_help: str | None = None,
) -> None:
    """Add the flags every medrepro command shares to ``parser`` (a subcommand's parser).

    Args:
        device: add ``--device auto|cpu|cuda|cuda:N`` (default ``auto``; the string lands in ``args.device``).
        precision: add ``--precision auto|fp32|tf32|bf16`` (default ``auto``; resolve it with
            ``medshared.precision.resolve_precision``).
        workers: add ``--workers N`` (DataLoader worker processes) with this default; None: no flag. A package that
            had ``--num-workers`` adds it as an alias itself: ``parser.add_argument("--num-workers", dest="workers",
            type=non_negative_int, help=argparse.SUPPRESS)``.
        seed: add ``--seed N`` with this default; None: no flag.
        config: add ``--config PATH`` (a string, default None) for a YAML/JSON overrides file.
        precision_help: extra text appended to ``--precision``'s help (e.g. what the package keeps in fp32, or an
            old flag that is now an alias).
    """
    if device:
        parser.add_argument(
            "--device",
            type=device_arg,
            default="auto",
            help="auto | cpu | cuda | cuda:N (default auto: CUDA if present)",
        )
    if precision:
        from medshared.precision import PRECISIONS

        text = (
            "auto | fp32 | tf32 | bf16 (default auto: on CUDA bf16 autocast + TF32 where supported; on a CPU bf16 "
            "only where a short cached measurement finds it faster, override with MEDREPRO_PRECISION; "
            "tf32 on a CPU runs fp32)"
        )
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="auto",
            help=f"{text}. {precision_help}" if precision_help else text,
        )
    if workers is not None:
        parser.add_argument(
            "--workers",
            type=non_negative_int,
            default=int(workers),
            help=f"DataLoader worker processes (default {int(workers)}; 0 loads in the main process)",
        )
    if seed is not None:
        parser.add_argument("--seed", type=int, default=int(seed), help=f"random seed (default {int(seed)})")
    if config:
        parser.add_argument("--config", default=None, metavar="PATH", help="YAML/JSON file of config overrides")
