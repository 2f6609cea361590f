"""Alarm management (pure), with the states of ISA-18.2 / IEC 62682.

Each check drives one alarm of the same name. An alarm is four independent facts:

- ``active``: the check's condition is present (WARN or ERROR in its latest judged result);
- ``acked``: nothing left to acknowledge (a new activation or an escalation clears it);
- ``shelved``: a person took it off the list for a while, with a reason and an expiry;
- ``suppressed``: it does not apply in the current state of the experiment (suppressed by design, e.g.
  the front-end heartbeat between runs); while suppressed the condition counts as not active.

The state shown to people follows from them (:attr:`Alarm.state`):

=====================  =====================================================================
``normal``             not active, acknowledged
``unacknowledged``     active, not acknowledged (a new alarm, or one whose severity rose)
``acknowledged``       active, acknowledged
``rtn_unacknowledged`` returned to normal before anybody acknowledged it: stays listed until acknowledged
``shelved``            shelved (until its expiry or an unshelve; then it comes back unacknowledged if active)
``suppressed``         suppressed by design, nothing to acknowledge
=====================  =====================================================================

A check that cannot judge (UNKNOWN: too little data) changes nothing. Severity escalation (WARN ->
ERROR while active) makes an acknowledged alarm unacknowledged again; ``peak`` keeps the highest severity
of the current activation. Every transition is an :class:`AlarmEvent` in the alarm's own history and in
a bounded log of all alarms.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dqm.checks import CheckResult, State

#: events kept per alarm, and in the log of all alarms
HISTORY_PER_ALARM = 50
LOG_SIZE = 500
#: events of an alarm's history carried in its MQTT payload
PAYLOAD_HISTORY = 10


class AlarmState(StrEnum):
    NORMAL = "normal"
    UNACKED = "unacknowledged"
    ACKED = "acknowledged"
    RTN_UNACKED = "rtn_unacknowledged"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"


#: states listed as open alarms (something to look at or to acknowledge)
OPEN_STATES = (AlarmState.UNACKED, AlarmState.ACKED, AlarmState.RTN_UNACKED)


@dataclass(frozen=True)
class AlarmEvent:
    """One transition in an alarm's history."""

    time: float
    name: str
    event: str  # raised, escalated, severity lowered, returned to normal, acknowledged, shelved, ...
    state: AlarmState
    severity: State
    message: str
    run: int
    spill: int
    by: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "name": self.name,
            "event": self.event,
            "state": self.state.value,
            "severity": self.severity.name,
            "message": self.message,
            "run": self.run,
            "spill": self.spill,
            "by": self.by,
        }


@dataclass(frozen=True)
class Alarm:
    name: str
    #: severity of the latest judged result (OK, WARN, ERROR); UNKNOWN until the check first judged
    severity: State = State.UNKNOWN
    #: highest severity of the current (or last) activation, and the severity it was raised with
    peak: State = State.OK
    first: State = State.OK
    message: str = ""
    run: int = 0
    spill: int = 0
    active: bool = False
    acked: bool = True
    shelved_until: float | None = None
    shelved_by: str = ""
    shelve_reason: str = ""
    suppressed: str = ""  # the reason, "" when not suppressed
    raised_at: float | None = None
    acked_at: float | None = None
    acked_by: str = ""
    cleared_at: float | None = None
    escalated_at: float | None = None
    updated_at: float | None = None
    times_raised: int = 0
    #: the check could judge its latest evaluation (False: "not judged", too little data)
    judged: bool = False

    @property
    def state(self) -> AlarmState:
        if self.shelved_until is not None:
            return AlarmState.SHELVED
        if self.active:
            return AlarmState.ACKED if self.acked else AlarmState.UNACKED
        if not self.acked:
            return AlarmState.RTN_UNACKED
        return AlarmState.SUPPRESSED if self.suppressed else AlarmState.NORMAL

    @property
    def open(self) -> bool:
        """Listed in the open-alarm table: active, or waiting for an acknowledgement."""
        return self.state in OPEN_STATES

    @property
    def escalated(self) -> bool:
        """The severity rose during the current activation (shown as WARN -> ERROR)."""
        return self.escalated_at is not None and self.active

    def to_json(self, history: Iterable[AlarmEvent] = ()) -> dict[str, Any]:
        """The MQTT payload of this alarm (times are Unix seconds); see docs/mqtt.md."""
        return {
            "name": self.name,
            "state": self.state.value,
            "severity": self.severity.name,
            "peak_severity": self.peak.name,
            "first_severity": self.first.name,
            "active": self.active,
            "acknowledged": self.acked,
            "judged": self.judged,
            "message": self.message,
            "run": self.run,
            "spill": self.spill,
            "raised_at": self.raised_at,
            "escalated_at": self.escalated_at,
            "acked_at": self.acked_at,
            "acked_by": self.acked_by,
            "cleared_at": self.cleared_at,
            "shelved": (
                None
                if self.shelved_until is None
                else {"until": self.shelved_until, "by": self.shelved_by, "reason": self.shelve_reason}
            ),
            "suppressed": self.suppressed or None,
            "updated_at": self.updated_at,
            "times_raised": self.times_raised,
            "history": [e.to_json() for e in history],
        }


