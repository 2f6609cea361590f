"""Provenance: the software's commit and dirty flag fixed at build time (or read from its own checkout),
never from whatever repository the current directory or the installed tree sits in; ``--print-config``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from daq.daq_config import load_config
from daq.provenance import software
from tests.conftest import na64_command

ROOT = Path(__file__).resolve().parents[2]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def in_git_checkout() -> bool:
    return (ROOT / ".git").exists() and shutil.which("git") is not None


def software_of(package_parent: Path) -> dict[str, object]:
    """``software()`` as a process importing ``daq`` from ``package_parent`` sees it (cwd elsewhere)."""
    code = "import json; from daq.provenance import software; print(json.dumps(software()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def copy_package(dest: Path) -> None:
    shutil.copytree(
        ROOT / "daq", dest / "daq", ignore=shutil.ignore_patterns("__pycache__", "_build_info.json")
    )


@pytest.mark.skipif(not in_git_checkout(), reason="needs na64daq's git checkout")
def test_a_checkout_reports_its_own_commit_and_dirty_flag() -> None:
    s = software()
    assert s["source"] == "checkout" and s["git_commit"] == git(ROOT, "rev-parse", "HEAD")
    assert s["git_dirty"] == bool(git(ROOT, "status", "--porcelain", "--untracked-files=no"))


def test_a_copy_inside_another_repository_does_not_take_its_commit(tmp_path: Path) -> None:
    """The package installed (unstamped) somewhere inside an unrelated git repository: ``unknown``,
    not that repository's commit (what ``git rev-parse`` from the package's directory used to give)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "analysis"
    (repo / "site").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "notes.txt").write_text("x")
    git(repo, "add", "notes.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "other project")
    copy_package(repo / "site")
    s = software_of(repo / "site")
    assert s["git_commit"] == "unknown" and s["source"] == "unknown" and s["git_dirty"] is None


def test_a_build_stamp_wins(tmp_path: Path) -> None:
    copy_package(tmp_path)
    stamp = {"git_commit": "ab" * 20, "git_dirty": True, "built": "2026-12-01T00:00:00+00:00"}
    (tmp_path / "daq" / "_build_info.json").write_text(json.dumps(stamp))
    s = software_of(tmp_path)
    assert (s["git_commit"], s["git_dirty"], s["source"]) == ("ab" * 20, True, "build")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not in_git_checkout(), reason="needs na64daq's git checkout")
def test_a_built_wheel_is_stamped_with_the_commit_it_was_built_from(tmp_path: Path) -> None:
    """``pip wheel .`` (what any install from the source does) writes ``daq/_build_info.json``."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' in-tree build directory
    (wheel,) = tmp_path.glob("na64daq-*.whl")
    with zipfile.ZipFile(wheel) as z:
        stamp = json.loads(z.read("daq/_build_info.json"))
        assert "daq/py.typed" in z.namelist()
    assert stamp["git_commit"] == git(ROOT, "rev-parse", "HEAD")
    assert stamp["git_dirty"] == bool(git(ROOT, "status", "--porcelain", "--untracked-files=no"))


@pytest.mark.integration
def test_print_config_prints_what_the_daq_would_run_with_as_toml_it_reads_back(tmp_path: Path) -> None:
    sets = ["--set", "writer.fsync=false", "--set", 'trigger.masked_cells=["ECAL23"]']
    out = subprocess.run(
        na64_command("daq", "--print-config", *sets, "--min-free-mb", "42"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# na64 daq effective configuration (na64daq ")
    doc = tomllib.loads(out.stdout)
    assert doc["writer"]["fsync"] is False and doc["storage"]["min_free_mb"] == 42.0
    path = tmp_path / "effective.toml"
    path.write_text(out.stdout)
    want = load_config(
        None, ["writer.fsync=false", 'trigger.masked_cells=["ECAL23"]'], {"storage.min_free_mb": 42}
    )
    assert load_config(path) == want
