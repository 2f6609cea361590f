"""The CLI: one-line user errors, offline mode on recorded files, clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import na64_command
from tests.dqm.conftest import DqmProcess
from tests.dqm.runs import record_run


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(na64_command(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("dqm", "--source", "localhost:1"), "bad --source endpoint"),
        (("dqm", "--port", "70000"), "--port 70000"),
        (("dqm", "--host", "example.org"), "not an IP address"),
        (("dqm", "--allow-origin", "http://x/y"), "--allow-origin"),
        (("dqm", "--mqtt", "http://broker"), "bad --mqtt URL"),
        (("dqm", "--reference", "/nonexistent/ref.json"), "does not exist"),
        (("dqm", "/nonexistent/spills"), "no such file or directory"),
        (("dqm", "x.h5", "--source", "tcp://127.0.0.1:5556"), "not both"),
        (("dqm-reference", "/nonexistent", "--out", "r.json"), "no such file or directory"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: tuple[str, ...], text: str) -> None:
    res = run(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_bad_reference_and_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "ref.json"
    bad.write_text('{"format": "something else"}')
    res = run("dqm", "--reference", str(bad))
    assert res.returncode == 2 and "not a DQM reference file" in res.stderr
    cfg = tmp_path / "dqm.toml"
    cfg.write_text("[checks.losses]\nwarn = 0\n")
    res = run("dqm", "--config", str(cfg))
    assert res.returncode == 2 and "checks.losses" in res.stderr


def test_help_lists_the_options() -> None:
    res = run("dqm", "--help")
    for flag in (
        "--source",
        "--port",
        "--host",
        "--allow-origin",
        "--mqtt",
        "--reference",
        "--config",
        "--beam-energy",
        "--show",
    ):
        assert flag in res.stdout
    assert "--out" in run("dqm-reference", "--help").stdout


@pytest.mark.integration
def test_offline_mode_serves_recorded_files_and_stops_on_sigterm(
    tmp_path: Path, dqm_process: Callable[..., DqmProcess]
) -> None:
    record_run(tmp_path / "data", spills=2)
    dqm = dqm_process(str(tmp_path / "data"), "--port", "0")
    assert dqm.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(dqm.url + "?tab=physics", timeout=20) as r:
        assert r.status == 200
    # the files are read through the monitor (logged per spill)
    import time

    deadline = time.monotonic() + 20
    while "2 spill file(s) loaded" not in dqm.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "2 spill file(s) loaded" in dqm.output()
    assert "run 1 spill 2 closed" in dqm.output()
    assert dqm.stop(signal.SIGTERM) == 0
    assert "stopping" in dqm.output()
