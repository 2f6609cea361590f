"""Issue 17, findings 1-6: a real ``na64 daq`` process, its real front-end and a second DEALER connected
to the same endpoint, sending well-formed messages in the wrong place. Each test failed on the code
before issue 17 (the finding it names) and checks the spill files read back: the run's data is exact.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daq import detector, protocol
from daq.files import SpillFile, list_spill_files
from tests.daq.frontend import FakeFrontEnd, Listener, SentSlice

pytestmark = pytest.mark.integration


def codes(nacks: list[protocol.Nack]) -> list[str]:
    return [n.reason.split(":")[0] for n in nacks]


def assert_file_is_exactly(path: Path, fe: FakeFrontEnd, spill: int, slices: list[SentSlice]) -> None:
    """Every event of the file has the front-end's own primitives and waveforms, and all are there."""
    with SpillFile(path) as f:
        assert f.status == "ok", f.losses
        ev, wf, prim = f.events(), f.waveforms(), f.primitives()
        expected = sum(fe.answered[(spill, s.slice_id)][0].size for s in slices)
        assert f.n_events == expected > 0
        for i in range(f.n_events):
            sid = int(ev["slice"][i])
            index, req_t, waves = fe.answered[(spill, sid)]
            pos = np.flatnonzero((index == ev["index"][i]) & (req_t == ev["t_ns"][i]))[0]
            assert np.array_equal(wf[i], waves[pos])
            idx = int(ev["index"][i])
            if idx != protocol.NO_PARTICLE:
                assert np.array_equal(prim["amp"][:, i], slices[sid].amp[:, idx])


def test_finding1_a_sequence_jump_to_2_64_never_deletes_a_spill(daq_factory: Any) -> None:
    """HEARTBEAT seq 0 then 2^64-1 from a second connection (and 2^62 from the run's own front-end, a
    buggy counter, 2^62) used to overflow the loss counter: the spill's file was not written."""
    daq = daq_factory()
    lis = Listener(daq.publish)
    fe, other = FakeFrontEnd(daq.endpoint, run=1, seed=1), FakeFrontEnd(daq.endpoint, run=1, seed=2)
    try:
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 500) for i in range(3)]
        fe.send_slice(slices[0])
        fe.serve(1)
        other.heartbeat()  # seq 0
        other.send(protocol.Heartbeat(uptime_ns=1, state=1), seq=2**64 - 1)  # not a valid field: refused
        other.send(protocol.Heartbeat(uptime_ns=1, state=1), seq=2**63 - 1)  # valid, a jump of 2^63
        fe.send(protocol.Heartbeat(uptime_ns=1, state=1), seq=2**62)  # the run's own buggy counter
        fe.seq = 2**62 + 1
        for s in slices[1:]:
            fe.send_slice(s)
            fe.serve(1)
        fe.spill_end()
        summary = lis.wait_summary(1, 1)
        lis.pump(1.5)
        st = lis.status[-1]
    finally:
        fe.close()
        other.close()
        lis.close()
    assert summary["status"] == "incomplete" and summary["file"], summary  # recorded; one gap counted
    assert summary["losses"]["sequence_gap"] == 1 and summary["n_events_written"] == summary["n_accepted"]
    assert st["rejected"] == {
        "malformed": 1
    }  # the other peer's: not the run's loss (its jump follows a refused one)
    (path,) = list_spill_files(daq.data_dir)
    with SpillFile(path) as f:
        assert f.n_events == summary["n_accepted"] > 0 and f.losses["sequence_gap"] == 1


