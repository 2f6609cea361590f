"""TOML -> frozen, validated config dataclasses, shared by every package.

A config class is a frozen dataclass whose fields have defaults; nested configs are dataclass fields.
Validation lives in each class's ``__post_init__`` (raise ``ValueError`` with a short reason);
:func:`from_dict` turns every problem into a :class:`~daq.errors.ConfigError` that names the key path,
e.g. ``config error at trigger.ecal_max_gev: must be > 0 (got -1)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from daq.errors import ConfigError

T = TypeVar("T")


def output_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file a command will write, checked before any long work: not a directory, in an
    existing writable directory, writable if it exists. A ConfigError names ``flag`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a directory, not a file")
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{flag} {p}: not writable")
    return p


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError naming it."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror}") from None


def from_dict(cls: type[T], data: Mapping[str, Any] | None = None, path: str = "") -> T:
    """Build config ``cls`` from a (possibly partial) mapping; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config error at {_join(path, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(path, name))
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"config error at {path or cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config (for provenance records and JSON)."""
    return dataclasses.asdict(config)


def to_toml(data: Mapping[str, Any], header: str = "") -> str:
    """A config's plain dict (:func:`to_dict`) as TOML that :func:`load_toml` reads back: one table per
    section; a ``None`` value (a default chosen elsewhere) is written as a comment."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def table(name: str, d: Mapping[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        for k, v in d.items():
            if isinstance(v, Mapping):
                continue
            lines.append(
                f"# {k} = (not set: its default is chosen elsewhere)" if v is None else f"{k} = {value(v)}"
            )
        for k, v in d.items():
            if isinstance(v, Mapping):
                table(f"{name}.{k}", v)

    lines += [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, Mapping) and v is not None]
    for k, v in data.items():
        if isinstance(v, Mapping):
            table(k, v)
    return "\n".join(lines).lstrip("\n") + "\n"


def with_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides (``{"trigger.ecal_max_gev": 70}``) to a nested mapping."""
    out: dict[str, Any] = _deepcopy(data)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config error at {key}: {part} is not a table")
            node = child
        node[parts[-1]] = value
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line; the value is read as TOML (number, bool, string, list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _deepcopy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config error at {path}: expected a table, got {value!r}")
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                last = e
        assert last is not None
        raise last
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config error at {path}: must be one of {list(choices)} (got {value!r})")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config error at {path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config error at {path}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config error at {path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config error at {path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config error at {path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config error at {path}: expected a string, got {value!r}")
        return value
    return value
