"""The DAQ's run and spill state machine, without I/O: messages and times in, typed actions out.

:class:`Recorder` is the core of ``na64 daq``; :class:`daq.service.DaqService` is its shell. The shell
turns socket events, timers and writer results into calls, and the returned actions into I/O:

=========================================  ===========================================================
call                                       when
=========================================  ===========================================================
``receive(sender, frames, now)``           a front-end message arrived (``handle`` for a decoded one)
``tick(now)``                              every ~50 ms: fragment and spill timeouts, DQM feed, status
``send_failed(send, now)``                 a :class:`Send` could not be delivered
``events_not_published(action, now)``      a :class:`PublishEvents` could not be sent
``file_closed(result, now)``               the writer finished a :class:`~daq.writer_commands.CloseSpill`
``stop(now)`` / ``flush(now)``             the service stops: close the open spill / last feed and status
=========================================  ===========================================================

Actions, executed by the shell in the order given: :class:`Send` (a message to one front-end),
:class:`~daq.writer_commands.OpenSpill`, :class:`~daq.writer_commands.AppendEvents`,
:class:`~daq.writer_commands.CloseSpill` (to the writer, in order, with back-pressure),
:class:`PublishEvents`, :class:`PublishSummary`, :class:`PublishStatus` (to the DQM), :class:`LossCounted`,
:class:`Log` and :class:`RunFinished`.

No sockets, files, threads, event loops or clocks here: times come in as ``now`` (monotonic seconds),
and two questions about the outside world (free disk space, the calibration constants of a run) are
asked through the :class:`Environment` the shell passes in. Every message is attributed to its sender (a
ZeroMQ identity); the front-end that sends RUN_START owns the run (:attr:`Run.owner`).

Run ownership (docs/protocol.md, "Run ownership"): control messages and slices of a run are taken only
from its owner, fragments only from the front-ends that own their readout group (:attr:`Run.members`);
anything else is refused with a NACK (rate-limited) and counted in :attr:`Recorder.rejected`, never in the
run's or the spill's losses. Repeated control messages (a front-end's retry) are recognised and ignored.

Losses are counted by reason (:class:`daq.contract.LossReason`), announced once per spill per reason
(``LossCounted.first``), and reported in the spill file, the spill summary and the status document.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from daq import detector, protocol
from daq.batch import EventBatch
from daq.builder import Readout, SpillHistograms, compare_counters, histograms_json
from daq.contract import (
    FRONTEND_COUNTERS,
    NOT_DATA_LOSS,
    ChannelConstants,
    DaqState,
    Losses,
    LossReason,
    SpillStatus,
    decode_error_kind,
    is_breakdown,
)
from daq.errors import ConfigError, Na64Error, ProtocolError
from daq.monitor_feed import MonitorFeed
from daq.summary import CalibrationStatus, DaqStatus, FrontEndStatus, Histogram, SpillSummary, Triggers
from daq.trigger import PrimitiveBatch, Trigger
from daq.waveform import RecoConfig, reconstruct
from daq.writer_commands import (
    AppendEvents,
    CloseSpill,
    OpenSpill,
    Recovered,
    SpillFinal,
    SpillHeader,
    WriteResult,
)

if TYPE_CHECKING:  # only the type: importing daq.daq_config loads the writer (h5py)
    from daq.daq_config import DaqConfig

#: a front-end streaming data of a run the DAQ does not know is asked to re-announce it at most this often
ANNOUNCE_EVERY_S = 1.0

#: a front-end not heard from for this long is forgotten (its status entry and sequence number): every
#: ``na64 simulate`` or ``replay`` run and every reconnect is a new ZeroMQ identity, and a DAQ runs for
#: weeks (a live front-end sends a heartbeat every second)
FORGET_FRONTEND_S = 3600.0
#: front-ends remembered at most (status entries, sequence numbers): a new identity beyond this makes the
#: DAQ forget the longest-silent one outside the run (counted as ``frontends_evicted`` in ``rejected``)
MAX_FRONTENDS = 64
#: NACKs sent to one front-end per second at most (a burst of NACK_BURST); the rest are counted only
NACK_RATE_PER_S = 10.0
NACK_BURST = 20.0
#: a repeated kind of log line (a refusal reason, new connections) is written at most once per this many
#: seconds, with the number held back since the last one
LOG_INTERVAL_S = 10.0
#: message types a front-end sends
_FRONTEND_TYPES = protocol.FRONTEND_TYPES
_ALL_GROUPS = detector.ALL_GROUPS_MASK

_FRONTEND_STATE_NAMES = {s.value: s.name.lower() for s in protocol.FrontEndState}


# ---------------------------------------------------------------- actions
@dataclass(frozen=True, eq=False)
class Send:
    """Send ``message`` (already numbered for that front-end) to front-end ``to``."""

    to: bytes
    message: protocol.Message


@dataclass(frozen=True, eq=False)
class PublishEvents:
    """Publish a sample of built events to the DQM (never waits: the shell reports a failure)."""

    message: protocol.Events


@dataclass(frozen=True)
class PublishSummary:
    """Publish a spill's summary to the DQM (kept and retried if the socket cannot take it now)."""

    summary: SpillSummary


@dataclass(frozen=True)
class PublishStatus:
    """Publish the DAQ's status (replaced by the next one if the socket cannot take it)."""

    status: DaqStatus


@dataclass(frozen=True)
class LossCounted:
    """``n`` of ``reason`` were counted; ``first``: the first of that reason in this spill (to be logged)."""

    reason: str
    n: int
    where: str
    detail: str
    first: bool


@dataclass(frozen=True)
class Log:
    """A log record: ``message % args`` at ``level``, with the exception's traceback if ``error``."""

    level: int
    message: str
    args: tuple[object, ...] = ()
    error: BaseException | None = None


@dataclass(frozen=True)
class RunFinished:
    """RUN_STOP was processed and the run's last spill file is closed (``--stop-after-run`` stops here)."""

    run: int


@dataclass(frozen=True)
class PublishRunSummary:
    """A run ended (RUN_STOP) or the DAQ stops inside one: the run's record (its spills and their status,
    the gaps: spills or slices not recorded and why, the losses outside spills), to publish (SUMMARY kind
    3) and to keep as ``runNNNNNN_summary.json`` next to the spill files."""

    run: int
    document: dict[str, Any]


@dataclass(frozen=True)
class RunRefused:
    """A run is not recorded: its calibration cannot be used (``--stop-after-run`` stops at once, and the
    DAQ exits non-zero: :attr:`Recorder.refused`)."""

    run: int
    problem: str


Action = (
    Send
    | OpenSpill
    | AppendEvents
    | CloseSpill
    | PublishEvents
    | PublishSummary
    | PublishStatus
    | LossCounted
    | Log
    | RunFinished
    | RunRefused
    | PublishRunSummary
)


# ---------------------------------------------------------------- the outside world
@dataclass(frozen=True)
class CalibrationChoice:
    """The constants to record a run with, or None when none can be used (the run is not recorded:
    never a silent fallback to other constants); ``status`` says which and why, in the status document."""

    constants: ChannelConstants | None
    status: CalibrationStatus


class Environment(Protocol):
    """What the recorder asks the outside world (the shell answers from the disk, the files, the writer)."""

    def calibration(self, run: int) -> CalibrationChoice: ...
    def free_bytes(self) -> int: ...
    def writer_queue(self) -> int: ...
    def existing_spills(self, run: int) -> frozenset[int]: ...


