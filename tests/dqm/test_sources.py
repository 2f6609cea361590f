"""Where messages come from: the live feed over a real ZeroMQ socket, and spill files (same messages)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from daq import protocol
from dqm.errors import DqmUserError
from dqm.monitor import Monitor
from dqm.sources import LiveSource, check_endpoint, file_messages
from dqm.synthetic import SynthConfig, SyntheticDaq
from tests.conftest import free_port
from tests.dqm.runs import record_run


def test_live_source_decodes_counts_garbage_and_survives() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    got: list[protocol.Message] = []
    errors: list[str] = []
    lock = threading.Lock()

    def handle(msg: protocol.Message) -> None:
        with lock:
            got.append(msg)

    src = LiveSource(endpoint, handle, on_error=errors.append)
    src.start()
    try:
        pub.recv()  # the subscription: the DQM is connected
        daq = SyntheticDaq(SynthConfig(events_per_spill=100, batch_size=25))
        msgs = list(daq.spill_messages(1, 1))
        frames = protocol.encode(msgs[0])
        pub.send_multipart([b"garbage"])  # too short
        bad_crc = bytearray(frames[0])
        bad_crc[50] ^= 0xFF
        pub.send_multipart([bytes(bad_crc), *frames[1:]])  # checksum
        pub.send_multipart(frames[:-1])  # a frame missing
        for m in msgs:
            pub.send_multipart(protocol.encode(m), copy=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < len(msgs):
            time.sleep(0.02)
    finally:
        src.stop()
        pub.close(0)
    assert len(got) == len(msgs)
    assert isinstance(got[-1], protocol.Summary)
    assert sum(src.errors.values()) == 3 and len(errors) == 3
    assert set(src.errors) == {"LengthError", "ChecksumError", "FrameCountError"}
    assert not src.alive


@pytest.mark.parametrize(
    "bad", ["localhost:5556", "tcp://127.0.0.1", "tcp://:5556", "tcp://h:99999", "http://x:1"]
)
def test_bad_endpoints_are_user_errors(bad: str) -> None:
    with pytest.raises(DqmUserError, match="endpoint"):
        check_endpoint(bad)


@pytest.mark.integration
def test_file_messages_reproduce_the_recorded_spills(tmp_path: Path) -> None:
    """Offline input is the same messages: every event of every file, and each file's summary."""
    from daq.files import SpillFile

    files = record_run(tmp_path / "data", spills=2)
    msgs = list(file_messages([tmp_path / "data"]))
    events = [m for m in msgs if isinstance(m, protocol.Events)]
    summaries = [m for m in msgs if isinstance(m, protocol.Summary)]
    assert [s.kind for s in summaries] == [protocol.Summary.KIND_SPILL] * 2
    for path, msg in zip(files, summaries, strict=True):
        with SpillFile(path) as f:
            ids = np.concatenate([m.event_id for m in events if m.spill == f.spill])
            assert np.array_equal(ids, f.events(["event_id"])["event_id"])
            mine = np.concatenate([m.energy for m in events if m.spill == f.spill])
            assert np.array_equal(mine, f.energy())
            assert msg.spill == f.spill and f'"n_beam": {f.counters["n_beam"]}' in msg.text
    # each batch is re-encodable on the wire (a valid EVENTS message), with its last event's waveforms
    for m in events[:3]:
        again = protocol.decode(protocol.encode(m))
        assert isinstance(again, protocol.Events) and again.waveforms.shape == (1, 110, 32)
    mon = Monitor(live=False)
    for m in msgs:
        mon.handle(m, 0.0)
    assert mon.counters.spills_closed == 2 and mon.eot_run > 0
