"""DQM test helpers: a real mosquitto broker, an MQTT listener, a synthetic DAQ feed, the DQM process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dqm.synthetic import SynthConfig, publish
from tests.conftest import free_port, na64_command, require_program

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Broker:
    port: int
    path: Path
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.path), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free port (no persistence: a restart forgets retained messages)."""
    path = Path(require_program("mosquitto"))
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    b = Broker(port, path, conf)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Listener:
    """Collects MQTT messages (paho-mqtt, in its own thread): topic -> list of (payload JSON, retained)."""

    port: int
    topics: str = "#"
    messages: dict[str, list[tuple[Any, bool]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(self.topics, qos=1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = msg.payload.decode(errors="replace")
        with self.lock:
            self.messages.setdefault(msg.topic, []).append((payload, bool(msg.retain)))

    def latest(self, topic: str) -> Any:
        with self.lock:
            values = self.messages.get(topic)
            return values[-1][0] if values else None

    def all(self, topic: str) -> list[Any]:
        with self.lock:
            return [p for p, _ in self.messages.get(topic, [])]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        with self.lock:
            seen = {t: v[-1][0] for t, v in self.messages.items()}
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; latest messages: {seen}")

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def listen() -> Iterator[Callable[[int], Listener]]:
    made: list[Listener] = []

    def make(port: int, topics: str = "#") -> Listener:
        listener = Listener(port, topics)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@dataclass
class Feed:
    endpoint: str
    stop: threading.Event
    thread: threading.Thread


@pytest.fixture
def feed() -> Iterator[Callable[..., Feed]]:
    """Start a synthetic DAQ feed (XPUB, like the DAQ) in a thread: feed(spill_period_s=..., config=...)."""
    feeds: list[Feed] = []

    def start(
        spill_period_s: float = 1.0,
        config: SynthConfig | None = None,
        spills: int = 0,
        batches_per_s: float = 40.0,
        run: int = 1,
        endpoint: str | None = None,
    ) -> Feed:
        endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        stop = threading.Event()
        cfg = config or SynthConfig(events_per_spill=400, batch_size=20, spill_length_s=0.4 * spill_period_s)
        thread = threading.Thread(
            target=publish,
            args=(endpoint, spills, run, spill_period_s, batches_per_s, cfg),
            kwargs={"stop": stop},
            daemon=True,
        )
        thread.start()
        f = Feed(endpoint, stop, thread)
        feeds.append(f)
        return f

    yield start
    for f in feeds:
        f.stop.set()
        f.thread.join(10)


@dataclass
class DqmProcess:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self, sig: int | None = None) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        return self.proc.wait(15)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def dqm_process(tmp_path: Path) -> Iterator[Callable[..., DqmProcess]]:
    """Start ``na64 dqm ARGS`` as a real process; waits for its 'DQM at URL' line. Killed at teardown."""
    procs: list[DqmProcess] = []

    def start(*args: str, timeout: float = 30.0) -> DqmProcess:
        log = tmp_path / f"dqm{len(procs)}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log.open("w") as err:
            proc = subprocess.Popen(
                na64_command("dqm", *args), stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env
            )
        p = DqmProcess(proc, "", log)
        procs.append(p)
        line = _read_line(proc, timeout)
        if not line.startswith("DQM at http://"):
            proc.kill()
            raise AssertionError(f"unexpected first line {line!r}; log:\n{log.read_text()[-3000:]}")
        p.url = line.split(" ", 2)[2].strip()
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)
        if p.proc.stdout is not None:
            p.proc.stdout.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(
        target=lambda: out.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    t.start()
    t.join(timeout)
    if not out:
        proc.kill()
        raise AssertionError(f"no output line from {proc.args} within {timeout} s")
    return out[0]


def python() -> str:
    return sys.executable
