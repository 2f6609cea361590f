"""The DQM and its MQTT broker failing while the DAQ records, and the DQM's alarm for a DAQ that takes no
data from a running front-end (issue 16: "DAQ idle while beam is on")."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from daq import protocol
from tests.conftest import free_port, require_program
from tests.dqm.conftest import Broker, Listener
from tests.faults.harness import Setup, held_in_files, kill9, leftovers, sent_by_frontend

pytestmark = [pytest.mark.faults, pytest.mark.external]

P = "faults/dqm"
CONFIG = f"""
[checks.heartbeat]
daq_timeout_s = 2.0
frontend_timeout_s = 2.0
[mqtt]
topic_prefix = "{P}"
backoff_min_s = 0.2
backoff_max_s = 1.0
keepalive_s = 2
status_period_s = 1.0
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    b = Broker(port, Path(require_program("mosquitto")), conf)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def state_of(mq: Listener, topic: str) -> str | None:
    msg = mq.latest(topic)
    return msg.get("state") if isinstance(msg, dict) else None


def test_broker_and_dqm_outages_do_not_touch_the_recording(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], broker: Broker
) -> None:
    """The broker killed in spill 1 and back once the DQM, killed (SIGKILL) in spill 2, serves again: every spill is recorded ``ok`` with every event the front-end read out, both exit 0, and the
    restarted DQM publishes over MQTT again."""
    (tmp_path / "dqm.toml").write_text(CONFIG)
    s = Setup(tmp_path, processes)
    daq = s.daq("--stop-after-run")
    daq.wait_log("DAQ listening", 90)
    dqm_args = ("--mqtt", broker.url, "--config", str(tmp_path / "dqm.toml"))
    dqm = s.dqm(*dqm_args)
    sim = s.simulate(spills=8, length=0.8, period=1.8)
    daq.wait_log("run 1 spill 1 started", 60)
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait()
    daq.wait_log("run 1 spill 2 started", 30)
    kill9(dqm)
    dqm = s.dqm(*dqm_args)
    dqm.wait_log("serving the page", 60)
    broker.start()
    mq = Listener(broker.port, topics=f"{P}/#")
    try:
        mq.wait(lambda: state_of(mq, f"{P}/status") == "online", 20, "the DQM online again over MQTT")
        mq.wait(lambda: mq.all(f"{P}/spill"), 30, "spill summaries over MQTT")
        assert sim.wait(60) == 0 and daq.wait(60) == 0
    finally:
        mq.client.loop_stop()
        mq.client.disconnect()
    sent = sent_by_frontend(sim.text)
    held = held_in_files(s.data)
    assert sorted(held) == list(range(1, 9)) and leftovers(s.data) == []
    for n, h in held.items():
        assert h.status == "ok" and h.n_events == sent[n]["n_events_read"] > 0
    dqm.signal(signal.SIGTERM)
    assert dqm.wait(30) == 0


def test_the_dqm_raises_an_error_when_the_daq_takes_no_data_from_a_running_frontend(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], broker: Broker
) -> None:
    """A front-end that runs a spill but does not answer the DAQ's ANNOUNCE_REQUEST (e.g. firmware that
    predates it): the DAQ stays idle and counts its slices as ``run_unknown``, and the DQM raises
    ``daq_idle_beam`` (ERROR) over MQTT, where it used to show "DAQ idle" and all green."""
    (tmp_path / "dqm.toml").write_text(CONFIG)
    s = Setup(tmp_path, processes)
    daq = s.daq()
    daq.wait_log("DAQ listening", 90)
    mq = Listener(broker.port, topics=f"{P}/#")
    s.dqm("--mqtt", broker.url, "--config", str(tmp_path / "dqm.toml"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(s.endpoint)
    seq = protocol.SequenceCounter()
    alarm = f"{P}/alarms/daq_idle_beam"
    try:
        deadline = time.monotonic() + 60
        while state_of(mq, alarm) not in ("unacknowledged",) and time.monotonic() < deadline:
            hb = protocol.Heartbeat(run=5, spill=2, state=protocol.FrontEndState.IN_SPILL)
            sock.send_multipart(protocol.encode(seq.stamp(hb)))
            time.sleep(0.5)
        assert state_of(mq, alarm) == "unacknowledged", mq.latest(alarm)
        assert "DAQ idle while" in str(mq.latest(alarm))
        asked = sock.poll(100) and protocol.decode(sock.recv_multipart())
        assert isinstance(asked, protocol.AnnounceRequest) and asked.run == 5  # the DAQ did ask
    finally:
        sock.close(0)
        mq.client.loop_stop()
        mq.client.disconnect()
    daq.signal(signal.SIGTERM)
    assert daq.wait(30) == 0  # heartbeats carry no data: nothing was lost
