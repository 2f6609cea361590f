"""The DQM service's periodic tasks survive an unexpected error: one failing snapshot or tick is logged
and counted, and the page and the checks go on (a task that died left a frozen page in a process that
looked healthy)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from daq.demo import free_port
from dqm import server
from dqm.config import DqmConfig


def test_one_failing_snapshot_or_tick_does_not_stop_the_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server, "tune_gc", lambda: None)  # process-wide: would outlive the test
    build, failed = server.snapshot.build, {"build": 0, "tick": 0}

    def build_once_failing(*args: Any, **kw: Any) -> Any:
        if not failed["build"]:
            failed["build"] += 1
            raise ValueError("a value the snapshot cannot encode")
        return build(*args, **kw)

    async def scenario() -> tuple[int, int, int, dict[str, int]]:
        svc = server.DqmService(DqmConfig(update_ms=50), source=f"tcp://127.0.0.1:{free_port()}", port=0)
        tick = svc.monitor.tick

        def tick_once_failing(now: float) -> Any:
            if not failed["tick"]:
                failed["tick"] += 1
                raise RuntimeError("a check that cannot be evaluated")
            return tick(now)

        monkeypatch.setattr(svc.monitor, "tick", tick_once_failing)
        run = asyncio.create_task(svc.run())
        await asyncio.sleep(0.5)  # started, first snapshot built
        monkeypatch.setattr(server.snapshot, "build", build_once_failing)
        n0 = svc.snapshots
        for _ in range(10):
            with svc.lock:
                svc.monitor.version += 1  # new data: a snapshot is due
            await asyncio.sleep(0.1)
        n_snapshots = svc.snapshots - n0
        ticks = {"n": 0}

        def counting_tick(now: float) -> Any:
            ticks["n"] += 1
            return tick(now)

        monkeypatch.setattr(svc.monitor, "tick", counting_tick)
        t0 = time.monotonic()
        while ticks["n"] == 0 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        svc.request_stop()
        await asyncio.wait_for(run, 30)
        return n_snapshots, failed["build"], ticks["n"], dict(svc.loop_errors)

    with caplog.at_level(logging.ERROR, logger="dqm.server"):
        n_snapshots, builds_failed, ticks_after, errors = asyncio.run(scenario())
    assert builds_failed == 1 and failed["tick"] == 1
    assert n_snapshots >= 5  # the snapshot task went on after its failure
    assert ticks_after >= 1  # the tick task too
    assert errors == {"snapshot": 1, "tick": 1}
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert {r.getMessage().split()[1] for r in logged} == {"snapshot", "tick"}
    assert all(r.exc_info for r in logged)
