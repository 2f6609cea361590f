"""Shared test helpers: external programs, free ports, process cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daq.demo import free_port as free_port  # re-exported: one helper for tests and benchmarks

#: set by .ci/run: a missing external program (mosquitto, chromium) fails the test instead of skipping it
REQUIRE_EXTERNAL = os.environ.get("NA64_REQUIRE_EXTERNAL") == "1"

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin"])


def require_program(name: str) -> str:
    """Path of an external program; skip the test when missing (fail instead under NA64_REQUIRE_EXTERNAL=1)."""
    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        message = f"external program {name!r} is not installed"
        if REQUIRE_EXTERNAL:
            pytest.fail(message + " (NA64_REQUIRE_EXTERNAL=1)")
        pytest.skip(message)
    return path


#: headless Chromium on this closed network: without the background-networking flags it keeps trying
#: (and failing) to reach Google's hosts
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the numba kernels once (or load them from numba's on-disk cache) before any test: on a fresh
    checkout the first compilation takes seconds, which the processes started by the tests would
    otherwise each pay in the middle of a timed exchange."""
    from daq import pulse_fit, trigger_kernel
    from simulator import kernels

    pulse_fit.warm_up()
    trigger_kernel.warm_up()
    kernels.warm_up()


def wait_daq_listening(daq: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Wait until ``na64 daq`` (its log going to ``log``) has bound its sockets.

    A front-end does not wait for a listener, and the DAQ loads its compiled kernels before it binds
    (~1-3 s): a simulator started at the same time at ``--pace max`` could otherwise give up on its first
    slices. Returns early if the DAQ exits (the caller reports it)."""
    deadline = time.monotonic() + timeout
    while b"DAQ listening" not in log.read_bytes():
        if daq.poll() is not None:
            return
        if time.monotonic() > deadline:
            daq.kill()
            raise AssertionError(f"the DAQ did not start listening within {timeout} s; log {log}")
        time.sleep(0.05)


def na64_command(*args: str) -> list[str]:
    """argv running the ``na64`` CLI with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "daq", *args]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to register spawned processes in; all still running are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture
def artifacts_dir() -> Path:
    """Folder for test artifacts (screenshots, plots): ./test-artifacts, kept after the run."""
    path = Path(os.environ.get("NA64_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# fixtures for trigger unit tests against recorded spills and canned simulator scenarios (see docs/replay.md)
pytest_plugins = ["tests.replay.plugin"]
