"""Fixtures of the DAQ tests: a real ``na64 daq`` process on free loopback ports; a DAQ service in a thread
of the test process (real sockets and writer thread) for tests that hold its writer at a known point."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daq import service
from daq.daq_config import DaqConfig
from daq.service import DaqService
from daq.writer_commands import RunInWriter
from tests.conftest import free_port, na64_command
from tests.daq.frontend import Listener


@dataclass
class DaqProcess:
    proc: subprocess.Popen[str]
    endpoint: str
    publish: str
    data_dir: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(f"na64 daq did not stop after {sig!r}:\n{self.output()[-6000:]}") from None

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_daq(
    tmp: Path,
    *extra: str,
    data_dir: Path | None = None,
    preexec: Callable[[], None] | None = None,
    listener_keys: Any = None,
    endpoint_host: str = "127.0.0.1",
) -> DaqProcess:
    """Start ``na64 daq`` and wait until it listens (its status appears on the publish socket; with
    ``listener_keys``, daq.curve.ClientKeys, when it runs with CURVE)."""
    endpoint = f"tcp://{endpoint_host}:{free_port()}"
    publish = f"tcp://127.0.0.1:{free_port()}"
    data = data_dir or tmp / "data"
    log = tmp / f"daq-{time.monotonic_ns()}.log"
    cmd = na64_command("daq", "--endpoint", endpoint, "--publish", publish, "--data-dir", str(data), *extra)
    cmd[1:1] = ["-X", "faulthandler"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    d = DaqProcess(proc, endpoint, publish, data, log)
    lis = Listener(publish, keys=listener_keys)
    try:
        deadline = time.monotonic() + 30
        while not lis.status:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"na64 daq did not start (rc {proc.poll()}):\n{d.output()}")
            lis.pump(0.2)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        lis.close()
    return d


@pytest.fixture
def daq_factory(tmp_path: Path) -> Iterator[object]:
    """``daq_factory(*flags)`` starts a DAQ process; all are killed at teardown."""
    started: list[DaqProcess] = []

    def factory(*extra: str, **kw: object) -> DaqProcess:
        d = start_daq(tmp_path, *extra, **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield factory
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@dataclass
class InProcessDaq:
    svc: DaqService
    thread: threading.Thread
    result: list[int]
    release: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def hold_writer(self) -> concurrent.futures.Future[bool]:
        """Keep the writer thread busy until :attr:`release` is set (a disk that hangs)."""
        assert self.svc.writer is not None
        held: concurrent.futures.Future[bool] = concurrent.futures.Future()
        assert self.svc.writer.try_put(RunInWriter(lambda: self.release.wait(60)), done=held)
        return held

    def let_writer_go(self, held: concurrent.futures.Future[bool]) -> None:
        self.release.set()
        assert held.result(10)

    def join(self, code: int = 0) -> None:
        """Wait for the service to end; it must end with exit code ``code`` (1: it lost data)."""
        self.thread.join(60)
        assert not self.thread.is_alive() and self.result == [code]

    def stop(self) -> None:
        """Ask the service to stop, from the test's thread (as SIGTERM would)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.svc.request_stop)


@pytest.fixture
def in_process_daq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., InProcessDaq]]:
    """``in_process_daq(config)`` runs a DaqService in a thread of this process."""
    # the process-wide allocator and GC tuning of the service would outlive the test in pytest's process
    monkeypatch.setattr(service, "tune_gc", lambda: None)
    monkeypatch.setattr(service, "tune_malloc", lambda: None)
    started: list[InProcessDaq] = []

    def start(config: DaqConfig, stop_after_run: bool = True) -> InProcessDaq:
        svc = DaqService(
            config,
            endpoint=f"tcp://127.0.0.1:{free_port()}",
            publish=f"tcp://127.0.0.1:{free_port()}",
            data_dir=tmp_path,
            stop_after_run=stop_after_run,
        )
        d = InProcessDaq(svc, threading.Thread(name="daq-service"), [])

        async def serve() -> int:
            d.loop = asyncio.get_running_loop()
            return await svc.run()

        d.thread = threading.Thread(target=lambda: d.result.append(asyncio.run(serve())), name="daq-service")
        d.thread.start()
        started.append(d)
        wait_until(lambda: svc.writer is not None and svc.bound_endpoint != "" and d.loop is not None)
        return d

    yield start
    for d in started:
        d.release.set()
        if d.thread.is_alive():
            d.stop()
            d.thread.join(30)
