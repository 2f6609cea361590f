"""The layering of docs/architecture.md, checked on the import statements of the sources."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOTTOM = {
    "daq",
    "daq.detector",
    "daq.protocol",
    "daq.errors",
    "daq.config",
    "daq.process",
    "daq.contract",
    "daq.summary",
}  # "daq": its __init__ imports nothing
COMPOSITION_ROOT = {"daq.cli", "daq.demo", "daq.__main__"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def within(module: str, allowed: set[str]) -> bool:
    """True if ``module`` is an allowed module or a name imported from one (``from daq import files``
    names the module daq.files, so names from the bare ``daq`` package count as modules)."""
    parent, _, name = module.rpartition(".")
    if name.startswith("__"):  # a dunder attribute such as daq.__version__
        return parent in allowed
    return module in allowed or (parent in allowed and parent != "daq")


def project_imports(path: Path) -> set[str]:
    return {
        m for m in imports_of(path) if m.split(".")[0] in {"daq", "dqm", "calibration", "simulator", "tests"}
    }


@pytest.mark.parametrize(("name", "path"), [m for m in modules("daq") if m[0] in BOTTOM])
def test_bottom_layer_imports_only_bottom_layer(name: str, path: Path) -> None:
    bad = {m for m in project_imports(path) if not within(m, BOTTOM)}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize(("name", "path"), [m for p in ("daq", "dqm", "calibration") for m in modules(p)])
def test_nothing_at_runtime_imports_the_simulator_or_tests(name: str, path: Path) -> None:
    if name in COMPOSITION_ROOT:
        return
    bad = {m for m in project_imports(path) if m.split(".")[0] in {"simulator", "tests"}}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize(("name", "path"), modules("calibration"))
def test_calibration_core_is_pure(name: str, path: Path) -> None:
    if name.endswith("_cli"):
        return  # the CLI shell may read spill files through daq.files
    allowed = BOTTOM
    bad = {m for m in project_imports(path) if m.split(".")[0] != "calibration" and not within(m, allowed)}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize(("name", "path"), modules("simulator"))
def test_simulator_imports_only_the_bottom_layer_and_the_reader(name: str, path: Path) -> None:
    allowed = BOTTOM | {"daq.files"}
    bad = {m for m in project_imports(path) if m.split(".")[0] != "simulator" and not within(m, allowed)}
    assert not bad, f"{name} imports {sorted(bad)}"