class LogLimiter:
    """At most one log line per key every ``interval`` seconds: ``allow`` says whether to write one now
    (returning how many were held back since the last one) or not (None: counted, held back)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[object, float] = {}
        self._held: Counter[object] = Counter()

    def allow(self, key: object, now: float) -> int | None:
        if now >= self._next.get(key, float("-inf")):
            self._next[key] = now + self.interval
            return self._held.pop(key, 0)
        self._held[key] += 1
        return None


# ---------------------------------------------------------------- state
@dataclass
class FrontEnd:
    ident: bytes
    last_seen: float = 0.0
    state: str = "unknown"
    name: str = ""
    seq_out: protocol.SequenceCounter = field(default_factory=protocol.SequenceCounter)
    decode_errors_since_good: int = 0
    asked_at: float = float("-inf")  # when it was last asked to re-announce its run (ANNOUNCE_REQUEST)
    refused: dict[int, str] = field(default_factory=dict)  # runs refused to it, and why
    #: its CURVE public key (Z85) when the DAQ runs with CURVE, else ""
    key: str = ""
    nack_tokens: float = NACK_BURST
    nack_time: float = 0.0


@dataclass
class Gap:
    """Data of a run that is not in its spill files: a spill (or the slices of it) the DAQ saw only part
    of, or none of (it started or was restarted mid-run, the run was refused), or recovered after a
    crash. ``frontend``: the front-end's SPILL_END counters when the DAQ saw them."""

    run: int
    spill: int
    reason: str
    n_messages: int = 0
    n_slices: int = 0
    n_particles: int = 0
    frontend: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Run:
    number: int
    owner: bytes  # the front-end that sent RUN_START
    trigger: Trigger
    readout: Readout
    prim_channels: np.ndarray
    n_samples: int
    sample_period_ns: float
    frontend_info: str
    calibration_id: str
    #: spills of this run that already have a file (never overwritten: such a spill is not recorded)
    existing: frozenset[int] = frozenset()
    #: the owner's CURVE key ("" without CURVE): a reconnected owner (new identity, same key) is the owner
    owner_key: str = ""
    #: front-end identity -> the readout groups (bit mask) whose FRAGMENTs it may send; the owner is one
    members: dict[bytes, int] = field(default_factory=dict)
    #: the highest spill number started in the run (spill numbers go up: an older one is never reopened)
    last_spill: int = 0
    #: the last spill ended by its SPILL_END (a repeated SPILL_END of it is a retry)
    ended_spill: int = 0


@dataclass
class Spill:
    """Book-keeping of the spill being recorded."""

    run: int
    number: int
    owner: bytes
    t_start_ns: int
    started: float  # monotonic
    last_msg: float
    hist: SpillHistograms
    losses: Losses = field(default_factory=Losses)
    counters: Counter[str] = field(default_factory=Counter)
    slices: set[int] = field(default_factory=set)
    beam_time_ns: int = 0
    record: bool = True  # False: failed before it started (free space)
    fail_reason: str = ""
    frontend: dict[str, int] = field(default_factory=dict)
    t_end_ns: int = 0
    ended_by: str = ""
    logged: set[str] = field(default_factory=set)
    n_events_built: int = 0


@dataclass
class _Closing:
    """A spill whose file the writer is closing: its summary waits for the result."""

    summary: SpillSummary
    losses: Losses