class AlarmBook:
    """Current alarm per check name, each alarm's history, and a bounded log of all transitions.

    Every method takes ``now`` and returns the alarm when what people see of it (state, severity,
    "not judged", or the message of an alarm that is not normal) changed, else None: the caller
    publishes it.
    """

    def __init__(self, log_size: int = LOG_SIZE, history_size: int = HISTORY_PER_ALARM) -> None:
        self.alarms: dict[str, Alarm] = {}
        self.history: dict[str, deque[AlarmEvent]] = {}
        self.log: deque[AlarmEvent] = deque(maxlen=log_size)
        self._history_size = history_size

    # ------------------------------------------------------------ bookkeeping
    def get(self, name: str) -> Alarm:
        return self.alarms.get(name) or Alarm(name)

    def ensure(self, names: Iterable[str]) -> None:
        """Create normal alarms for these names (so that every check has a known state from the start)."""
        for name in names:
            self.alarms.setdefault(name, Alarm(name))

    def events(self, name: str) -> list[AlarmEvent]:
        """The alarm's history, oldest first."""
        return list(self.history.get(name, ()))

    def _event(self, alarm: Alarm, now: float, event: str, by: str = "") -> None:
        e = AlarmEvent(
            time=now,
            name=alarm.name,
            event=event,
            state=alarm.state,
            severity=alarm.severity,
            message=alarm.message,
            run=alarm.run,
            spill=alarm.spill,
            by=by,
        )
        self.history.setdefault(alarm.name, deque(maxlen=self._history_size)).append(e)
        self.log.append(e)

    def _store(self, old: Alarm, new: Alarm, events: list[tuple[str, str]], now: float) -> Alarm | None:
        seen = (old.state, old.severity, old.peak, old.judged)
        changed = (new.state, new.severity, new.peak, new.judged) != seen
        # the message of an alarm on show is kept current; a quiet one's changes every spill: not news
        changed |= new.message != old.message and new.state is not AlarmState.NORMAL
        if events or changed:
            new = dataclasses.replace(new, updated_at=now)
        self.alarms[new.name] = new
        for event, by in events:
            self._event(new, now, event, by)
        return new if events or changed else None

    # ------------------------------------------------------------ the check's side
    def update(self, result: CheckResult, now: float, run: int, spill: int, hold: int = 0) -> Alarm | None:
        """Apply one check result (UNKNOWN: only the message and the "not judged" flag change).

        ``hold`` > 0: an OK result does not yet return an active alarm to normal (the off-delay against
        flapping: so many more good evaluations are needed); its message says so.
        """
        old = self.get(result.name)
        if result.state is State.UNKNOWN:
            # an open alarm keeps the message that raised it; a quiet one says why it is not judged
            message = old.message if (old.active or not old.acked) else result.message
            return self._store(old, dataclasses.replace(old, message=message, judged=False), [], now)
        a = dataclasses.replace(old, message=result.message, run=run, spill=spill, judged=True)
        events: list[tuple[str, str]] = []
        if a.suppressed:  # the condition does not apply: recorded, not annunciated
            return self._store(old, dataclasses.replace(a, severity=result.state), events, now)
        bad = result.state >= State.WARN
        if bad and not a.active:
            a = dataclasses.replace(
                a,
                active=True,
                severity=result.state,
                peak=result.state,
                first=result.state,
                raised_at=now,
                escalated_at=None,
                cleared_at=None,
                times_raised=a.times_raised + 1,
                # shelved: it comes back unacknowledged at the unshelve if still active
                acked=a.shelved_until is not None,
            )
            events.append(("raised", ""))
        elif bad:
            if result.state > a.peak:
                a = dataclasses.replace(
                    a,
                    severity=result.state,
                    peak=result.state,
                    escalated_at=now,
                    acked=a.shelved_until is not None,
                )
                events.append(("escalated", ""))
            elif result.state != a.severity:
                a = dataclasses.replace(a, severity=result.state)
                events.append(("severity lowered" if result.state < old.severity else "severity raised", ""))
        else:
            if a.active and hold > 0:
                more = f"{hold} more good spill{'s' if hold > 1 else ''}"
                a = dataclasses.replace(a, message=f"OK now ({result.message}); back to normal after {more}")
            elif a.active:
                a = dataclasses.replace(a, active=False, severity=State.OK, cleared_at=now)
                events.append(("returned to normal", ""))
            else:
                a = dataclasses.replace(a, severity=State.OK)
        return self._store(old, a, events, now)

    # ------------------------------------------------------------ people's side
    def acknowledge(self, name: str, now: float, by: str = "") -> Alarm | None:
        """Acknowledge an unacknowledged (or returned-to-normal unacknowledged) alarm; None if nothing to do."""
        old = self.alarms.get(name)
        if old is None or old.acked or old.state is AlarmState.SHELVED:
            return None
        a = dataclasses.replace(old, acked=True, acked_at=now, acked_by=by)
        return self._store(old, a, [("acknowledged", by)], now)

    def shelve(self, name: str, now: float, until: float, reason: str, by: str = "") -> Alarm | None:
        """Take an alarm off the list until ``until`` (a reason is required); None if unknown or suppressed."""
        old = self.alarms.get(name)
        if old is None or old.suppressed or not reason.strip() or until <= now:
            return None
        a = dataclasses.replace(
            old, shelved_until=until, shelved_by=by, shelve_reason=reason.strip(), acked=True
        )
        return self._store(old, a, [(f"shelved: {reason.strip()}", by)], now)

    def unshelve(self, name: str, now: float, by: str = "", event: str = "unshelved") -> Alarm | None:
        """Put a shelved alarm back: unacknowledged if its condition is active, else normal."""
        old = self.alarms.get(name)
        if old is None or old.shelved_until is None:
            return None
        a = dataclasses.replace(
            old, shelved_until=None, shelved_by="", shelve_reason="", acked=not old.active
        )
        return self._store(old, a, [(event, by)], now)

    def expire_shelves(self, now: float) -> list[Alarm]:
        """Unshelve every alarm whose shelve expired."""
        out = []
        for name, a in list(self.alarms.items()):
            if a.shelved_until is not None and a.shelved_until <= now:
                changed = self.unshelve(name, now, "expiry", "shelve expired")
                if changed is not None:
                    out.append(changed)
        return out

    # ------------------------------------------------------------ the design's side
    def suppress(self, name: str, reason: str, now: float) -> Alarm | None:
        """Suppress by design: the condition stops counting (an unacknowledged alarm stays listed as
        returned to normal until acknowledged). Calling it again with the same reason changes nothing."""
        old = self.get(name)
        if old.suppressed == reason:
            return None
        a = dataclasses.replace(old, suppressed=reason)
        events = [(f"suppressed: {reason}", "")]
        if a.active:
            a = dataclasses.replace(a, active=False, cleared_at=now)
        return self._store(old, a, events, now)

    def unsuppress(self, name: str, now: float) -> Alarm | None:
        old = self.alarms.get(name)
        if old is None or not old.suppressed:
            return None
        a = dataclasses.replace(old, suppressed="", severity=State.UNKNOWN, judged=False)
        return self._store(old, a, [("unsuppressed", "")], now)

    # ------------------------------------------------------------ views
    def open_alarms(self) -> list[Alarm]:
        """Alarms to show: unacknowledged first, then by severity, newest first."""
        return sorted(
            (a for a in self.alarms.values() if a.open),
            key=lambda a: (a.acked, -max(a.severity, a.peak), -(a.raised_at or 0.0)),
        )

    def shelved(self) -> list[Alarm]:
        return sorted((a for a in self.alarms.values() if a.shelved_until is not None), key=lambda a: a.name)

    def suppressed(self) -> list[Alarm]:
        return sorted(
            (a for a in self.alarms.values() if a.state is AlarmState.SUPPRESSED), key=lambda a: a.name
        )

    def worst_open(self) -> State:
        """Most severe open alarm (OK if none); an alarm returned to normal counts as OK."""
        return max((a.severity for a in self.open_alarms() if a.active), default=State.OK)

    def unacknowledged(self) -> int:
        return sum(1 for a in self.alarms.values() if a.state in (AlarmState.UNACKED, AlarmState.RTN_UNACKED))
