"""The shared TOML -> frozen dataclass config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daq.config_loader import from_dict, load_toml, parse_assignment, with_overrides
from daq.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    threshold_gev: float = 0.3
    cells: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.threshold_gev <= 0:
            raise ValueError(f"threshold_gev must be > 0 (got {self.threshold_gev})")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    count: int = 1
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(Outer, {"count": 3, "inner": {"threshold_gev": 1, "cells": [[1, 2]]}})
    assert cfg == Outer(count=3, inner=Inner(threshold_gev=1.0, cells=((1, 2),)))
    assert isinstance(cfg.inner.threshold_gev, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cuont": 3}, "at cuont: unknown key"),
        ({"count": "3"}, "at count: expected an integer"),
        ({"inner": {"threshold_gev": -1}}, "at inner: threshold_gev must be > 0"),
        ({"inner": {"cells": [[1]]}}, r"at inner.cells\[0\]: expected 2 values"),
        ({"inner": 5}, "at inner: expected a table"),
    ],
)
def test_errors_name_the_key_path(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_and_assignments(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('name = "run"\n[inner]\nthreshold_gev = 0.5\n')
    data = with_overrides(load_toml(path), dict([parse_assignment("inner.threshold_gev=0.7")]))
    assert from_dict(Outer, data).inner.threshold_gev == 0.7
    assert parse_assignment("name=abc") == ("name", "abc")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("novalue")


def test_bad_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