class Recorder:
    """The run and spill state of ``na64 daq``; every public method returns the actions to execute.

    ``config_record``: the configuration stored in every spill file; ``data_dir``: where the files go
    (for messages and the status); ``started``: the monotonic time the DAQ started (for its uptime).
    Not thread-safe: one caller at a time (the service's event loop).
    """

    def __init__(
        self,
        config: DaqConfig,
        environment: Environment,
        *,
        config_record: Mapping[str, Any] | None = None,
        data_dir: str = "",
        started: float = 0.0,
    ) -> None:
        self.config = config
        self.env = environment
        self.config_record = dict(config_record or {})
        self.data_dir = data_dir
        self.started = started
        self.frontends: dict[bytes, FrontEnd] = {}
        self.tracker = protocol.SequenceTracker()
        self.run: Run | None = None
        self.spill: Spill | None = None
        self.losses_run = Losses()
        #: losses outside any spill (between spills, before a run): the run's, never a spill's
        self.losses_outside = Losses()
        self._idle_logged: set[str] = set()
        #: the current run's gaps, by (run, spill)
        self.gaps: dict[tuple[int, int], Gap] = {}
        #: the current run's spills as published: spill -> (status, file, events written)
        self.run_spills: dict[tuple[int, int], dict[str, Any]] = {}
        #: what this DAQ lost, one line each (the service exits non-zero and prints them)
        self.lost: list[str] = []
        self.eot_run = 0
        self.events_run = 0
        self.spills_run = 0
        self.alarms: dict[str, str] = {}
        #: the calibration of the current (or last) run, as in the status document
        self.calibration = CalibrationStatus()
        #: why runs were not recorded (no usable calibration): the DAQ exits non-zero
        self.refused: list[str] = []
        self.last_summary: SpillSummary | None = None
        self.closing: dict[tuple[int, int], _Closing] = {}
        self.run_stopped = False
        self.free_disk_bytes = environment.free_bytes()
        m = config.monitor
        self.feed = MonitorFeed(m.max_events_per_batch, m.batches_per_s)
        self._next_status = 0.0
        self._out: list[Action] = []
        #: messages refused and not counted as the run's losses, by reason (the status's ``rejected``)
        self.rejected: Counter[str] = Counter()
        #: control messages recognised as retries (ignored)
        self.retries = 0
        #: (run, owner identity, owner key) of the last run stopped by RUN_STOP: a repeated RUN_STOP is a retry
        self.stopped: tuple[int, bytes, str] | None = None
        self._limiter = LogLimiter(LOG_INTERVAL_S)
        self._last_now = started  # the latest time a message came in (for lookups without a time)

    # ------------------------------------------------------------ entry points
    def receive(self, sender: bytes, frames: Sequence[Any], now: float, key: str = "") -> list[Action]:
        """A front-end's message as received (frames after the identity); malformed ones are counted
        (as the run's losses when the sender is in the run, else in :attr:`rejected`) and NACKed.
        ``key``: the sender's CURVE public key (Z85) when the DAQ runs with CURVE."""
        try:
            fe = self._frontend(sender, now, key)
            try:
                msg = protocol.decode(frames)
            except ProtocolError as e:
                fe.decode_errors_since_good += 1
                if self._member(fe):
                    self._loss(LossReason.DECODE_ERROR, 1, str(e))
                    self._loss(decode_error_kind(_kind(e)), 1, str(e))
                else:
                    self._reject(protocol.NackCode.MALFORMED, f"{_kind(e)}: {e}", fe, now)
                self._nack(fe, None, protocol.NackCode.MALFORMED, str(e), now)
                return self._take()
        except Exception as e:
            return self.internal_error(e)
        return self.handle(sender, msg, now, key)

    def handle(self, sender: bytes, msg: protocol.Message, now: float, key: str = "") -> list[Action]:
        """A decoded message from front-end ``sender``. One bad message never stops the DAQ: an error is
        logged (and counted as ``internal_error`` when it is a bug)."""
        try:
            self._handle(sender, msg, now, key)
        except Na64Error as e:
            self._log(logging.ERROR, "message handling failed: %s", e)
        except Exception as e:
            self._internal_error(e)
        return self._take()

    def tick(self, now: float) -> list[Action]:
        """Housekeeping: expire fragments, close a silent spill, feed the DQM, status when due."""
        r, sp = self.run, self.spill
        if r is not None and r.readout.pending:
            for batch in r.readout.expire(now, self.config.readout.fragment_timeout_s):
                self._events(batch, now)
            self._absorb_readout_losses()
        if sp is not None and now - sp.last_msg > self.config.readout.spill_timeout_s:
            sp.ended_by = "spill timeout"
            self._loss(
                LossReason.SPILL_END_MISSING, 1, f"no message for {self.config.readout.spill_timeout_s} s"
            )
            self._end_spill(complete=False, now=now)
        self._flush_feed(now)
        if now >= self._next_status:
            self._next_status = now + self.config.monitor.status_period_s
            self._forget_silent_frontends(now)
            self._out.append(PublishStatus(self.status(now)))
        return self._take()

    def send_failed(self, send: Send, now: float) -> list[Action]:
        """A message could not be delivered (the front-end is gone or not reading)."""
        msg, r = send.message, self.run
        if isinstance(msg, protocol.ReadoutRequest):
            if r is not None and send.to == r.owner:
                r.readout.cancel(msg.spill, msg.slice_id)
            self._loss(
                LossReason.REQUEST_FAILED, 1, f"READOUT_REQUEST for slice {msg.slice_id} could not be sent"
            )
        return self._take()

    def events_not_published(self, action: PublishEvents, now: float) -> list[Action]:
        """The DQM's socket could not take an EVENTS message: its events are skipped (counted)."""
        self.feed.not_sent(action.message)
        n = action.message.n_events
        self._loss(LossReason.MONITOR_SKIPPED, n, f"{n} events not sent to the DQM (sampling)")
        return self._take()

    def file_closed(self, result: WriteResult, now: float) -> list[Action]:
        """The writer closed (or failed) a spill's file: complete and publish its summary."""
        c = self.closing.pop((result.run, result.spill), None)
        if c is None:
            self._log(logging.ERROR, "writer result for unknown spill %d/%d", result.run, result.spill)
            return self._take()
        s = dataclasses.replace(
            c.summary,
            write_seconds=round(result.write_seconds, 4),
            write_mb=round(result.bytes / 1e6, 3),
            n_events_written=result.n_events_written,
            file=result.path.name if result.path is not None else None,
        )
        if result.status == SpillStatus.FAILED:
            self.alarms["write"] = f"run {result.run} spill {result.spill}: {result.error}"
            lost = result.n_events_lost
            self.losses_run[LossReason.WRITE_ERROR] += lost
            c.losses[LossReason.WRITE_ERROR] += lost
            s = dataclasses.replace(
                s, status=SpillStatus.FAILED, failure=result.error, losses=c.losses.as_dict()
            )
            self._log(
                logging.ERROR,
                "run %d spill %d failed: %s (%d events lost)",
                result.run,
                result.spill,
                result.error,
                lost,
            )
        elif result.error:  # closed, but not as asked: incomplete after a write error, or a duplicate name
            self._file_closed_with_error(result, c)
            s = dataclasses.replace(
                s,
                status=SpillStatus(result.status),
                failure=result.error,
                losses=c.losses.as_dict(),
            )
        else:
            self.alarms.pop("write", None)
        self._publish_summary(s)
        return self._take()

    def stop(self, now: float) -> list[Action]:
        """The service stops: the open spill is closed as incomplete ("stopped")."""
        sp = self.spill
        if sp is not None:
            sp.ended_by = sp.ended_by or "stopped"
            self._end_spill(complete=False, now=now)
        return self._take()

    def flush(self, now: float) -> list[Action]:
        """Last words before the service exits: the buffered events and the status."""
        self._flush_feed(now, force=True)
        if self.run is not None:
            self._publish_run_summary(self.run.number, finished=False)
        self._out.append(PublishStatus(self.status(now)))
        return self._take()

    def not_authorized(self, address: str, now: float) -> list[Action]:
        """A CURVE handshake was refused (the peer's key is not in the allow-list): counted in
        ``rejected`` as ``not_authorized``, logged at most every LOG_INTERVAL_S."""
        self.rejected["not_authorized"] += 1
        held = self._limiter.allow("not_authorized", now)
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            self._log(logging.WARNING, "CURVE handshake from %s refused: key not allowed%s", address, more)
        return self._take()

    def internal_error(self, error: BaseException) -> list[Action]:
        """A bug while handling a message (in the recorder or the shell): logged, counted, the DAQ goes on."""
        self._internal_error(error)
        return self._take()

    def status(self, now: float) -> DaqStatus:
        """The status document (published every ``monitor.status_period_s``)."""
        sp, r = self.spill, self.run
        state = DaqState.IN_SPILL if sp is not None else DaqState.RUNNING if r is not None else DaqState.IDLE
        return DaqStatus(
            state=state,
            run=r.number if r else (sp.run if sp else None),
            spill=sp.number if sp else None,
            uptime_s=round(now - self.started, 3),
            frontends={
                fe.ident.hex(): FrontEndStatus(round(now - fe.last_seen, 3), fe.state, fe.name)
                for fe in self.frontends.values()
            },
            run_frontends=tuple(m.hex() for m in r.members) if r else (),
            rejected=dict(sorted(self.rejected.items())),
            losses_run=self.losses_run.as_dict(),
            losses_outside_spills=self.losses_outside.as_dict(),
            gaps={
                f"run {g.run} spill {g.spill}": f"{g.reason}: {g.detail or _gap_text(g)}"
                for g in self.gaps.values()
            },
            eot_run=self.eot_run,
            events_run=self.events_run,
            spills_run=self.spills_run,
            free_disk_bytes=self.free_disk_bytes,
            data_dir=self.data_dir,
            alarms=dict(self.alarms),
            writer_queue=self.env.writer_queue(),
            pending_requests=len(r.readout.pending) if r else 0,
            calibration_id=r.calibration_id if r else None,
            calibration=self.calibration,
        )

    # ------------------------------------------------------------ plumbing
    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _log(self, level: int, message: str, *args: object, error: BaseException | None = None) -> None:
        self._out.append(Log(level, message, args, error))

    def _internal_error(self, error: BaseException) -> None:
        self._log(logging.ERROR, "unexpected error handling a message; the DAQ goes on", error=error)
        self._loss(LossReason.INTERNAL_ERROR, 1, "internal error (see traceback)")

    def _loss(self, reason: str, n: int = 1, detail: str = "") -> None:
        if n <= 0:
            return
        self.losses_run[reason] += n
        sp = self.spill
        (sp.losses if sp is not None else self.losses_outside)[reason] += n
        logged = sp.logged if sp is not None else self._idle_logged
        first = reason not in logged
        logged.add(reason)
        where = f"run {sp.run} spill {sp.number}" if sp is not None else "outside a spill"
        self._out.append(LossCounted(str(reason), n, where, detail or f"{n}", first))

    def _absorb_readout_losses(self, detail: str = "") -> None:
        r = self.run
        if r is None or not r.readout.losses:
            return
        for k, v in r.readout.losses.items():
            self._loss(k, v, detail or f"{v} fragments")
        r.readout.losses.clear()

    def _frontend(self, ident: bytes, now: float | None = None, key: str = "") -> FrontEnd:
        """The front-end of an identity, remembered (at most MAX_FRONTENDS); marks it as heard ``now``
        (None: only looked up, e.g. to answer it)."""
        fe = self.frontends.get(ident)
        t = now if now is not None else self._last_now
        if fe is None:
            if len(self.frontends) >= MAX_FRONTENDS:
                self._evict_one(t)
            fe = self.frontends[ident] = FrontEnd(ident, last_seen=t, key=key, nack_time=t)
            held = self._limiter.allow("connected", t)
            if held is not None:
                more = f" ({held} more since the last such line)" if held else ""
                self._log(logging.INFO, "front-end %s connected%s", ident.hex(), more)
        if now is not None:
            fe.last_seen = self._last_now = now
        if key:
            fe.key = key
        return fe

    def _keep(self) -> set[bytes]:
        """Identities never forgotten: the run's front-ends and the open spill's owner."""
        keep = set(self.run.members) | {self.run.owner} if self.run is not None else set()
        if self.spill is not None:
            keep.add(self.spill.owner)
        return keep

    def _evict_one(self, now: float) -> None:
        keep = self._keep()
        candidates = [fe for i, fe in self.frontends.items() if i not in keep]
        if not candidates:
            return
        old = min(candidates, key=lambda fe: fe.last_seen)
        del self.frontends[old.ident]
        self.tracker.forget(old.ident)
        self.rejected["frontends_evicted"] += 1
        held = self._limiter.allow("evicted", now)
        if held is not None:
            self._log(
                logging.WARNING,
                "more than %d front-ends: %s (silent %.0f s) forgotten%s",
                MAX_FRONTENDS,
                old.ident.hex(),
                now - old.last_seen,
                f" ({held} more since the last such line)" if held else "",
            )

    def _forget_silent_frontends(self, now: float) -> None:
        keep = self._keep()
        for ident, fe in list(self.frontends.items()):
            if now - fe.last_seen > FORGET_FRONTEND_S and ident not in keep:
                del self.frontends[ident]
                self.tracker.forget(ident)
                self._log(
                    logging.INFO, "front-end %s forgotten: silent for %.0f s", ident.hex(), now - fe.last_seen
                )

    # ------------------------------------------------------------ dispatch
    def _handle(self, sender: bytes, msg: protocol.Message, now: float, key: str = "") -> None:
        fe = self._frontend(sender, now, key)
        self._adopt_reconnected_owner(fe)
        member = self._member(fe)
        try:
            self.tracker.check(sender, msg.seq)
        except protocol.SequenceGapError as e:
            missing = e.missing - fe.decode_errors_since_good  # the undecodable ones are counted already
            if member:
                self._loss(LossReason.SEQUENCE_GAP, missing, str(e))
            elif missing > 0:
                self.rejected[LossReason.SEQUENCE_GAP] += 1
        except protocol.SequenceRepeatError as e:
            if member:
                self._loss(LossReason.DUPLICATE, 1, str(e))
            else:
                self.rejected[LossReason.DUPLICATE] += 1
            return
        fe.decode_errors_since_good = 0
        refusal = self._refusal(fe, msg, now)
        if refusal is not None:
            self._refuse_message(fe, msg, *refusal, now=now)
            return
        if self._is_retry(fe, msg, now):
            return
        if self.spill is not None and sender == self.spill.owner:
            self.spill.last_msg = now
        match msg:
            case protocol.Slice():
                self._on_slice(sender, msg, now)
            case protocol.Fragment():
                self._on_fragment(sender, msg, now)
            case protocol.Heartbeat(state=state):
                fe.state = _FRONTEND_STATE_NAMES.get(state, str(state))
                self._check_heartbeat_run(sender, msg, now)
            case protocol.SpillStart():
                self._on_spill_start(sender, msg, now)
            case protocol.SpillEnd():
                self._on_spill_end(sender, msg, now)
            case protocol.RunStart() if self._joins(fe, msg, now):
                pass
            case protocol.RunStart():
                self._on_run_start(sender, msg, now)
            case protocol.RunStop():
                self._on_run_stop(msg, now)
            case _:
                self._loss(LossReason.UNEXPECTED_MESSAGE, 1, f"{msg.TYPE.name} is not a front-end message")

    # ------------------------------------------------------------ ownership, refusals, retries
    def _member(self, fe: FrontEnd) -> bool:
        """Whether ``fe`` is one of the current run's front-ends (its messages are the run's business)."""
        r = self.run
        return r is not None and (fe.ident in r.members or self._owns(fe, r))

    @staticmethod
    def _owns(fe: FrontEnd, r: Run) -> bool:
        return fe.ident == r.owner or (r.owner_key != "" and fe.key == r.owner_key)

    def _adopt_reconnected_owner(self, fe: FrontEnd) -> None:
        """With CURVE, the owner's key on a new identity is the owner reconnected: the run follows it."""
        r = self.run
        if r is not None and fe.ident != r.owner and r.owner_key and fe.key == r.owner_key:
            self._log(
                logging.WARNING,
                "run %d: its front-end reconnected (same CURVE key, identity %s -> %s)",
                r.number,
                r.owner.hex(),
                fe.ident.hex(),
            )
            self._move_owner(r, fe)

    def _move_owner(self, r: Run, fe: FrontEnd) -> None:
        mask = r.members.pop(r.owner, _ALL_GROUPS)
        r.owner, r.owner_key = fe.ident, fe.key
        r.members[fe.ident] = mask
        if self.spill is not None:
            self.spill.owner = fe.ident

    def _owner_silent_s(self, r: Run, now: float) -> float:
        owner = self.frontends.get(r.owner)
        return now - owner.last_seen if owner is not None else float("inf")

    def _refusal(
        self, fe: FrontEnd, msg: protocol.Message, now: float
    ) -> tuple[protocol.NackCode, str | None, str] | None:
        """Why ``msg`` must be refused: (NACK code, the loss reason when the sender is in the run, detail),
        or None when it may be handled. Ownership first, then the run and spill it names."""
        r, sp, t = self.run, self.spill, msg.TYPE
        name = t.name
        code = protocol.NackCode
        if t not in _FRONTEND_TYPES:
            return code.NOT_ACCEPTED, LossReason.UNEXPECTED_MESSAGE, f"{name} is not a front-end message"
        if t == protocol.MessageType.HEARTBEAT:
            return None
        if r is None:  # no run: nobody owns anything (data of a run the DAQ does not know: run recovery)
            return None
        if isinstance(msg, protocol.RunStart):
            if self._owns(fe, r) or (msg.run == r.number and fe.ident in r.members):
                return None
            silent = self._owner_silent_s(r, now)
            if silent > self.config.readout.owner_timeout_s or self._may_join(msg):
                return None  # the owner is gone (a restarted front-end takes over), or a joining one
            return (
                code.NOT_OWNER,
                None,
                f"run {r.number} belongs to front-end {r.owner.hex()} (silent for {silent:.1f} s: another "
                f"front-end may take it over after {self.config.readout.owner_timeout_s:g} s of silence)",
            )
        if t == protocol.MessageType.FRAGMENT:
            mask = r.members.get(fe.ident, _ALL_GROUPS if self._owns(fe, r) else 0)
            if not mask >> msg.source & 1:
                return (
                    code.NOT_OWNER,
                    None,
                    f"readout group {msg.source} of run {r.number} is not this front-end's",
                )
            return None
        if not self._owns(fe, r):
            return code.NOT_OWNER, None, f"{name}: run {r.number} belongs to front-end {r.owner.hex()}"
        if (
            t == protocol.MessageType.SPILL_START
            and msg.run == r.number
            and (sp is None or msg.spill != sp.number)
            and msg.spill <= r.last_spill
        ):
            return (  # a stale repeat: refused, no data lost (counted in ``rejected``)
                code.ALREADY_DONE,
                None,
                f"SPILL_START {msg.spill}: run {r.number} already had spill {r.last_spill} (spill numbers go up)",
            )
        return None

    def _refuse_message(
        self,
        fe: FrontEnd,
        msg: protocol.Message,
        nack: protocol.NackCode,
        loss: str | None,
        detail: str,
        *,
        now: float,
    ) -> None:
        """Refuse a message: the run's loss when its sender is in the run, else counted in ``rejected``; a
        NACK tells the sender."""
        if loss is not None and self._member(fe):
            self._loss(loss, 1, detail)
        else:
            self._reject(nack, detail, fe, now)
        self._nack(fe, msg, nack, detail, now)

    def _reject(self, nack: protocol.NackCode, detail: str, fe: FrontEnd, now: float) -> None:
        reason = nack.name.lower()
        self.rejected[reason] += 1
        held = self._limiter.allow(("rejected", reason), now)
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            self._log(
                logging.WARNING, "refused (%s) from front-end %s: %s%s", reason, fe.ident.hex(), detail, more
            )

    def _nack(
        self, fe: FrontEnd, msg: protocol.Message | None, nack: protocol.NackCode, detail: str, now: float
    ) -> None:
        """Tell a front-end its message was refused: a NACK, or RUN_ACK refused for a RUN_START (at most
        NACK_RATE_PER_S per front-end, else counted)."""
        fe.nack_tokens = min(NACK_BURST, fe.nack_tokens + (now - fe.nack_time) * NACK_RATE_PER_S)
        fe.nack_time = now
        if fe.nack_tokens < 1.0:
            self.rejected["nack_suppressed"] += 1
            return
        fe.nack_tokens -= 1.0
        answer: protocol.Message
        if isinstance(msg, protocol.RunStart):  # a RUN_START is answered by RUN_ACK (refused), as always
            answer = protocol.RunAck.of(msg.run, protocol.RunAck.REFUSED, f"{nack.name.lower()}: {detail}")
        else:
            answer = protocol.Nack.about(msg, nack, detail)
        self._out.append(Send(fe.ident, fe.seq_out.stamp(answer)))

    def _repeated_stop(self, fe: FrontEnd, msg: protocol.Message) -> bool:
        """A RUN_STOP of the run stopped last, with no run on since: a retry, whoever repeats it (outside
        a run there is nothing to stop, and each would write the run's summary again)."""
        st = self.stopped
        return st is not None and msg.run == st[0]

    def _is_retry(self, fe: FrontEnd, msg: protocol.Message, now: float) -> bool:
        """A control message repeating one already handled (a front-end's retry): ignored, counted, logged
        at most every LOG_INTERVAL_S."""
        r, sp = self.run, self.spill
        match msg:
            case protocol.SpillStart():
                retry = sp is not None and r is not None and msg.run == sp.run and msg.spill == sp.number
            case protocol.SpillEnd():
                retry = (
                    r is not None and msg.spill == r.ended_spill and (sp is None or sp.number != msg.spill)
                )
            case protocol.RunStop():
                retry = r is None and self._repeated_stop(fe, msg)
            case protocol.RunStart():
                retry = (
                    r is not None
                    and msg.seq != 0  # numbered from 0 again: the front-end restarted (below)
                    and msg.run == r.number
                    and fe.ident == r.owner
                    and msg.n_samples == r.n_samples
                    and np.array_equal(np.asarray(msg.prim_channels), r.prim_channels)
                )
            case _:
                retry = False
        if retry:
            self.retries += 1
            if isinstance(msg, protocol.RunStart):
                self._acknowledge(fe.ident, msg.run)  # it may not have had the first RUN_ACK
            held = self._limiter.allow(("retry", msg.TYPE), now)
            if held is not None:
                self._log(
                    logging.INFO,
                    "%s run %d spill %d repeated by front-end %s: a retry, ignored%s",
                    msg.TYPE.name,
                    msg.run,
                    msg.spill,
                    fe.ident.hex(),
                    f" ({held} more since the last such line)" if held else "",
                )
        return retry

    @staticmethod
    def _groups_of(msg: protocol.RunStart) -> int:
        """The readout groups a RUN_START claims (its info's ``groups`` list; all without one), as a mask."""
        groups = (
            _info_groups(bytes(msg.info).decode("utf-8", errors="replace")) if msg.info is not None else None
        )
        if groups is None:
            return _ALL_GROUPS
        return sum(1 << g for g in set(groups))

    def _may_join(self, msg: protocol.RunStart) -> bool:
        """Whether a RUN_START of the current run from another front-end joins it: it names readout groups
        in its info, and none of them is owned yet."""
        r = self.run
        if r is None or msg.run != r.number or msg.n_samples != r.n_samples:
            return False
        groups = (
            _info_groups(bytes(msg.info).decode("utf-8", errors="replace")) if msg.info is not None else None
        )
        if not groups:
            return False
        taken = 0
        for mask in r.members.values():
            taken |= mask
        return not self._groups_of(msg) & taken

    def _joins(self, fe: FrontEnd, msg: protocol.RunStart, now: float) -> bool:
        """A second front-end joins the run for its readout groups (see :meth:`_may_join`)."""
        r = self.run
        if r is None or self._owns(fe, r):
            return False
        if fe.ident in r.members:
            return True  # already in: a retry
        if not self._may_join(msg):
            return False
        r.members[fe.ident] = self._groups_of(msg)
        if msg.info is not None:
            fe.name = _name_from_info(bytes(msg.info).decode("utf-8", errors="replace"))
        groups = [detector.Detector(g).name for g in range(detector.N_GROUPS) if r.members[fe.ident] >> g & 1]
        self._log(
            logging.INFO, "run %d: front-end %s joins for %s", r.number, fe.ident.hex(), ", ".join(groups)
        )
        return True

    def _take_over(self, fe: FrontEnd, r: Run, now: float) -> None:
        """A RUN_START from another front-end while the owner has been silent for owner_timeout_s."""
        self._log(
            logging.WARNING,
            "run %d: front-end %s takes it over (its owner %s silent for %.1f s)",
            r.number,
            fe.ident.hex(),
            r.owner.hex(),
            self._owner_silent_s(r, now),
        )
        self._move_owner(r, fe)

    def _run_start_problem(self, msg: protocol.RunStart) -> str:
        """Why the DAQ cannot record a run this RUN_START describes ("" if it can)."""
        if msg.n_channels != detector.N_CHANNELS:
            return f"n_channels {msg.n_channels}: the detector has {detector.N_CHANNELS} channels"
        return ""

    # ------------------------------------------------------------ run
    def _on_run_start(self, sender: bytes, msg: protocol.RunStart, now: float) -> None:
        if self._refuse_reused_run(sender, msg):
            return
        fe = self.frontends[sender]
        problem = self._run_start_problem(msg)
        if problem:  # refused before anything changes: the current run (if any) goes on
            self._run_rejected(fe, msg, problem, now)
            return
        r = self.run
        if r is not None and not self._owns(fe, r):
            self._take_over(fe, r, now)  # reached only when the owner has been silent (see _refusal)
        if (
            r is not None
            and msg.run == r.number
            and msg.n_samples == r.n_samples
            and np.array_equal(np.asarray(msg.prim_channels), r.prim_channels)
        ):
            # the front-end restarted within its run (sequence numbers from 0): go on with the same run
            # and spill; requests it had not answered time out and are counted
            self._loss(
                LossReason.FRONTEND_RESTART, 1, f"front-end {sender.hex()} sent RUN_START {msg.run} again"
            )
            self._acknowledge(sender, msg.run)
            return
        if self.spill is not None:
            self.spill.ended_by = "run restarted"
            self._loss(
                LossReason.SPILL_END_MISSING,
                1,
                f"RUN_START {msg.run} while spill {self.spill.number} is open",
            )
            self._end_spill(complete=False, now=now)
        if self.run is not None:
            self._flush_run(now)
        constants = self._constants_for(msg.run)
        if constants is None:  # never a silent fallback to other constants than those asked for
            problem = self.calibration.problem
            self.run = None
            self.refused.append(problem)
            self._log(
                logging.ERROR,
                "%s: not recording it (--calibration nominal records with nominal constants)",
                problem,
            )
            self._loss(LossReason.RUN_REJECTED, 1, problem)
            self._out.append(RunRefused(msg.run, problem))
            self._refuse(sender, msg.run, problem)
            return
        info = bytes(msg.info).decode("utf-8", errors="replace") if msg.info is not None else "{}"
        fe.name = _name_from_info(info)
        prim = np.asarray(msg.prim_channels, dtype=np.uint16).copy()
        period_ns = msg.sample_period_ps / 1000.0
        try:
            trig = Trigger(self.config.trigger, constants, prim)
            readout = Readout(constants, msg.n_samples, len(prim), self.config.reco, period_ns, prim)
            _check_window(msg.n_samples, constants, self.config.reco, period_ns)
        except (ConfigError, ValueError) as e:
            self.run = None
            self._run_rejected(fe, msg, str(e), now)
            return
        self.run = Run(
            msg.run,
            sender,
            trig,
            readout,
            prim,
            msg.n_samples,
            period_ns,
            info,
            constants.version,
            owner_key=fe.key,
            members={sender: self._groups_of(msg)},
        )
        self.stopped = None
        self.alarms.pop("run", None)
        self.losses_run = Losses()
        self.eot_run = self.events_run = self.spills_run = 0
        self.run_stopped = False
        self._run_started(sender, msg)
        self._log(
            logging.INFO,
            "run %d started (front-end %s, %d primitive channels, %d samples, calibration %s)",
            msg.run,
            sender.hex(),
            len(prim),
            msg.n_samples,
            constants.version,
        )

    def _run_rejected(self, fe: FrontEnd, msg: protocol.RunStart, problem: str, now: float) -> None:
        self.alarms["run"] = f"run {msg.run} rejected: {problem}"
        self._log(logging.ERROR, "run %d rejected: %s", msg.run, problem)
        self._loss(LossReason.RUN_REJECTED, 1, problem)
        self._refuse(fe.ident, msg.run, problem)  # RUN_ACK refused (issue 16)

    def _constants_for(self, run: int) -> ChannelConstants | None:
        """The run's constants (the environment's choice), or None: the run must not be recorded."""
        choice = self.env.calibration(run)
        self.calibration = choice.status
        if choice.constants is not None:
            self.alarms.pop("calibration", None)
        else:
            self.alarms["calibration"] = f"{choice.status.problem}: not recorded"
        return choice.constants

    def _on_run_stop(self, msg: protocol.RunStop, now: float) -> None:
        if self.spill is not None:
            self.spill.ended_by = "run stopped"
            self._loss(LossReason.SPILL_END_MISSING, 1, f"RUN_STOP while spill {self.spill.number} is open")
            self._end_spill(complete=False, now=now)
        self._flush_run(now)
        held = 0 if self.run is not None else self._limiter.allow("stop_outside_run", now)
        if held is not None:  # outside a run (a run the DAQ does not know): at most one line per 10 s
            self._log(
                logging.INFO,
                "run %d stopped by the front-end (%d spills, EOT %d, %d events)%s",
                msg.run,
                self.spills_run + len(self.closing),  # the last files may still be closing
                self.eot_run,
                self.events_run,
                f" ({held} more RUN_STOPs outside a run since the last such line)" if held else "",
            )
        r = self.run
        self.stopped = (r.number, r.owner, r.owner_key) if r is not None else (msg.run, b"", "")
        self.run = None
        self.run_stopped = True
        self._check_run_finished(msg.run)

    def _flush_run(self, now: float) -> None:
        r = self.run
        if r is None:
            return
        leftovers = r.readout.flush()
        self._absorb_readout_losses()
        if leftovers:
            n = sum(len(b) for b in leftovers)
            self._loss(LossReason.WRITE_ERROR, n, f"{n} events completed outside a spill")

    def _check_run_finished(self, run: int) -> None:
        if self.run_stopped and self.spill is None and not self.closing:
            self.run_stopped = False
            self._publish_run_summary(run, finished=True)
            self._out.append(RunFinished(run))

    # ------------------------------------------------------------ spill
    def _on_spill_start(self, sender: bytes, msg: protocol.SpillStart, now: float) -> None:
        r = self.run
        if r is None or msg.run != r.number:
            self._unknown_run_data(sender, msg, now)
            return
        if self.spill is not None:
            self.spill.ended_by = "next spill started"
            self._loss(
                LossReason.SPILL_END_MISSING,
                1,
                f"SPILL_START {msg.spill} while spill {self.spill.number} is open",
            )
            self._end_spill(complete=False, now=now)
        h = self.config.histograms
        sp = Spill(
            run=r.number,
            number=msg.spill,
            owner=sender,
            t_start_ns=msg.t_start_ns,
            started=now,
            last_msg=now,
            hist=SpillHistograms(h.arrival_bins, h.ecal_bins, h.ecal_max_gev, h.prs_bins, h.prs_max_gev),
        )
        self.spill = sp
        r.last_spill = max(r.last_spill, msg.spill)
        r.trigger.new_spill()
        r.readout.new_spill()
        self.free_disk_bytes = free = self.env.free_bytes()
        need = int(self.config.storage.min_free_mb * 1e6)
        if sp.number in r.existing:
            self._spill_file_exists(sp)
        elif free < need:
            sp.record = False
            sp.fail_reason = f"only {free / 1e6:.0f} MB free in {self.data_dir} (need {need / 1e6:.0f} MB)"
            self.alarms["disk"] = sp.fail_reason
            self._log(
                logging.ERROR, "run %d spill %d will not be recorded: %s", r.number, sp.number, sp.fail_reason
            )
        else:
            self.alarms.pop("disk", None)
            header = SpillHeader(
                run=r.number,
                spill=sp.number,
                t_start_ns=msg.t_start_ns,
                config=self.config_record,
                trigger=self.config.trigger.thresholds(),
                calibration_id=r.calibration_id,
                frontend_info=r.frontend_info,
                prim_channels=r.prim_channels,
                n_samples=r.n_samples,
                sample_period_ns=r.sample_period_ns,
            )
            self._out.append(OpenSpill(header))
        self._log(logging.INFO, "run %d spill %d started", r.number, sp.number)

    def _on_spill_end(self, sender: bytes, msg: protocol.SpillEnd, now: float) -> None:
        sp = self.spill
        if sp is None or msg.spill != sp.number or msg.run != sp.run:
            self._unknown_run_data(sender, msg, now)
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
        self._check_cut_short(sp, msg)
        if self.run is not None:
            self.run.ended_spill = msg.spill
        self._end_spill(complete=True, now=now)

    def _end_spill(self, complete: bool, now: float) -> None:
        sp, r = self.spill, self.run
        if sp is None:
            return
        if r is not None:
            for batch in r.readout.flush(sp.number):
                self._events(batch, now)
            self._absorb_readout_losses()
        self._flush_feed(now, force=True)  # the spill's last events go out before its summary
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
                    LossReason.SPILL_COUNTER_MISMATCH,
                    len(bad),
                    "; ".join(f"{k}: DAQ {a}, front-end {b}" for k, (a, b) in bad.items()),
                )
        self.spill = None
        summary, counters, hists = self._summary(sp, daq_counts, complete)
        self._log(
            logging.INFO,
            "run %d spill %d ended (%s): EOT %d, %d particles, %d accepted, losses %s; writer queue %d",
            sp.run,
            sp.number,
            sp.ended_by,
            summary.n_beam,
            summary.n_particles,
            summary.n_accepted,
            {k: v for k, v in sp.losses.items() if v} or "none",
            self.env.writer_queue(),
        )
        if sp.record:
            self.closing[(sp.run, sp.number)] = _Closing(summary, sp.losses)
            final = SpillFinal(
                status=summary.status.value,
                t_end_ns=summary.t_end_ns,
                counters=counters,
                losses=sp.losses.as_dict(),
                frontend=sp.frontend,
                histograms=hists,
                summary=summary.to_dict(),
            )
            self._out.append(CloseSpill(sp.run, sp.number, final))
        else:
            self._publish_summary(dataclasses.replace(summary, failure=sp.fail_reason))

    def _summary(
        self, sp: Spill, daq_counts: Mapping[str, int], complete: bool
    ) -> tuple[SpillSummary, dict[str, int], dict[str, tuple[np.ndarray, np.ndarray, str]]]:
        """The spill's summary (before the writer's figures), its counters and histograms."""
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
        status = SpillStatus.OK if complete and not sp.losses.data_lost() else SpillStatus.INCOMPLETE
        if not sp.record:
            status = SpillStatus.FAILED
        hists = sp.hist.result()
        t_end_ns = sp.t_end_ns or (sp.t_start_ns + sp.hist.t_end_ns if sp.t_start_ns else 0)
        length_s = (t_end_ns - sp.t_start_ns) / 1e9 if sp.t_start_ns and t_end_ns else sp.hist.t_end_ns / 1e9
        dead_ns = self.config.trigger.dead_time_ns
        dead_fraction = min(1.0, c["n_accepted"] * dead_ns / sp.beam_time_ns) if sp.beam_time_ns else 0.0
        r = self.run
        summary = SpillSummary(
            run=sp.run,
            spill=sp.number,
            status=status,
            file=None,
            n_beam=counters["n_beam"],
            n_particles=counters["n_particles"],
            triggers=Triggers(c["triggers_physics"], c["triggers_beam"], c["triggers_random"]),
            n_accepted=c["n_accepted"],
            n_events_written=0,
            dead_time_lost=c["dead_time_lost"],
            dead_time_fraction=round(dead_fraction, 6),
            losses=sp.losses.as_dict(),
            frontend=dict(sp.frontend),
            t_start_ns=sp.t_start_ns,
            t_end_ns=t_end_ns,
            spill_length_s=round(length_s, 6),
            free_disk_bytes=self.free_disk_bytes,
            calibration_id=r.calibration_id if r else "",
            ended_by=sp.ended_by,
            counters=counters,
            histograms={
                name: Histogram(tuple(h["edges"]), tuple(h["counts"]))
                for name, h in histograms_json(hists).items()
            },
        )
        return summary, counters, hists

    def _publish_summary(self, summary: SpillSummary) -> None:
        """A spill is done (its file closed or failed): count it and publish its summary."""
        self.free_disk_bytes = self.env.free_bytes()
        s = dataclasses.replace(summary, free_disk_bytes=self.free_disk_bytes)
        self.spills_run += 1
        self.last_summary = s
        self._spill_published(s)
        self._out.append(PublishSummary(s))
        self._log(
            logging.INFO,
            "spill summary run %d spill %d: status %s, file %s, %d events written, %.3f s writing",
            s.run,
            s.spill,
            s.status,
            s.file,
            s.n_events_written,
            s.write_seconds,
        )
        self._check_run_finished(s.run)

    # ------------------------------------------------------------ slices, fragments, events
    def _on_slice(self, sender: bytes, msg: protocol.Slice, now: float) -> None:
        sp, r = self.spill, self.run
        if sp is None or r is None or msg.run != sp.run or msg.spill != sp.number:
            self._unknown_run_data(sender, msg, now)
            return
        if msg.slice_id in sp.slices:
            self._loss(LossReason.DUPLICATE, 1, f"SLICE {msg.slice_id} received twice")
            return
        if msg.amp.shape[0] != r.prim_channels.size:
            self._loss(
                LossReason.DECODE_ERROR,
                1,
                f"SLICE {msg.slice_id}: {msg.amp.shape[0]} primitive rows, "
                f"RUN_START declared {r.prim_channels.size}",
            )
            self._loss(decode_error_kind("shape"), 1)
            return
        sp.slices.add(msg.slice_id)
        d = r.trigger.evaluate(PrimitiveBatch.from_slice(msg))
        sp.counters.update(d.counts)
        sp.counters["n_slices"] += 1
        sp.beam_time_ns += int(msg.length_ns)
        sp.hist.fill(msg.t_ns, d.ecal_energy, d.prs_energy, t_end_ns=msg.t0_ns + msg.length_ns)
        self.eot_run += d.counts["n_strig"]
        self._loss(LossReason.DEAD_TIME, d.counts["dead_time_lost"], "triggers lost in dead time")
        # one READOUT_REQUEST per slice, always with the t_ns frame; the slice's particles (and a replay's
        # context) are the neighbours of its triggers in the pile-up fit, and may complete earlier requests
        # waiting for them
        done = r.readout.add_request(
            sp.number,
            msg.slice_id,
            d.index,
            d.t_ns,
            d.trigger_mask,
            msg.amp,
            now,
            stream_t_ns=msg.t_ns,
            t_end_ns=msg.t0_ns + msg.length_ns,
            context=msg.context,
        )
        for batch in done:
            self._events(batch, now)
        req = protocol.ReadoutRequest(
            run=sp.run,
            spill=sp.number,
            slice_id=msg.slice_id,
            n_events=d.n_readout,
            index=d.index,
            t_ns=d.t_ns,
        )
        # to the slice's sender first, then to every other front-end of the run (each answers its groups)
        for ident in (sender, *(m for m in r.members if m != sender)):
            fe = self.frontends.get(ident)
            if fe is not None:
                self._out.append(Send(ident, fe.seq_out.stamp(req)))

    def _on_fragment(self, sender: bytes, msg: protocol.Fragment, now: float) -> None:
        r = self.run
        if r is None or msg.run != r.number:
            self._unknown_run_data(sender, msg, now)
            return
        events, reason = r.readout.add_fragment(msg)
        if reason:
            group = detector.Detector(msg.source).name if 0 <= msg.source < detector.N_GROUPS else "?"
            self._absorb_readout_losses(
                f"spill {msg.spill} slice {msg.slice_id} source {msg.source} ({group}): {msg.n_events} events"
            )
        if events is not None:
            self._events(events, now)

    def _events(self, batch: EventBatch, now: float) -> None:
        sp = self.spill
        n = len(batch)
        if sp is None:
            if n:
                self._loss(LossReason.WRITE_ERROR, n, f"{n} events completed outside a spill")
            return
        sp.n_events_built += n
        sp.counters["n_events_incomplete"] += int(np.count_nonzero(batch.missing_groups))
        self.events_run += n
        if n == 0:
            return
        if sp.record:
            self._out.append(AppendEvents(batch))
        else:
            self._loss(LossReason.WRITE_ERROR, n, f"{n} events not recorded: {sp.fail_reason}")
        run = self.run.number if self.run else 0
        flushed, skipped = self.feed.add(batch, run, sp.number, now)
        self._out += [PublishEvents(m) for m in flushed]
        self._loss(LossReason.MONITOR_SKIPPED, skipped, f"{skipped} events not sent to the DQM (sampling)")

    def _flush_feed(self, now: float, force: bool = False) -> None:
        msg = self.feed.flush(now, self.run.number if self.run else 0, force)
        if msg is not None:
            self._out.append(PublishEvents(msg))

    # ------------------------------------------------------------ run continuity (issue 16)
    # A restarted DAQ learns the run from its front-end (ANNOUNCE_REQUEST -> RUN_START re-announced), a
    # run is acknowledged (RUN_ACK) only once the DAQ can process it, a run number that already has files
    # is refused, and whatever does not reach a spill file is a gap of its run, counted and reported.
    def recovered_at_start(self, files: Sequence[Recovered], now: float) -> list[Action]:
        """Spill files an earlier DAQ left unfinished (it crashed), recovered by the shell at start-up:
        each is a gap of its run, a spill summary with status ``recovered`` (``failed`` when nothing could
        be saved) and the alarm ``recovered`` until the next run starts."""
        for f in files:
            gap = self._gap(f.run, f.spill, LossReason.DAQ_CRASH)
            if f.file:
                gap.detail = f"the DAQ crashed in this spill: {f.n_events} events (slices 0-{f.last_slice}) recovered into {f.file}"
            else:
                gap.detail = (
                    f"the DAQ crashed in this spill; its partial file could not be recovered: {f.error}"
                )
            self._log(logging.WARNING, "run %d spill %d: %s", f.run, f.spill, gap.detail)
            summary = SpillSummary(
                run=f.run,
                spill=f.spill,
                status=SpillStatus.RECOVERED if f.file else SpillStatus.FAILED,
                file=f.file,
                n_events_written=f.n_events,
                losses=Losses({LossReason.DAQ_CRASH: 1}).as_dict(),
                ended_by="DAQ crash (recovered at start-up)",
                failure=f.error
                or "the DAQ stopped without closing the spill; events after the last block "
                "on disk, the counters and histograms are lost",
            )
            self.losses_run[LossReason.DAQ_CRASH] += 1
            self._publish_summary(summary)
        if files:
            names = ", ".join(f"run {f.run} spill {f.spill}" for f in files)
            self.alarms["recovered"] = f"spill files left by a crashed DAQ recovered: {names}"
        return self._take()

    def lost_report(self) -> list[str]:
        """What this DAQ did not record, one line each ([] when nothing was lost)."""
        out = list(self.lost)
        # a recovered spill is in ``lost`` through its summary
        out += [_gap_line(g) for g in self.gaps.values() if g.reason != LossReason.DAQ_CRASH]
        data = _data_losses(self.losses_outside, outside=True)
        if data:
            out.append(f"outside spills: {data}")
        return out

    def _acknowledge(self, sender: bytes, run: int) -> None:
        """RUN_ACK: the DAQ records ``run`` and processes its messages from now on."""
        ack = protocol.RunAck.of(run, protocol.RunAck.ACCEPTED)
        self._out.append(Send(sender, self._frontend(sender).seq_out.stamp(ack)))

    def _refuse(self, sender: bytes, run: int, problem: str) -> None:
        """RUN_ACK refused, with the reason (the front-end stops and says it); logged once per front-end
        and run."""
        fe = self._frontend(sender)
        if run not in fe.refused:
            fe.refused[run] = problem
            self.lost.append(f"run {run} refused: {problem}")
            self._log(logging.ERROR, "run %d refused (front-end %s): %s", run, sender.hex(), problem)
        ack = protocol.RunAck.of(run, protocol.RunAck.REFUSED, problem)
        self._out.append(Send(sender, fe.seq_out.stamp(ack)))

    def _file_closed_with_error(self, result: WriteResult, c: _Closing) -> None:
        """The writer closed the file but says what went wrong (disk full: closed with the events on
        disk; its final name taken: kept under another): alarm ``write``, lost events counted."""
        self.alarms["write"] = f"run {result.run} spill {result.spill}: {result.error}"
        lost = result.n_events_lost
        if lost:
            self.losses_run[LossReason.WRITE_ERROR] += lost
            c.losses[LossReason.WRITE_ERROR] += lost
        self._log(
            logging.ERROR,
            "run %d spill %d: %s (%d events lost)",
            result.run,
            result.spill,
            result.error,
            lost,
        )

    def _refuse_reused_run(self, sender: bytes, msg: protocol.RunStart) -> bool:
        """A new RUN_START (not a re-announce) of a run number that already has spill files is refused:
        recording it would overwrite them."""
        r = self.run
        if r is not None and msg.run == r.number and sender == r.owner:
            return False  # its own front-end restarted within the run (handled by _on_run_start)
        if msg.spill > 0 or self._frontend(sender).asked_at > float("-inf"):
            return False  # a re-announce: the run goes on after a DAQ restart
        existing = self.env.existing_spills(msg.run)
        if not existing:
            return False
        problem = (
            f"run {msg.run} already has {len(existing)} spill file(s) in {self.data_dir} (spills "
            f"{_ranges(existing)}); they are not overwritten: start it with another run number"
        )
        self.alarms["run"] = f"run {msg.run} refused: {problem}"
        self._loss(LossReason.RUN_REJECTED, 1, problem)
        self._refuse(sender, msg.run, problem)
        return True

    def _run_started(self, sender: bytes, msg: protocol.RunStart) -> None:
        """A run is set up: acknowledge it; a re-announced one (the DAQ restarted mid-run) is logged, and
        the spill the front-end is in is a gap (its SPILL_START came before this DAQ knew the run)."""
        r = self.run
        assert r is not None
        r.existing = self.env.existing_spills(msg.run)
        self._acknowledge(sender, msg.run)
        for g in self.gaps.values():  # recovered at start-up before the run was known
            if g.run == msg.run:
                self.losses_run[g.reason] += 1
        if msg.spill > 0:
            self._log(
                logging.WARNING,
                "run %d re-announced by front-end %s (in spill %d): recording from its next spill",
                msg.run,
                sender.hex(),
                msg.spill,
            )
        else:
            self.alarms.pop("recovered", None)

    def _unknown_run_data(self, sender: bytes, msg: protocol.Message, now: float) -> None:
        """A message of a run or spill the DAQ did not see start (it started or restarted mid-run, the run
        was refused, the spill had ended): counted as ``run_unknown`` and in the gap of that spill; with no
        run known, the front-end is asked to re-announce its run."""
        where = f"{msg.TYPE.name} run {msg.run} spill {msg.spill}"
        if isinstance(msg, protocol.Slice | protocol.Fragment):
            where += f" slice {msg.slice_id}"
        self._loss(LossReason.RUN_UNKNOWN, 1, f"{where}: the DAQ did not see this run or spill start")
        if msg.run:
            g = self._gap(msg.run, msg.spill, LossReason.RUN_UNKNOWN)
            g.n_messages += 1
            if isinstance(msg, protocol.Slice):
                g.n_slices += 1
                g.n_particles += int(msg.n_particles)
            elif isinstance(msg, protocol.SpillEnd):
                g.frontend = {k: int(getattr(msg, k)) for k in (*FRONTEND_COUNTERS, "t_end_ns")}
            if self.run is None:
                self._ask_announce(sender, msg.run, now)

    def _check_heartbeat_run(self, sender: bytes, msg: protocol.Heartbeat, now: float) -> None:
        """A front-end running a run while the DAQ knows none (it restarted between spills): ask for the
        run before the next spill starts."""
        busy = msg.state in (protocol.FrontEndState.RUNNING, protocol.FrontEndState.IN_SPILL)
        if busy and msg.run and self.run is None:
            self._ask_announce(sender, msg.run, now)

    def _ask_announce(self, sender: bytes, run: int, now: float) -> None:
        fe = self._frontend(sender)
        if run in fe.refused or now - fe.asked_at < ANNOUNCE_EVERY_S:
            return
        if fe.asked_at == float("-inf"):
            self._log(
                logging.WARNING,
                "front-end %s streams run %d, which this DAQ does not know (restarted mid-run?): asking it "
                "to announce the run",
                sender.hex(),
                run,
            )
        fe.asked_at = now
        req = protocol.AnnounceRequest(run=run, reason=protocol.AnnounceRequest.RUN_UNKNOWN)
        self._out.append(Send(sender, fe.seq_out.stamp(req)))

    def _spill_file_exists(self, sp: Spill) -> None:
        """The spill already has a file (a run number used twice): it is not recorded, never overwritten."""
        sp.record = False
        sp.fail_reason = (
            f"run {sp.run} spill {sp.number} already has a file in {self.data_dir}: not overwritten"
        )
        self.alarms["run"] = sp.fail_reason
        self._log(logging.ERROR, "%s", sp.fail_reason)

    def _check_cut_short(self, sp: Spill, msg: protocol.SpillEnd) -> None:
        """SPILL_END's header ``slice`` is the number of slices the spill should have had (0: not said):
        a spill the front-end ended early (stopped by the user) is incomplete, not ok."""
        planned = int(msg.slice_id)
        if planned and msg.n_slices < planned:
            sp.ended_by = f"cut short by the front-end ({msg.n_slices} of {planned} slices)"
            self._loss(LossReason.SPILL_CUT_SHORT, 1, sp.ended_by)

    def _gap(self, run: int, spill: int, reason: str) -> Gap:
        g = self.gaps.get((run, spill))
        if g is None:
            g = self.gaps[(run, spill)] = Gap(run, spill, str(reason))
        return g

    def _spill_published(self, s: SpillSummary) -> None:
        self.run_spills[(s.run, s.spill)] = {
            "spill": s.spill,
            "status": str(s.status),
            "file": s.file,
            "n_events_written": s.n_events_written,
            "ended_by": s.ended_by,
        }
        if s.status != SpillStatus.OK:
            data = _data_losses(s.losses)
            why = s.failure or s.ended_by
            self.lost.append(f"run {s.run} spill {s.spill}: {s.status} ({why}; losses {data})")

    def _publish_run_summary(self, run: int, finished: bool) -> None:
        """The run's record: spills and their status, gaps, losses outside spills (PublishRunSummary)."""
        spills = [v for (r, _), v in sorted(self.run_spills.items()) if r == run]
        gaps = [g.as_dict() for (r, _), g in sorted(self.gaps.items()) if r == run]
        doc: dict[str, Any] = {
            "run_summary_version": 1,
            "run": run,
            "finished": finished,
            "n_spills": len(spills),
            "status_counts": dict(Counter(s["status"] for s in spills)),
            "spills": spills,
            "gaps": gaps,
            "losses_run": self.losses_run.as_dict(),
            "losses_outside_spills": self.losses_outside.as_dict(),
            "eot_run": self.eot_run,
            "events_run": self.events_run,
        }
        bad = len(spills) - doc["status_counts"].get(str(SpillStatus.OK), 0)
        self._log(
            logging.WARNING if bad or gaps else logging.INFO,
            "run %d %s: %d spills recorded (%s), %d gaps, losses outside spills %s",
            run,
            "finished" if finished else "left open (the DAQ stops)",
            len(spills),
            doc["status_counts"] or "none",
            len(gaps),
            {str(k): v for k, v in sorted(self.losses_outside.items()) if v} or "none",
        )
        self._out.append(PublishRunSummary(run, doc))
        if finished:
            self.lost += [
                _gap_line(g) for g in self.gaps.values() if g.run == run and g.reason != LossReason.DAQ_CRASH
            ]
            self.gaps = {k: v for k, v in self.gaps.items() if k[0] != run}
            self.run_spills = {k: v for k, v in self.run_spills.items() if k[0] != run}
            data = _data_losses(self.losses_outside, outside=True)
            if data:
                self.lost.append(f"run {run}, outside spills: {data}")
            self.losses_outside = Losses()
            self._idle_logged = set()


