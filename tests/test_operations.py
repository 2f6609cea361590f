"""Operations hooks for real: ``--metrics-port`` (/metrics, /healthz) of ``na64 daq`` and ``na64 dqm`` as
separate processes fed by ``na64 simulate``, systemd's READY=1 on a real notify socket, JSON logs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daq.daq_metrics import DaqMetrics
from daq.files import SpillFile, list_spill_files
from tests.conftest import free_port, na64_command


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text page."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.slow
def test_daq_and_dqm_metrics_and_health_follow_a_real_run(tmp_path: Path) -> None:
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daq_ops, dqm_ops, dqm_port = free_port(), free_port(), free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    data = tmp_path / "data"
    daq_err = (tmp_path / "daq.err").open("w")
    daq = subprocess.Popen(
        na64_command(
            "daq", "--endpoint", endpoint, "--publish", publish, "--data-dir", str(data),
            "--calibration", "nominal", "--metrics-port", str(daq_ops), "--log-format", "json",
        ),
        stdout=subprocess.DEVNULL,
        stderr=daq_err,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
    )  # fmt: skip
    dqm = subprocess.Popen(
        na64_command("dqm", "--source", publish, "--port", str(dqm_port), "--metrics-port", str(dqm_ops)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    daq_url, dqm_url = f"http://127.0.0.1:{daq_ops}", f"http://127.0.0.1:{dqm_ops}"
    try:
        assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=idle")  # systemd Type=notify
        code, text = get(daq_url + "/healthz")
        assert (code, text) == (200, "ready: idle\n")
        wait_for(lambda: get(dqm_url + "/healthz")[0] == 200, 90, "the DQM to hear the DAQ")
        sim = subprocess.run(
            na64_command(
                "simulate", "--endpoint", endpoint, "--spills", "2", "--spill-length", "0.5",
                "--spill-period", "1", "--rate", "2e5", "--pace", "max",
            ),
            capture_output=True,
            timeout=180,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        wait_for(
            lambda: sample(get(daq_url + "/metrics")[1], "na64_daq_spills_total", status="ok") == 2,
            60,
            "2 spills",
        )
        _, page = get(daq_url + "/metrics")
        files = list_spill_files(data)
        assert len(files) == 2
        want = {"particles": 0, "beam": 0, "physics": 0, "random": 0, "events": 0, "dead": 0, "bytes": 0}
        for path in files:
            with SpillFile(path) as f:
                want["particles"] += f.counters["n_particles"]
                for kind in ("physics", "beam", "random"):
                    want[kind] += f.counters[f"triggers_{kind}"]
                want["events"] += f.n_events
                want["dead"] += f.losses.get("dead_time", 0)
                want["bytes"] += path.stat().st_size
        assert sample(page, "na64_daq_particles_total") == want["particles"] > 0
        for kind in ("physics", "beam", "random"):
            assert sample(page, "na64_daq_triggers_total", type=kind) == want[kind], kind
        assert sample(page, "na64_daq_events_written_total") == want["events"] > 0
        assert sample(page, "na64_daq_losses_total", reason="dead_time") == want["dead"]
        assert sample(page, "na64_daq_losses_total", reason="write_error") == 0
        assert abs(sample(page, "na64_daq_bytes_written_total") - want["bytes"]) <= 2 * 1000  # type: ignore[operator]
        wait_for(
            lambda: sample(get(daq_url + "/metrics")[1], "na64_daq_writer_queue_batches") == 0, 10, "queue"
        )
        assert sample(page, "process_cpu_seconds_total") > 0  # type: ignore[operator]
        assert sample(page, "na64_thread_cpu_seconds_total", thread="na64-writer") is not None
        assert "_created" not in page
        wait_for(lambda: sample(get(dqm_url + "/metrics")[1], "na64_dqm_spills_closed_total") == 2, 60, "DQM")
        dqm_page = get(dqm_url + "/metrics")[1]
        assert sample(dqm_page, "na64_dqm_events_total") == want["events"]
        assert get(daq_url + "/nothing")[0] == 404
        daq.send_signal(signal.SIGTERM)
        assert daq.wait(60) == 0
        # the DQM notices: not ready once the DAQ's feed has been silent for a while
        wait_for(lambda: get(dqm_url + "/healthz")[0] == 503, 60, "the DQM to go not-ready")
        assert "no status from the DAQ" in get(dqm_url + "/healthz")[1]
        dqm.send_signal(signal.SIGTERM)
        assert dqm.wait(60) == 0
        assert dqm.stdout is not None and dqm.stdout.read().count("DQM at http://") == 1
    finally:
        for p in (daq, dqm):
            if p.poll() is None:
                p.kill()
                p.wait()
        daq_err.close()
        notify.close()
        if dqm.stdout is not None:
            dqm.stdout.close()
    records = [json.loads(line) for line in (tmp_path / "daq.err").read_text().splitlines()]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d", r["time"]) for r in records)
    dead = [r for r in records if r["message"].startswith("loss dead_time")]
    assert dead and all(r["level"] == "INFO" for r in dead)  # healthy dead time is not a warning


@pytest.mark.integration
@pytest.mark.parametrize("command", ["daq", "dqm"])
def test_a_metrics_port_in_use_is_one_line_and_exit_2(command: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--endpoint", f"tcp://127.0.0.1:{free_port()}"] if command == "daq" else ["--port", "0"]
        out = subprocess.run(
            na64_command(command, *args, "--metrics-port", str(port)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"--metrics-port {port}" in errors[0] and "Traceback" not in out.stderr


def test_daq_health_says_why_it_is_not_ready() -> None:
    m = DaqMetrics(status_period_s=0.1)
    ready, why = m.health()
    assert not ready and why.startswith("starting")
    m.status({"state": "in_spill", "run": 4, "spill": 2, "alarms": {}})
    assert m.health() == (True, "in_spill, run 4 spill 2")
    m.status({"state": "idle", "run": None, "spill": None, "alarms": {"disk": "12 MB free < 500 MB"}})
    assert m.health() == (False, "disk: 12 MB free < 500 MB")
    m.status({"state": "idle", "alarms": {}})
    m._last_status_at -= 10  # the event loop stopped publishing
    ready, why = m.health()
    assert not ready and why.startswith("no status for 1")
    m.stopping()
    assert m.health() == (False, "stopping")


def exposed_metric_names() -> set[str]:
    """Every series name the DAQ's and the DQM's registries expose (fed one status and one summary)."""
    import threading
    import types

    from prometheus_client.exposition import generate_latest

    from dqm.config import DqmConfig
    from dqm.monitor import Monitor
    from dqm.ops_metrics import DqmMetrics

    daq = DaqMetrics()
    daq.status(
        {
            "state": "in_spill",
            "run": 1,
            "spill": 2,
            "alarms": {},
            "frontends": {},
            "losses_run": {"dead_time": 1},
        }
    )
    daq.spill_summary(
        {"status": "ok", "n_particles": 5, "triggers": {"physics": 1}, "losses": {"dead_time": 1}}
    )
    service = types.SimpleNamespace(
        lock=threading.Lock(), monitor=Monitor(DqmConfig()), snapshots=0, loop_errors={"tick": 1},
        mqtt=None, mode="live", source_name="tcp://127.0.0.1:1",
    )  # fmt: skip
    pages = generate_latest(daq.registry).decode() + generate_latest(DqmMetrics(service).registry).decode()
    return {line.split("{")[0].split()[0] for line in pages.splitlines() if line and not line.startswith("#")}


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    doc = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-na64.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:na64|process)_\w+)", e)}
    assert len(doc["panels"]) >= 10 and len(used) >= 15
    missing = used - exposed_metric_names()
    assert not missing, missing
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("unit", ["na64-daq.service", "na64-dqm.service"])
def test_the_example_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the example units, with ExecStart pointing at this install's na64."""
    import shutil
    import sys

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    na64 = Path(sys.executable).with_name("na64")
    text = (Path(__file__).resolve().parents[1] / "docs" / "systemd" / unit).read_text()
    assert "/opt/na64daq/.venv/bin/na64" in text and "Type=notify" in text and "--metrics-port" in text
    (tmp_path / unit).write_text(text.replace("/opt/na64daq/.venv/bin/na64", str(na64)))
    out = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in out.stderr.splitlines() if unit in line]
    assert not problems, out.stderr
