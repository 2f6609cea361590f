"""The same run number twice, a front-end killed and restarted with the same command, and the writer with
``HDF5_PLUGIN_PATH`` exported as docs/hdf5-format.md suggests (issue 16, findings 3 and 5)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import hdf5plugin
import pytest
import zmq

from daq import protocol
from daq.summary import DaqStatus
from tests.faults.harness import Setup, held_in_files, kill9, leftovers

pytestmark = pytest.mark.faults


def digest(path: Path) -> tuple[int, int, str]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def daq_status(publish: str, timeout: float = 10.0) -> DaqStatus:
    """The next status document the DAQ publishes (what the DQM reads)."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(publish)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sub.poll(500):
                msg = protocol.decode(sub.recv_multipart())
                if isinstance(msg, protocol.Summary) and msg.kind == protocol.Summary.KIND_STATUS:
                    return DaqStatus.from_json(msg.text)
        raise AssertionError("no DAQ status published")
    finally:
        sub.close()


def test_the_same_run_number_twice_is_refused_and_nothing_is_overwritten(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A front-end started again with the same ``--run``: refused with one clear line (exit 2), the
    recorded file is byte for byte the same, the DAQ logs, counts and publishes the refusal (alarm
    ``run``, an ERROR in the DQM) and exits 1 naming it. The DAQ runs with HDF5_PLUGIN_PATH exported."""
    s = Setup(tmp_path, processes)
    daq = s.daq(env={"HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH})
    daq.wait_log("DAQ listening", 90)
    first = s.simulate(spills=1, length=0.5, period=0.6)
    assert first.wait(60) == 0
    daq.wait_log("spill summary run 1 spill 1", 30)
    held = held_in_files(s.data)
    assert held[1].status == "ok" and held[1].n_events > 0  # finding 5: the writer works with the path set
    before = digest(s.data / held[1].name)
    again = s.simulate(spills=1, length=0.5, period=0.6)
    assert again.wait(60) == 2
    assert "refused run 1: run 1 already has 1 spill file(s)" in again.text
    assert again.text.count("Traceback") == 0
    assert digest(s.data / held[1].name) == before
    status = daq_status(s.publish)
    assert "run 1 refused" in status.alarms["run"] and status.losses_run["run_rejected"] == 1
    daq.signal(signal.SIGTERM)
    assert daq.wait(30) == 1
    assert "lost: run 1 refused" in daq.text
    assert leftovers(s.data) == []


def test_a_frontend_killed_and_restarted_with_the_same_command(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """kill -9 of ``na64 simulate`` in spill 2, then the same command again: spill 2 is closed
    ``incomplete`` when it goes silent, the restarted front-end is refused (its run would overwrite spill
    1 and 2) and says so, the DAQ keeps everything recorded."""
    s = Setup(tmp_path, processes)
    daq = s.daq("--set", "readout.spill_timeout_s=2")
    daq.wait_log("DAQ listening", 90)
    sim = s.simulate(spills=3, length=1.0, period=1.5)
    daq.wait_log("run 1 spill 2 started", 60)
    time.sleep(0.4)
    kill9(sim)
    daq.wait_log("spill summary run 1 spill 2", 20)
    again = s.simulate(spills=3, length=1.0, period=1.5)
    # refused: the run's files exist, or (restarted within readout.owner_timeout_s of the killed one's
    # last message) the run still belongs to the killed front-end; either way one line, exit 2
    assert again.wait(60) == 2
    assert "already has 2 spill file(s) in" in again.text or "may take it over after" in again.text
    held = held_in_files(s.data)
    assert held[1].status == "ok" and held[2].status == "incomplete"
    assert held[2].losses["spill_end_missing"] == 1 and held[2].n_events > 0
    daq.signal(signal.SIGTERM)
    assert daq.wait(30) == 1
    assert leftovers(s.data) == []