def _kind(e: ProtocolError) -> str:
    """``ChecksumError`` -> ``checksum``: the loss sub-key of a protocol error."""
    name = type(e).__name__.removesuffix("Error")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_") or "protocol"


def _check_window(n_samples: int, constants: ChannelConstants, reco: RecoConfig, period_ns: float) -> None:
    """Raise ValueError when the reconstruction cannot use readout windows of ``n_samples`` samples
    (asked of the reconstruction itself, on one empty window: its rule is not repeated here)."""
    wf = np.zeros((1, detector.N_CHANNELS, n_samples), np.uint16)
    reconstruct(
        wf,
        constants.gain,
        noise=constants.noise,
        time_offset_ns=constants.time_offset_ns,
        status=constants.status,
        config=reco,
        sample_period_ns=period_ns,
    )


def _info_groups(info: str) -> list[int] | None:
    """The ``groups`` list of a RUN_START's info (readout group numbers), None if absent or not valid."""
    try:
        doc = json.loads(info)
    except json.JSONDecodeError:
        return None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not all(type(g) is int and 0 <= g < detector.N_GROUPS for g in groups):
        return None
    return [int(g) for g in groups]


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


def _ranges(numbers: frozenset[int] | set[int]) -> str:
    """``{1, 2, 3, 7}`` -> ``1-3, 7``."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _gap_text(g: Gap) -> str:
    sent = (
        f"; the front-end sent {g.frontend.get('n_slices', '?')} slices, {g.frontend.get('n_particles', '?')} particles"
        if g.frontend
        else ""
    )
    return f"{g.n_slices} slices ({g.n_particles} particles), {g.n_messages} messages seen{sent}"


def _gap_line(g: Gap) -> str:
    return f"run {g.run} spill {g.spill}: not recorded ({g.reason}): {g.detail or _gap_text(g)}"


def _data_losses(losses: Mapping[str, int], outside: bool = False) -> dict[str, int]:
    """The counts of ``losses`` that mean data is missing (not dead time, sampling, breakdowns); outside
    spills without ``run_rejected`` (a refused run has its own line)."""
    skip = NOT_DATA_LOSS | ({LossReason.RUN_REJECTED} if outside else set())
    return {str(k): v for k, v in sorted(losses.items()) if v and k not in skip and not is_breakdown(k)}
