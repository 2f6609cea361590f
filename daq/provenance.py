"""Which software this is: na64daq's version, git commit and dirty flag, as recorded in every spill file.

Fixed when the package was built or installed: ``setup.py`` stamps ``daq/_build_info.json`` into a built
package (a wheel, a regular ``pip install``). A source checkout (an editable install, a developer's tree)
has no stamp: there the commit and dirty flag of *that checkout* are read once per process, with
``git -C <checkout>`` (never the current directory), and only if the checkout is na64daq's own
repository (not a repository the tree happens to sit in). Anything else is ``unknown``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

from daq import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_INFO = PACKAGE_DIR / "_build_info.json"


@functools.cache
def software() -> dict[str, Any]:
    """``{"version", "git_commit", "git_dirty" (True/False/None), "source" ("build", "checkout" or
    "unknown"), "built" (build time, "" for a checkout)}``; computed once per process."""
    info: dict[str, Any] = {"version": __version__, "git_commit": "unknown", "git_dirty": None, "built": ""}
    if BUILD_INFO.is_file():
        try:
            stamp = json.loads(BUILD_INFO.read_text())
        except (OSError, ValueError):
            stamp = {}
        if isinstance(stamp, dict):
            info.update(
                git_commit=str(stamp.get("git_commit") or "unknown"),
                git_dirty=stamp.get("git_dirty") if isinstance(stamp.get("git_dirty"), bool) else None,
                built=str(stamp.get("built", "")),
                source="build",
            )
            return info
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / ".git").exists() and _is_na64daq(root):
        top = _git(root, "rev-parse", "--show-toplevel")
        commit = _git(root, "rev-parse", "HEAD")
        if top is not None and Path(top).resolve() == root and commit:
            status = _git(root, "status", "--porcelain", "--untracked-files=no")
            info.update(
                git_commit=commit, git_dirty=None if status is None else bool(status), source="checkout"
            )
            return info
    info["source"] = "unknown"
    return info


def describe() -> str:
    """One line: ``na64daq 0.1.0 (commit 0123456789ab, dirty)``."""
    s = software()
    commit = s["git_commit"][:12]
    flag = {True: ", dirty", False: "", None: ", dirty: unknown"}[s["git_dirty"]]
    return f"na64daq {s['version']} (commit {commit}{flag if commit != 'unknown' else ''}; {s['source']})"


def _is_na64daq(root: Path) -> bool:
    try:
        import tomllib

        with open(root / "pyproject.toml", "rb") as f:
            return tomllib.load(f).get("project", {}).get("name") == "na64daq"
    except (OSError, ValueError):
        return False


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
