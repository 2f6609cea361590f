"""The DAQ service: receives primitives, triggers, reads out, builds events, writes spill files, publishes.

One asyncio event loop with three tasks: the receiver (ROUTER socket: decode, sequence check, dispatch,
trigger, readout requests, event building), housekeeping (fragment and spill timeouts, the DQM feed,
status every second) and, per spill end, a task that waits for the writer thread to close the file and
then publishes the spill summary. h5py runs only in :class:`daq.writer.WriterThread`, fed by a bounded
queue: when it is full the receiver waits (back-pressure to the front-end, nothing dropped).

Losses are counted by reason (:data:`daq.builder.LOSS_REASONS`), logged once per spill per reason, and
reported in the spill file, the spill summary and the status document.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from daq import config as cfgmod
from daq import detector, protocol, reco_kernel
from daq.batch import EventBatch
from daq.builder import Losses, Readout, SpillHistograms, compare_counters, histograms_json
from daq.daq_config import DaqConfig
from daq.errors import ConfigError, Na64Error, ProtocolError
from daq.process import tune_gc, tune_malloc
from daq.protocol import MessageType
from daq.trigger import Batch, Trigger
from daq.writer import SpillFinal, SpillHeader, WriteResult, WriterThread, free_bytes

log = logging.getLogger(__name__)

_FE_STATES = {s.value: s.name.lower() for s in protocol.FrontEndState}

#: loss reasons logged at INFO: the trigger's dead time and the sampling of the DQM feed
HEALTHY_LOSSES = frozenset({"dead_time", "monitor_skipped"})


def _kind(e: ProtocolError) -> str:
    """``ChecksumError`` -> ``checksum``: the loss sub-key of a protocol error."""
    name = type(e).__name__.removesuffix("Error")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_") or "protocol"


#: a front-end not heard from for this long is forgotten (its status entry and sequence number): every
#: ``na64 simulate`` or ``replay`` run and every reconnect is a new ZeroMQ identity, and a DAQ runs for
#: weeks (a live front-end sends a heartbeat every second)
FORGET_FRONTEND_S = 3600.0


class Observer(Protocol):
    """Gets the documents the service publishes (e.g. :class:`daq.daq_metrics.DaqMetrics`), called from
    the event loop: must be quick and must not block."""

    def status(self, doc: dict[str, Any]) -> None: ...

    def spill_summary(self, doc: dict[str, Any]) -> None: ...


@dataclass
class FrontEnd:
    ident: bytes
    last_seen: float = 0.0
    state: str = "unknown"
    name: str = ""
    seq_out: protocol.SequenceCounter = field(default_factory=protocol.SequenceCounter)
    decode_errors_since_good: int = 0


@dataclass
class Spill:
    """Book-keeping of the spill being recorded."""

    run: int
    number: int
    ident: bytes
    t_start_ns: int
    started: float  # monotonic
    last_msg: float
    hist: SpillHistograms
    losses: Losses = field(default_factory=Losses)
    counters: Counter[str] = field(default_factory=Counter)
    slices: set[int] = field(default_factory=set)
    beam_time_ns: int = 0
    record: bool = True  # False: failed before it started (free space, writer)
    fail_reason: str = ""
    frontend: dict[str, int] = field(default_factory=dict)
    t_end_ns: int = 0
    ended_by: str = ""
    logged: set[str] = field(default_factory=set)
    n_events_built: int = 0


@dataclass
class Run:
    number: int
    ident: bytes
    trigger: Trigger
    readout: Readout
    prim_channels: np.ndarray
    n_samples: int
    sample_period_ns: float
    frontend_info: str
    calibration_id: str


class DaqService:
    """``na64 daq`` as an object: ``await DaqService(...).run()`` returns the exit code."""

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
    ) -> None:
        self.config = config or DaqConfig()
        self.endpoint = endpoint
        self.publish = publish
        self.data_dir = Path(data_dir)
        self.calibration_paths = [Path(p) for p in calibration]
        self.stop_after_run = stop_after_run
        self.observers = list(observers)
        self._observer_failed: set[str] = set()
        self.started = time.monotonic()
        self.frontends: dict[bytes, FrontEnd] = {}
        self.tracker = protocol.SequenceTracker()
        self.run_state: Run | None = None
        self.spill: Spill | None = None
        self.losses_run = Losses()
        self.losses_idle = Losses()  # losses outside any spill (reported in the status and the next spill)
        self._idle_logged: set[str] = set()
        self.eot_run = 0
        self.events_run = 0
        self.spills_run = 0
        self.alarms: dict[str, str] = {}
        #: the calibration of the current (or last) run, as in the status document; runs not recorded for
        #: want of usable constants (their problem): the DAQ exits non-zero
        self.calibration: dict[str, Any] = {
            "run": None,
            "id": None,
            "usable": True,
            "source": "",
            "problem": "",
        }
        self.refused: list[str] = []
        self.last_summary: dict[str, Any] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._writer_turn = asyncio.Lock()  # one producer at a time waits for room in the writer queue
        self._run_stopped = False
        self._stop = asyncio.Event()
        self._monitor: list[EventBatch] = []
        self._monitor_n = 0
        self._monitor_spill = 0  # spill of the buffered monitoring events (EVENTS carry their own spill)
        self._monitor_skipped_since = 0
        self._next_monitor = 0.0
        self._next_status = 0.0
        self._outbox: deque[list[Any]] = deque(maxlen=64)
        self._free = 0
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
        reco_kernel.warm_up()  # compile or load the reconstruction kernel before the first event
        tune_gc()
        self._free = free_bytes(self.data_dir)
        # plain (synchronous) sockets: the receiver drains every waiting message per wake-up (see
        # _receive_loop); sends never block (NOBLOCK + retry or count)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, 10_000)
        # the DQM feed is only ever sent to without blocking
        self.pub: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.setsockopt(zmq.SNDHWM, self.config.monitor.sndhwm)
        self.pub.setsockopt(zmq.LINGER, 0)
        try:
            try:
                self.router.bind(self.endpoint)
                self.pub.bind(self.publish)
            except zmq.ZMQError as e:
                raise ConfigError(f"cannot bind {self.endpoint} / {self.publish}: {e}") from None
            self.bound_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound_publish = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.writer = WriterThread(self.data_dir, self.config.writer)
            log.info(
                "DAQ listening on %s, publishing on %s, writing to %s",
                self.bound_endpoint,
                self.bound_publish,
                self.data_dir,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            code = await self._main()
        finally:
            if self.writer is not None:
                self.writer.stop()
            self.router.close(0)
            self.pub.close(0)
            ctx.term()
        if self.refused:
            from calibration.constants import CalibrationError

            more = f" (and {len(self.refused) - 1} more runs)" if len(self.refused) > 1 else ""
            raise CalibrationError(
                f"{self.refused[0]}: not recorded{more}; --calibration nominal records with nominal constants"
            )
        return code

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
        if self.spill is not None:
            self.spill.ended_by = self.spill.ended_by or "stopped"
            await self._end_spill(complete=False)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._flush_monitor(time.monotonic(), force=True)
        self._publish_status()
        self._drain_outbox()
        log.info("DAQ stopped: %d spills, EOT %d, %d events", self.spills_run, self.eot_run, self.events_run)
        return code

    # ------------------------------------------------------------ losses
    def _loss(self, reason: str, n: int = 1, detail: str = "") -> None:
        if n <= 0:
            return
        self.losses_run[reason] += n
        sp = self.spill
        target = sp.losses if sp is not None else self.losses_idle
        target[reason] += n
        logged = sp.logged if sp is not None else self._idle_logged
        if reason not in logged:
            logged.add(reason)
            where = f"run {sp.run} spill {sp.number}" if sp is not None else "outside a spill"
            # dead time and the DQM feed's sampling are how a healthy DAQ works, not losses of data
            log.log(
                logging.INFO if reason in HEALTHY_LOSSES else logging.WARNING,
                "loss %s (%s): %s (further ones this spill are counted, not logged)",
                reason,
                where,
                detail or f"{n}",
            )

    def _absorb_readout_losses(self, detail: str = "") -> None:
        r = self.run_state
        if r is None or not r.readout.losses:
            return
        for k, v in r.readout.losses.items():
            self._loss(k, v, detail or f"{v} fragments")
        r.readout.losses.clear()

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

        while True:
            n = 0
            while True:
                try:
                    frames = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                await self._handle_safely(frames)
                n += 1
                if n % 64 == 0:
                    await asyncio.sleep(0)  # let housekeeping run during long bursts
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

    async def _handle_safely(self, frames: list[Any]) -> None:
        try:
            await self._handle(frames[0].bytes, frames[1:])
        except Na64Error as e:  # never let one message stop the DAQ
            log.error("message handling failed: %s", e)
        except Exception:
            log.exception("unexpected error handling a message; the DAQ goes on")
            self._loss("internal_error", 1, "internal error (see traceback)")

    def _frontend(self, ident: bytes) -> FrontEnd:
        fe = self.frontends.get(ident)
        if fe is None:
            fe = self.frontends[ident] = FrontEnd(ident)
            log.info("front-end %s connected", ident.hex())
        return fe

    async def _handle(self, ident: bytes, frames: list[Any]) -> None:
        now = time.monotonic()
        fe = self._frontend(ident)
        fe.last_seen = now
        try:
            msg = protocol.decode(frames)
        except ProtocolError as e:
            fe.decode_errors_since_good += 1
            self._loss("decode_error", 1, str(e))
            self._loss(f"decode_error.{_kind(e)}", 1, str(e))
            return
        try:
            self.tracker.check(ident, msg.seq)
        except protocol.SequenceGapError as e:
            missing = e.missing - fe.decode_errors_since_good
            self._loss("sequence_gap", missing, str(e))
        except protocol.SequenceRepeatError as e:
            self._loss("duplicate", 1, str(e))
            return
        fe.decode_errors_since_good = 0
        if self.spill is not None and ident == self.spill.ident:
            self.spill.last_msg = now
        t = msg.TYPE
        if t == MessageType.SLICE:
            await self._on_slice(ident, msg)  # type: ignore[arg-type]
        elif t == MessageType.FRAGMENT:
            await self._on_fragment(msg)  # type: ignore[arg-type]
        elif t == MessageType.HEARTBEAT:
            fe.state = _FE_STATES.get(msg.state, str(msg.state))  # type: ignore[attr-defined]
        elif t == MessageType.SPILL_START:
            await self._on_spill_start(ident, msg)  # type: ignore[arg-type]
        elif t == MessageType.SPILL_END:
            await self._on_spill_end(ident, msg)  # type: ignore[arg-type]
        elif t == MessageType.RUN_START:
            await self._on_run_start(ident, msg)  # type: ignore[arg-type]
        elif t == MessageType.RUN_STOP:
            await self._on_run_stop(msg)  # type: ignore[arg-type]
        else:
            self._loss("unexpected_message", 1, f"{t.name} is not a front-end message")

    # ------------------------------------------------------------ run / spill markers
    async def _on_run_start(self, ident: bytes, msg: protocol.RunStart) -> None:
        r = self.run_state
        if (
            r is not None
            and msg.run == r.number
            and ident == r.ident
            and msg.n_samples == r.n_samples
            and np.array_equal(np.asarray(msg.prim_channels), r.prim_channels)
        ):
            # the front-end restarted within its run (sequence numbers from 0): go on with the same run
            # and spill; requests it had not answered time out and are counted
            self._loss("frontend_restart", 1, f"front-end {ident.hex()} sent RUN_START {msg.run} again")
            return
        if self.spill is not None:
            self.spill.ended_by = "run restarted"
            self._loss("spill_end_missing", 1, f"RUN_START {msg.run} while spill {self.spill.number} is open")
            await self._end_spill(complete=False)
        if self.run_state is not None:
            await self._flush_run()
        choice = self._constants_for(msg.run)
        if choice.constants is None:  # never a silent fallback to other constants than those asked for
            self.run_state = None
            self.refused.append(choice.problem)
            log.error(
                "%s: not recording it (--calibration nominal records with nominal constants)", choice.problem
            )
            self._loss("run_rejected", 1, choice.problem)
            if self.stop_after_run:
                self._stop.set()
            return
        constants, cal_id = choice.constants, choice.constants.version
        info = bytes(msg.info).decode("utf-8", errors="replace") if msg.info is not None else "{}"
        self.frontends[ident].name = _name_from_info(info)
        prim = np.asarray(msg.prim_channels, dtype=np.uint16).copy()
        try:
            trig = Trigger(self.config.trigger, constants, prim)
        except ConfigError as e:
            self.run_state = None
            self.alarms["run"] = f"run {msg.run} rejected: {e}"
            log.error("run %d rejected: %s", msg.run, e)
            self._loss("run_rejected", 1, str(e))
            return
        if msg.n_channels != detector.N_CHANNELS:
            log.warning(
                "front-end declares %d channels, the detector model has %d",
                msg.n_channels,
                detector.N_CHANNELS,
            )
        period_ns = msg.sample_period_ps / 1000.0 if msg.sample_period_ps else detector.SAMPLE_PERIOD_NS
        readout = Readout(constants, msg.n_samples, len(prim), self.config.reco, period_ns)
        self.run_state = Run(msg.run, ident, trig, readout, prim, msg.n_samples, period_ns, info, cal_id)
        self.alarms.pop("run", None)
        self.losses_run = Losses()
        self.eot_run = self.events_run = self.spills_run = 0
        self._run_stopped = False
        log.info(
            "run %d started (front-end %s, %d primitive channels, %d samples, calibration %s)",
            msg.run,
            ident.hex(),
            len(prim),
            msg.n_samples,
            cal_id,
        )

    def _constants_for(self, run: int) -> Any:
        """The run's calibration (``calibration.constants.for_run``): the set valid for it, the nominal
        constants if asked for, or none (the run must not be recorded); the status document says which."""
        from calibration.constants import for_run

        choice = for_run(self.calibration_paths, run)
        self.calibration = choice.status()
        if choice.usable:
            self.alarms.pop("calibration", None)
            if self.calibration["undetermined"]:
                log.warning(
                    "calibration %s for run %d: %d channels undetermined, recorded with their nominal "
                    "constants: %s",
                    self.calibration["id"],
                    run,
                    len(self.calibration["undetermined"]),
                    ", ".join(self.calibration["undetermined"]),
                )
        else:
            self.alarms["calibration"] = f"{choice.problem}: not recorded"
        return choice

    async def _on_run_stop(self, msg: protocol.RunStop) -> None:
        if self.spill is not None:
            self.spill.ended_by = "run stopped"
            self._loss("spill_end_missing", 1, f"RUN_STOP while spill {self.spill.number} is open")
            await self._end_spill(complete=False)
        await self._flush_run()
        log.info(
            "run %d stopped by the front-end (%d spills, EOT %d, %d events)",
            msg.run,
            self.spills_run + len(self._closing),  # the last files may still be closing
            self.eot_run,
            self.events_run,
        )
        self.run_state = None
        self._run_stopped = True
        self._maybe_stop_after_run()

    async def _flush_run(self) -> None:
        r = self.run_state
        if r is None:
            return
        leftovers = r.readout.flush()
        self._absorb_readout_losses()
        if leftovers:
            n = sum(len(b) for b in leftovers)
            self._loss("write_error", n, f"{n} events completed outside a spill")

    def _maybe_stop_after_run(self) -> None:
        if self.stop_after_run and self._run_stopped and self.spill is None and not self._closing:
            log.info("run finished and its last file is closed: stopping (--stop-after-run)")
            self._stop.set()

    async def _on_spill_start(self, ident: bytes, msg: protocol.SpillStart) -> None:
        r = self.run_state
        if r is None or msg.run != r.number:
            self._loss("unexpected_message", 1, f"SPILL_START run {msg.run} spill {msg.spill} outside a run")
            return
        if self.spill is not None:
            self.spill.ended_by = "next spill started"
            self._loss(
                "spill_end_missing", 1, f"SPILL_START {msg.spill} while spill {self.spill.number} is open"
            )
            await self._end_spill(complete=False)
        h = self.config.histograms
        now = time.monotonic()
        sp = Spill(
            run=r.number,
            number=msg.spill,
            ident=ident,
            t_start_ns=msg.t_start_ns,
            started=now,
            last_msg=now,
            hist=SpillHistograms(h.arrival_bins, h.ecal_bins, h.ecal_max_gev, h.prs_bins, h.prs_max_gev),
        )
        self.spill = sp
        if self.losses_idle:
            for k, v in self.losses_idle.items():
                sp.losses[k] += v
            self.losses_idle = Losses()
            self._idle_logged = set()
        r.trigger.new_spill()
        r.readout.new_spill()
        self._free = free_bytes(self.data_dir)
        need = int(self.config.storage.min_free_mb * 1e6)
        if self._free < need:
            sp.record = False
            sp.fail_reason = (
                f"only {self._free / 1e6:.0f} MB free in {self.data_dir} (need {need / 1e6:.0f} MB)"
            )
            self.alarms["disk"] = sp.fail_reason
            log.error("run %d spill %d will not be recorded: %s", r.number, sp.number, sp.fail_reason)
        else:
            self.alarms.pop("disk", None)
            header = SpillHeader(
                run=r.number,
                spill=sp.number,
                t_start_ns=msg.t_start_ns,
                config=self._config_record(),
                trigger=self.config.trigger.thresholds(),
                calibration_id=r.calibration_id,
                frontend_info=r.frontend_info,
                prim_channels=r.prim_channels,
                n_samples=r.n_samples,
                sample_period_ns=r.sample_period_ns,
            )
            await self._to_writer(("open", header))
        log.info("run %d spill %d started", r.number, sp.number)

    def _config_record(self) -> dict[str, Any]:
        d = cfgmod.to_dict(self.config)
        d["service"] = {
            "endpoint": self.endpoint,
            "publish": self.publish,
            "data_dir": str(self.data_dir),
            "calibration": [str(p) for p in self.calibration_paths],
        }
        return d

    async def _on_spill_end(self, ident: bytes, msg: protocol.SpillEnd) -> None:
        sp = self.spill
        if sp is None or msg.spill != sp.number or msg.run != sp.run:
            self._loss(
                "unexpected_message", 1, f"SPILL_END run {msg.run} spill {msg.spill} without its SPILL_START"
            )
            return
        sp.frontend = {
            "n_slices": msg.n_slices,
            "n_requests": msg.n_requests,
            "n_fragments": msg.n_fragments,
            "n_events_read": msg.n_events_read,
            "n_particles": msg.n_particles,
            "t_end_ns": msg.t_end_ns,
        }
        sp.t_end_ns = msg.t_end_ns
        sp.ended_by = "SPILL_END"
        await self._end_spill(complete=True)

    # ------------------------------------------------------------ slices and fragments
    async def _on_slice(self, ident: bytes, msg: protocol.Slice) -> None:
        sp, r = self.spill, self.run_state
        if sp is None or r is None or msg.run != sp.run or msg.spill != sp.number:
            self._loss(
                "unexpected_message",
                1,
                f"SLICE {msg.slice_id} (run {msg.run} spill {msg.spill}) outside a spill",
            )
            return
        if msg.slice_id in sp.slices:
            self._loss("duplicate", 1, f"SLICE {msg.slice_id} received twice")
            return
        if msg.amp.shape[0] != r.prim_channels.size:
            self._loss(
                "decode_error",
                1,
                f"SLICE {msg.slice_id}: {msg.amp.shape[0]} primitive rows, "
                f"RUN_START declared {r.prim_channels.size}",
            )
            self._loss("decode_error.shape", 1)
            return
        sp.slices.add(msg.slice_id)
        batch = Batch.from_slice(msg)
        d = r.trigger.evaluate(batch)
        sp.counters.update(d.counts)
        sp.counters["n_slices"] += 1
        sp.beam_time_ns += int(msg.length_ns)
        sp.hist.fill(msg.t_ns, d.ecal_energy, d.prs_energy, t_end_ns=msg.t0_ns + msg.length_ns)
        self.eot_run += d.counts["n_strig"]
        self._loss("dead_time", d.counts["dead_time_lost"], "triggers lost in dead time")
        # one READOUT_REQUEST per slice, always with the t_ns frame
        r.readout.add_request(
            sp.number, msg.slice_id, d.index, d.t_ns, d.trigger_mask, msg.amp, time.monotonic()
        )
        req = protocol.ReadoutRequest(
            run=sp.run,
            spill=sp.number,
            slice_id=msg.slice_id,
            n_events=d.n_readout,
            index=d.index,
            t_ns=d.t_ns,
        )
        if not await self._send_to(ident, req):
            r.readout.cancel(sp.number, msg.slice_id)
            self._loss("request_failed", 1, f"READOUT_REQUEST for slice {msg.slice_id} could not be sent")

    async def _send_to(self, ident: bytes, msg: protocol.Message) -> bool:
        fe = self._frontend(ident)
        frames = protocol.encode(fe.seq_out.stamp(msg))
        deadline = time.monotonic() + self.config.readout.send_timeout_s
        while True:
            try:
                self.router.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.002)
            except zmq.ZMQError as e:
                if e.errno == errno.EHOSTUNREACH:
                    return False
                raise

    async def _on_fragment(self, msg: protocol.Fragment) -> None:
        r = self.run_state
        if r is None:
            self._loss("unexpected_fragment", 1, f"FRAGMENT for slice {msg.slice_id} outside a run")
            return
        events, reason = r.readout.add_fragment(msg)
        if reason:
            group = detector.Detector(msg.source).name if 0 <= msg.source < detector.N_GROUPS else "?"
            self._absorb_readout_losses(
                f"spill {msg.spill} slice {msg.slice_id} source {msg.source} ({group}): {msg.n_events} events"
            )
        if events is not None:
            await self._events(events)

    async def _events(self, batch: EventBatch) -> None:
        sp = self.spill
        n = len(batch)
        if sp is None:
            if n:
                self._loss("write_error", n, f"{n} events completed outside a spill")
            return
        sp.n_events_built += n
        sp.counters["n_events_incomplete"] += int(np.count_nonzero(batch.missing_groups))
        self.events_run += n
        if n == 0:
            return
        if sp.record:
            await self._to_writer(("append", batch))
        else:
            self._loss("write_error", n, f"{n} events not recorded: {sp.fail_reason}")
        self._to_monitor(batch, sp.number)

    async def _to_writer(self, cmd: tuple[Any, ...]) -> None:
        """Queue a writer command; while the writer's queue is full, wait (back-pressure: we stop
        reading) until the writer thread says there is room.

        The receiver and housekeeping both queue commands: they wait one at a time, in order (the writer
        wakes the one waiter it was given). A wait cut short by the service stopping still queues the
        command (a spill's close, a batch): nothing is dropped on the way out.
        """
        assert self.writer is not None
        loop = asyncio.get_running_loop()
        my_turn = False
        try:
            async with self._writer_turn:
                my_turn = True
                while True:
                    room = asyncio.Event()

                    def wake(room: asyncio.Event = room) -> None:  # called from the writer thread
                        loop.call_soon_threadsafe(room.set)

                    if self.writer.try_put(cmd, wake=wake):
                        return
                    await room.wait()
        except asyncio.CancelledError:
            if not my_turn:  # the producer before us (cancelled too) puts its command first: in order
                async with self._writer_turn:
                    self.writer.put(cmd)
            else:
                self.writer.put(cmd)
            raise

    # ------------------------------------------------------------ end of spill
    async def _end_spill(self, complete: bool) -> None:
        sp, r = self.spill, self.run_state
        if sp is None:
            return
        if r is not None:
            for batch in r.readout.flush(sp.number):
                await self._events(batch)
            self._absorb_readout_losses()
        self._flush_monitor(time.monotonic(), force=True)  # the spill's last events go out before its summary
        ro = r.readout if r is not None else None
        daq_counts = {
            "n_slices": sp.counters["n_slices"],
            "n_requests": ro.n_requests if ro else 0,
            "n_fragments": ro.n_fragments if ro else 0,
            "n_events_read": ro.n_events_read if ro else 0,
            "n_particles": sp.counters["n_particles"],
        }
        if sp.frontend:
            bad = compare_counters(daq_counts, sp.frontend)
            if bad:
                self._loss(
                    "spill_counter_mismatch",
                    len(bad),
                    "; ".join(f"{k}: DAQ {a}, front-end {b}" for k, (a, b) in bad.items()),
                )
        self.spill = None
        c = sp.counters
        counters = {
            "n_beam": c["n_strig"],
            "n_particles": c["n_particles"],
            "n_slices": c["n_slices"],
            "n_requests": daq_counts["n_requests"],
            "n_fragments": daq_counts["n_fragments"],
            "n_events_read": daq_counts["n_events_read"],
            "fired_physics": c["fired_physics"],
            "fired_beam": c["fired_beam"],
            "fired_random": c["fired_random"],
            "triggers_physics": c["triggers_physics"],
            "triggers_beam": c["triggers_beam"],
            "triggers_random": c["triggers_random"],
            "n_accepted": c["n_accepted"],
            "n_events_built": sp.n_events_built,
            "n_events_incomplete": c["n_events_incomplete"],
            "dead_time_lost": c["dead_time_lost"],
        }
        status = "ok" if complete and not sp.losses.data_lost() else "incomplete"
        if not sp.record:
            status = "failed"
        hists = sp.hist.result()
        t_end_ns = sp.t_end_ns or (sp.t_start_ns + sp.hist.t_end_ns if sp.t_start_ns else 0)
        length_s = (t_end_ns - sp.t_start_ns) / 1e9 if sp.t_start_ns and t_end_ns else sp.hist.t_end_ns / 1e9
        dead_ns = self.config.trigger.dead_time_ns
        summary: dict[str, Any] = {
            "run": sp.run,
            "spill": sp.number,
            "status": status,
            "file": None,
            "n_beam": counters["n_beam"],
            "n_particles": counters["n_particles"],
            "triggers": {
                "physics": c["triggers_physics"],
                "beam": c["triggers_beam"],
                "random": c["triggers_random"],
            },
            "n_accepted": c["n_accepted"],
            "n_events_written": 0,
            "dead_time_lost": c["dead_time_lost"],
            "dead_time_fraction": round(min(1.0, c["n_accepted"] * dead_ns / sp.beam_time_ns), 6)
            if sp.beam_time_ns
            else 0.0,
            "losses": sp.losses.as_dict(),
            "frontend": dict(sp.frontend),
            "t_start_ns": sp.t_start_ns,
            "t_end_ns": t_end_ns,
            "spill_length_s": round(length_s, 6),
            "write_seconds": 0.0,
            "write_mb": 0.0,
            "free_disk_bytes": self._free,
            "calibration_id": r.calibration_id if r else "",
            "ended_by": sp.ended_by,
            "counters": counters,
        }
        log.info(
            "run %d spill %d ended (%s): EOT %d, %d particles, %d accepted, losses %s; writer queue %d",
            sp.run,
            sp.number,
            sp.ended_by,
            counters["n_beam"],
            counters["n_particles"],
            c["n_accepted"],
            {k: v for k, v in sp.losses.items() if v} or "none",
            self.writer.queue_depth if self.writer else 0,
        )
        if sp.record:
            import concurrent.futures

            fut: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
            final = SpillFinal(
                status=status,
                t_end_ns=t_end_ns,
                counters=counters,
                losses=sp.losses.as_dict(),
                frontend=sp.frontend,
                histograms=hists,
                summary=summary,
            )
            try:
                await self._to_writer(("close", final, fut))
            except asyncio.CancelledError:  # stopping: the close was queued anyway, its summary goes out
                self._track_closing(asyncio.create_task(self._after_close(fut, summary, hists, sp)))
                raise
            self._track_closing(asyncio.create_task(self._after_close(fut, summary, hists, sp)))
        else:
            summary["failure"] = sp.fail_reason
            self._track_closing(asyncio.create_task(self._after_close(None, summary, hists, sp)))

    def _track_closing(self, task: asyncio.Task[None]) -> None:
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _after_close(self, fut: Any, summary: dict[str, Any], hists: dict[str, Any], sp: Spill) -> None:
        try:
            if fut is not None:
                res: WriteResult = await asyncio.wrap_future(fut)
                summary["write_seconds"] = round(res.write_seconds, 4)
                summary["write_mb"] = round(res.bytes / 1e6, 3)
                summary["n_events_written"] = res.n_events_written
                if res.path is not None:
                    summary["file"] = res.path.name
                if res.status == "failed":
                    summary["status"] = "failed"
                    summary["failure"] = res.error
                    self.alarms["write"] = f"run {res.run} spill {res.spill}: {res.error}"
                    lost = res.n_events_lost
                    self.losses_run["write_error"] += lost
                    sp.losses["write_error"] += lost
                    summary["losses"] = sp.losses.as_dict()
                    log.error(
                        "run %d spill %d failed: %s (%d events lost)", res.run, res.spill, res.error, lost
                    )
                else:
                    self.alarms.pop("write", None)
            self._free = free_bytes(self.data_dir)
            summary["free_disk_bytes"] = self._free
            summary["histograms"] = histograms_json(hists)
            self.spills_run += 1
            self.last_summary = summary
            self._publish(protocol.Summary.of(protocol.Summary.KIND_SPILL, json.dumps(summary)), keep=True)
            self._notify("spill_summary", summary)
            log.info(
                "spill summary run %d spill %d: status %s, file %s, %d events written, %.3f s writing",
                summary["run"],
                summary["spill"],
                summary["status"],
                summary["file"],
                summary["n_events_written"],
                summary["write_seconds"],
            )
        finally:
            self._closing.discard(asyncio.current_task())
            self._maybe_stop_after_run()

    # ------------------------------------------------------------ housekeeping and publishing
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            r, sp = self.run_state, self.spill
            if r is not None and r.readout.pending:
                for batch in r.readout.expire(now, self.config.readout.fragment_timeout_s):
                    await self._events(batch)
                self._absorb_readout_losses()
            if sp is not None and now - sp.last_msg > self.config.readout.spill_timeout_s:
                sp.ended_by = "spill timeout"
                self._loss("spill_end_missing", 1, f"no message for {self.config.readout.spill_timeout_s} s")
                await self._end_spill(complete=False)
            self._flush_monitor(now)
            if now >= self._next_status:
                self._next_status = now + self.config.monitor.status_period_s
                self._forget_silent_frontends(now)
                self._publish_status()
            self._drain_outbox()
            with contextlib.suppress(zmq.Again):
                while True:  # subscription messages of XPUB (not used, but drained)
                    self.pub.recv(flags=zmq.NOBLOCK)

    def _forget_silent_frontends(self, now: float) -> None:
        keep = {x.ident for x in (self.run_state, self.spill) if x is not None}
        for ident, fe in list(self.frontends.items()):
            if now - fe.last_seen > FORGET_FRONTEND_S and ident not in keep:
                del self.frontends[ident]
                self.tracker.forget(ident)
                log.info("front-end %s forgotten: silent for %.0f s", ident.hex(), now - fe.last_seen)

    def _to_monitor(self, batch: EventBatch, spill: int) -> None:
        if self._monitor and spill != self._monitor_spill:
            self._flush_monitor(time.monotonic(), force=True)  # one EVENTS message never mixes spills
        self._monitor_spill = spill
        room = self.config.monitor.max_events_per_batch - self._monitor_n
        if room <= 0:
            self._monitor_skipped(len(batch))
            return
        if len(batch) > room:
            self._monitor_skipped(len(batch) - room)
            batch = batch.take(slice(0, room))
        self._monitor.append(batch)
        self._monitor_n += len(batch)

    def _monitor_skipped(self, n: int) -> None:
        self._monitor_skipped_since += n
        self._loss("monitor_skipped", n, f"{n} events not sent to the DQM (sampling)")

    def _flush_monitor(self, now: float, force: bool = False) -> None:
        if not self._monitor or (now < self._next_monitor and not force):
            return
        self._next_monitor = now + 1.0 / self.config.monitor.batches_per_s
        parts = [b for b in self._monitor if len(b)]
        self._monitor, self._monitor_n = [], 0
        if not parts:
            return
        n = sum(len(b) for b in parts)

        def cat(name: str, axis: int = 0) -> np.ndarray:  # only what the DQM gets (not the waveforms)
            return np.concatenate([getattr(b, name) for b in parts], axis=axis)

        msg = protocol.Events(
            run=self.run_state.number if self.run_state else 0,
            spill=self._monitor_spill,
            n_events=n,
            n_skipped=self._monitor_skipped_since,
            event_id=cat("event_id"),
            t_ns=cat("t_ns"),
            trigger_mask=cat("trigger_mask"),
            sums=cat("sums", axis=1),
            energy=cat("energy"),
            peak_time=cat("peak_time"),
            waveforms=parts[-1].waveforms[-1:],
        )
        if self._publish(msg, keep=False):
            self._monitor_skipped_since = 0
        else:
            self._monitor_skipped(n)

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

    def status(self) -> dict[str, Any]:
        """The status document (published every second as SUMMARY kind 2)."""
        now = time.monotonic()
        sp, r = self.spill, self.run_state
        losses = self.losses_run.as_dict()
        return {
            "state": "in_spill" if sp is not None else "running" if r is not None else "idle",
            "run": r.number if r else (sp.run if sp else None),
            "spill": sp.number if sp else None,
            "uptime_s": round(now - self.started, 3),
            "frontends": {
                fe.ident.hex(): {
                    "last_seen_s": round(now - fe.last_seen, 3),
                    "state": fe.state,
                    "name": fe.name,
                }
                for fe in self.frontends.values()
            },
            "losses_run": losses,
            "eot_run": self.eot_run,
            "events_run": self.events_run,
            "spills_run": self.spills_run,
            "free_disk_bytes": self._free,
            "data_dir": str(self.data_dir),
            "alarms": dict(self.alarms),
            "writer_queue": self.writer.queue_depth if self.writer else 0,
            "pending_requests": len(r.readout.pending) if r else 0,
            "calibration_id": r.calibration_id if r else None,
            "calibration": self.calibration,
        }

    def _publish_status(self) -> None:
        doc = self.status()
        self._publish(protocol.Summary.of(protocol.Summary.KIND_STATUS, json.dumps(doc)), keep=False)
        self._notify("status", doc)

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


def _name_from_info(info: str) -> str:
    try:
        doc = json.loads(info)
    except json.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        for key in ("name", "frontend", "program"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return ""
