"""The replay front-end over a real socket: the real `na64 replay` process against a test-side ROUTER
that requests readouts like a DAQ (every particle of every slice, plus the recorded random windows)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from daq import detector, protocol
from daq.files import SpillFile, partial_filename
from simulator.replay import poll_ms
from tests.conftest import free_port, na64_command
from tests.replay.synth import make_spill

pytestmark = pytest.mark.integration


class RecordingRouter:
    """A ROUTER that answers every SLICE with a READOUT_REQUEST and records everything it receives."""

    def __init__(self, endpoint: str, random_t: dict[tuple[int, int], np.ndarray], rcvbuf: int = 0) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        if rcvbuf:  # small ZeroMQ and kernel receive buffers: what is not read stays queued at the sender
            self.sock.setsockopt(zmq.RCVHWM, 2)
            self.sock.setsockopt(zmq.RCVBUF, rcvbuf)
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.random_t = random_t  # (spill, slice) -> random trigger times to ask for
        self.messages: list[protocol.Message] = []
        self.slice_arrival: list[float] = []  # monotonic time each SLICE arrived
        self.requests: dict[tuple[int, int], protocol.ReadoutRequest] = {}
        self.fragments: dict[tuple[int, int], list[protocol.Fragment]] = {}
        self.seq = protocol.SequenceCounter()
        self.tracker = protocol.SequenceTracker()

    def run(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0, pause_s: float = 0.0) -> None:
        """Receive until the replay process exits; ``pause_s``: stop reading for that long after the first
        readout request (the replay's answers queue up meanwhile)."""
        deadline = time.monotonic() + timeout_s
        pause = pause_s
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                if proc.poll() is not None:
                    return
                continue
            ident, *frames = self.sock.recv_multipart()
            msg = protocol.decode(frames)
            self.tracker.check(ident, msg.seq)  # raises on a gap or repeat
            self.messages.append(msg)
            if isinstance(msg, protocol.Slice):
                self.slice_arrival.append(time.monotonic())
                extra = self.random_t.get((msg.spill, msg.slice_id), np.zeros(0, np.int64))
                idx = np.concatenate(
                    [
                        np.arange(msg.n_particles, dtype=np.uint32),
                        np.full(extra.size, protocol.NO_PARTICLE, np.uint32),
                    ]
                )
                t = np.concatenate([msg.t_ns, extra]).astype(np.int64)
                req = protocol.ReadoutRequest(
                    run=msg.run, spill=msg.spill, slice_id=msg.slice_id, n_events=idx.size, index=idx, t_ns=t
                )
                self.requests[(msg.spill, msg.slice_id)] = req
                self.sock.send_multipart([ident, *protocol.encode(self.seq.stamp(req))])
                time.sleep(pause)
                pause = 0.0
            elif isinstance(msg, protocol.Fragment):
                self.fragments.setdefault((msg.spill, msg.slice_id), []).append(msg)
        raise AssertionError("replay did not finish in time")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def replay_into(
    router: RecordingRouter, args: list[str], processes: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], bytes, bytes]:
    """Run ``na64 replay ARGS`` against ``router`` until it exits (then close the router):
    (process, stdout, stderr)."""
    try:
        proc = subprocess.Popen(
            na64_command("replay", *args, "--endpoint", router.endpoint),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        processes.append(proc)
        router.run(proc)
        out, err = proc.communicate(timeout=30)
    finally:
        router.close()
    return proc, out, err


def _types(messages: list[protocol.Message]) -> list[str]:
    return [m.TYPE.name for m in messages if not isinstance(m, protocol.Heartbeat)]


def test_replay_streams_every_spill_and_answers_from_the_stored_waveforms(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    spills = [make_spill(data, spill=s, n_particles=4000, n_slices=5, seed=s) for s in (1, 2)]
    # a corrupt file and a partial file among them: skipped with a message and counted
    (data / "run000001_spill00003.h5").write_bytes(b"not an HDF5 file")
    (data / partial_filename(1, 4)).write_bytes(b"half written")
    # and, first in the run, a copy with a counter that is not a number (its reader used to leave h5py's
    # lock held: the replay logged the skip and then hung)
    damaged = data / "run000001_spill00000.h5"
    shutil.copy(spills[0].path, damaged)
    with h5py.File(damaged, "a") as f:
        f["counters"].attrs["n_slices"] = "three"
    random_t: dict[tuple[int, int], np.ndarray] = {}
    for s in spills:
        rnd = s.readout_index == protocol.NO_PARTICLE
        for k in range(s.n_slices):
            random_t[(int(s.path.name[15:20]), k)] = s.readout_t[rnd & (s.readout_slice == k)]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, random_t)
    proc, out, err = replay_into(router, [str(data), "--pace", "max"], processes)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "replayed 2 spills" in text and "skipped 3 files" in text, text
    assert "run000001_spill00000.h5" in text and "'n_slices' is not an integer" in text
    assert "run000001_spill00003.h5" in text and "not an HDF5 file" in text
    assert partial_filename(1, 4) in text and "partial file" in text

    types = _types(router.messages)
    slices_1 = spills[0].n_slices
    assert types[0] == "RUN_START" and types[-1] == "RUN_STOP"
    assert types.count("SPILL_START") == 2 and types.count("SPILL_END") == 2
    assert types.count("SLICE") == 2 * slices_1
    assert types.count("FRAGMENT") == 2 * slices_1 * detector.N_GROUPS
    assert any(isinstance(m, protocol.Heartbeat) for m in router.messages)
    run_start = next(m for m in router.messages if isinstance(m, protocol.RunStart))
    np.testing.assert_array_equal(run_start.prim_channels, detector.default_primitive_channels())
    assert run_start.slice_ns == spills[0].slice_ns and run_start.n_channels == detector.N_CHANNELS
    stop = next(m for m in router.messages if isinstance(m, protocol.RunStop))
    assert stop.n_spills == 2

    for s, spill_no in zip(spills, (1, 2), strict=True):
        with SpillFile(s.path) as f:
            ev = f.events(["slice", "index", "t_ns"])
            wf = f.waveforms()
            t_start = int(f.attrs["t_start_ns"])
        end = next(m for m in router.messages if isinstance(m, protocol.SpillEnd) and m.spill == spill_no)
        start = next(m for m in router.messages if isinstance(m, protocol.SpillStart) and m.spill == spill_no)
        assert start.t_start_ns == t_start  # recorded times by default
        n_part = int((ev["index"] != protocol.NO_PARTICLE).sum())
        assert (end.n_slices, end.n_requests, end.n_fragments) == (s.n_slices, s.n_slices, 6 * s.n_slices)
        assert end.n_particles == n_part
        assert end.n_events_read == ev["index"].size  # every particle + every random window
        # SPILL_END comes after the last fragment of the spill
        pos_end = router.messages.index(end)
        last_frag = max(
            i
            for i, m in enumerate(router.messages)
            if isinstance(m, protocol.Fragment) and m.spill == spill_no
        )
        assert last_frag < pos_end
        for k in range(s.n_slices):
            frags = router.fragments[(spill_no, k)]
            assert sorted(f.source for f in frags) == list(range(detector.N_GROUPS))
            req = router.requests[(spill_no, k)]
            got = np.zeros((req.n_events, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
            for f in frags:
                got[:, detector.GROUP_IDS[f.source]] = f.waveforms
            rows = np.flatnonzero(ev["slice"] == k)
            p_rows = rows[ev["index"][rows] != protocol.NO_PARTICLE]
            p_rows = p_rows[np.argsort(ev["index"][p_rows])]
            r_rows = rows[ev["index"][rows] == protocol.NO_PARTICLE]
            r_rows = r_rows[np.argsort(ev["t_ns"][r_rows], kind="stable")]
            np.testing.assert_array_equal(got, wf[np.concatenate([p_rows, r_rows])])


def test_replay_paces_at_the_requested_speed(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    s = make_spill(tmp_path / "d", n_particles=2000, n_slices=10, slice_ns=20_000_000)  # 0.2 s of beam
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, {})
    proc, _, _ = replay_into(router, [str(s.path), "--speed", "0.5"], processes)
    assert proc.returncode == 0
    arrival = router.slice_arrival
    assert len(arrival) == 10
    # at half speed a 20 ms slice is sent every 40 ms: 9 intervals = 0.36 s
    span = arrival[-1] - arrival[0]
    assert 0.3 < span < 0.6, span


def test_nothing_replayable_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "run000001_spill00001.h5"
    bad.write_bytes(b"junk")
    res = subprocess.run(
        na64_command("replay", str(bad), "--pace", "max", "--endpoint", f"tcp://127.0.0.1:{free_port()}"),
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert b"none of the 1 files could be replayed" in res.stderr
    res = subprocess.run(na64_command("replay", str(tmp_path / "nope")), capture_output=True, timeout=60)
    assert res.returncode == 2 and b"no such file or directory" in res.stderr


def test_sigterm_ends_the_spill_and_the_run_cleanly(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    import signal
    import threading

    s = make_spill(tmp_path / "d", n_particles=3000, n_slices=50, slice_ns=20_000_000)  # 1 s of beam
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, {})
    try:
        proc = subprocess.Popen(
            na64_command("replay", str(s.path), "--speed", "1", "--endpoint", endpoint),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        processes.append(proc)

        def stop_when_streaming() -> None:
            while len(router.slice_arrival) < 5 and proc.poll() is None:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)

        threading.Thread(target=stop_when_streaming, daemon=True).start()
        router.run(proc)
        proc.communicate(timeout=30)
    finally:
        router.close()
    assert proc.returncode == 0
    types = _types(router.messages)
    assert types[-2:] == ["SPILL_END", "RUN_STOP"]
    end = next(m for m in router.messages if isinstance(m, protocol.SpillEnd))
    assert 5 <= end.n_slices < 50 and end.n_requests == end.n_slices


def test_a_daq_that_never_answers_stops_the_replay_with_an_error(tmp_path: Path) -> None:
    s = make_spill(tmp_path / "d", n_particles=2000, n_slices=10)
    ctx = zmq.Context()
    sink = ctx.socket(zmq.ROUTER)  # takes messages, never requests a readout
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    try:
        res = subprocess.run(
            na64_command(
                "replay",
                str(s.path),
                "--pace",
                "max",
                "--max-inflight",
                "2",
                "--stall-timeout",
                "1",
                "--endpoint",
                f"tcp://127.0.0.1:{port}",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        sink.close(0)
        ctx.term()
    assert res.returncode == 1
    assert "sent no readout request for 1 s (2 slices waiting)" in res.stderr


class SlowRouter(RecordingRouter):
    """A DAQ that is busy: it asks for one slice's readout every ``gap_s`` (never for ``skip`` slices)."""

    def __init__(self, endpoint: str, gap_s: float, skip: set[int]) -> None:
        super().__init__(endpoint, {})
        self.gap_s, self.skip = gap_s, skip
        self.queue: list[tuple[bytes, protocol.Slice]] = []
        self.next_t = 0.0

    def run(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.queue and now >= self.next_t:
                ident, msg = self.queue.pop(0)
                self.next_t = now + self.gap_s
                idx = np.arange(msg.n_particles, dtype=np.uint32)
                req = protocol.ReadoutRequest(
                    run=msg.run,
                    spill=msg.spill,
                    slice_id=msg.slice_id,
                    n_events=idx.size,
                    index=idx,
                    t_ns=msg.t_ns,
                )
                self.sock.send_multipart([ident, *protocol.encode(self.seq.stamp(req))])
            if not self.sock.poll(10):
                if proc.poll() is not None:
                    return
                continue
            ident, *frames = self.sock.recv_multipart()
            got = protocol.decode(frames)
            self.messages.append(got)
            if isinstance(got, protocol.Slice) and got.slice_id not in self.skip:
                self.queue.append((ident, got))
        raise AssertionError("replay did not finish in time")


@pytest.mark.parametrize("skip", [set(), {3}])
def test_spill_end_waits_for_a_busy_daq_and_times_out_on_a_silent_one(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], skip: set[int]
) -> None:
    """--request-timeout counts from the last readout request: a DAQ still working through the slices
    in flight (one request every 0.2 s, 8 slices: 1.6 s > the 0.5 s timeout) gets every answer before
    SPILL_END; a request that never comes ends the spill 0.5 s after the last one, with a warning."""
    s = make_spill(tmp_path / "d", n_particles=1000, n_slices=8)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = SlowRouter(endpoint, gap_s=0.2, skip=skip)
    proc, _, err = replay_into(router, [str(s.path), "--pace", "max", "--request-timeout", "0.5"], processes)
    assert proc.returncode == 0, err
    end = next(m for m in router.messages if isinstance(m, protocol.SpillEnd))
    assert end.n_slices == 8 and end.n_requests == 8 - len(skip)
    answered = {m.slice_id for m in router.messages if isinstance(m, protocol.Fragment)}
    assert answered == set(range(8)) - skip
    assert ("1 of 8 readout requests never came" in err.decode()) == bool(skip)


def test_messages_are_numbered_without_gaps_when_heartbeats_interleave(tmp_path: Path) -> None:
    """Fragments are numbered when built: a heartbeat due while they go out must not take a number
    before theirs (the router's SequenceTracker raises on any gap or repeat)."""
    import threading

    from simulator.replay import ReplayConfig, Replayer

    s = make_spill(tmp_path / "d", n_particles=3000, n_slices=12)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, {})
    cfg = ReplayConfig(endpoint=endpoint, speed=None, heartbeat_s=1e-6)  # a heartbeat after every message
    replayer = Replayer(cfg)
    thread = threading.Thread(target=replayer.run, args=([s.path],), daemon=True)

    class Done:
        def poll(self) -> int | None:
            return None if thread.is_alive() else 0

    try:
        thread.start()
        router.run(Done())  # type: ignore[arg-type]
    finally:
        thread.join(30)
        router.close()
    beats = sum(isinstance(m, protocol.Heartbeat) for m in router.messages)
    frags = sum(isinstance(m, protocol.Fragment) for m in router.messages)
    assert frags == 12 * detector.N_GROUPS and beats > frags // 2
    assert replayer.report.n_spills == 1 and replayer.report.spills[0].complete


@pytest.mark.parametrize("pause_s", [0.5, 3.0])
def test_a_run_ends_when_the_daq_has_taken_every_message_or_linger_s_ran_out(
    tmp_path: Path, pause_s: float
) -> None:
    """The whole spill in one slice: ~18 MB of fragments (the large ones sent zero-copy) queue up while
    the DAQ side stops reading for ``pause_s``. The replay's run returns only once they are sent (the
    arrays must outlive ZeroMQ's send; a process exiting earlier freed them under it), at most linger_s
    (1 s) later: then the rest is dropped and said so."""
    import threading

    from simulator.replay import ReplayConfig, Replayer

    spill = make_spill(tmp_path / "d", n_particles=150_000, n_slices=2, seed=4)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, {}, rcvbuf=1 << 16)
    replayer = Replayer(ReplayConfig(endpoint=endpoint, speed=None, merge_slices=2, linger_s=1.0))
    ended: list[float] = []

    def replay() -> None:
        replayer.run([spill.path])
        ended.append(time.monotonic())

    thread = threading.Thread(target=replay, daemon=True)

    class Done:
        def poll(self) -> int | None:
            return None if thread.is_alive() else 0

    t0 = time.monotonic()
    try:
        thread.start()
        router.run(Done(), pause_s=pause_s)  # type: ignore[arg-type]  (decodes: checksums checked)
    finally:
        thread.join(30)
        router.close()
    frags = router.fragments.get((1, 0), [])
    if pause_s < 1.0:  # the DAQ reads again before linger_s: everything arrives, then the run ends
        assert ended[0] - t0 > pause_s
        assert not replayer.report.unsent_at_exit
        assert _types(router.messages)[-3:] == ["FRAGMENT", "SPILL_END", "RUN_STOP"]
        assert sum(f.waveforms.nbytes for f in frags) > 16 << 20  # far more than the sockets buffer
        with SpillFile(spill.path) as f:
            ev = f.events(["slice", "index"])
            real = np.flatnonzero(ev["index"] != protocol.NO_PARTICLE)
            stored = f.waveforms()[real[np.lexsort((ev["index"][real], ev["slice"][real]))]]
        assert sorted(f.source for f in frags) == list(range(detector.N_GROUPS))
        for frag in frags:
            np.testing.assert_array_equal(frag.waveforms, stored[:, detector.GROUP_IDS[frag.source]])
    else:  # the DAQ stays silent longer: the run gives up after linger_s and says the rest was dropped
        assert 1.0 <= ended[0] - t0 < pause_s
        assert replayer.report.unsent_at_exit
        assert "not taken by the DAQ" in replayer.report.summary_line()
        assert "RUN_STOP" not in _types(router.messages)


def test_a_wait_shorter_than_a_millisecond_blocks_instead_of_spinning() -> None:
    """The paced replay waits for the next slice with ZeroMQ's poll (ms): a wait of 0.4 ms must block
    for 1 ms, not poll without blocking until the slice is due (a spinning core, ~100% of one at 1 ms
    slices)."""
    assert poll_ms(0.0) == 0  # no wait: a non-blocking poll
    assert [poll_ms(t) for t in (0.0004, 0.001, 0.0011, 0.05)] == [1, 1, 2, 50]