def test_finding2_a_second_peer_can_neither_stop_end_restart_nor_inject(daq_factory: Any) -> None:
    """RUN_STOP 999999, SPILL_END, RUN_START, SPILL_START and a FRAGMENT with the right indices from a
    second connection: all refused with a NACK; the run's spill is recorded exactly as its front-end sent
    it, and that front-end is told nothing (it did nothing wrong)."""
    daq = daq_factory("--stop-after-run")
    lis = Listener(daq.publish)
    fe, other = FakeFrontEnd(daq.endpoint, run=1, seed=1), FakeFrontEnd(daq.endpoint, run=1, seed=2)
    try:
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 800) for i in range(4)]
        fe.send_slice(slices[0])
        req = fe.recv_request()
        # the other peer: a fragment for the waiting request, with the right indices and other samples
        other.send(
            protocol.Fragment(
                run=1,
                spill=1,
                slice_id=req.slice_id,
                source=0,
                n_events=req.n_events,
                n_channels=len(detector.GROUP_IDS[0]),
                n_samples=detector.N_SAMPLES,
                index=np.asarray(req.index),
                waveforms=np.full(
                    (req.n_events, len(detector.GROUP_IDS[0]), detector.N_SAMPLES), 4000, np.uint16
                ),
            )
        )
        other.send(protocol.RunStop(run=999999))
        other.send(protocol.SpillEnd(run=1, spill=1, t_end_ns=time.time_ns()))
        other.send(protocol.RunStart(run=1, n_channels=110, prim_channels=fe.prim_channels))
        other.send(protocol.SpillStart(run=1, spill=2, t_start_ns=time.time_ns()))
        other.send(protocol.RunStop(run=1))
        refused = other.recv_nacks(2.0)
        fe.answer(req)
        for s in slices[1:]:
            fe.send_slice(s)
            fe.serve(1)
        fe.spill_end()
        fe.run_stop(1)
        summary = lis.wait_summary(1, 1)
        assert daq.proc.wait(30) == 0, daq.output()  # stopped by its own front-end's RUN_STOP only
        fe.recv_nacks(0.3)
    finally:
        fe.close()
        other.close()
        lis.close()
    assert codes(refused) == ["not_owner"] * 5  # the RUN_START is answered by RUN_ACK refused
    assert [n.refused_type for n in refused] == [7, 2, 4, 3, 2]
    [ack] = other.control
    assert isinstance(ack, protocol.RunAck) and ack.status == ack.REFUSED and ack.text.startswith("not_owner")
    assert fe.nacks == []
    assert summary["status"] == "ok" and summary["ended_by"] == "SPILL_END", summary
    assert all(v == 0 for k, v in summary["losses"].items() if k not in ("dead_time", "monitor_skipped"))
    (path,) = list_spill_files(daq.data_dir)
    assert_file_is_exactly(path, fe, 1, slices)
    log = daq.output()
    assert "999999" not in log.split("refused")[0]  # never "run 999999 stopped"
    assert "stopped by the front-end" in log and "run 999999 stopped" not in log


def test_finding3_a_repeated_spill_start_end_and_run_stop_are_retries(daq_factory: Any) -> None:
    """A front-end retrying SPILL_START mid-spill used to close the spill and reopen the same file name:
    the first half's events were lost. Now the repeat is a retry; so are repeated SPILL_END and RUN_STOP."""
    daq = daq_factory("--stop-after-run")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=3, seed=4)
    try:
        fe.run_start()
        fe.spill_start(1)
        t_start = time.time_ns()
        slices = [fe.make_slice(i, 600) for i in range(4)]
        for i, s in enumerate(slices):
            if i == 2:
                fe.send(protocol.SpillStart(run=3, spill=1, t_start_ns=t_start))  # the retry
            fe.send_slice(s)
            fe.serve(1)
        fe.spill_end()
        fe.spill_end()  # again
        fe.send(protocol.SpillStart(run=3, spill=1, t_start_ns=t_start))  # a late retry: refused, no file
        fe.run_stop(1)
        fe.run_stop(1)
        summary = lis.wait_summary(3, 1)
        assert daq.proc.wait(30) == 0, daq.output()
        fe.recv_nacks(0.3)
    finally:
        fe.close()
        lis.close()
    assert summary["status"] == "ok", summary
    (path,) = list_spill_files(daq.data_dir)
    assert_file_is_exactly(path, fe, 1, slices)
    assert codes(fe.nacks) == ["already_done"]  # the SPILL_START after the spill ended
    log = daq.output()
    assert "FAILED" not in log and "retry" in log


