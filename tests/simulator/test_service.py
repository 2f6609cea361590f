"""``na64 simulate`` as a real process over a real ZeroMQ socket, against a test-side ROUTER playing the DAQ."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daq import detector, protocol
from simulator.truth import read_truth
from tests.conftest import na64_command

pytestmark = pytest.mark.integration

T = protocol.MessageType


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()
    ctx.term()


def start(processes: list[subprocess.Popen[bytes]], endpoint: str, *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(na64_command("--log-level", "WARNING", "simulate", "--endpoint", endpoint, *args))
    processes.append(p)
    return p


class FakeDaq:
    """Receives everything, checks order and sequence numbers, requests readouts like a trigger would."""

    def __init__(self, sock: zmq.Socket[bytes], proc: subprocess.Popen[bytes] | None = None) -> None:
        self.sock = sock
        self.proc = proc
        self.seq = protocol.SequenceTracker()
        self.messages: list[protocol.Message] = []
        self.requests: dict[tuple[int, int], np.ndarray] = {}
        self.fragments: dict[tuple[int, int], list[protocol.Fragment]] = {}
        self.slices: dict[tuple[int, int], protocol.Slice] = {}
        self.sent_random: dict[tuple[int, int], int] = {}

    def recv(self, timeout_s: float = 20.0) -> protocol.Message:
        deadline = time.monotonic() + timeout_s
        while not self.sock.poll(100):
            if self.proc is not None and self.proc.poll() is not None and not self.sock.poll(500):
                raise AssertionError(f"the simulator exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("no message from the simulator")
        ident, *frames = self.sock.recv_multipart(copy=False)
        msg = protocol.decode(frames)
        self.seq.check(bytes(ident.bytes), msg.seq)
        self.ident = ident.bytes
        self.messages.append(msg)
        if isinstance(msg, protocol.Slice):
            self.slices[(msg.spill, msg.slice_id)] = msg
        if isinstance(msg, protocol.Fragment):
            self.fragments.setdefault((msg.spill, msg.slice_id), []).append(msg)
        if isinstance(msg, protocol.RunStart):  # the front-end streams no spill before the DAQ's RUN_ACK
            ack = protocol.RunAck.of(msg.run, protocol.RunAck.ACCEPTED)
            self.sock.send_multipart([self.ident, *protocol.encode(ack)], copy=False)
        return msg

    def request(self, msg: protocol.Slice, random_trigger: bool = True) -> None:
        """Physics-like selection on the primitives (PRS block > 0.3 GeV, nominal gains) plus every
        200th particle, plus one random-trigger window."""
        gains = detector.nominal_gains()[detector.default_primitive_channels().astype(int)]
        e_prs = (msg.amp[17:29] / gains[17:29, None]).sum(axis=0) / 1000
        idx = np.flatnonzero((e_prs > 0.3) & (np.arange(msg.n_particles) % 200 == 0)).astype(np.uint32)
        t = np.asarray(msg.t_ns)[idx]
        if random_trigger:
            idx = np.append(idx, np.uint32(protocol.NO_PARTICLE))
            t = np.append(t, msg.t0_ns + msg.length_ns // 2)
            self.sent_random[(msg.spill, msg.slice_id)] = 1
        req = protocol.ReadoutRequest(
            run=msg.run,
            spill=msg.spill,
            slice_id=msg.slice_id,
            n_events=idx.size,
            index=idx,
            t_ns=t.astype(np.int64),
        )
        self.requests[(msg.spill, msg.slice_id)] = idx
        self.sock.send_multipart([self.ident, *protocol.encode(req)], copy=False)


def test_run_over_a_real_socket(
    router: tuple[zmq.Socket[bytes], str], processes: list, tmp_path: Path
) -> None:
    sock, endpoint = router
    truth = tmp_path / "truth.h5"
    args = "--pace max --spills 2 --spill-length 0.1 --slice-ms 10 --rate 2e5 --seed 5 --run 7 --fault gain_drift:ECAL:-2"
    p = start(processes, endpoint, *args.split(), "--truth", str(truth))
    daq = FakeDaq(sock, p)
    ends: dict[int, protocol.SpillEnd] = {}
    while True:
        msg = daq.recv()
        if isinstance(msg, protocol.Slice):
            daq.request(msg)
        elif isinstance(msg, protocol.SpillEnd):
            ends[msg.spill] = msg
        elif isinstance(msg, protocol.RunStop):
            break
    assert p.wait(timeout=20) == 0

    types = [m.TYPE for m in daq.messages if m.TYPE != T.HEARTBEAT]
    assert types[0] == T.RUN_START and types[-1] == T.RUN_STOP
    start_msg = daq.messages[0]
    assert isinstance(start_msg, protocol.RunStart)
    assert (start_msg.run, start_msg.n_channels, start_msg.n_samples, start_msg.sample_period_ps) == (
        7,
        110,
        32,
        12500,
    )
    np.testing.assert_array_equal(start_msg.prim_channels, detector.default_primitive_channels())
    info = json.loads(bytes(start_msg.info).decode())  # type: ignore[arg-type]
    assert info["seed"] == 5 and info["config"]["beam"]["rate_hz"] == 2e5
    assert any(m.TYPE == T.HEARTBEAT for m in daq.messages)
    assert sorted(ends) == [1, 2]

    for spill in (1, 2):
        own = [
            m
            for m in daq.messages
            if m.spill == spill and m.TYPE in (T.SPILL_START, T.SLICE, T.FRAGMENT, T.SPILL_END)
        ]
        assert own[0].TYPE == T.SPILL_START and own[-1].TYPE == T.SPILL_END  # fragments before SPILL_END
        slices = [m for m in own if isinstance(m, protocol.Slice)]
        assert [s.slice_id for s in slices] == list(range(10))
        n_frag = n_events = 0
        for s in slices:
            key = (spill, s.slice_id)
            frags = daq.fragments[key]
            idx = daq.requests[key]
            assert sorted(f.source for f in frags) == list(range(6))
            for f in frags:
                ids = detector.GROUP_IDS[f.source]
                assert (f.run, f.n_events) == (7, idx.size)
                assert f.waveforms is not None and f.waveforms.shape == (idx.size, ids.size, 32)
                np.testing.assert_array_equal(f.index, idx)
            n_frag += len(frags)
            n_events += idx.size
        end = ends[spill]
        assert end.n_slices == 10 and end.n_requests == 10
        assert end.n_fragments == n_frag and end.n_events_read == n_events
        assert end.n_particles == sum(s.n_particles for s in slices)
        assert 0.8 * 2e4 < end.n_particles < 1.2 * 2e4

    t = read_truth(truth)
    parts = t["particles"]
    want = {
        (sp, sl, int(i)) for (sp, sl), idx in daq.requests.items() for i in idx if i != protocol.NO_PARTICLE
    }
    got = set(zip(parts["spill"].tolist(), parts["slice"].tolist(), parts["index"].tolist(), strict=True))
    assert got == want and np.all(parts["run"] == 7)
    k = 0
    s = daq.slices[(int(parts["spill"][k]), int(parts["slice"][k]))]
    assert parts["t_ns"][k] == s.t_ns[parts["index"][k]]
    assert t["channels"]["gain"].shape == (110,) and t["attrs"]["seed"] == 5 and t["attrs"]["complete"]
    np.testing.assert_array_equal(t["spills"]["spill"], [1, 2])
    ecal = detector.ECAL_IDS
    g0 = t["channels"]["gain"][ecal]
    np.testing.assert_allclose(t["spills"]["gain_start"][1, ecal], 0.98 * g0, rtol=1e-6)  # -2% per spill
    np.testing.assert_allclose(t["spills"]["gain_end"][1, ecal], 0.96 * g0, rtol=1e-6)
    hcal = detector.HCAL_IDS
    np.testing.assert_array_equal(t["spills"]["gain_end"][1, hcal], t["channels"]["gain"][hcal])


def test_sigterm_ends_spill_and_run_cleanly(router: tuple[zmq.Socket[bytes], str], processes: list) -> None:
    sock, endpoint = router
    p = start(
        processes,
        endpoint,
        "--rate",
        "2e5",
        "--spill-length",
        "30",
        "--spill-period",
        "31",
        "--slice-ms",
        "20",
    )
    daq = FakeDaq(sock, p)
    n_slices = 0
    while n_slices < 5:
        msg = daq.recv()
        if isinstance(msg, protocol.Slice):
            daq.request(msg, random_trigger=False)
            n_slices += 1
    p.send_signal(signal.SIGTERM)
    end = None
    while True:
        msg = daq.recv(10)
        if isinstance(msg, protocol.Slice):
            daq.request(msg, random_trigger=False)
            n_slices += 1
        elif isinstance(msg, protocol.SpillEnd):
            end = msg
        elif isinstance(msg, protocol.RunStop):
            break
    # the spill was cut short (issue 16): SPILL_END says how many slices it should have had, exit 1
    assert p.wait(timeout=10) == 1
    assert end is not None and end.n_slices == n_slices and end.n_requests == n_slices
    assert end.slice_id == 1500 > n_slices
    assert isinstance(daq.messages[-1], protocol.RunStop) and daq.messages[-1].n_spills == 1


def test_stall_fault_and_restart(router: tuple[zmq.Socket[bytes], str], processes: list) -> None:
    """stall:1:0.1:0.2:restart, realtime: slices 10..29 never come, heartbeats say STALLED meanwhile, then
    the front-end restarts (sequence numbers from 0, a new RUN_START) and the spill goes on."""
    sock, endpoint = router
    p = start(
        processes,
        endpoint,
        "--rate",
        "2e4",
        "--spill-length",
        "0.5",
        "--spills",
        "1",
        "--slice-ms",
        "10",
        "--fault",
        "stall:1:0.1:0.2:restart",
        "--set",
        "readout.heartbeat_s=0.05",
    )
    daq = FakeDaq(sock, p)
    daq.seq = _Lenient()  # type: ignore[assignment]
    while True:
        msg = daq.recv()
        if isinstance(msg, protocol.Slice):
            daq.request(msg, random_trigger=False)
        elif isinstance(msg, protocol.RunStop):
            break
    assert p.wait(timeout=10) == 0
    ids = [m.slice_id for m in daq.messages if isinstance(m, protocol.Slice)]
    assert ids == list(range(10)) + list(range(30, 50))
    states = [m.state for m in daq.messages if isinstance(m, protocol.Heartbeat)]
    assert protocol.FrontEndState.STALLED in states
    starts = [i for i, m in enumerate(daq.messages) if m.TYPE == T.RUN_START]
    assert len(starts) == 2 and daq.messages[starts[1]].seq == 0
    end = next(m for m in daq.messages if isinstance(m, protocol.SpillEnd))
    assert end.n_slices == 30


class _Lenient:
    def check(self, sender: Any, seq: int) -> None:
        pass


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "/nonexistent/sim.toml"], "/nonexistent/sim.toml"),
        (["--fault", "melt:ECAL"], "melt"),
        (["--signal", "B-L:abc"], "--signal"),
        (["--set", "beam.rate_hz=-5"], "beam"),
        (["--signal", "B-7L:100:1e-4"], "model"),
        (["--signal", "B-L:16.7:3e-4:1e5"], "the fourth field (a rate per 1e9 EOT) was removed"),
        (["--signal", "B-L:16.7"], "MODEL:MASS_MEV:COUPLING"),
        (["--signal-boost", "100"], "--signal-boost needs a signal"),
        (["--signal", "B-L:16.7:1e-4", "--signal-boost", "1e14"], "at most"),
        (["--signal", "B-L:16.7:1e-4", "--signal-boost", "-1"], "boost"),
        (["--signal", "B-L:1000:1e-4", "--set", "signal.min_energy_gev=99.9"], "no Z'"),
        (["--scan-cells", "1,2;7,1"], "not an ECAL cell"),
        (["--scan-cells", "1;2"], "--scan-cells"),
        (["--aim-cell", "1,1;2,2"], "--aim-cell"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    r = subprocess.run(na64_command("simulate", *args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_help_lists_the_flags() -> None:
    r = subprocess.run(na64_command("simulate", "--help"), capture_output=True, text=True, timeout=60)
    for flag in (
        "--endpoint",
        "--rate",
        "--spills",
        "--spill-length",
        "--spill-period",
        "--pace",
        "--seed",
        "--signal",
        "--signal-boost",
        "--fault",
        "--config",
        "--truth",
        "--run",
        "--slice-ms",
        "--aim-cell",
        "--scan-cells",
        "--scan-mode",
        "--hcal-cells",
    ):
        assert flag in r.stdout


def test_config_file_and_flag_precedence(tmp_path: Path) -> None:
    from simulator.simulate_cli import build_config

    cfg = tmp_path / "sim.toml"
    cfg.write_text(
        'faults = ["dead:ECAL22"]\n[beam]\nrate_hz = 1e5\nspill_length_s = 2.0\n[readout]\npace = "max"\n'
    )
    import argparse

    from simulator.simulate_cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "simulate",
            "--config",
            str(cfg),
            "--rate",
            "3e5",
            "--fault",
            "hot:S0",
            "--set",
            "beam.spill_period_s=5.0",
        ]
    )
    c = build_config(args)
    assert c.beam.rate_hz == 3e5 and c.beam.spill_length_s == 2.0 and c.beam.spill_period_s == 5.0
    assert c.readout.pace == "max" and c.faults == ("dead:ECAL22", "hot:S0")
    time.sleep(0)


def test_calibration_flags_build_the_steering_config() -> None:
    import argparse

    from simulator.simulate_cli import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    c = build_config(
        parser.parse_args(
            ["simulate", "--scan-cells", "all", "--scan-mode", "particle", "--hcal-cells", "uniform"]
        )
    )
    assert len(c.beam.scan_cells) == 30 and set(c.beam.scan_cells) == {
        (x, y) for x in range(5) for y in range(6)
    }
    assert c.beam.scan_mode == "particle" and c.hcal.track_cells == "uniform"
    c = build_config(parser.parse_args(["simulate", "--aim-cell", "0,5"]))
    assert c.beam.aim_cell == (0, 5) and c.beam.aim_cells() == [(0, 5)] and c.beam.beam_cell == (2, 3)
    c = build_config(parser.parse_args(["simulate", "--scan-cells", "0,0; 4,5"]))
    assert c.beam.aim_cells() == [(0, 0), (4, 5)]


def test_signal_run_records_the_yield_the_boost_and_the_zprime_truth(
    router: tuple[zmq.Socket[bytes], str], processes: list, tmp_path: Path
) -> None:
    """``--signal B-L:250:1e-4 --signal-boost B --truth``: RUN_START and the truth file carry the physical
    yield (as computed from the config) and the boost; the spills count the Z' made (Poisson-compatible
    with boost x yield x particles); read-out Z' have their production and decay truth, and /zprime/ has
    every Z' made (the read-out ones identical)."""
    from simulator.simulate_cli import build_config, register
    from simulator.zprime_signal import for_config

    sock, endpoint = router
    truth = tmp_path / "truth.h5"
    args = "--pace max --spills 1 --spill-length 0.2 --rate 5e5 --seed 3 --signal B-L:250:1e-4 --signal-boost 2e7"
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    expected = for_config(build_config(parser.parse_args(["simulate", *args.split()])))
    p = start(processes, endpoint, *args.split(), "--truth", str(truth))
    daq = FakeDaq(sock, p)
    gains = detector.nominal_gains()[detector.default_primitive_channels().astype(int)]
    while True:
        msg = daq.recv()
        if isinstance(msg, protocol.Slice):
            e = msg.amp / gains[:, None] / 1000
            sel = (e[17:29].sum(axis=0) > 0.3) & (e[5:17].sum(axis=0) < 80)  # physics-like
            idx = np.flatnonzero(sel).astype(np.uint32)
            req = protocol.ReadoutRequest(
                run=msg.run,
                spill=msg.spill,
                slice_id=msg.slice_id,
                n_events=idx.size,
                index=idx,
                t_ns=np.asarray(msg.t_ns)[idx],
            )
            sock.send_multipart([daq.ident, *protocol.encode(req)], copy=False)
        elif isinstance(msg, protocol.RunStop):
            break
    assert p.wait(timeout=30) == 0
    info = json.loads(bytes(daq.messages[0].info).decode())["signal"]  # type: ignore[attr-defined]
    assert info["boost"] == 2e7 and info["produced_per_eot"] == pytest.approx(expected.produced_per_eot)
    t = read_truth(truth)
    assert t["attrs"]["format_version"] == 2
    attrs_signal = json.loads(t["attrs"]["signal"])
    assert attrs_signal["boost"] == 2e7 and attrs_signal["injected_per_eot"] == pytest.approx(
        2e7 * expected.produced_per_eot
    )
    n_particles = int(t["spills"]["n_particles"][0])
    mu = 2e7 * expected.produced_per_eot * n_particles
    n_signal = int(t["spills"]["n_signal"][0])
    assert abs(n_signal - mu) < 5 * np.sqrt(mu) + 1 and n_signal > 20
    parts = t["particles"]
    zp = parts["zp_mode"] > 0
    assert zp.any() and np.all(np.isin(parts["process"][zp], [4, 5, 6]))
    assert np.all(np.isnan(parts["zp_depth_x0"][~zp])) and np.all(np.isfinite(parts["zp_depth_x0"][zp]))
    assert np.all(parts["zp_decay"][zp] > 0) and np.all(parts["zp_decay_z_mm"][zp] > 0)
    names = json.loads(t["attrs"]["zp_decay_names"])
    assert names[1:] == ["INVISIBLE", "EE", "MUMU", "HADRONS", "TAUTAU"]
    # every Z' made, read out or not: one row each, the read-out ones identical to their particle rows
    made = t["zprime"]
    assert made["zp_mode"].size == n_signal and np.all(made["zp_mode"] > 0)
    assert int(np.isin(made["process"], [4, 5]).sum()) == int(t["spills"]["n_signal_missing"][0])
    key = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(made["slice"], made["index"], strict=True))}
    for j in np.flatnonzero(zp):
        i = key[(int(parts["slice"][j]), int(parts["index"][j]))]
        assert made["t_ns"][i] == parts["t_ns"][j] and made["process"][i] == parts["process"][j]
        for name in (
            "zp_mode",
            "zp_emitter",
            "zp_depth_x0",
            "zp_x",
            "zp_energy_gev",
            "zp_decay",
            "zp_decay_z_mm",
        ):
            assert made[name][i] == parts[name][j], name
