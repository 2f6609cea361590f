"""The layering of docs/architecture.md: the import-linter contracts of pyproject.toml hold, and catch what
they are meant to catch (a copy of the sources with forbidden imports injected breaks them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daq", "dqm", "calibration", "simulator", "tests")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    """Run the contracts of ``where``/pyproject.toml on the packages in ``where``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=120
    )


def test_the_import_contracts_hold() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "6 kept" in r.stdout


def test_the_contracts_catch_forbidden_imports(tmp_path: Path) -> None:
    """What the AST test this replaces let through: the DAQ importing the DQM, a pure DQM core importing
    ZeroMQ and h5py (also through another module); and the recorder importing its shell."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "golden"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)

    def inject(module: str, line: str) -> None:
        path = tmp_path / (module.replace(".", "/") + ".py")
        path.write_text(
            path.read_text().replace("\nimport numpy as np\n", f"\nimport numpy as np\n{line}\n", 1)
        )

    inject("daq.trigger", "from dqm.monitor import Monitor")
    inject("dqm.checks", "import h5py, zmq")
    inject("daq.recorder", "from daq import service")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    out = r.stdout
    assert "daq is not allowed to import dqm:\n\n-   daq.trigger -> dqm.monitor" in out
    assert "dqm.checks is not allowed to import h5py:\n\n-   dqm.checks -> h5py" in out
    assert "dqm.checks is not allowed to import zmq:\n\n-   dqm.checks -> zmq" in out
    assert "dqm.monitor is not allowed to import zmq:\n\n-   dqm.monitor -> dqm.checks" in out  # indirectly
    assert "daq.recorder is not allowed to import daq.service:\n\n-   daq.recorder -> daq.service" in out


def test_the_recorder_loads_no_io_module() -> None:
    """At run time too: importing the DAQ's core loads no socket, file-format, event-loop or web module."""
    code = (
        "import sys, daq.recorder, dqm.monitor; "
        "print(sorted(m for m in ('zmq', 'h5py', 'hdf5plugin', 'bokeh', 'asyncio', 'socket', 'aiomqtt', "
        "'dask') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
