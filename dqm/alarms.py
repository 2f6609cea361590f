"""Alarm lifecycle (pure): raised -> acknowledged -> cleared, one alarm per check name.

- a check going WARN/ERROR raises its alarm (or re-raises it when the severity rises, which also
  drops an acknowledgement);
- a person acknowledges it (it stays open until the check is OK again);
- the check returning OK clears it. UNKNOWN (not evaluated) changes nothing.

Every transition is returned to the caller (who publishes it) and kept in a bounded log.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dqm.checks import CheckResult, State


class Lifecycle(StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


@dataclass(frozen=True)
class Alarm:
    name: str
    lifecycle: Lifecycle
    severity: State
    message: str
    run: int
    spill: int
    raised_at: float
    updated_at: float
    acked_at: float | None = None
    acked_by: str = ""
    cleared_at: float | None = None
    times_raised: int = 1

    @property
    def open(self) -> bool:
        return self.lifecycle is not Lifecycle.CLEARED

    def to_json(self) -> dict[str, Any]:
        """The MQTT payload of this alarm (times are Unix seconds)."""
        return {
            "name": self.name,
            "state": self.lifecycle.value,
            "severity": self.severity.name,
            "message": self.message,
            "run": self.run,
            "spill": self.spill,
            "raised_at": self.raised_at,
            "acked_at": self.acked_at,
            "acked_by": self.acked_by,
            "cleared_at": self.cleared_at,
            "updated_at": self.updated_at,
            "times_raised": self.times_raised,
        }


class AlarmBook:
    """Current alarm per check name plus a bounded log of transitions."""

    def __init__(self, log_size: int = 500) -> None:
        self.alarms: dict[str, Alarm] = {}
        self.log: deque[Alarm] = deque(maxlen=log_size)

    def update(self, result: CheckResult, now: float, run: int, spill: int) -> Alarm | None:
        """Apply one check result; return the alarm if it changed state or severity, else None."""
        old = self.alarms.get(result.name)
        bad = result.state in (State.WARN, State.ERROR)
        new: Alarm | None = None
        if bad and (old is None or not old.open):
            new = Alarm(
                name=result.name,
                lifecycle=Lifecycle.RAISED,
                severity=result.state,
                message=result.message,
                run=run,
                spill=spill,
                raised_at=now,
                updated_at=now,
                times_raised=1 if old is None else old.times_raised + 1,
            )
        elif bad and old is not None and result.state != old.severity:
            rising = result.state > old.severity
            new = dataclasses.replace(
                old,
                severity=result.state,
                message=result.message,
                run=run,
                spill=spill,
                updated_at=now,
                lifecycle=Lifecycle.RAISED if rising else old.lifecycle,
                acked_at=None if rising else old.acked_at,
                acked_by="" if rising else old.acked_by,
            )
        elif bad and old is not None:
            # same severity: keep the latest message without a transition
            self.alarms[result.name] = dataclasses.replace(old, message=result.message, run=run, spill=spill)
            return None
        elif result.state is State.OK and old is not None and old.open:
            new = dataclasses.replace(
                old,
                lifecycle=Lifecycle.CLEARED,
                severity=State.OK,
                message=result.message,
                run=run,
                spill=spill,
                cleared_at=now,
                updated_at=now,
            )
        if new is None:
            return None
        self.alarms[result.name] = new
        self.log.append(new)
        return new

    def acknowledge(self, name: str, now: float, by: str = "") -> Alarm | None:
        """Acknowledge an open, not yet acknowledged alarm; None if there is nothing to acknowledge."""
        old = self.alarms.get(name)
        if old is None or old.lifecycle is not Lifecycle.RAISED:
            return None
        new = dataclasses.replace(
            old, lifecycle=Lifecycle.ACKNOWLEDGED, acked_at=now, acked_by=by, updated_at=now
        )
        self.alarms[name] = new
        self.log.append(new)
        return new

    def open_alarms(self) -> list[Alarm]:
        """Open alarms, most severe first, then newest first."""
        return sorted((a for a in self.alarms.values() if a.open), key=lambda a: (-a.severity, -a.raised_at))
