"""The fault suite's harness: real ``na64 daq``, ``na64 simulate``, ``na64 dqm`` (and ``na64 demo``)
processes on loopback ports, their logs, and the comparison of what the front-end sent with what the
spill files hold (issue 16). Every process writes its log to a file the assertions read; a test's
processes are killed at teardown (the ``processes`` fixture)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daq import files
from tests.conftest import free_port, na64_command

#: the front-end's own account of a spill: "spill 3 done: 1000826 particles in 25 slices, 25 requests,
#: 2625 events read, 150 fragments"
SPILL_DONE = re.compile(
    r"spill (\d+) done: (\d+) particles in (\d+) slices, (\d+) requests, (\d+) events read, (\d+) fragments"
)


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited (code {proc.returncode}) first")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Proc:
    """One ``na64`` process with its log file."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, registry: list[subprocess.Popen[bytes]]) -> Proc:
        env = {**os.environ, **(self.env or {})}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                na64_command("--log-level", "INFO", *self.args), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        registry.append(self.proc)
        return self

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float, count: int = 1) -> None:
        wait_for(
            lambda: self.text.count(needle) >= count, timeout, f"{self.name} to log {needle!r}", self.proc
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


@dataclass
class Setup:
    """Endpoints and data directory shared by the processes of one test."""

    tmp: Path
    registry: list[subprocess.Popen[bytes]]
    data: Path = field(init=False)
    endpoint: str = field(init=False)
    publish: str = field(init=False)
    n_daq: int = 0
    n_sim: int = 0

    def __post_init__(self) -> None:
        self.data = self.tmp / "data"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.publish = f"tcp://127.0.0.1:{free_port()}"

    def daq(self, *extra: str, env: dict[str, str] | None = None, data: Path | None = None) -> Proc:
        """``na64 daq`` on this setup's endpoints (blocks of 1024 events: a crash finds some on disk)."""
        self.n_daq += 1
        args = [
            "daq",
            "--endpoint",
            self.endpoint,
            "--publish",
            self.publish,
            "--data-dir",
            str(data or self.data),
        ]
        args += ["--calibration", "nominal", "--set", "writer.chunk_events=16", *extra]
        return Proc(f"daq#{self.n_daq}", args, self.tmp / f"daq{self.n_daq}.log", env).start(self.registry)

    def simulate(
        self, *extra: str, spills: int, length: float, period: float, rate: float = 1e6, run: int = 1
    ) -> Proc:
        self.n_sim += 1
        args = ["simulate", "--endpoint", self.endpoint, "--run", str(run), "--spills", str(spills)]
        args += ["--spill-length", repr(length), "--spill-period", repr(period), "--rate", repr(rate), *extra]
        return Proc(f"simulate#{self.n_sim}", args, self.tmp / f"sim{self.n_sim}.log").start(self.registry)

    def dqm(self, *extra: str) -> Proc:
        args = ["dqm", "--source", self.publish, "--port", str(free_port()), *extra]
        return Proc("dqm", args, self.tmp / "dqm.log").start(self.registry)


def sent_by_frontend(*logs: str) -> dict[int, dict[str, int]]:
    """spill -> the front-end's counters (its "spill N done" log lines; a later run's line wins)."""
    out = {}
    for text in logs:
        for m in SPILL_DONE.finditer(text):
            p, s, r, e, _ = (int(x) for x in m.groups()[1:])
            out[int(m.group(1))] = {"n_particles": p, "n_slices": s, "n_requests": r, "n_events_read": e}
    return out


@dataclass
class Held:
    """What one spill file holds."""

    name: str
    status: str
    n_events: int
    n_particles: int
    losses: dict[str, int]
    recovered: dict[str, object]


def held_in_files(data: Path) -> dict[int, Held]:
    """spill -> what its file holds (every file under a final name must open as a spill file)."""
    out = {}
    for path in files.list_spill_files([data]):
        with files.SpillFile(path) as f:
            a = f.attrs
            rec = json.loads(a["recovered"]) if "recovered" in a else {}
            out[f.spill] = Held(path.name, f.status, f.n_events, int(a["n_particles"]), f.losses, rec)
            f.events(["event_id"])  # the tables read back
    return out


def leftovers(data: Path) -> list[str]:
    """Partial or unrecoverable files left in the data directory (should be none)."""
    return sorted(p.name for p in data.glob(".*"))


def run_summaries(data: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(data.glob("run*_summary*.json"))]


def kill9(p: Proc) -> None:
    p.signal(signal.SIGKILL)
    p.wait(10)
