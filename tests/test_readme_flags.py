"""The READMEs stay true to the command lines: every ``--flag`` shown after ``<pkg> <command>`` in a package README
or the root README exists in that command's argparse parser."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pocapnet", "lungcvt", "deepacc", "kfgnet", "alges"]
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def command_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """``{command: its option strings}`` of a parser with one level of subcommands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subs, "the CLI has no subcommands"
    return {name: {o for a in sp._actions for o in a.option_strings} for name, sp in subs[0].choices.items()}


def flag_mentions(text: str, pkg: str, commands: set[str]) -> list[tuple[str, str]]:
    """``(command, flag)`` for each ``--flag`` after ``<pkg> <command>`` up to the end of the code span / cell /
    comment; backslash-continued lines are joined first."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        for m in re.finditer(rf"(?:^|[\s`(/]){pkg} ([a-z][a-z0-9-]+)([^`|;#]*)", line):
            if m.group(1) in commands:
                found += [(m.group(1), f) for f in FLAG.findall(m.group(2))]
    return found


def test_flag_mentions_are_found_and_unknown_ones_caught() -> None:
    text = "run `demo --out X` and\n```\ndemo train --data D \\\n    --epochs 3  # --not-this\ndemo zap --x\n```"
    assert flag_mentions(text, "demo", {"train"}) == [("train", "--data"), ("train", "--epochs")]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_readme_flags_exist(pkg: str) -> None:
    options = command_options(importlib.import_module(f"{pkg}.cli").build_parser())
    missing, seen = [], 0
    for md in (ROOT / "packages" / pkg / "README.md", ROOT / "README.md"):
        for cmd, flag in flag_mentions(md.read_text(encoding="utf-8"), pkg, set(options)):
            seen += 1
            if flag not in options[cmd]:
                missing.append(f"{md.relative_to(ROOT)}: `{pkg} {cmd} {flag}` is not an option of `{pkg} {cmd}`")
    assert seen > 0, f"no `{pkg} <command> --flag` found in the READMEs: the pattern no longer matches them"
    assert not missing, "\n".join(missing)
