"""Config files: read YAML/JSON and apply them to frozen dataclasses with unknown-key and type checks.

YAML is read with YAML 1.2's number rules: PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is the *string*
``"1e-4"``; here it is the float 0.0001, as a user writing ``lr: 1e-4`` means.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["config_to_dict", "load_config_file", "override_dataclass", "yaml_load"]

T = TypeVar("T")


# YAML 1.2 core-schema floats (plus 1.1's forms PyYAML already knows): 1e-4, 1E+3, .5, 5., -2.5e-3, .inf, .nan.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _yaml_loader() -> Any:
    """A ``SafeLoader`` subclass whose float resolver accepts exponents without a dot (``1e-4``)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    # Drop the YAML 1.1 float resolver and add the wider one; ints keep priority (resolvers are tried in order and
    # the int resolver is registered before this one, so "10" stays an int).
    _Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
    return _Loader


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (``1e-4`` is a float, not a string)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``/``.json`` mapping.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unparsable file or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml_load(text)
    except Exception as e:
        raise ValueError(f"cannot parse config file {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return dict(data)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value) for a value against a resolved type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and origin is tuple and len(args) != len(value):
            return False, value
        elem = args[0] if args else Any
        out = []
        for i, v in enumerate(value):
            a = args[i] if origin is tuple and args and args[-1] is not Ellipsis else elem
            ok, cv = _type_ok(v, a)
            if not ok:
                return False, value
            out.append(cv)
        return True, (tuple(out) if origin is tuple else out)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), float(value) if isinstance(
            value, (int, float)
        ) else value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def override_dataclass(cfg: T, overrides: Mapping[str, Any], _prefix: str = "") -> T:
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied (nested dataclasses take nested mappings).

    Raises:
        ValueError: an unknown key (the message lists the valid keys) or a value of the wrong type.
    """
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"override_dataclass needs a dataclass instance, got {type(cfg).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{_prefix}{key}"
        if key not in fields:
            raise ValueError(f"unknown config key {name!r}; valid keys: {sorted(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = override_dataclass(current, value, _prefix=f"{name}.")
            continue
        ok, coerced = _type_ok(value, hints.get(key, Any))
        if not ok:
            raise ValueError(f"config key {name!r} expects {hints.get(key)}, got {value!r} ({type(value).__name__})")
        changes[key] = coerced
    return dataclasses.replace(cfg, **changes)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with tuples kept as lists (JSON/YAML friendly)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
