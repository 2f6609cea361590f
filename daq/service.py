"""The DAQ service: the I/O shell around :class:`daq.recorder.Recorder` (``na64 daq``).

The recorder holds the run and spill state and decides; this module only wires it to the world. One
asyncio event loop with these tasks: the receiver (ROUTER socket: every message goes to
``Recorder.receive``), housekeeping (``Recorder.tick`` every 50 ms, the XPUB socket's outbox), and, per
spill file being closed, a task that waits for the writer thread and hands the result to
``Recorder.file_closed``. The recorder's actions are executed in the order it returns them:

- writer commands go to :class:`daq.writer.WriterThread` (the only place h5py runs), in the order the
  recorder emitted them whichever task executes them; when the writer's bounded queue is full the task
  waits (back-pressure to the front-end, nothing dropped), and a stop while waiting still queues them;
- ``Send`` goes out on the ROUTER socket, retried for ``readout.send_timeout_s``, else reported back
  (``Recorder.send_failed``); events, summaries and status go out on the XPUB socket without blocking;
- ``LossCounted`` (the first of a reason in a spill) and ``Log`` become log records.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import zmq

from daq import config_loader, curve, kernels, protocol
from daq.daq_config import DaqConfig
from daq.errors import ConfigError
from daq.process import tune_gc, tune_malloc
from daq.recorder import (
    Action,
    CalibrationChoice,
    Log,
    LossCounted,
    PublishEvents,
    PublishRunSummary,
    PublishStatus,
    PublishSummary,
    Recorder,
    RunFinished,
    RunRefused,
    Send,
)
from daq.summary import CalibrationStatus
from daq.writer import WriterThread, free_bytes
from daq.writer_commands import AppendEvents, CloseSpill, OpenSpill, WriteResult

log = logging.getLogger(__name__)

#: loss reasons logged at INFO: the trigger's dead time and the sampling of the DQM feed
HEALTHY_LOSSES = frozenset({"dead_time", "monitor_skipped"})


class Observer(Protocol):
    """Gets the documents the service publishes (e.g. :class:`daq.daq_metrics.DaqMetrics`), called from
    the event loop: must be quick and must not block."""

    def status(self, doc: dict[str, Any]) -> None: ...

    def spill_summary(self, doc: dict[str, Any]) -> None: ...


#: a queued writer command: its ticket (emission order), the command, the future of a CloseSpill
_Queued = tuple[int, OpenSpill | AppendEvents | CloseSpill, concurrent.futures.Future[WriteResult] | None]


class ShellEnvironment:
    """The recorder's :class:`~daq.recorder.Environment`: the data directory's free space, the calibration
    of a run (``calibration.constants.for_run`` on the ``--calibration`` paths), the writer's queue."""

    def __init__(self, data_dir: Path, calibration_paths: Sequence[Path]) -> None:
        self.data_dir = data_dir
        self.calibration_paths = list(calibration_paths)
        self.writer: WriterThread | None = None

    def calibration(self, run: int) -> CalibrationChoice:
        from calibration.constants import for_run

        rc = for_run(self.calibration_paths, run)
        st = rc.status()
        status = CalibrationStatus(
            run=rc.run,
            id=st["id"],
            usable=rc.usable,
            source=rc.source,
            problem=rc.problem,
            undetermined=tuple(st["undetermined"]),
        )
        return CalibrationChoice(rc.constants, status)

    def free_bytes(self) -> int:
        return free_bytes(self.data_dir)

    def writer_queue(self) -> int:
        return self.writer.queue_depth if self.writer is not None else 0

    def existing_spills(self, run: int) -> frozenset[int]:
        """Spills of ``run`` with a file in the data directory (final, partial or kept duplicate)."""
        from daq.files import parse_filename
        from daq.recovery import parse_partial

        prefix = f"run{run:06d}_"
        out = set()
        for p in self.data_dir.glob(f"*{prefix}spill*"):
            name = p.name.lstrip(".")
            key = parse_filename(name) or parse_partial(p)
            if key is None and name.startswith(prefix) and ".duplicate" in name:
                key = parse_filename(name.split(".duplicate")[0] + ".h5")
            if key is not None and key[0] == run:
                out.add(key[1])
        return frozenset(out)


