"""The DAQ under back-pressure from its writer (storage slower than the beam): the receiver stops reading
and sleeps until the writer has room (no busy spin that would steal the CPU the writer needs), goes on
when the writer catches up even if housekeeping waited for room too, and a stop while a spill's close
waits for room still closes the file. Every event reaches the file.

The DAQ service runs in a thread of this process (real sockets, a real writer thread), so that a test can
hold the writer thread at a known point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daq.daq_config import DaqConfig, ReadoutConfig
from daq.files import SpillFile, list_spill_files
from daq.writer import WriterConfig
from daq.writer_commands import RunInWriter
from tests.daq.conftest import InProcessDaq, wait_until
from tests.daq.frontend import FakeFrontEnd


def thread_cpu_seconds(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def data_losses(f: SpillFile) -> dict[str, int]:
    return {k: v for k, v in f.losses.items() if v and k not in ("dead_time", "monitor_skipped")}


def test_a_full_writer_queue_stops_the_receiver_without_spinning_and_loses_nothing(
    in_process_daq: Callable[..., InProcessDaq], tmp_path: Path
) -> None:
    daq = in_process_daq(DaqConfig(writer=WriterConfig(fsync=False, queue_size=1)))
    svc = daq.svc
    assert svc.writer is not None
    fe = FakeFrontEnd(svc.endpoint, run=3, seed=1)
    other: FakeFrontEnd | None = None
    try:
        held = daq.hold_writer()
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 1500) for i in range(4)]
        fe.send_slice(slices[0])
        fe.serve(1)
        # the spill's "open" fills the queue of 1; the first events wait for room ...
        wait_until(lambda: svc.recorder.spill is not None and svc.recorder.spill.n_events_built > 0)
        for s in slices[1:]:  # ... while more messages wait on the socket
            fe.send_slice(s)
        other = FakeFrontEnd(svc.endpoint, run=3, seed=2)  # and another front-end connects
        other.heartbeat()
        time.sleep(0.2)
        assert not held.done() and svc.writer.queue_depth == 1
        cpu0, t0 = thread_cpu_seconds(daq.thread), time.monotonic()
        time.sleep(1.0)
        cpu = thread_cpu_seconds(daq.thread) - cpu0
        wall = time.monotonic() - t0
        # waiting: the receiver's thread is idle (a spin on the readable socket used a whole core)
        assert cpu < 0.2 * wall, f"the DAQ thread used {cpu:.2f} CPU s in {wall:.2f} s while waiting"
        daq.let_writer_go(held)
        fe.serve(3)
        fe.spill_end()
        fe.run_stop(1)
        daq.join()
    finally:
        fe.close()
        if other is not None:
            other.close()
    [path] = list_spill_files(tmp_path)
    with SpillFile(path) as f:
        assert f.status == "ok"
        ev = f.events()
        answered = [fe.answered[(1, s.slice_id)] for s in slices]
        assert f.n_events == sum(a[0].size for a in answered) > 0
        slice_of_event = np.concatenate([np.full(a[0].size, i) for i, a in enumerate(answered)])
        np.testing.assert_array_equal(ev["slice"], slice_of_event)
        np.testing.assert_array_equal(ev["index"], np.concatenate([a[0] for a in answered]))
        assert data_losses(f) == {}


def test_the_receiver_goes_on_when_housekeeping_also_waited_for_the_writer(
    in_process_daq: Callable[..., InProcessDaq], tmp_path: Path
) -> None:
    """Both the receiver (a completed slice) and housekeeping (an expired one) wait for room: when the
    writer catches up, both go on (the writer used to wake only the last one: the DAQ never read its
    socket again)."""
    config = DaqConfig(
        writer=WriterConfig(fsync=False, queue_size=1), readout=ReadoutConfig(fragment_timeout_s=0.3)
    )
    daq = in_process_daq(config)
    svc = daq.svc
    fe = FakeFrontEnd(svc.endpoint, run=3, seed=1)
    try:
        held = daq.hold_writer()
        fe.run_start()
        fe.spill_start(1)
        s0, s1 = fe.make_slice(0, 1500), fe.make_slice(1, 1500)
        fe.send_slice(s0)
        fe.send_slice(s1)
        r0, r1 = fe.recv_request(), fe.recv_request()
        fe.answer(r1, lambda req, g: "drop" if g == 0 else "ok")  # slice 1 stays incomplete ...
        fe.answer(r0)  # ... slice 0 completes: its events wait for room
        r = svc.recorder.run
        assert r is not None
        wait_until(lambda: not r.readout.pending)  # housekeeping expired slice 1 ...
        time.sleep(0.2)  # ... and waits for room too
        daq.let_writer_go(held)
        fe.send_slice(fe.make_slice(2, 500))
        fe.serve(1, timeout_s=10)  # the receiver reads again
        fe.spill_end()
        fe.run_stop(1)
        daq.join(code=1)  # slice 1's dropped fragment: data lost, exit 1
    finally:
        fe.close()
    [path] = list_spill_files(tmp_path)
    with SpillFile(path) as f:
        ev = f.events()
        assert sorted(set(ev["slice"].tolist())) == [0, 1, 2]  # slice 1: built with a group missing
        assert f.n_events == sum(fe.answered[(1, i)][0].size for i in range(3))
        assert f.losses["fragment_timeout"] == 1 and f.status == "incomplete"


def test_a_stop_while_the_spill_close_waits_for_the_writer_still_writes_the_file(
    in_process_daq: Callable[..., InProcessDaq], tmp_path: Path
) -> None:
    """SPILL_END arrives while the writer is stalled and its queue full, then the operator stops the DAQ:
    the spill, already ended, is closed and kept (its close used to be dropped and the file deleted)."""
    daq = in_process_daq(DaqConfig(writer=WriterConfig(fsync=False, queue_size=1)), stop_after_run=False)
    svc = daq.svc
    assert svc.writer is not None
    fe = FakeFrontEnd(svc.endpoint, run=3, seed=1)
    try:
        fe.run_start()
        fe.spill_start(1)
        for i in range(3):
            fe.send_slice(fe.make_slice(i, 1500))
            fe.serve(1)
        n_events = sum(fe.answered[(1, i)][0].size for i in range(3))
        sp = svc.recorder.spill
        assert sp is not None
        wait_until(lambda: sp.n_events_built == n_events and svc.writer.queue_depth == 0)  # all queued, taken
        held = daq.hold_writer()
        wait_until(lambda: svc.writer.queue_depth == 0)  # the writer took the hold ...
        assert svc.writer.try_put(RunInWriter(lambda: None))  # ... its queue is full
        fe.spill_end()
        wait_until(
            lambda: svc.recorder.spill is None and svc.writer.producer_waiting
        )  # its close waits for room
        daq.stop()
        wait_until(lambda: svc.writer.queue_depth == 2)  # the close was queued anyway
        daq.let_writer_go(held)
        daq.join()
    finally:
        fe.close()
    [path] = list_spill_files(tmp_path)
    with SpillFile(path) as f:
        assert f.status == "ok"
        assert f.n_events == n_events
        assert data_losses(f) == {}
    assert not list(tmp_path.glob(".*partial"))


def test_a_stop_keeps_the_order_of_the_commands_waiting_for_the_writer(
    in_process_daq: Callable[..., InProcessDaq], tmp_path: Path
) -> None:
    """Housekeeping waits for room with the events of an expired readout, the receiver waits behind it
    with the spill's close, then the DAQ is stopped: both are queued, in that order (the close went first
    and the writer dropped the events: "no spill open")."""
    config = DaqConfig(
        writer=WriterConfig(fsync=False, queue_size=1), readout=ReadoutConfig(fragment_timeout_s=0.3)
    )
    daq = in_process_daq(config, stop_after_run=False)
    svc = daq.svc
    assert svc.writer is not None
    fe = FakeFrontEnd(svc.endpoint, run=3, seed=1)
    try:
        held = daq.hold_writer()
        fe.run_start()
        fe.spill_start(1)  # its "open" fills the queue
        fe.send_slice(fe.make_slice(0, 1500))
        fe.answer(fe.recv_request(), lambda req, g: "drop" if g == 0 else "ok")  # incomplete
        r = svc.recorder.run
        assert r is not None
        wait_until(lambda: not r.readout.pending and svc.writer.producer_waiting)  # housekeeping waits
        fe.spill_end()
        wait_until(lambda: svc.recorder.spill is None)  # the receiver's close waits behind it
        daq.stop()
        wait_until(lambda: svc.writer.queue_depth == 3)  # open, the events, the close
        daq.let_writer_go(held)
        daq.join(code=1)  # a group's fragment was dropped: data lost, exit 1
    finally:
        fe.close()
    [path] = list_spill_files(tmp_path)
    with SpillFile(path) as f:
        assert f.n_events == fe.answered[(1, 0)][0].size > 0
        assert f.losses["fragment_timeout"] == 1 and f.status == "incomplete"
