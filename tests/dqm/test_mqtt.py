"""MQTT with a real mosquitto: alarms, spill summaries, status with last will, acks, broker restarts.

The DQM runs as a real ``na64 dqm`` process fed by a synthetic DAQ feed on a real ZeroMQ socket.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.dqm.conftest import Broker, DqmProcess, Feed, Listener

pytestmark = [pytest.mark.integration, pytest.mark.external]

P = "test/dqm"
CONFIG = f"""
close_delay_s = 0.3
update_ms = 200
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
def config(tmp_path: Path) -> Path:
    p = tmp_path / "dqm.toml"
    p.write_text(CONFIG)
    return p


def state_of(listener: Listener, topic: str) -> str | None:
    msg = listener.latest(topic)
    return msg.get("state") if isinstance(msg, dict) else None


def test_alarm_lifecycle_spills_and_status(
    broker: Broker,
    listen: Callable[..., Listener],
    config: Path,
    dqm_process: Callable[..., DqmProcess],
    feed: Callable[..., Feed],
) -> None:
    mq = listen(broker.port)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    dqm = dqm_process("--source", endpoint, "--port", "0", "--mqtt", broker.url, "--config", str(config))
    mq.wait(lambda: state_of(mq, f"{P}/status") == "online", 10, "status online")
    status = mq.latest(f"{P}/status")
    assert status["url"] == dqm.url and status["mode"] == "live"

    # every check's alarm is published from the start (this DQM owns the topics): normal, not judged
    mq.wait(lambda: state_of(mq, f"{P}/alarms/dead_channels") == "normal", 10, "dead_channels normal")
    assert mq.latest(f"{P}/alarms/dead_channels")["judged"] is False

    # no DAQ: the heartbeat check raises its alarm (retained, ERROR, unacknowledged)
    alarm = f"{P}/alarms/daq_heartbeat"
    mq.wait(lambda: state_of(mq, alarm) == "unacknowledged", 10, "daq_heartbeat raised")
    raised = mq.latest(alarm)
    assert raised["severity"] == "ERROR" and "no DAQ status" in raised["message"] and raised["active"]
    assert [e["event"] for e in raised["history"]] == ["raised"]
    assert mq.latest(f"{P}/status")["unacknowledged"] >= 1

    # acknowledged from MQTT
    mq.publish(f"{P}/ack", '{"name": "daq_heartbeat", "by": "shift leader"}')
    mq.wait(lambda: state_of(mq, alarm) == "acknowledged", 10, "daq_heartbeat acknowledged")
    assert mq.latest(alarm)["acked_by"] == "shift leader"

    # the DAQ appears: the acknowledged alarm returns to normal, spills are summarised, checks published
    feed(spill_period_s=0.6, endpoint=endpoint)
    mq.wait(lambda: state_of(mq, alarm) == "normal", 15, "daq_heartbeat back to normal")
    assert [e["event"] for e in mq.latest(alarm)["history"]] == [
        "raised",
        "acknowledged",
        "returned to normal",
    ]
    spills = mq.wait(lambda: mq.all(f"{P}/spill") if len(mq.all(f"{P}/spill")) >= 2 else None, 20, "2 spills")
    s = spills[-1]
    assert s["run"] == 1 and s["n_beam"] > 0 and s["triggers"]["physics"] > 0
    assert s["checks"]["beam_off"] == "OK" and s["n_monitored"] > 0
    assert "histograms" not in s  # kept small
    checks = mq.wait(lambda: mq.latest(f"{P}/checks"), 5, "checks")
    assert {c["name"] for c in checks["checks"]} >= {
        "dead_channels",
        "electron_peak",
        "losses",
        "daq_heartbeat",
    }

    # clean stop: offline status, exit 0
    assert dqm.stop(signal.SIGTERM) == 0
    mq.wait(lambda: state_of(mq, f"{P}/status") == "offline", 10, "status offline")
    assert mq.latest(f"{P}/status")["reason"] == "shutdown"
    # a new subscriber gets the retained states
    late = listen(broker.port, f"{P}/#")
    late.wait(lambda: state_of(late, f"{P}/status") == "offline", 10, "retained offline status")
    late.wait(lambda: state_of(late, alarm) == "normal", 10, "retained alarm state")


def test_last_will_when_the_dqm_is_killed(
    broker: Broker, listen: Callable[..., Listener], config: Path, dqm_process: Callable[..., DqmProcess]
) -> None:
    mq = listen(broker.port)
    dqm = dqm_process(
        "--source",
        f"tcp://127.0.0.1:{free_port()}",
        "--port",
        "0",
        "--mqtt",
        broker.url,
        "--config",
        str(config),
    )
    mq.wait(lambda: state_of(mq, f"{P}/status") == "online", 10, "status online")
    dqm.proc.kill()
    dqm.proc.wait(10)
    mq.wait(lambda: state_of(mq, f"{P}/status") == "offline", 10, "last will")
    assert mq.latest(f"{P}/status")["reason"] == "connection lost"


