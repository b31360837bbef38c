from __future__ import annotations

import argparse

import pytest
from medshared.cli import error_message, run_cli


def _parser(calls: list) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="toy")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("ok")
    p.add_argument("--n", type=int, default=0)
    sub.add_parser("missing")
    sub.add_parser("unknown-class")
    sub.add_parser("bug")
    sub.add_parser("stop")

    def ok(args):
        calls.append(args.n)
        return None if args.n == 0 else args.n

    def missing(args):
        raise FileNotFoundError("weights file /w.pt not found; pass --pretrained none for random init")

    def unknown(args):
        raise KeyError("unknown class 'foo'")

    def bug(args):
        raise ZeroDivisionError("a bug")

    def stop(args):
        raise KeyboardInterrupt

    return parser, {"ok": ok, "missing": missing, "unknown-class": unknown, "bug": bug, "stop": stop}


def test_run_cli_dispatches_and_maps_errors(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls: list = []
    parser, commands = _parser(calls)
    assert run_cli(parser, ["ok"], commands) == 0
    assert run_cli(parser, ["ok", "--n", "3"], commands) == 3
    assert calls == [0, 3]
    assert run_cli(parser, [], commands) == 2
    capsys.readouterr()
    assert run_cli(parser, ["missing"], commands, error_code=5) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["toy missing: error: weights file /w.pt not found; pass --pretrained none for random init"]
    assert run_cli(parser, ["unknown-class"], commands) == 1
    assert capsys.readouterr().err.strip() == "toy unknown-class: error: unknown class 'foo'"
    assert run_cli(parser, ["stop"], commands, interrupt_hint="re-run to resume") == 130
    assert "interrupted; re-run to resume" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected error: it keeps its traceback
        run_cli(parser, ["bug"], commands)


def test_run_cli_uses_set_defaults_func():
    parser = argparse.ArgumentParser(prog="toy")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("go").set_defaults(func=lambda args: 7)
    assert run_cli(parser, ["go"]) == 7


def test_error_message_strips_keyerror_quotes():
    assert error_message(KeyError("no such phase 'X'")) == "no such phase 'X'"
    assert str(KeyError("a")) == "'a'"
    assert error_message(ValueError("bad")) == "bad"


def test_run_cli_tags_errors_with_the_rank_under_torchrun(capsys, monkeypatch):
    parser, commands = _parser([])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_cli(parser, ["unknown-class"], commands) == 1
    assert capsys.readouterr().err.strip() == "toy unknown-class: [rank 1] error: unknown class 'foo'"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_cli(parser, ["unknown-class"], commands) == 1
    assert capsys.readouterr().err.strip() == "toy unknown-class: error: unknown class 'foo'"


# --------------------------------------------------------------------------------------------------------------------
# add_runtime_args
# --------------------------------------------------------------------------------------------------------------------
def _runtime_parser(**kw) -> argparse.ArgumentParser:
    from medshared.cli import add_runtime_args

    p = argparse.ArgumentParser(prog="toy")
    add_runtime_args(p, **kw)
    return p


def test_add_runtime_args_defaults():
    a = _runtime_parser().parse_args([])
    assert vars(a) == {"device": "auto", "precision": "auto", "seed": 0}
    a = _runtime_parser(workers=4, seed=7, config=True).parse_args([])
    assert vars(a) == {"device": "auto", "precision": "auto", "workers": 4, "seed": 7, "config": None}
    a = _runtime_parser(device=False, precision=False, seed=None).parse_args([])
    assert vars(a) == {}


def test_add_runtime_args_parses_values():
    p = _runtime_parser(workers=0, config=True)
    a = p.parse_args(
        ["--device", "CUDA:1", "--precision", "bf16", "--workers", "3", "--seed", "5", "--config", "c.yaml"]
    )
    assert (a.device, a.precision, a.workers, a.seed, a.config) == ("cuda:1", "bf16", 3, 5, "c.yaml")
    for dev in ("auto", "cpu", "cuda", "cuda:0"):
        assert p.parse_args(["--device", dev]).device == dev


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precision", "fp16"], "invalid choice: 'fp16'"),
        (["--device", "gpu"], "'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:x"], "is not a device"),
        (["--workers", "-1"], "-1 is negative"),
        (["--workers", "two"], "'two' is not an integer"),
    ],
)
def test_add_runtime_args_refuses_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _runtime_parser(workers=0).parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_add_runtime_args_alias_and_help(capsys):
    from medshared.cli import non_negative_int

    p = _runtime_parser(workers=2, precision_help="kfgnet keeps the loss in fp32; --bf16 is an alias of bf16")
    p.add_argument("--num-workers", dest="workers", type=non_negative_int, help=argparse.SUPPRESS)
    assert p.parse_args(["--num-workers", "6"]).workers == 6
    assert p.parse_args([]).workers == 2
    p.print_help()
    out = " ".join(capsys.readouterr().out.split())
    assert "{auto,fp32,tf32,bf16}" in out and "--bf16 is an alias of bf16" in out and "--num-workers" not in out