class DaqService:
    """``na64 daq`` as an object: ``await DaqService(...).run()`` returns the exit code."""

    #: the run and spill state (created by :meth:`run`, once the data directory exists)
    recorder: Recorder

    def __init__(
        self,
        config: DaqConfig | None = None,
        *,
        endpoint: str = "tcp://127.0.0.1:5555",
        publish: str = "tcp://127.0.0.1:5556",
        data_dir: str | Path = "na64-data",
        calibration: Sequence[str | Path] = (),
        stop_after_run: bool = False,
        observers: Sequence[Observer] = (),
        server_keys: curve.ServerKeys | None = None,
    ) -> None:
        self.config = config or DaqConfig()
        #: CURVE on both sockets (front-ends and DQM feed) with an allow-list, or None
        self.server_keys = server_keys
        self.observers = list(observers)
        self._observer_failed: set[str] = set()
        self.endpoint = endpoint
        self.publish = publish
        self.data_dir = Path(data_dir)
        self.calibration_paths = [Path(p) for p in calibration]
        self.stop_after_run = stop_after_run
        self.started = time.monotonic()
        self.environment = ShellEnvironment(self.data_dir, self.calibration_paths)
        self._stop = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._writer_turn = asyncio.Lock()  # one producer at a time waits for room in the writer queue
        self._backlog: deque[_Queued] = deque()  # writer commands emitted, not yet in the writer's queue
        self._tickets = 0  # writer commands emitted so far
        self._queued = 0  # ... of which in the writer's queue
        self._outbox: deque[list[Any]] = deque(maxlen=64)
        self.writer: WriterThread | None = None
        self.bound_endpoint = ""
        self.bound_publish = ""

    # ------------------------------------------------------------ life cycle
    async def run(self) -> int:
        if self.data_dir.exists() and not self.data_dir.is_dir():  # before the slow start-up
            raise ConfigError(f"--data-dir {self.data_dir}: exists and is not a directory")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"--data-dir {self.data_dir}: cannot be the data directory ({e.strerror or e})"
            ) from None
        tune_malloc()
        # compile or load every kernel before the sockets are bound: a run is acknowledged (RUN_ACK) only
        # by a DAQ that can process its messages at once
        kernels.warm_up()
        tune_gc()
        from daq.recovery import recover_directory

        recovered = recover_directory(self.data_dir)  # spill files a crashed DAQ left unfinished
        self.recorder = Recorder(
            self.config,
            self.environment,
            config_record=self._config_record(),
            data_dir=str(self.data_dir),
            started=self.started,
        )
        # plain (synchronous) sockets: the receiver drains every waiting message per wake-up (see
        # _receive_loop); sends never block (NOBLOCK + retry or count)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, 10_000)
        # a peer sending a larger frame is disconnected before the frame is taken into memory
        self.router.setsockopt(zmq.MAXMSGSIZE, int(self.config.readout.max_frame_mb * 1e6))
        # the DQM feed is only ever sent to without blocking
        self.pub: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.setsockopt(zmq.SNDHWM, self.config.monitor.sndhwm)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1 << 16)  # only subscriptions come back
        allow: curve.AllowList | None = None
        try:
            if self.server_keys is not None:
                allow = curve.AllowList(ctx, self.server_keys, self._on_denied)
                allow.start()
                curve.secure_server(self.router, self.server_keys)
                curve.secure_server(self.pub, self.server_keys)
            else:
                for option, ep in (("--endpoint", self.endpoint), ("--publish", self.publish)):
                    if not curve.is_loopback(ep):
                        log.warning(
                            "%s %s is reachable from other machines without CURVE: any peer there can "
                            "connect (--server-key and --allowed-clients turn it on, docs/protocol.md)",
                            option,
                            ep,
                        )
            try:
                self.router.bind(self.endpoint)
                self.pub.bind(self.publish)
            except zmq.ZMQError as e:
                raise ConfigError(f"cannot bind {self.endpoint} / {self.publish}: {e}") from None
            self.bound_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound_publish = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.writer = self.environment.writer = WriterThread(self.data_dir, self.config.writer)
            log.info(
                "DAQ listening on %s, publishing on %s, writing to %s",
                self.bound_endpoint,
                self.bound_publish,
                self.data_dir,
            )
            await self._apply(self.recorder.recovered_at_start(recovered, time.monotonic()))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            code = await self._main()
        finally:
            if self.writer is not None:
                self.writer.stop()
            self.router.close(0)
            self.pub.close(0)
            if allow is not None:
                allow.stop()
            ctx.term()
        refused = self.recorder.refused
        if refused:
            from calibration.constants import CalibrationError

            more = f" (and {len(refused) - 1} more runs)" if len(refused) > 1 else ""
            raise CalibrationError(
                f"{refused[0]}: not recorded{more}; --calibration nominal records with nominal constants"
            )
        lost = self.recorder.lost_report()
        if lost:
            log.error("the DAQ did not record everything it was sent (exit code 1):")
            for line in lost:
                log.error("  lost: %s", line)
            code = max(code, 1)
        return code

    def _config_record(self) -> dict[str, Any]:
        d = config_loader.to_dict(self.config)
        d["service"] = {
            "endpoint": self.endpoint,
            "publish": self.publish,
            "data_dir": str(self.data_dir),
            "calibration": [str(p) for p in self.calibration_paths],
        }
        return d

    def _on_denied(self, address: str) -> None:
        """A CURVE handshake refused (the client's key is not allowed): counted, logged at most every 10 s."""
        self._now_all(self.recorder.not_authorized(address, time.monotonic()))

    def _on_signal(self, sig: int) -> None:
        log.info("%s received: closing the current spill and stopping", signal.Signals(sig).name)
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def _main(self) -> int:
        recv = asyncio.create_task(self._receive_loop(), name="receive")
        house = asyncio.create_task(self._housekeeping(), name="housekeeping")
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        code = 0
        done, _ = await asyncio.wait({recv, house, stop}, return_when=asyncio.FIRST_COMPLETED)
        for t in (recv, house):
            if t in done and not t.cancelled() and t.exception() is not None:
                log.error("DAQ task %s failed", t.get_name(), exc_info=t.exception())
                code = 1
        for task in (recv, house, stop):
            task.cancel()
        await asyncio.gather(recv, house, stop, return_exceptions=True)
        # close what is open, wait for the files, say goodbye
        await self._apply(self.recorder.stop(time.monotonic()))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._apply(self.recorder.flush(time.monotonic()))
        self._drain_outbox()
        r = self.recorder
        log.info("DAQ stopped: %d spills, EOT %d, %d events", r.spills_run, r.eot_run, r.events_run)
        return code

    # ------------------------------------------------------------ receive
    async def _receive_loop(self) -> None:
        """Wait for the ROUTER's file descriptor, then drain every waiting message without blocking.

        One wake-up per burst instead of one future per message: the per-message cost of asyncio is
        what limits a Python receiver at ~1000 messages/s. ZMQ_FD is edge-triggered, so after the
        drain the socket's EVENTS are checked again, and a short timeout backs the wake-up up.

        The fd is watched only while this task waits for it. ZMQ_FD stays readable until EVENTS is
        read, so a reader left installed while the task waits for something else (the writer's
        back-pressure, a send retry) would wake the event loop on every turn: a busy spin.
        """
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = int(self.router.getsockopt(zmq.FD))

        def on_readable() -> None:
            loop.remove_reader(fd)
            ready.set()

        curve_on = self.server_keys is not None
        while True:
            turn = time.monotonic() + 0.02
            while True:
                frames = await self._recv_bounded()
                if frames is None:
                    break
                try:
                    key = str(frames[1].get("User-Id")) if curve_on and len(frames) > 1 else ""
                    await self._apply(
                        self.recorder.receive(frames[0].bytes, frames[1:], time.monotonic(), key)
                    )
                except Exception as e:  # never let one message stop the DAQ
                    await self._apply(self.recorder.internal_error(e))
                if time.monotonic() > turn:
                    await asyncio.sleep(0)  # let housekeeping run during long bursts
                    turn = time.monotonic() + 0.02
            ready.clear()
            if int(self.router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                await asyncio.sleep(0)  # never spin without giving the loop a turn
                continue
            # wake up on the fd, or after 0.1 s anyway (no asyncio.wait_for: in Python 3.11 it can
            # swallow a cancellation that coincides with its timeout)
            loop.add_reader(fd, on_readable)
            backup = loop.call_later(0.1, ready.set)
            try:
                await ready.wait()
            finally:
                backup.cancel()
                loop.remove_reader(fd)

    async def _recv_bounded(self) -> list[zmq.Frame] | None:
        """The next message (identity first), or None when none waits. Frames beyond what any message may
        have (the identity, the header, MAX_FRAMES arrays) are read and dropped as they come: a message of
        100 000 frames is never held (the decoder refuses the truncated message by its frame count), and
        the loop gets a turn every 4096 frames while one is read."""
        try:
            frames = [self.router.recv(flags=zmq.NOBLOCK, copy=False)]
        except zmq.Again:
            return None
        limit = protocol.MAX_FRAMES + 3
        n = 1
        while self.router.getsockopt(zmq.RCVMORE):
            frame = self.router.recv(copy=False)
            if n < limit:
                frames.append(frame)
            n += 1
            if n % 4096 == 0:
                await asyncio.sleep(0)
        return frames

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            await self._apply(self.recorder.tick(time.monotonic()))
            self._drain_outbox()
            with contextlib.suppress(zmq.Again):
                while True:  # subscription messages of XPUB (not used, but drained)
                    self.pub.recv(flags=zmq.NOBLOCK)

    # ------------------------------------------------------------ actions
    async def _apply(self, actions: list[Action]) -> None:
        """Execute the recorder's actions in order. Cancelled (the service stops) part-way, it still
        queues the writer commands and does what needs no waiting, then re-raises."""
        tickets = [self._to_backlog(a) for a in actions]
        for i, action in enumerate(actions):
            try:
                match action:
                    case OpenSpill() | AppendEvents() | CloseSpill():
                        await self._feed_writer(tickets[i])
                    case Send():
                        await self._send(action)
                    case _:
                        self._now(action)
            except asyncio.CancelledError:
                self._force_writer(max(tickets))
                for rest in actions[i + 1 :]:
                    if isinstance(rest, Send):
                        self._now_all(self.recorder.send_failed(rest, time.monotonic()))
                    elif not isinstance(rest, OpenSpill | AppendEvents | CloseSpill):  # queued above
                        self._now(rest)
                raise

    def _now_all(self, actions: list[Action]) -> None:
        for a in actions:
            self._now(a)

    def _now(self, action: Action) -> None:
        """Execute an action that never waits (writer commands and sends are queued or counted by
        :meth:`_apply`)."""
        match action:
            case PublishEvents(message=msg):
                if not self._publish(msg, keep=False):
                    self._now_all(self.recorder.events_not_published(action, time.monotonic()))
            case PublishSummary(summary=s):
                self._publish(protocol.Summary.of(protocol.Summary.KIND_SPILL, s.to_json()), keep=True)
                self._notify("spill_summary", s.to_dict())
            case PublishRunSummary(run=run, document=doc):
                text = json.dumps(doc)
                self._publish(protocol.Summary.of(protocol.Summary.KIND_RUN, text, run=run), keep=True)
                self._write_run_summary(run, text)
            case PublishStatus(status=st):
                self._publish(protocol.Summary.of(protocol.Summary.KIND_STATUS, st.to_json()), keep=False)
                self._notify("status", st.to_dict())
            case LossCounted(first=True):
                # dead time and the DQM feed's sampling are how a healthy DAQ works, not losses of data
                log.log(
                    logging.INFO if action.reason in HEALTHY_LOSSES else logging.WARNING,
                    "loss %s (%s): %s (further ones this spill are counted, not logged)",
                    action.reason,
                    action.where,
                    action.detail,
                )
            case Log(level=level, message=message, args=args, error=error):
                log.log(level, message, *args, exc_info=error)
            case RunFinished() if self.stop_after_run:
                log.info("run finished and its last file is closed: stopping (--stop-after-run)")
                self._stop.set()
            case RunRefused() if self.stop_after_run:
                self._stop.set()
            case OpenSpill() | AppendEvents() | CloseSpill() | Send():
                raise TypeError(f"{type(action).__name__} needs _apply")

    def _write_run_summary(self, run: int, text: str) -> None:
        """``runNNNNNN_summary.json`` next to the spill files (``.2``, ``.3``, ... when one exists: a DAQ
        restarted within a run writes its own; never overwritten). A failure is logged, never fatal."""
        name = f"run{run:06d}_summary"
        for k in range(1, 1000):
            path = self.data_dir / (f"{name}.json" if k == 1 else f"{name}.{k}.json")
            try:
                with open(path, "x") as f:
                    f.write(text + "\n")
                log.info("run %d summary written to %s", run, path)
                return
            except FileExistsError:
                continue
            except OSError as e:
                log.error("run %d summary could not be written to %s: %s", run, path, e)
                return

    def _notify(self, what: str, doc: dict[str, Any]) -> None:
        """Hand a published document to the observers; a failing observer is logged once, never fatal."""
        for obs in self.observers:
            try:
                getattr(obs, what)(doc)
            except Exception:
                key = f"{type(obs).__name__}.{what}"
                if key not in self._observer_failed:
                    self._observer_failed.add(key)
                    log.exception("observer %s failed (logged once; the DAQ goes on)", key)

    # ------------------------------------------------------------ the writer
    def _to_backlog(self, action: Action) -> int:
        """A writer command joins the backlog (in emission order); returns its ticket (0: not one)."""
        if not isinstance(action, OpenSpill | AppendEvents | CloseSpill):
            return 0
        done: concurrent.futures.Future[WriteResult] | None = None
        if isinstance(action, CloseSpill):
            done = concurrent.futures.Future()
            task = asyncio.create_task(self._after_close(action, done))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._tickets += 1
        self._backlog.append((self._tickets, action, done))
        return self._tickets

    async def _feed_writer(self, ticket: int) -> None:
        """Move the backlog into the writer's queue, in order, up to ``ticket``; while the queue is full,
        wait (back-pressure: the receiver stops reading) until the writer thread says there is room.

        The receiver and housekeeping both queue commands: they wait one at a time (the writer wakes the
        one waiter it was given). A wait cut short by the service stopping still queues the commands
        (a spill's close, a batch): nothing is dropped on the way out.
        """
        assert self.writer is not None
        loop = asyncio.get_running_loop()
        try:
            async with self._writer_turn:
                while self._queued < ticket:
                    _, command, done = self._backlog[0]
                    room = asyncio.Event()

                    def wake(room: asyncio.Event = room) -> None:  # called from the writer thread
                        loop.call_soon_threadsafe(room.set)

                    if self.writer.try_put(command, wake=wake, done=done):
                        self._backlog.popleft()
                        self._queued += 1
                    else:
                        await room.wait()
        except asyncio.CancelledError:
            self._force_writer(ticket)
            raise

    def _force_writer(self, ticket: int) -> None:
        """Queue the backlog up to ``ticket`` now, beyond the writer's bounds (the service stops)."""
        assert self.writer is not None
        while self._queued < ticket:
            _, command, done = self._backlog.popleft()
            self.writer.put(command, done=done)
            self._queued += 1

    async def _after_close(self, close: CloseSpill, done: concurrent.futures.Future[WriteResult]) -> None:
        try:
            result = await asyncio.wrap_future(done)
        except Exception as e:  # a writer bug: the spill is lost, its summary says so
            log.exception("writer failed closing run %d spill %d", close.run, close.spill)
            result = WriteResult(close.run, close.spill, None, "failed", 0, 0, 0, 0.0, f"writer error: {e}")
        await self._apply(self.recorder.file_closed(result, time.monotonic()))

    # ------------------------------------------------------------ sockets
    async def _send(self, send: Send) -> None:
        frames = protocol.encode(send.message)
        if isinstance(send.message, protocol.Nack):  # best effort: a peer that does not read gets none
            with contextlib.suppress(zmq.ZMQError):
                self.router.send_multipart([send.to, *frames], flags=zmq.NOBLOCK, copy=False)
            return
        deadline = time.monotonic() + self.config.readout.send_timeout_s
        while True:
            try:
                self.router.send_multipart([send.to, *frames], flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.002)
            except zmq.ZMQError as e:
                if e.errno != errno.EHOSTUNREACH:
                    log.error("sending %s to %s: %s", send.message.TYPE.name, send.to.hex(), e)
                break
        self._now_all(self.recorder.send_failed(send, time.monotonic()))

    def _publish(self, msg: protocol.Message, keep: bool) -> bool:
        """Send on the XPUB socket without blocking; ``keep``: retry later instead of dropping."""
        frames = protocol.encode(msg)
        try:
            self.pub.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            if keep:
                self._outbox.append(frames)
            return False

    def _drain_outbox(self) -> None:
        while self._outbox:
            try:
                self.pub.send_multipart(self._outbox[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._outbox.popleft()