def test_finding4_out_of_range_fields_are_refused_and_never_stored(daq_factory: Any) -> None:
    """RUN_START with n_channels 111 or n_samples 0, samples above 12 bits, particle times outside their
    slice, a non-zero reserved header field: refused (NACKed, counted), never stored; a frame above
    readout.max_frame_mb disconnects its sender before the DAQ takes it into memory."""
    daq = daq_factory("--set", "readout.max_frame_mb=2")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=5, seed=5)
    big = FakeFrontEnd(daq.endpoint, run=5, seed=6)
    try:
        fe.send(protocol.RunStart(run=5, n_channels=111, prim_channels=fe.prim_channels))
        head = bytearray(
            fe.frames(protocol.RunStart(run=5, n_channels=110, prim_channels=fe.prim_channels))[0]
        )
        struct.pack_into("<H", head, protocol.HEADER_SIZE + 16 * 1, 0)  # n_samples = 0 ...
        fe.send_raw(_reseal([bytes(head), fe.prim_channels.astype("<u2").tobytes()]))
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 400) for i in range(3)]
        fe.send_slice(slices[0])
        req = fe.recv_request()
        wf = fe.waveforms(slices[0], np.asarray(req.index))
        ids = detector.GROUP_IDS[0]
        bad = np.ascontiguousarray(wf[:, ids])
        bad[0, 0, 0] = 0xFFFF
        frag = protocol.Fragment(
            run=5,
            spill=1,
            slice_id=req.slice_id,
            source=0,
            n_events=req.n_events,
            n_channels=len(ids),
            n_samples=detector.N_SAMPLES,
            index=np.asarray(req.index),
            waveforms=np.zeros_like(bad),
        )
        frames = fe.frames(frag)
        frames[2] = bad.tobytes()
        fe.send_raw(_reseal([bytes(f) for f in frames]))  # samples above 12 bits
        fe.answer(req)  # the correct answer follows (the bad one was refused, not stored)
        s1 = slices[1]
        late = protocol.Slice(
            run=5,
            spill=1,
            slice_id=1,
            t0_ns=1_000_000,
            length_ns=1_000_000,
            n_particles=s1.t_ns.size,
            t_ns=s1.t_ns,
            amp=s1.amp,
        )
        t_frames = fe.frames(late)
        t_frames[1] = (s1.t_ns[::-1]).tobytes()  # decreasing times
        fe.send_raw(_reseal([bytes(f) for f in t_frames]))
        hb = bytearray(fe.frames(protocol.Heartbeat(state=1))[0])
        struct.pack_into("<I", hb, 52, 7)  # the header's reserved field
        fe.send_raw(_reseal([bytes(hb)]))
        big.sock.send_multipart([b"x" * (4 << 20)])  # 4 MB > 2 MB: the DAQ drops the connection
        for s in slices[1:]:
            fe.send_slice(s)
            fe.serve(1)
        fe.spill_end()
        summary = lis.wait_summary(5, 1)
        fe.recv_nacks(0.5)
        st = lis.wait_status(lambda d: d["state"] == "running")
    finally:
        fe.close()
        big.close()
        lis.close()
    refused = [a for a in fe.control if isinstance(a, protocol.RunAck) and a.status == a.REFUSED]
    assert len(refused) == 1 and "n_channels 111" in refused[0].text  # RUN_ACK refused, not recorded
    assert codes(fe.nacks) == ["malformed"] * 4, [n.reason for n in fe.nacks]
    assert "n_samples=0" in fe.nacks[0].reason and "12-bit" in fe.nacks[1].reason
    assert "t_ns" in fe.nacks[2].reason and "reserved" in fe.nacks[3].reason
    losses = summary["losses"]
    assert losses["decode_error"] == 3 and losses["decode_error.field"] == 3 and losses["sequence_gap"] == 0
    (path,) = list_spill_files(daq.data_dir)
    with SpillFile(path) as f:
        assert int(f.waveforms().max()) <= detector.ADC_MAX
        assert f.n_events == summary["n_accepted"]
    # the 4 MB frame was never taken in: not even counted as a malformed message (only n_samples=0 was)
    assert st["rejected"] == {"malformed": 1}
    assert "decode_error" not in json.dumps(summary["frontend"])


