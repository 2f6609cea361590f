"""The DQM's state machine: messages in, books, per-spill history, check results and alarm changes out.

:class:`Monitor` is pure in the sense that matters: no sockets, files, threads or clocks (callers pass
``now``). The live service and the offline file reader both call :meth:`Monitor.handle` with
``daq.protocol`` messages, so online and offline fill the same views through the same code.
It is not thread-safe: the service serialises access with one lock.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daq import detector, protocol
from daq.contract import LossReason, SpillStatus
from daq.summary import DaqStatus, DocumentError, SpillSummary
from dqm import metrics
from dqm.alarms import PAYLOAD_HISTORY, Alarm, AlarmBook, AlarmEvent
from dqm.baseline import Baseline, SpillNumbers
from dqm.batch import BatchError, MonitoredEvents
from dqm.book import Book, BookSpec
from dqm.checks import (
    CheckResult,
    LiveCheck,
    LiveContext,
    SpillCheck,
    SpillContext,
    State,
    default_live_checks,
    default_spill_checks,
)
from dqm.config import DqmConfig

log = logging.getLogger(__name__)

#: the DAQ's loss reasons (daq.contract) shown as separate series; any other is summed as "other"
LOSS_SERIES: tuple[str, ...] = tuple(
    r.value
    for r in (
        LossReason.SEQUENCE_GAP,
        LossReason.DUPLICATE,
        LossReason.DECODE_ERROR,
        LossReason.FRAGMENT_TIMEOUT,
        LossReason.EMPTY_FRAGMENT,
        LossReason.TRUNCATED_FRAGMENT,
        LossReason.UNEXPECTED_FRAGMENT,
        LossReason.SPILL_COUNTER_MISMATCH,
        LossReason.WRITE_ERROR,
        LossReason.MONITOR_SKIPPED,
    )
)
#: at most this many spills are open (events seen, summary not yet) before the oldest is closed anyway
MAX_OPEN_SPILLS = 2
#: checks whose WARN/ERROR does not keep a spill out of the run baseline: channel findings are masked in
#: the baseline instead; the others say nothing about the shape of the data
BASELINE_TOLERATES = frozenset({"dead_channels", "hot_channels", "disk", "dead_time", "losses"})
#: front-ends are expected to speak only during a run: between runs their alarm is suppressed by design
RUN_ONLY_ALARMS = ("frontend_heartbeat",)


@dataclass(frozen=True)
class SpillRecord:
    """One line of the per-spill history."""

    run: int
    spill: int
    time: float
    status: str
    n_beam: int
    eot_run: int
    physics: int
    beam: int
    random: int
    dead_time_fraction: float
    losses: dict[str, int]
    write_mb: float
    write_seconds: float
    spill_length_s: float
    free_disk_bytes: float
    n_monitored: int
    peak_gev: float
    results: dict[str, State]


@dataclass(frozen=True)
class SpillClosed:
    """Notice: a spill was closed and checked (the service publishes its summary)."""

    record: SpillRecord
    results: tuple[CheckResult, ...]
    summary: SpillSummary


@dataclass(frozen=True)
class AlarmChanged:
    """Notice: what people see of an alarm changed (state, severity, message); with its latest history."""

    alarm: Alarm
    history: tuple[AlarmEvent, ...] = ()

    def payload(self) -> dict[str, Any]:
        """The alarm's MQTT payload (docs/mqtt.md)."""
        return self.alarm.to_json(self.history)

    @property
    def events(self) -> tuple[str, ...]:
        """The transitions of this change (e.g. ``raised``); empty when only its message changed."""
        return tuple(e.event for e in self.history if e.time == self.alarm.updated_at)


Notice = SpillClosed | AlarmChanged


@dataclass
class Counters:
    messages: int = 0
    events: int = 0
    batches: int = 0
    skipped_by_daq: int = 0
    decode_errors: dict[str, int] = field(default_factory=dict)
    bad_batches: int = 0
    bad_summaries: int = 0
    ignored_messages: int = 0
    summaries_missing: int = 0
    spills_closed: int = 0
    late_events: int = 0
    unattributed_batches: int = 0

    def decode_error(self, kind: str) -> None:
        self.decode_errors[kind] = self.decode_errors.get(kind, 0) + 1


