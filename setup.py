"""Build hook: stamp the software's provenance into the package when na64daq is built or installed.

Everything else about the build is in pyproject.toml. ``build_py`` writes ``daq/_build_info.json``
(version, git commit of the source tree, dirty flag, build time) into the built package, so an installed
na64daq knows which source it came from without git at run time (see ``daq/provenance.py``). A source
tree that is not na64daq's own git checkout (an sdist, a copy) is stamped ``unknown``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_info() -> dict[str, object]:
    commit, dirty = "unknown", None
    top = _git("rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == ROOT:  # this tree's own repository, not an enclosing one
        commit = _git("rev-parse", "HEAD") or "unknown"
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


class BuildPyWithInfo(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install reads its checkout instead
            target = Path(self.build_lib) / "daq" / "_build_info.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(build_info(), sort_keys=True) + "\n")


setup(cmdclass={"build_py": BuildPyWithInfo})