def test_finding5_sequence_numbers_resynchronise_after_a_backward_jump(daq_factory: Any) -> None:
    """After 0..9 then 5..14 one message is dropped (the first repeat), not five."""
    daq = daq_factory()
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=2, seed=2)
    try:
        fe.run_start()  # seq 0
        for seq in [*range(1, 10), *range(5, 15)]:
            fe.send(protocol.Heartbeat(uptime_ns=1, state=1), seq=seq)
        st = lis.wait_status(lambda d: d["state"] == "running" and d["losses_run"]["duplicate"] > 0)
        lis.pump(1.2)
        st = lis.status[-1]
    finally:
        fe.close()
        lis.close()
    assert st["losses_run"]["duplicate"] == 1 and st["losses_run"]["sequence_gap"] == 0


def test_finding6_floods_are_bounded(daq_factory: Any) -> None:
    """3000 RUN_STOPs outside a run log a few lines, not 3000; 200 connections leave at most
    MAX_FRONTENDS in the status; messages of 100 000 frames do not stall the status feed."""
    from daq.recorder import MAX_FRONTENDS

    daq = daq_factory()
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=1, seed=1)
    ctx = zmq.Context()
    try:
        for _ in range(3000):
            fe.send(protocol.RunStop(run=1))
        peers = []
        for i in range(200):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(daq.endpoint)
            s.send_multipart(protocol.encode(protocol.Heartbeat(state=0, seq=0)))
            peers.append(s)
            if i % 50 == 49:
                time.sleep(0.2)
        st = lis.wait_status(lambda d: d["rejected"].get("frontends_evicted", 0) > 0)
        huge = [fe.frames(protocol.Heartbeat(state=1))[0], *([b""] * 100_000)]

        def flood() -> None:  # its own socket, in its own thread: the test keeps listening meanwhile
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 10_000)
            s.connect(daq.endpoint)
            for _ in range(20):
                s.send_multipart(huge, copy=False)
            s.close()

        sender = threading.Thread(target=flood)
        lis.status.clear()
        sender.start()
        deadline, after = time.monotonic() + 120, 0
        while after < 20 and time.monotonic() < deadline:  # while it sends, then 2 s more
            lis.pump(0.1)
            after += 0 if sender.is_alive() else 1
        sender.join(60)
        # the DAQ's own clock in its status documents: a stalled DAQ would publish with gaps
        gaps = np.diff([d["uptime_s"] for d in lis.status]).tolist()
        st2 = lis.wait_status(lambda d: d["rejected"].get("malformed", 0) >= 20, timeout_s=60)
    finally:
        for s in peers:
            s.close(0)
        ctx.term()
        fe.close()
        lis.close()
    assert len(st["frontends"]) <= MAX_FRONTENDS and len(json.dumps(st)) < 20_000
    assert len(gaps) >= 2 and max(gaps) < 2.0, gaps  # the status kept coming (every second) meanwhile
    assert st2["rejected"]["malformed"] == 20
    log = daq.output()
    lines = log.splitlines()
    stops = [x for x in lines if "stopped by the front-end" in x or " finished" in x]
    assert len(stops) <= 10 and sum("connected" in x for x in lines) <= 5, "\n".join(lines[-40:])


def _reseal(frames: list[bytes]) -> list[bytes]:
    from tests.test_protocol import reseal

    return reseal(frames)


def test_a_simulate_whose_run_is_refused_says_so_and_fails(daq_factory: Any) -> None:
    """The real front-end of finding 2's second peer: ``na64 simulate`` against a DAQ whose run belongs
    to another live front-end is told (RUN_ACK refused: not_owner) and exits 2 instead of reporting
    success."""
    import subprocess

    from tests.conftest import na64_command

    daq = daq_factory("--set", "readout.owner_timeout_s=120")
    owner = FakeFrontEnd(daq.endpoint, run=4, seed=4)
    try:
        owner.run_start()
        sim = subprocess.run(
            na64_command(
                "simulate", "--endpoint", daq.endpoint, "--run", "4", "--spills", "1", "--spill-length", "0.2",
                "--spill-period", "0.3", "--rate", "1e5", "--pace", "max",
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )  # fmt: skip
    finally:
        owner.close()
    assert sim.returncode == 2, sim.stderr[-2000:]  # one line, as for any refused run (RUN_ACK refused)
    assert "refused run 4: not_owner: run 4 belongs to front-end" in sim.stderr
    assert list_spill_files(daq.data_dir) == []
