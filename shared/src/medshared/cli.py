"""The one way every medrepro command line turns expected errors into a message and an exit code.

A package builds its ``argparse`` parser with subcommands (``dest="command"``) and hands it to :func:`run_cli`
together with a ``{command: handler}`` mapping (or handlers stored as ``set_defaults(func=...)``). Expected errors
(a missing file, a bad value, an unknown class) become one line on stderr, ``"<prog> <command>: error: <message>"``,
and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["EXPECTED_ERRORS", "error_message", "run_cli"]

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
