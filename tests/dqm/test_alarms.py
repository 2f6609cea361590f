"""Alarm management with the ISA-18.2 / IEC 62682 states (pure): every transition, shelving with a reason
and an expiry, suppression by design, escalation, and each alarm's history."""

from __future__ import annotations

import pytest

from dqm.alarms import AlarmBook, AlarmState
from dqm.checks import CheckResult, State


def result(state: State, text: str = "") -> CheckResult:
    return CheckResult("x", state, text or state.name)


def states(book: AlarmBook) -> list[str]:
    return [e.event for e in book.events("x")]


def test_raise_acknowledge_return_to_normal() -> None:
    book = AlarmBook()
    book.ensure(["x"])
    assert book.get("x").state is AlarmState.NORMAL and not book.open_alarms()
    a = book.update(result(State.WARN), 1.0, 1, 1)
    assert (
        a is not None and a.state is AlarmState.UNACKED and a.severity is State.WARN and a.times_raised == 1
    )
    assert book.update(result(State.WARN, "same"), 2.0, 1, 2) is not None  # the message is kept current
    assert book.get("x").message == "same" and states(book) == ["raised"]
    acked = book.acknowledge("x", 3.0, "shifter")
    assert acked is not None and acked.state is AlarmState.ACKED and acked.acked_by == "shifter"
    assert book.acknowledge("x", 3.5) is None  # nothing left to acknowledge
    back = book.update(result(State.OK), 4.0, 1, 3)
    assert back is not None and back.state is AlarmState.NORMAL and back.cleared_at == 4.0
    assert states(book) == ["raised", "acknowledged", "returned to normal"]


def test_returned_to_normal_stays_listed_until_acknowledged() -> None:
    """One bad spill: the alarm must not vanish before a person saw it (issue 18, finding 5)."""
    book = AlarmBook()
    book.update(result(State.ERROR), 1.0, 1, 1)
    a = book.update(result(State.OK), 2.0, 1, 2)
    assert a is not None and a.state is AlarmState.RTN_UNACKED and a.open and not a.active
    assert [x.name for x in book.open_alarms()] == ["x"] and book.unacknowledged() == 1
    # it comes back before anybody looked: still unacknowledged, raised a second time
    again = book.update(result(State.WARN), 3.0, 1, 3)
    assert again is not None and again.state is AlarmState.UNACKED and again.times_raised == 2
    book.update(result(State.OK), 4.0, 1, 4)
    done = book.acknowledge("x", 5.0, "shifter")
    assert done is not None and done.state is AlarmState.NORMAL and not book.open_alarms()


def test_not_judged_changes_nothing_but_the_flag() -> None:
    book = AlarmBook()
    book.update(result(State.ERROR, "ECAL22 dead"), 1.0, 1, 1)
    a = book.update(result(State.UNKNOWN, "not judged: too few events"), 2.0, 1, 2)
    assert a is not None and a.state is AlarmState.UNACKED and a.severity is State.ERROR
    assert a.message == "ECAL22 dead" and not a.judged  # the message that raised it stays


def test_escalation_reannunciates_and_is_visible() -> None:
    book = AlarmBook()
    book.update(result(State.WARN), 1.0, 1, 1)
    book.acknowledge("x", 2.0, "shifter")
    up = book.update(result(State.ERROR), 3.0, 1, 2)
    assert up is not None and up.state is AlarmState.UNACKED and up.escalated and up.peak is State.ERROR
    assert up.to_json()["peak_severity"] == "ERROR" and up.to_json()["escalated_at"] == 3.0
    book.acknowledge("x", 4.0, "shifter")
    down = book.update(result(State.WARN), 5.0, 1, 3)  # lower again: no new acknowledgement needed
    assert down is not None and down.state is AlarmState.ACKED and down.peak is State.ERROR
    assert states(book) == ["raised", "acknowledged", "escalated", "acknowledged", "severity lowered"]


