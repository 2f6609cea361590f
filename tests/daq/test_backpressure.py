"""The DAQ under back-pressure from its writer (storage slower than the beam): the receiver stops reading
and sleeps until the writer has room (no busy spin that would steal the CPU the writer needs), and
every event still reaches the file afterwards.

The DAQ service runs in a thread of this process (real sockets, a real writer thread), so that the test
can hold its writer thread at a known point.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path

import numpy as np

from daq.daq_config import DaqConfig
from daq.files import SpillFile, list_spill_files
from daq.service import DaqService
from daq.writer import WriterConfig
from tests.conftest import free_port
from tests.daq.frontend import FakeFrontEnd


def thread_cpu_seconds(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def wait_until(pred, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_writer_queue_stops_the_receiver_without_spinning_and_loses_nothing(tmp_path: Path) -> None:
    cfg = DaqConfig(writer=WriterConfig(fsync=False, queue_size=1))
    svc = DaqService(
        cfg,
        endpoint=f"tcp://127.0.0.1:{free_port()}",
        publish=f"tcp://127.0.0.1:{free_port()}",
        data_dir=tmp_path,
        stop_after_run=True,
    )
    result: list[int] = []
    daq = threading.Thread(target=lambda: result.append(asyncio.run(svc.run())), name="daq-service")
    daq.start()
    fe = FakeFrontEnd(svc.endpoint, run=3, seed=1)
    release = threading.Event()
    other: FakeFrontEnd | None = None
    try:
        wait_until(lambda: svc.writer is not None and svc.bound_endpoint != "")
        assert svc.writer is not None
        held: concurrent.futures.Future[bool] = concurrent.futures.Future()
        assert svc.writer.try_put(("call", lambda: release.wait(60), held))  # the writer thread is busy
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 1500) for i in range(4)]
        fe.send_slice(slices[0])
        fe.serve(1)
        # the spill's "open" fills the queue of 1; the first events wait for room ...
        wait_until(lambda: svc.spill is not None and svc.spill.n_events_built > 0)
        for s in slices[1:]:  # ... while more messages wait on the socket
            fe.send_slice(s)
        other = FakeFrontEnd(svc.endpoint, run=3, seed=2)  # and another front-end connects
        other.heartbeat()
        time.sleep(0.2)
        assert not held.done() and svc.writer.queue_depth == 1
        cpu0, t0 = thread_cpu_seconds(daq), time.monotonic()
        time.sleep(1.0)
        cpu = thread_cpu_seconds(daq) - cpu0
        wall = time.monotonic() - t0
        # waiting: the receiver's thread is idle (a spin on the readable socket used a whole core)
        assert cpu < 0.2 * wall, f"the DAQ thread used {cpu:.2f} CPU s in {wall:.2f} s while waiting"
        release.set()
        assert held.result(10)
        fe.serve(3)
        fe.spill_end()
        fe.run_stop(1)
        daq.join(60)
        assert not daq.is_alive() and result == [0]
    finally:
        release.set()
        fe.close()
        if other is not None:
            other.close()
        if daq.is_alive():
            svc.request_stop()
            daq.join(30)
    [path] = list_spill_files(tmp_path)
    with SpillFile(path) as f:
        assert f.status == "ok"
        ev = f.events()
        answered = [fe.answered[(1, s.slice_id)] for s in slices]
        assert f.n_events == sum(a[0].size for a in answered) > 0
        slice_of_event = np.concatenate([np.full(a[0].size, i) for i, a in enumerate(answered)])
        np.testing.assert_array_equal(ev["slice"], slice_of_event)
        np.testing.assert_array_equal(ev["index"], np.concatenate([a[0] for a in answered]))
        losses = f.losses
    assert all(v == 0 for k, v in losses.items() if k not in ("dead_time", "monitor_skipped")), losses
