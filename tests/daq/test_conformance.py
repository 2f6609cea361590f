"""``na64 conformance`` against real front-ends: ``na64 simulate`` passes, each deliberately broken
front-end fails with the check that names its fault, usage errors are one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daq import conformance, protocol
from tests.conftest import free_port
from tests.daq.broken_frontend import FAULTS, play
from tests.golden.make_protocol_vectors import OUT, read_frames

NA64 = [sys.executable, "-m", "daq.cli"]


def start_checker(port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NA64, "conformance", "--endpoint", f"tcp://127.0.0.1:{port}", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_bound(port: int, proc: subprocess.Popen[str], timeout_s: float = 20.0) -> None:
    """Until the checker's ROUTER is bound (a TCP connect succeeds)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("the checker did not bind")


def finish(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, json.loads(out), err


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_simulate_passes_every_check() -> None:
    port = free_port()
    checker = start_checker(port, "--timeout", "90")
    wait_bound(port, checker)
    sim = subprocess.run(
        [
            *NA64,
            "simulate",
            "--endpoint",
            f"tcp://127.0.0.1:{port}",
            "--spills",
            "2",
            "--spill-length",
            "0.2",
            "--spill-period",
            "0.4",
            "--rate",
            "2e5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sim.returncode == 0, sim.stderr[-2000:]
    rc, report, _err = finish(checker)
    assert rc == 0, json.dumps(report, indent=1)
    assert report["passed"] and report["frontend"].startswith("na64 simulate")
    assert set(statuses(report).values()) == {"PASS"}, statuses(report)  # every check exercised
    assert list(statuses(report)) == list(conformance.CHECKS)
    checked = {c["name"]: c["checked"] for c in report["checks"]}
    assert checked["request_retry"] == 1 and checked["zero_event_requests"] >= 2
    assert checked["spill_end_counters"] == 2


def test_replay_passes_every_check(recorded_spills: list[Path]) -> None:
    """``na64 replay`` of spills recorded by the real chain is a conforming front-end too."""
    port = free_port()
    checker = start_checker(port, "--timeout", "90")
    wait_bound(port, checker)
    rep = subprocess.run(
        [
            *NA64,
            "replay",
            "--pace",
            "max",
            "--endpoint",
            f"tcp://127.0.0.1:{port}",
            *map(str, recorded_spills),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    rc, report, _err = finish(checker)
    assert rc == 0, json.dumps(report, indent=1)
    assert report["frontend"].startswith("na64-replay") and report["stopped"] == "RUN_STOP received"
    assert set(statuses(report).values()) == {"PASS"}, statuses(report)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_frontend_fails_the_named_checks(fault: str) -> None:
    port = free_port()
    checker = start_checker(port, "--timeout", "30")
    wait_bound(port, checker)
    play(f"tcp://127.0.0.1:{port}", fault)
    rc, report, _err = finish(checker)
    failed = {n for n, s in statuses(report).items() if s == "FAIL"}
    assert failed >= FAULTS[fault], (failed, json.dumps(report, indent=1))
    if fault == "none":
        assert rc == 0 and not failed and report["stopped"] == "RUN_STOP received"
    else:
        assert rc == 1
        bad = next(c for c in report["checks"] if c["name"] in FAULTS[fault])
        assert bad["examples"], bad  # the report says where
    # a fault breaks only what it is about: the unrelated exercise checks still pass
    assert statuses(report)["heartbeat"] == ("FAIL" if fault == "heartbeat_state" else "PASS")


def test_text_report_and_exit_code_1_when_nothing_arrives() -> None:
    port = free_port()
    proc = subprocess.run(
        [*NA64, "conformance", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "FAIL  coverage" in proc.stdout and "nothing received" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("conformance: 1 of ")


def test_usage_errors_are_one_line_exit_2() -> None:
    port = free_port()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        busy = subprocess.run(
            [*NA64, "conformance", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    bad = subprocess.run(
        [*NA64, "conformance", "--endpoint", "tcp://nowhere:x", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    zero = subprocess.run(
        [*NA64, "conformance", "--timeout", "0"], capture_output=True, text=True, timeout=60
    )
    for proc in (busy, bad, zero):
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("na64 conformance: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the pure core, without sockets
def golden(name: str) -> list[bytes]:
    return read_frames(OUT / f"{name}.frames")


def test_core_answers_each_slice_and_judges_fragments() -> None:
    core = conformance.Conformance(max_spills=1)
    fe = b"fe"
    (ack,) = core.receive(fe, golden("run_start"), 0.0)  # the run is acknowledged at once (RUN_ACK)
    assert isinstance(ack, protocol.RunAck) and ack.status == protocol.RunAck.ACCEPTED and ack.run == 42
    core.receive(fe, golden("spill_start"), 0.1)
    reqs = core.receive(fe, golden("slice"), 0.2)
    assert len(reqs) == 1 and reqs[0].n_events == 0 and reqs[0].seq == 0  # the first slice: K = 0
    report = {c.name: c for c in core.report(0.3, "test").checks}
    assert report["decode"].status == "PASS" and report["run_start"].status == "PASS"
    assert report["sequence"].status == "PASS"  # the golden vectors are numbered 0, 1, 2
    # the golden SLICE is slice 3 of its spill: the first slice must be 0
    assert report["slices"].status == "FAIL" and "expected 0" in report["slices"].examples[0]


def test_core_flags_a_fragment_nobody_asked_for() -> None:
    core = conformance.Conformance()
    core.receive(b"fe", golden("run_start"), 0.0)
    core.receive(b"fe", golden("spill_start"), 0.0)
    core.receive(b"fe", golden("fragment_ecal"), 0.0)
    fr = {c.name: c for c in core.report(0.0, "test").checks}["fragments"]
    assert fr.status == "FAIL" and "no request waits" in fr.examples[0]


def test_core_window_placement_sees_a_shifted_window() -> None:
    """Pulses 3 samples late in the counters' windows fail window_placement."""
    core = conformance.Conformance()
    core.period_ns = 12.5
    wf = np.full((20, 32), 0.0)
    wf[:, 13] = 300.0
    core.placement.append((wf, np.full(20, 900.0)))
    core._judge_placement()
    assert core.tally["window_placement"].failures == 1
    assert protocol.NO_PARTICLE == 0xFFFFFFFF
