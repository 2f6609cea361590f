"""The DQM service: wires a source, the monitor, snapshots, the Bokeh server and MQTT together.

Threads and tasks:

- the ingest thread (:class:`~dqm.sources.LiveSource` or :class:`~dqm.sources.FileSource`) decodes
  messages and fills the monitor under ``self.lock``; it never touches Bokeh or MQTT;
- on the asyncio/tornado loop: a snapshot task (every ``update_ms``, copies what browsers show under
  the lock, then tells the sessions), a tick task (live checks every second), the MQTT task, and the
  Bokeh server. Notices (alarm changes, closed spills) travel from the ingest thread to the loop with
  ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server
from tornado.ioloop import IOLoop

from daq import __version__, protocol
from daq.errors import ConfigError
from daq.process import tune_gc
from dqm import snapshot
from dqm.app import SnapshotHub
from dqm.baseline import Baseline
from dqm.config import DqmConfig
from dqm.monitor import AlarmChanged, Monitor, Notice, SpillClosed
from dqm.mqtt import BrokerAddress, MqttPublisher
from dqm.sources import FileSource, LiveSource

if TYPE_CHECKING:
    from dqm.book import Book
    from dqm.offline import ParallelFileSource

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def websocket_origins(host: str, port: int, extra: Sequence[str]) -> list[str]:
    """Origins allowed to open the websocket: the bound address, localhost, plus explicit ones."""
    base = {f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"}
    if host in ("0.0.0.0", "::"):
        base = {f"localhost:{port}", f"127.0.0.1:{port}"}
    return sorted(base | set(extra))


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DqmService:
    """One DQM process. ``await run()`` serves until :meth:`request_stop` (or SIGINT/SIGTERM)."""

    def __init__(
        self,
        config: DqmConfig,
        *,
        source: str | None = None,
        files: Sequence[str | Path] = (),
        host: str = "127.0.0.1",
        port: int = 5006,
        allow_origins: Sequence[str] = (),
        mqtt_url: str | BrokerAddress | None = None,
        reference: Baseline | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        on_serving: Callable[[], None] | None = None,
        client_keys: Any = None,
        login: Any = None,
    ) -> None:
        self.config = config
        #: the page's login (dqm.login.LoginFile), or None: no login
        self.login = login
        #: called once the page is served (the operations endpoint's health, systemd's READY=1)
        self.on_serving = on_serving
        self.mode = "live" if source else "offline"
        self.source_name = source or f"{len(files)} path(s)"
        self.host = host
        self.port = port or free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
        self.allow_origins = list(allow_origins)
        self.lock = threading.Lock()
        self.monitor = Monitor(config, reference=reference, live=self.mode == "live")
        self.hub = SnapshotHub(snapshot.Axes.of(self.monitor.spec), self.monitor.check_names())
        self.mqtt = (
            MqttPublisher(
                mqtt_url if isinstance(mqtt_url, BrokerAddress) else BrokerAddress.parse(mqtt_url),
                config.mqtt,
                on_ack=self._ack_from_mqtt,
                on_shelve=self._shelve_from_mqtt,
            )
            if mqtt_url
            else None
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        #: unexpected errors of the periodic tasks, by task (see _loop_failed)
        self.loop_errors: dict[str, int] = {}
        self._loop_error_logged: dict[str, float] = {}
        self._live: LiveSource | None = None
        self._files: FileSource | ParallelFileSource | None = None
        if source:
            self._live = LiveSource(
                source, self._handle, on_error=self._decode_error, client_keys=client_keys
            )
        elif scheduler is not None or (workers is not None and workers > 0):
            from dqm.offline import ParallelFileSource  # dask only when asked for

            # files filled on dask workers, handed to the monitor in file order
            self._files = ParallelFileSource(
                files, self._handle, self._add_filled, config, workers=workers, scheduler=scheduler
            )
        else:
            self._files = FileSource(files, self._handle, config.beam_energy_gev)
        self.url = f"http://{host}:{self.port}/"
        self.started_at = time.time()
        self.snapshots = 0

    # ------------------------------------------------------------ ingest thread side
    def _handle(self, msg: protocol.Message) -> None:
        with self.lock:
            notices = self.monitor.handle(msg, time.time())
        if notices and self.loop is not None:
            self.loop.call_soon_threadsafe(self._publish_notices, notices)

    def _add_filled(self, run: int, spill: int, book: Book, n_batches: int) -> None:
        with self.lock:
            self.monitor.add_filled(run, spill, book, n_batches)

    def _decode_error(self, kind: str) -> None:
        with self.lock:
            self.monitor.counters.decode_error(kind)

    # ------------------------------------------------------------ controller (session callbacks)
    def reset(self) -> None:
        with self.lock:
            self.monitor.reset()
        log.info("histograms reset from a browser")

    def acknowledge(self, name: str, by: str) -> None:
        with self.lock:
            notices = self.monitor.acknowledge(name, time.time(), by)
        if notices:
            log.info(
                "alarm(s) acknowledged by %s: %s",
                by,
                ", ".join(n.alarm.name for n in notices if isinstance(n, AlarmChanged)),
            )
        self._publish_notices(notices)

    def shelve(self, name: str, reason: str, minutes: float, by: str) -> None:
        """Shelve ``name`` for ``minutes`` with ``reason`` (minutes <= 0: unshelve)."""
        with self.lock:
            if minutes > 0:
                notices = self.monitor.shelve(name, time.time(), minutes, reason, by)
            else:
                notices = self.monitor.unshelve(name, time.time(), by)
        if notices:
            what = f"shelved for {minutes:g} min ({reason})" if minutes > 0 else "unshelved"
            log.info("alarm %s %s by %s", name, what, by)
        self._publish_notices(notices)

    def _ack_from_mqtt(self, name: str, by: str) -> None:
        self.acknowledge(name, by)

    def _shelve_from_mqtt(self, name: str, reason: str, minutes: float, by: str) -> None:
        self.shelve(name, reason, minutes, by)

    # ------------------------------------------------------------ loop side
    def _publish_notices(self, notices: list[Notice]) -> None:
        if self.mqtt is None:
            return
        with self.lock:
            results = [r.to_json() for r in self.monitor.results()]
            run, spill = self.monitor.run, self.monitor.current_spill
            book = self.monitor.alarms
            open_alarms, unacked, worst = len(book.open_alarms()), book.unacknowledged(), book.worst_open()
        for n in notices:
            if isinstance(n, AlarmChanged):
                self.mqtt.retain(self.mqtt.topic("alarms", n.alarm.name), n.payload())
            elif isinstance(n, SpillClosed):
                self.mqtt.queue(self.mqtt.topic("spill"), spill_payload(n))
        self.mqtt.retain(
            self.mqtt.topic("checks"),
            {"run": run, "spill": spill, "updated_at": time.time(), "checks": results},
        )
        self.mqtt.set_status(
            run=run, spill=spill, open_alarms=open_alarms, unacknowledged=unacked, worst=worst.name
        )

    async def _snapshot_loop(self) -> None:
        """A snapshot whenever the monitor changed, and at least every second (the ages shown in the
        header, e.g. of the DAQ's last status, grow while nothing arrives)."""
        period = self.config.update_ms / 1000
        last_version, last_time = -1, -math.inf
        while True:
            try:
                with self.lock:
                    version = self.monitor.version
                    due = version != last_version or time.monotonic() - last_time >= 1.0
                    snap = (
                        snapshot.build(self.monitor, mode=self.mode, source=self.source_name) if due else None
                    )
                if snap is not None:
                    last_version, last_time = version, time.monotonic()
                    self.snapshots += 1
                    self.hub.publish(snap)
            except Exception:
                self._loop_failed("snapshot")
            await asyncio.sleep(period)

    async def _tick_loop(self) -> None:
        while True:
            try:
                with self.lock:
                    notices = self.monitor.tick(time.time())
                if notices:
                    self._publish_notices(notices)
            except Exception:
                self._loop_failed("tick")
            await asyncio.sleep(1.0)

    def _loop_failed(self, name: str) -> None:
        """An unexpected error in a periodic task (the page's snapshots, the checks' clock): counted and
        logged with its traceback (the first time, then at most once a minute), and the task goes on: a
        task that died would leave a frozen page or silent checks in a process that looks healthy."""
        n = self.loop_errors[name] = self.loop_errors.get(name, 0) + 1
        now = time.monotonic()
        if n == 1 or now - self._loop_error_logged.get(name, -math.inf) >= 60:
            self._loop_error_logged[name] = now
            log.exception("DQM %s task: unexpected error (%d so far); it goes on", name, n)

    def request_stop(self) -> None:
        self._stop.set()

    def _bokeh_server(self, app: Application, origins: list[str]) -> Server:
        auth: dict[str, Any] = {}
        if self.login is not None:
            from dqm.login import PageLogin

            provider = PageLogin(self.login)
            auth = {"auth_provider": provider, "cookie_secret": provider.cookie_secret, "xsrf_cookies": True}
        elif not _loopback(self.host):
            log.warning(
                "the page on %s:%d is reachable from other machines without a login: anyone there can see "
                "it and acknowledge alarms (--login-file FILE asks for one; docs/dqm.md)",
                self.host,
                self.port,
            )
        return Server(
            {"/": app},
            io_loop=IOLoop.current(),
            address=self.host,
            port=self.port,
            # the websocket's Origin is checked against this explicit list (never "*")
            allow_websocket_origin=origins,
            unused_session_lifetime_milliseconds=5000,
            check_unused_sessions_milliseconds=2000,
            keep_alive_milliseconds=10000,
            **auth,
        )

    async def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(sig, self.request_stop)
        origins = websocket_origins(self.host, self.port, self.allow_origins)
        app = Application(FunctionHandler(self.hub.make_app(self, self.config)))
        try:
            server = self._bokeh_server(app, origins)
        except OSError as e:  # the port is taken, the address is not this machine's
            raise ConfigError(f"cannot serve the DQM on {self.host}:{self.port}: {e.strerror or e}") from None
        server.start()
        tune_gc()
        tasks: list[asyncio.Task[Any]] = []
        mqtt_task: asyncio.Task[None] | None = None
        try:
            if self.mqtt is not None:
                self.mqtt.set_status(
                    state="online",
                    url=self.url,
                    mode=self.mode,
                    source=self.source_name,
                    pid=os.getpid(),
                    version=__version__,
                    started_at=self.started_at,
                    client_id=self.mqtt.client_id,
                )
                # every alarm's state from the start: the retained topics are this DQM's, not an earlier one's
                with self.lock:
                    notices = self.monitor.alarm_notices()
                self._publish_notices(notices)
                mqtt_task = asyncio.create_task(self.mqtt.run(), name="mqtt")
            if self._live is not None:
                self._live.start()
            if self._files is not None:
                self._files.start()
            tasks.append(asyncio.create_task(self._snapshot_loop(), name="snapshots"))
            tasks.append(asyncio.create_task(self._tick_loop(), name="ticks"))
            print(f"DQM at {self.url}", flush=True)  # the one line with the URL (the demo reads it)
            log.info(
                "serving the page (%s: %s; websocket origins %s; MQTT %s)",
                self.mode,
                self.source_name,
                ", ".join(origins),
                self.mqtt.address if self.mqtt else "off",
            )
            if self.on_serving is not None:
                self.on_serving()
            await self._stop.wait()
            log.info("stopping")
        finally:
            for src in (self._live, self._files):
                if src is not None:
                    src.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.mqtt is not None and mqtt_task is not None:
                await self.mqtt.stop("shutdown", timeout=2.0)
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(mqtt_task, timeout=2.0)
            server.stop()
            server.unlisten()
        return 0


def spill_payload(n: SpillClosed) -> dict[str, Any]:
    """The MQTT per-spill message: the DAQ summary without histograms, plus the DQM's check results."""
    s = n.summary.to_dict()
    keep = (
        "run",
        "spill",
        "status",
        "file",
        "n_beam",
        "n_particles",
        "triggers",
        "n_accepted",
        "n_events_written",
        "dead_time_fraction",
        "losses",
        "spill_length_s",
        "write_seconds",
        "write_mb",
        "free_disk_bytes",
        "calibration_id",
    )
    out: dict[str, Any] = {k: s[k] for k in keep}
    out["run"], out["spill"] = n.record.run, n.record.spill
    out["n_monitored"] = n.record.n_monitored
    out["electron_peak_gev"] = n.record.peak_gev
    out["checks"] = {r.name: r.state.name for r in n.results}
    out["worst"] = max((r.state for r in n.results), default=None).name if n.results else "UNKNOWN"  # type: ignore[union-attr]
    out["time"] = n.record.time
    return out
