"""Issue 17, finding 7: ZeroMQ CURVE end to end with real processes. ``na64 keys generate`` makes the keys,
``na64 daq --server-key --allowed-clients`` accepts only the listed front-ends and DQMs, ``na64 simulate``
with an allowed key records its run, a peer with another key (or none) gets nothing recorded and
nothing published; without CURVE, a bind beyond loopback is warned about.
"""

from __future__ import annotations

import contextlib
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zmq

from daq import curve
from daq.files import SpillFile, list_spill_files
from tests.conftest import na64_command
from tests.daq.frontend import FakeFrontEnd, Listener

pytestmark = pytest.mark.integration


def keys(tmp: Path, *names: str) -> None:
    for name in names:
        out = subprocess.run(
            na64_command("keys", "generate", str(tmp / name)), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert "wrote" in out.stdout


def test_keys_generate_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    keys(tmp_path, "k/daq")
    public, secret = tmp_path / "k/daq.key", tmp_path / "k/daq.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    pub, sec = curve.load_secret(secret, "--server-key")
    assert curve.load_public(public, "x") == pub and len(sec) == 40
    before = secret.read_bytes()
    again = subprocess.run(
        na64_command("keys", "generate", str(tmp_path / "k/daq")), capture_output=True, text=True
    )
    assert again.returncode == 2 and "not overwritten" in again.stderr and "Traceback" not in again.stderr
    assert secret.read_bytes() == before
    # a public key where a secret one is needed, a lone option: one line, exit 2
    for args in (
        ["--server-key", str(public), "--allowed-clients", str(tmp_path / "k")],
        ["--server-key", str(secret)],
    ):
        out = subprocess.run(na64_command("daq", *args), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


def test_curve_end_to_end_only_allowed_keys_are_heard(daq_factory: Any, tmp_path: Path) -> None:
    keys(tmp_path, "server/daq", "allowed/frontend", "allowed/dqm", "elsewhere/intruder")
    daq_public = tmp_path / "server/daq.key"
    dqm_keys = curve.client_keys(daq_public, tmp_path / "allowed/dqm.key_secret")
    intruder_keys = curve.client_keys(daq_public, tmp_path / "elsewhere/intruder.key_secret")
    daq = daq_factory(
        "--server-key",
        str(tmp_path / "server/daq.key_secret"),
        "--allowed-clients",
        str(tmp_path / "allowed"),
        listener_keys=dqm_keys,
    )
    lis = Listener(daq.publish, keys=dqm_keys)
    plain = Listener(daq.publish)  # no key: receives nothing
    stranger = Listener(daq.publish, keys=intruder_keys)
    intruder = FakeFrontEnd(daq.endpoint, run=66, seed=6, keys=intruder_keys)
    naked = FakeFrontEnd(daq.endpoint, run=67, seed=7)  # no CURVE at all
    try:
        for fe in (intruder, naked):  # a whole spill's worth of messages: nothing may be recorded
            fe.sock.setsockopt(zmq.SNDTIMEO, 500)  # once its handshake fails, a DEALER has no peer to send to
            with contextlib.suppress(zmq.Again):
                fe.run_start()
                fe.spill_start(1)
                fe.send_slice(fe.make_slice(0, 300))
                fe.spill_end()
                fe.run_stop()
        sim = subprocess.run(
            na64_command(
                "simulate",
                "--endpoint",
                daq.endpoint,
                "--server-public-key",
                str(daq_public),
                "--client-key",
                str(tmp_path / "allowed/frontend.key_secret"),
                "--run",
                "5",
                "--spills",
                "1",
                "--spill-length",
                "0.3",
                "--spill-period",
                "0.5",
                "--rate",
                "2e5",
                "--pace",
                "max",
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert sim.returncode == 0, sim.stderr[-3000:]
        summary = lis.wait_summary(5, 1, timeout_s=60)
        st = lis.wait_status(lambda d: d["rejected"].get("not_authorized", 0) >= 1)
        plain.pump(0.5)
        stranger.pump(0.5)
        assert intruder.recv_nacks(0.2) == [] and naked.recv_nacks(0.2) == []  # not even a refusal
    finally:
        for x in (lis, plain, stranger):
            x.close()
        intruder.close()
        naked.close()
    assert summary["status"] == "ok" and summary["n_events_written"] == summary["n_accepted"] > 0
    (path,) = list_spill_files(daq.data_dir)  # run 5 only: runs 66 and 67 left no trace
    with SpillFile(path) as f:
        assert f.run == 5 and f.n_events == summary["n_accepted"]
    assert (st["rejected"]["not_authorized"] >= 1 and st["run"] is None) or st["run"] == 5
    assert not plain.status and not plain.summaries and not stranger.status  # the feed is secured too
    log = daq.output()
    assert "CURVE on" in log and "key not allowed" in log and "run 66" not in log and "run 67" not in log


def test_a_bind_beyond_loopback_without_curve_is_warned_about(daq_factory: Any) -> None:
    daq = daq_factory(endpoint_host="0.0.0.0")
    daq.stop()
    assert "reachable from other machines without CURVE" in daq.output()


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://192.168.1.5:5555", False),
    ],
)
def test_is_loopback(endpoint: str, local: bool) -> None:
    assert curve.is_loopback(endpoint) is local