def test_shelve_with_reason_and_expiry() -> None:
    book = AlarmBook()
    book.update(result(State.ERROR), 1.0, 1, 1)
    assert book.shelve("x", 2.0, 100.0, "   ", "shifter") is None  # a reason is required
    assert book.shelve("nope", 2.0, 100.0, "why", "shifter") is None
    a = book.shelve("x", 2.0, 100.0, "known noisy PMT, ticket 12", "shifter")
    assert a is not None and a.state is AlarmState.SHELVED and not a.open
    assert a.to_json()["shelved"] == {"until": 100.0, "by": "shifter", "reason": "known noisy PMT, ticket 12"}
    assert book.update(result(State.ERROR, "still"), 3.0, 1, 2) is not None  # tracked while shelved
    assert book.get("x").state is AlarmState.SHELVED and book.shelved()[0].name == "x"
    assert book.expire_shelves(99.0) == []
    (back,) = book.expire_shelves(100.0)
    assert back.state is AlarmState.UNACKED  # still active: annunciated again
    book.shelve("x", 101.0, 200.0, "again", "shifter")
    book.update(result(State.OK), 102.0, 1, 3)
    out = book.unshelve("x", 103.0, "shifter")
    assert out is not None and out.state is AlarmState.NORMAL  # cleared meanwhile: nothing to see
    assert "shelve expired" in states(book) and "unshelved" in states(book)


def test_suppressed_by_design() -> None:
    book = AlarmBook()
    book.ensure(["x"])
    a = book.suppress("x", "no run", 1.0)
    assert a is not None and a.state is AlarmState.SUPPRESSED and not a.open
    assert book.suppress("x", "no run", 2.0) is None  # idempotent
    book.update(result(State.ERROR), 3.0, 1, 1)  # the condition does not apply meanwhile
    assert book.get("x").state is AlarmState.SUPPRESSED and book.get("x").times_raised == 0
    b = book.unsuppress("x", 4.0)
    assert b is not None and b.state is AlarmState.NORMAL and not b.judged
    raised = book.update(result(State.ERROR), 5.0, 1, 2)
    assert raised is not None and raised.state is AlarmState.UNACKED
    # suppression while unacknowledged: listed as returned to normal until acknowledged, then suppressed
    c = book.suppress("x", "no run", 6.0)
    assert c is not None and c.state is AlarmState.RTN_UNACKED and c.open
    d = book.acknowledge("x", 7.0, "shifter")
    assert d is not None and d.state is AlarmState.SUPPRESSED


def test_off_delay_holds_an_active_alarm_until_enough_good_evaluations() -> None:
    book = AlarmBook()
    book.update(result(State.WARN), 1.0, 1, 1)
    held = book.update(result(State.OK, "peak -1.9%"), 2.0, 1, 2, hold=1)
    assert held is not None and held.active and held.state is AlarmState.UNACKED
    assert "back to normal after 1 more good spill" in held.message and states(book) == ["raised"]
    back = book.update(result(State.OK), 3.0, 1, 3, hold=0)
    assert back is not None and back.state is AlarmState.RTN_UNACKED


def test_history_is_bounded_and_the_payload_carries_the_latest() -> None:
    book = AlarmBook(log_size=20, history_size=5)
    for t in range(10):
        book.update(result(State.ERROR if t % 2 == 0 else State.OK), float(t), 1, t)
    assert len(book.events("x")) == 5 and len(book.log) == 10
    payload = book.get("x").to_json(book.events("x")[-3:])
    assert [e["event"] for e in payload["history"]] == ["returned to normal", "raised", "returned to normal"]
    assert payload["state"] == "rtn_unacknowledged" and payload["active"] is False


@pytest.mark.parametrize("first", [State.WARN, State.ERROR])
def test_open_alarms_order_unacknowledged_first(first: State) -> None:
    book = AlarmBook()
    book.update(CheckResult("a", first, ""), 1.0, 1, 1)
    book.update(CheckResult("b", State.WARN, ""), 2.0, 1, 1)
    book.acknowledge("a", 3.0)
    assert [a.name for a in book.open_alarms()] == ["b", "a"]
    assert book.worst_open() is max(first, State.WARN)
