"""Packaging: a DAQ-only install (no extras) runs the DAQ without Bokeh and dask, and a command that needs
an extra says which one in one line; license and typing markers are shipped."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: what ``pip install na64daq`` (no extra) leaves out: importing any of these fails as if not installed
NOT_INSTALLED = ("bokeh", "dask", "distributed", "aiomqtt", "boost_histogram")

BLOCK = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {NOT_INSTALLED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    """
)


def without_extras(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def na64_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return without_extras(f"from daq.cli import main\nsys.exit(main({list(args)!r}))")


def test_the_daq_imports_without_bokeh_and_dask() -> None:
    out = without_extras(
        f"""
        import daq.service, daq.writer, daq.files, simulator.service, calibration.constants
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {NOT_INSTALLED!r})
        print("loaded:", loaded)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout


@pytest.mark.parametrize(
    "args", [["daq", "--help"], ["--help"], ["simulate", "--help"], ["daq", "--print-config"]]
)
def test_daq_node_commands_work_without_the_extras(args: list[str]) -> None:
    out = na64_without_extras(*args)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["dqm"], "dqm"), (["dqm-reference", "x.h5", "--out", "ref.json"], "dqm"), (["demo"], "dqm")],
)
def test_a_command_needing_an_extra_names_it_in_one_line(args: list[str], extra: str, tmp_path: Path) -> None:
    args = [str(tmp_path / a) if a.endswith((".h5", ".json")) else a for a in args]
    out = na64_without_extras(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"pip install 'na64daq[{extra}]'" in lines[0] and lines[0].startswith(f"na64 {args[0]}: error: ")


def test_the_installed_metadata_keeps_bokeh_and_dask_in_extras() -> None:
    requires = importlib.metadata.requires("na64daq") or []
    unconditional = {r.split(";")[0].split(">")[0].split("[")[0].strip() for r in requires if ";" not in r}
    assert not unconditional & {"bokeh", "dask", "aiomqtt", "boost-histogram"}, unconditional
    extras = {r.split("extra ==")[1].strip(' "') for r in requires if "extra ==" in r}
    assert {"dqm", "offline", "all", "test"} <= extras


def test_license_and_typing_markers_are_shipped() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (
        meta["license"] == {"text": "MIT"} and "License :: OSI Approved :: MIT License" in meta["classifiers"]
    )
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    for package in ("daq", "dqm", "calibration", "simulator"):
        assert (ROOT / package / "py.typed").is_file()