def test_reconnects_after_broker_restart_and_republishes(
    broker: Broker,
    listen: Callable[..., Listener],
    config: Path,
    dqm_process: Callable[..., DqmProcess],
    feed: Callable[..., Feed],
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    mq = listen(broker.port)
    dqm = dqm_process("--source", endpoint, "--port", "0", "--mqtt", broker.url, "--config", str(config))
    alarm = f"{P}/alarms/daq_heartbeat"
    mq.wait(lambda: state_of(mq, alarm) == "unacknowledged", 10, "daq_heartbeat raised")
    mq.close()
    broker.stop()  # no persistence: the restarted broker has no retained messages
    # while the broker is down the DQM keeps working: the DAQ appears, spills are checked, the page serves
    feed(spill_period_s=0.6, endpoint=endpoint)
    time.sleep(3.0)
    with urllib.request.urlopen(dqm.url, timeout=10) as r:
        assert r.status == 200
    assert dqm.proc.poll() is None
    broker.start()
    again = listen(broker.port)
    again.wait(lambda: state_of(again, f"{P}/status") == "online", 15, "status republished after reconnect")
    # not acknowledged by anybody: returned to normal, still to be acknowledged
    again.wait(lambda: state_of(again, alarm) == "rtn_unacknowledged", 15, "latest alarm state republished")
    again.wait(lambda: again.all(f"{P}/spill"), 15, "spill summaries after reconnect")
    assert dqm.stop() == 0


def test_unreachable_broker_does_not_block(config: Path, dqm_process: Callable[..., DqmProcess]) -> None:
    dqm = dqm_process(
        "--source",
        f"tcp://127.0.0.1:{free_port()}",
        "--port",
        "0",
        "--mqtt",
        f"mqtt://127.0.0.1:{free_port()}",
        "--config",
        str(config),
    )
    t = time.monotonic()
    with urllib.request.urlopen(dqm.url, timeout=10) as r:
        assert r.status == 200 and b"bokeh" in r.read().lower()
    assert time.monotonic() - t < 5
    t = time.monotonic()
    assert dqm.stop() == 0
    assert time.monotonic() - t < 8
    assert "unreachable" in dqm.log.read_text()


def test_a_new_dqm_owns_the_retained_alarm_topics(
    broker: Broker, listen: Callable[..., Listener], config: Path, dqm_process: Callable[..., DqmProcess]
) -> None:
    """Alarms a stopped DQM left retained (issue 18, finding 6): the new one clears those it does not
    have and overwrites its own from its state; a subscriber arriving later sees only current states."""
    old = listen(broker.port)
    stale = {"name": "dead_channels", "state": "raised", "severity": "ERROR", "message": "1 dead: ECAL22"}
    gone = {"name": "retired_check", "state": "raised", "severity": "WARN", "message": "from an old version"}
    for name, doc in (("dead_channels", stale), ("retired_check", gone)):
        old.client.publish(f"{P}/alarms/{name}", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
    old.close()
    dqm = dqm_process(
        "--source",
        f"tcp://127.0.0.1:{free_port()}",
        "--port",
        "0",
        "--mqtt",
        broker.url,
        "--config",
        str(config),
    )
    mq = listen(broker.port)
    mq.wait(lambda: state_of(mq, f"{P}/status") == "online", 10, "status online")
    mq.wait(lambda: state_of(mq, f"{P}/alarms/dead_channels") == "normal", 10, "dead_channels overwritten")
    time.sleep(1.0)
    late = listen(broker.port, f"{P}/alarms/#")
    late.wait(lambda: state_of(late, f"{P}/alarms/daq_heartbeat"), 10, "retained alarms")
    time.sleep(1.0)
    assert f"{P}/alarms/retired_check" not in late.messages  # deleted, not just left
    assert all(state_of(late, t) != "raised" for t in late.messages)
    assert "cleared the retained" in dqm.output()
    assert dqm.stop() == 0


def test_shelve_and_unshelve_over_mqtt(
    broker: Broker, listen: Callable[..., Listener], config: Path, dqm_process: Callable[..., DqmProcess]
) -> None:
    mq = listen(broker.port)
    dqm = dqm_process(
        "--source",
        f"tcp://127.0.0.1:{free_port()}",
        "--port",
        "0",
        "--mqtt",
        broker.url,
        "--config",
        str(config),
    )
    alarm = f"{P}/alarms/daq_heartbeat"
    mq.wait(lambda: state_of(mq, alarm) == "unacknowledged", 10, "daq_heartbeat raised")
    mq.publish(f"{P}/shelve", json.dumps({"name": "daq_heartbeat", "minutes": 5}))  # no reason: ignored
    mq.publish(
        f"{P}/shelve",
        json.dumps(
            {
                "name": "daq_heartbeat",
                "reason": "DAQ off for maintenance",
                "minutes": 5,
                "by": "run coordinator",
            }
        ),
    )
    mq.wait(lambda: state_of(mq, alarm) == "shelved", 10, "daq_heartbeat shelved")
    shelved = mq.latest(alarm)["shelved"]
    assert shelved["reason"] == "DAQ off for maintenance" and shelved["by"] == "run coordinator"
    assert 250 < shelved["until"] - time.time() <= 300
    mq.wait(lambda: mq.latest(f"{P}/status")["open_alarms"] == 0, 5, "no open alarm in the status")
    mq.publish(f"{P}/shelve", json.dumps({"name": "daq_heartbeat", "unshelve": True}))
    mq.wait(lambda: state_of(mq, alarm) == "unacknowledged", 10, "back, still active")
    assert "ignored MQTT shelve" in dqm.output()
    assert dqm.stop() == 0