class Monitor:
    """All DQM state. ``handle(msg, now)`` returns notices (alarm changes, closed spills) to publish."""

    def __init__(
        self,
        config: DqmConfig | None = None,
        reference: Baseline | None = None,
        spill_checks: Sequence[SpillCheck] | None = None,
        live_checks: Sequence[LiveCheck] | None = None,
        live: bool = True,
    ) -> None:
        self.config = config or DqmConfig()
        self.spec = BookSpec.from_config(self.config)
        self.reference = reference
        self.spill_checks = list(default_spill_checks(self.config) if spill_checks is None else spill_checks)
        self.live_checks = list(default_live_checks(self.config) if live_checks is None else live_checks)
        self.live = live
        self.counters = Counters()
        self.alarms = AlarmBook()
        self.alarms.ensure(self.check_names())
        if not live:  # nothing to judge them by: suppressed by design
            spill_names = {c.name for c in self.spill_checks}
            for check in self.live_checks:
                if check.name not in spill_names:
                    self.alarms.suppress(check.name, "offline: no live DAQ", 0.0)
        self.history: deque[SpillRecord] = deque(maxlen=self.config.history_spills)
        self.spill_results: dict[str, CheckResult] = {}
        self.live_results: dict[str, CheckResult] = {}
        #: good spills in a row per spill check (the alarms' off-delay)
        self._good_spills: dict[str, int] = {}
        self.status: DaqStatus | None = None
        self.status_time: float | None = None
        self.last_summary: SpillSummary | None = None
        self.last_summary_time: float | None = None
        #: when the latest EVENTS message was handled (the page shows its age)
        self.last_event_time: float | None = None
        self.start_time: float | None = None
        self.waveform: NDArray[np.uint16] | None = None
        self.waveform_info: dict[str, int] = {}
        self.last_send_ns = 0
        self.last_event_id = -1
        self.version = 0
        self.run: int | None = None
        self.current_spill: int | None = None
        #: the DAQ's running EOT count of the current run, the highest seen (counters shown never go back)
        self.daq_eot_run = 0
        #: spill summaries waiting for late events (live): key -> (summary, arrival time)
        self.pending: OrderedDict[tuple[int, int], tuple[SpillSummary, float]] = OrderedDict()
        self._reset_run_state()

    # ------------------------------------------------------------ state
    def _reset_run_state(self) -> None:
        self.open: OrderedDict[tuple[int, int], Book] = OrderedDict()
        self.closed: deque[Book] = deque(maxlen=self.config.last_n_spills)
        #: books of recently closed spills by key, for events that arrive after the spill was checked
        self.recent: OrderedDict[tuple[int, int], Book] = OrderedDict()
        self.last_closed: Book | None = None
        self.lastn_sum = Book(self.spec)
        self.run_sum = Book(self.spec)
        self.eot_run = 0
        self.run_baseline: Baseline | None = None
        self._baseline_book = Book(self.spec)
        self._baseline_summaries: list[SpillSummary] = []
        self._baseline_masked: set[int] = set()
        self.daq_eot_run = 0

    @property
    def baseline(self) -> Baseline | None:
        return self.reference if self.reference is not None else self.run_baseline

    def reset(self) -> None:
        """Clear the histograms of every range (history, alarms and baseline stay)."""
        for key in self.open:
            self.open[key] = Book(self.spec)
        self.closed.clear()
        self.last_closed = None
        self.lastn_sum = Book(self.spec)
        self.run_sum = Book(self.spec)
        self.version += 1

    def _new_run(self, run: int) -> None:
        if self.run is not None:
            log.info("run %d -> run %d: run views reset", self.run, run)
        self.run = run
        self._reset_run_state()

    # ------------------------------------------------------------ input
    def handle(self, msg: protocol.Message, now: float) -> list[Notice]:
        """Process one decoded message from the DAQ (or from a file)."""
        if self.start_time is None:
            self.start_time = now
        self.counters.messages += 1
        self.version += 1
        if isinstance(msg, protocol.Events):
            self.last_event_time = now
            return self._on_events(msg, now)
        if isinstance(msg, protocol.Summary):
            return self._on_summary(msg, now)
        self.counters.ignored_messages += 1
        return []

    def _on_events(self, msg: protocol.Events, now: float) -> list[Notice]:
        try:
            batch = MonitoredEvents.from_events(msg)
        except BatchError as e:
            self.counters.bad_batches += 1
            if self.counters.bad_batches == 1 or self.counters.bad_batches % 1000 == 0:
                log.warning("%s (%d bad batches so far)", e, self.counters.bad_batches)
            return []
        notices: list[Notice] = []
        if self.run != batch.run:
            notices += self._close_pending(now, force=True)
            self._new_run(batch.run)
        spill = batch.spill
        if spill == 0:
            # published between spills: the events belong to the latest spill of the run
            known = [k[1] for k in (*self.open, *self.pending, *self.recent) if k[0] == batch.run]
            spill = max(known, default=0)
            self.counters.unattributed_batches += spill == 0
        # a newer spill's events mean the older pending spills are complete
        for key in [k for k in self.pending if k[0] == batch.run and k[1] < spill]:
            notices += self._close_key(key, now)
        key = (batch.run, spill)
        self._fill(key, batch)
        return notices

    def _fill(self, key: tuple[int, int], batch: MonitoredEvents) -> None:
        late = self.recent.get(key)
        if late is not None and key not in self.open:
            # the spill was already checked: the views still get the events, counted as late
            late.fill(batch)
            self.run_sum.fill(batch)
            if any(b is late for b in self.closed):
                self.lastn_sum.fill(batch)
            self.counters.late_events += batch.n
            self._after_fill(batch, key[1])
            return
        book = self.open.get(key)
        if book is None:
            while len(self.open) >= MAX_OPEN_SPILLS:
                (old_run, old_spill), old = self.open.popitem(last=False)
                self.counters.summaries_missing += 1
                log.warning(
                    "run %d spill %d: no spill summary arrived; closed without checks", old_run, old_spill
                )
                self._retire(old)
            book = self.open[key] = Book(self.spec)
        book.fill(batch)
        self._after_fill(batch, key[1])

    def add_filled(self, run: int, spill: int, book: Book, n_batches: int) -> None:
        """Add a book filled elsewhere (a parallel offline worker, :mod:`dqm.offline`) from ``n_batches``
        EVENTS messages into the open book of (run, spill), counted as if they had been handled here.
        The spill must be open (one of its messages handled here); its last message sets the waveform view.
        """
        key = (run, spill)
        if key not in self.open:
            raise KeyError(f"run {run} spill {spill} is not open")
        self.open[key].add(book)
        self.counters.messages += n_batches
        self.counters.batches += n_batches
        self.counters.events += book.n_events
        self.counters.skipped_by_daq += int(book.arrays["n_skipped"][0])
        self.version += 1

    def _after_fill(self, batch: MonitoredEvents, spill: int) -> None:
        self.current_spill = spill
        self.counters.batches += 1
        self.counters.events += batch.n
        self.counters.skipped_by_daq += batch.n_skipped
        if batch.waveform is not None and batch.n:
            self.waveform = np.array(batch.waveform)
            self.waveform_info = {
                "event_id": int(batch.event_id[-1]),
                "trigger_mask": int(batch.mask[-1]),
                "t_ns": int(batch.t_ns[-1]),
                "run": batch.run,
                "spill": batch.spill,
            }
        if batch.n:
            self.last_event_id = int(batch.event_id[-1])
        self.last_send_ns = max(self.last_send_ns, batch.send_time_ns)

    def _on_summary(self, msg: protocol.Summary, now: float) -> list[Notice]:
        try:
            doc = json.loads(msg.text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            self.counters.bad_summaries += 1
            log.warning("run %d spill %d: bad SUMMARY kind %d: %s", msg.run, msg.spill, msg.kind, e)
            return []
        if msg.kind == protocol.Summary.KIND_STATUS:
            try:
                status = DaqStatus.from_dict(doc)
            except DocumentError as e:
                self.counters.bad_summaries += 1
                log.warning("bad DAQ status: %s", e)
                return []
            self.status, self.status_time = status, now
            notices: list[Notice] = []
            if status.running and status.run is not None and status.run != self.run:
                notices = self._close_pending(now, force=True)
                self._new_run(status.run)
            if status.run is not None and status.run == self.run:
                self.daq_eot_run = max(self.daq_eot_run, status.eot_run)
            return notices
        if msg.kind == protocol.Summary.KIND_SPILL:
            try:  # documents older than the versions may lack run and spill: the message header has them
                summary = SpillSummary.from_dict({"run": msg.run, "spill": msg.spill, **doc})
            except DocumentError as e:
                self.counters.bad_summaries += 1
                log.warning("run %d spill %d: bad spill summary: %s", msg.run, msg.spill, e)
                return []
            run, spill = summary.run, summary.spill
            if not self.live or self.config.close_delay_s <= 0:
                return self.close_spill(run, spill, summary, now)
            self.pending[(run, spill)] = (summary, now)
            return []
        self.counters.ignored_messages += 1
        return []

    def _close_key(self, key: tuple[int, int], now: float) -> list[Notice]:
        summary, _ = self.pending.pop(key)
        return self.close_spill(key[0], key[1], summary, now)

    def _close_pending(self, now: float, force: bool = False) -> list[Notice]:
        """Close spills whose summary has waited ``close_delay_s`` for late events (all if ``force``)."""
        out: list[Notice] = []
        for key, (_, t) in list(self.pending.items()):
            if force or now - t >= self.config.close_delay_s:
                out += self._close_key(key, now)
        return out

    def flush(self, now: float) -> list[Notice]:
        """Close every pending spill now (end of input, shutdown)."""
        return self._close_pending(now, force=True)

    # ------------------------------------------------------------ spill end
    def _retire(self, book: Book) -> None:
        """Move a finished spill's book into the "last N" and "run" sums."""
        self.run_sum.add(book)
        self.closed.append(book)
        self.last_closed = book
        total = Book(self.spec)
        for b in self.closed:
            total.add(b)
        self.lastn_sum = total

    def close_spill(self, run: int, spill: int, summary: SpillSummary, now: float) -> list[Notice]:
        """A spill is complete: check it, record it, update alarms."""
        if self.run != run:
            self._new_run(run)
        book = self.open.pop((run, spill), None) or Book(self.spec)
        self.recent[(run, spill)] = book
        while len(self.recent) > 3:
            self.recent.popitem(last=False)
        ctx = SpillContext(
            run=run, spill=spill, summary=summary, book=book, baseline=self.baseline, config=self.config
        )
        results = tuple(_safe_evaluate(check, ctx) for check in self.spill_checks)
        self._retire(book)
        self.last_summary, self.last_summary_time = summary, now
        self.current_spill = spill
        self.counters.spills_closed += 1
        n_beam = summary.n_beam
        self.eot_run += n_beam
        self.spill_results.update({r.name: r for r in results})
        for r in results:
            if r.state is State.OK:
                self._good_spills[r.name] = self._good_spills.get(r.name, 0) + 1
            elif r.state >= State.WARN:
                self._good_spills[r.name] = 0
        self._maybe_extend_baseline(book, summary, results)
        record = _record(run, spill, now, summary, book, results, self.eot_run)
        self.history.append(record)
        notices: list[Notice] = [SpillClosed(record, results, summary)]
        notices += self._apply(results, now, run, spill)
        unknown = sum(1 for r in results if r.state is State.UNKNOWN)
        log.info(
            "run %d spill %d closed: EOT %d, %d events monitored, %s%s",
            run,
            spill,
            n_beam,
            book.n_events,
            ", ".join(f"{r.name} {r.state.name}" for r in results if r.state >= State.WARN)
            or "no WARN or ERROR",
            f" ({unknown} of {len(results)} checks not judged)" if unknown else "",
        )
        return notices

    def _maybe_extend_baseline(
        self, book: Book, summary: SpillSummary, results: Sequence[CheckResult]
    ) -> None:
        """A spill joins the run baseline if nothing in it looks wrong (channel findings excepted: those
        channels are left out of the comparisons with the baseline, and judged by the detector model)."""
        if self.reference is not None or self.run_baseline is not None:
            return
        flagged = [r for r in results if r.state >= State.WARN and r.name not in BASELINE_TOLERATES]
        good = (
            summary.status == SpillStatus.OK
            and summary.n_beam >= self.config.checks.rates.beam_off_eot
            and not flagged
            and book.n_events > 0
        )
        if not good:
            return
        for r in results:
            if r.name in ("dead_channels", "hot_channels") and r.state >= State.WARN:
                self._baseline_masked.update(detector.channel_id(n) for n in r.details)
        self._baseline_book.add(book)
        self._baseline_summaries.append(summary)
        if len(self._baseline_summaries) >= self.config.baseline_spills:
            spills = [s.spill for s in self._baseline_summaries]
            self.run_baseline = Baseline.build(
                self._baseline_book,
                [SpillNumbers.of(s) for s in self._baseline_summaries],
                f"run {self.run} spills {spills[0]}-{spills[-1]}",
                self.config.checks.electron_peak.min_events,
                masked=frozenset(self._baseline_masked),
            )
            masked = ", ".join(detector.channel_name(c) for c in sorted(self._baseline_masked))
            log.info(
                "baseline from %s%s", self.run_baseline.source, f" (left out: {masked})" if masked else ""
            )

    # ------------------------------------------------------------ live checks, alarms
    def tick(self, now: float) -> list[Notice]:
        """Close spills that waited long enough, run the live checks, apply the design's suppressions and
        expire shelves (call about once a second)."""
        if not self.live:
            return self._changed(self.alarms.expire_shelves(now))
        if self.start_time is None:
            self.start_time = now
        closed = self._close_pending(now)
        status_age = None if self.status_time is None else now - self.status_time
        ctx = LiveContext(
            uptime_s=now - self.start_time,
            status=self.status,
            status_age_s=status_age,
            summary_age_s=now - (self.last_summary_time or self.start_time),
            config=self.config,
        )
        notices = self._suppress_by_design(now, status_age)
        results = tuple(_safe_evaluate(check, ctx) for check in self.live_checks)
        changed = any(self.live_results.get(r.name) != r for r in results)
        self.live_results.update({r.name: r for r in results})
        if changed:
            self.version += 1
        notices += self._apply(results, now, self.run or 0, self.current_spill or 0)
        return closed + notices + self._changed(self.alarms.expire_shelves(now))

    def _suppress_by_design(self, now: float, status_age: float | None) -> list[Notice]:
        """Front-ends are only expected to speak during a run: their alarm is suppressed while the DAQ
        (heard from recently) says it is not running one."""
        fresh = status_age is not None and status_age <= self.config.checks.heartbeat.daq_timeout_s
        idle = fresh and self.status is not None and not self.status.running
        changed = []
        for name in RUN_ONLY_ALARMS:
            if name not in self.alarms.alarms:
                continue
            a = self.alarms.suppress(name, "no run", now) if idle else self.alarms.unsuppress(name, now)
            if a is not None:
                changed.append(a)
        return self._changed(changed)

    def _changed(self, alarms: Sequence[Alarm]) -> list[Notice]:
        if alarms:
            self.version += 1
        return [AlarmChanged(a, self.alarm_history(a.name)) for a in alarms]

    def alarm_history(self, name: str) -> tuple[AlarmEvent, ...]:
        """The latest events of an alarm (what its MQTT payload carries)."""
        return tuple(self.alarms.events(name)[-PAYLOAD_HISTORY:])

    def _apply(self, results: Sequence[CheckResult], now: float, run: int, spill: int) -> list[Notice]:
        changed = []
        need = self.config.alarms.clear_after_spills
        for name in dict.fromkeys(r.name for r in results):
            # spill checks return to normal after `need` good spills in a row (live ones at once)
            hold = max(need - self._good_spills[name], 0) if name in self._good_spills else 0
            alarm = self.alarms.update(self.result(name), now, run, spill, hold)
            if alarm is not None:
                changed.append(alarm)
        return self._changed(changed)

    def result(self, name: str) -> CheckResult:
        """Effective result of a check: the worse of its spill and live results."""
        spill, live = self.spill_results.get(name), self.live_results.get(name)
        if spill is None or live is None:
            res = spill or live
            assert res is not None
            return res
        return live if live.state > spill.state else spill

    def results(self) -> list[CheckResult]:
        """Effective results of all checks, in check order."""
        names = [c.name for c in self.spill_checks] + [c.name for c in self.live_checks]
        seen: dict[str, CheckResult] = {}
        for name in names:
            if name not in seen and (name in self.spill_results or name in self.live_results):
                seen[name] = self.result(name)
        return list(seen.values())

    def check_names(self) -> list[str]:
        names = [c.name for c in self.spill_checks] + [c.name for c in self.live_checks]
        return list(dict.fromkeys(names))

    def acknowledge(self, name: str, now: float, by: str = "") -> list[Notice]:
        """Acknowledge one alarm, or ``all`` that wait for it."""
        names = [a.name for a in self.alarms.open_alarms() if not a.acked] if name == "all" else [name]
        return self._changed([a for n in names if (a := self.alarms.acknowledge(n, now, by)) is not None])

    def shelve(self, name: str, now: float, minutes: float, reason: str, by: str = "") -> list[Notice]:
        """Shelve an alarm for ``minutes`` (at most ``alarms.max_shelve_minutes``) with a reason."""
        minutes = min(max(minutes, 0.0), self.config.alarms.max_shelve_minutes)
        a = self.alarms.shelve(name, now, now + 60.0 * minutes, reason, by)
        return self._changed([a] if a is not None else [])

    def unshelve(self, name: str, now: float, by: str = "") -> list[Notice]:
        a = self.alarms.unshelve(name, now, by)
        return self._changed([a] if a is not None else [])

    def alarm_notices(self) -> list[Notice]:
        """Every alarm as a notice (a new MQTT connection publishes the whole state)."""
        return [AlarmChanged(a, self.alarm_history(a.name)) for a in self.alarms.alarms.values()]

    # ------------------------------------------------------------ views
    def current_book(self) -> Book | None:
        """The book of the current spill: the newest open one, else the last closed one."""
        if self.open:
            return next(reversed(self.open.values()))
        return self.last_closed

    def range_book(self, which: str) -> Book:
        """A new book for a view range: "spill", "last" (last N spills + current) or "run"."""
        out = Book(self.spec)
        if which == "spill":
            book = self.current_book()
            if book is not None:
                out.add(book)
            return out
        out.add(self.lastn_sum if which == "last" else self.run_sum)
        for book in self.open.values():
            out.add(book)
        return out

    def eot_total(self) -> int:
        """EOT of the run: the DAQ's running count if it is ahead (mid-spill), else the sum of the spills
        checked here. Never goes back within a run (the DAQ's status forgets the run at its end)."""
        return max(self.eot_run, self.daq_eot_run)


def _safe_evaluate(check: Any, ctx: Any) -> CheckResult:
    try:
        result: CheckResult = check.evaluate(ctx)
        return result
    except Exception as e:  # a broken rule must not stop monitoring
        log.exception("check %s failed", getattr(check, "name", check))
        return CheckResult(getattr(check, "name", "?"), State.UNKNOWN, f"check failed: {e}")


def _record(
    run: int,
    spill: int,
    now: float,
    s: SpillSummary,
    book: Book,
    results: Sequence[CheckResult],
    eot_run: int,
) -> SpillRecord:
    h = book.h1["ecal_sum_beam"]
    peak = metrics.find_peak(h.values(), h.axes[0].edges, 10)
    return SpillRecord(
        run=run,
        spill=spill,
        time=now,
        status=str(s.status),
        n_beam=s.n_beam,
        eot_run=eot_run,
        physics=s.triggers.physics,
        beam=s.triggers.beam,
        random=s.triggers.random,
        dead_time_fraction=s.dead_time_fraction,
        losses=dict(s.losses),
        write_mb=s.write_mb,
        write_seconds=s.write_seconds,
        spill_length_s=s.spill_length_s,
        free_disk_bytes=math.nan if s.free_disk_bytes is None else float(s.free_disk_bytes),
        n_monitored=book.n_events,
        peak_gev=math.nan if peak is None else peak.mean,
        results={r.name: r.state for r in results},
    )
