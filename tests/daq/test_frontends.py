"""A DAQ running for weeks forgets front-ends gone silent (every simulate/replay run and reconnect is a
new ZeroMQ identity): its status lists the live ones, and a returning one starts afresh."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from daq import recorder
from daq.daq_config import DaqConfig
from daq.writer import WriterConfig
from tests.daq.conftest import InProcessDaq, wait_until
from tests.daq.frontend import FakeFrontEnd, Listener


def test_silent_frontends_are_forgotten_live_ones_kept(
    in_process_daq: Callable[..., InProcessDaq], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "FORGET_FRONTEND_S", 1.0)
    daq = in_process_daq(DaqConfig(writer=WriterConfig(fsync=False)), stop_after_run=False)
    svc = daq.svc
    gone = [FakeFrontEnd(svc.endpoint, seed=i) for i in range(5)]
    live = FakeFrontEnd(svc.endpoint, seed=9)
    lis = Listener(svc.bound_publish)
    try:
        for fe in (*gone, live):
            fe.heartbeat()
        wait_until(lambda: len(svc.recorder.frontends) == 6)
        deadline = time.monotonic() + 20
        while len(svc.recorder.frontends) > 1:  # the live one keeps beating, the others are silent
            assert time.monotonic() < deadline, "silent front-ends not forgotten"
            live.heartbeat()
            time.sleep(0.2)
        (kept,) = svc.recorder.frontends.values()
        assert (
            time.monotonic() - kept.last_seen < 1.0 and len(svc.recorder.tracker._next) == 1
        )  # the live one
        lis.wait_status(lambda st: len(st["frontends"]) == 1)
        gone[0].heartbeat()  # a forgotten one comes back: a new entry, no sequence error
        wait_until(lambda: len(svc.recorder.frontends) == 2)
        assert svc.recorder.losses_outside.as_dict().get("sequence_gap", 0) == 0
    finally:
        lis.close()
        for fe in (*gone, live):
            fe.close()


def test_the_status_names_the_current_runs_frontends(in_process_daq: Callable[..., InProcessDaq]) -> None:
    """Only the front-end that started the run is expected to speak: an older identity (a previous
    simulate) is listed in ``frontends`` but not in ``run_frontends``; between runs there is none."""
    daq = in_process_daq(DaqConfig(writer=WriterConfig(fsync=False)), stop_after_run=False)
    svc = daq.svc
    old, new = FakeFrontEnd(svc.endpoint, run=1, seed=1), FakeFrontEnd(svc.endpoint, run=2, seed=2)
    lis = Listener(svc.bound_publish)
    try:
        old.heartbeat()
        st = lis.wait_status(lambda st: len(st["frontends"]) == 1)
        assert st["run_frontends"] == []
        new.run_start()
        st = lis.wait_status(lambda st: st["state"] == "running" and len(st["frontends"]) == 2)
        (new_id,) = st["run_frontends"]
        assert new_id in st["frontends"] and set(st["frontends"]) - {new_id}  # the old one is still listed
        new.run_stop()
        st = lis.wait_status(lambda st: st["state"] == "idle")
        assert st["run_frontends"] == []
    finally:
        lis.close()
        for fe in (old, new):
            fe.close()
