"""Quality checks and alarm lifecycle on synthetic spills with injected faults (pure, no I/O)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from daq import detector
from daq.summary import DaqStatus
from dqm.alarms import AlarmBook, Lifecycle
from dqm.checks import (
    CalibrationCheck,
    CheckResult,
    DaqHeartbeatCheck,
    FrontendHeartbeatCheck,
    LiveContext,
    State,
)
from dqm.config import DqmConfig
from dqm.monitor import AlarmChanged, Monitor
from dqm.synthetic import SynthConfig, SyntheticDaq

GOOD_SPILLS = 3


def run_spills(mon: Monitor, daq: SyntheticDaq, spills: range) -> list[AlarmChanged]:
    out: list[AlarmChanged] = []
    for spill in spills:
        for msg in daq.spill_messages(1, spill):
            out += [n for n in mon.handle(msg, time.time()) if isinstance(n, AlarmChanged)]
    return out


@pytest.fixture
def primed() -> tuple[Monitor, SyntheticDaq]:
    """A monitor that has seen good spills (its run baseline is set, every check OK)."""
    mon = Monitor(live=False)
    daq = SyntheticDaq(SynthConfig(events_per_spill=1500, batch_size=30), seed=7)
    run_spills(mon, daq, range(1, GOOD_SPILLS + 1))
    assert mon.baseline is not None
    bad = [r for r in mon.results() if r.state >= State.WARN]
    assert not bad, bad
    return mon, daq


@pytest.mark.parametrize(
    ("faults", "alarm", "severity", "text"),
    [
        ({"dead": (detector.ecal_id(1, 2),)}, "dead_channels", State.ERROR, "ECAL12"),
        ({"hot": (detector.hcal_id(1, 1, 1),)}, "hot_channels", State.ERROR, "HCAL1_11"),
        ({"ecal_gain": 0.93}, "electron_peak", State.ERROR, "-"),
        ({"ecal_gain": 1.03}, "electron_peak", State.WARN, "+"),
        ({"pedestal_shift": 6.0}, "pedestals", State.WARN, "pedestal shift"),
        ({"pedestal_shift": 20.0}, "pedestals", State.ERROR, "pedestal shift"),
        ({"beam_off": True}, "beam_off", State.ERROR, "beam off"),
        ({"lost_fragments": 4}, "losses", State.WARN, "fragment_timeout 4"),
        ({"lost_fragments": 4}, "missing_sources", State.ERROR, "fragment_timeout"),
        ({"missing_group": int(detector.Detector.SRD)}, "missing_sources", State.ERROR, "SRD"),
        ({"early_saturation": True}, "early_saturation", State.ERROR, "saturation"),
    ],
)
def test_fault_raises_the_right_alarm(
    primed: tuple[Monitor, SyntheticDaq], faults: dict[str, Any], alarm: str, severity: State, text: str
) -> None:
    mon, daq = primed
    daq.with_faults(**faults)
    changes = run_spills(mon, daq, range(GOOD_SPILLS + 1, GOOD_SPILLS + 2))
    raised = {c.alarm.name: c.alarm for c in changes if c.alarm.lifecycle is Lifecycle.RAISED}
    assert alarm in raised, f"{alarm} not raised; raised: {sorted(raised)}"
    assert raised[alarm].severity is severity
    assert text in raised[alarm].message
    # the fault goes away: the alarm clears
    daq.with_faults()
    changes = run_spills(mon, daq, range(GOOD_SPILLS + 2, GOOD_SPILLS + 3))
    cleared = {c.alarm.name for c in changes if c.alarm.lifecycle is Lifecycle.CLEARED}
    assert alarm in cleared
    assert not mon.alarms.open_alarms()


def test_a_good_spill_raises_nothing(primed: tuple[Monitor, SyntheticDaq]) -> None:
    mon, daq = primed
    assert run_spills(mon, daq, range(GOOD_SPILLS + 1, GOOD_SPILLS + 4)) == []


def test_reference_shape_check_sees_a_changed_distribution(primed: tuple[Monitor, SyntheticDaq]) -> None:
    mon, daq = primed
    daq.with_faults(ecal_gain=0.9)
    run_spills(mon, daq, range(10, 11))
    res = {r.name: r for r in mon.results()}
    assert res["reference_ecal_sum_beam"].state is State.ERROR
    assert res["reference_ecal_sum_beam"].value is not None and res["reference_ecal_sum_beam"].value > 10


def test_ks_method_is_selectable() -> None:
    from daq.config_loader import from_dict

    cfg = from_dict(DqmConfig, {"checks": {"reference": {"method": "ks", "warn": 1.63, "error": 3.0}}})
    mon = Monitor(cfg, live=False)
    daq = SyntheticDaq(SynthConfig(events_per_spill=1500, batch_size=30), seed=7)
    run_spills(mon, daq, range(1, 4))
    res = {r.name: r for r in mon.results()}
    assert "KS" in res["reference_ecal_sum_beam"].message and res["reference_ecal_sum_beam"].state is State.OK
    daq.with_faults(ecal_gain=0.9)
    run_spills(mon, daq, range(4, 5))
    assert {r.name: r for r in mon.results()}["reference_ecal_sum_beam"].state is State.ERROR


def live_ctx(**kw: Any) -> LiveContext:
    base: dict[str, Any] = {"uptime_s": 100.0, "status": None, "status_age_s": None, "summary_age_s": None}
    base.update(kw)
    if base["status"] is not None:
        base["status"] = DaqStatus.from_dict(base["status"])
    return LiveContext(**base)


def test_daq_heartbeat() -> None:
    check = DaqHeartbeatCheck()
    assert check.evaluate(live_ctx(uptime_s=1.0)).state is State.UNKNOWN  # just started
    assert check.evaluate(live_ctx()).state is State.ERROR  # never heard of the DAQ
    assert check.evaluate(live_ctx(status={"state": "running"}, status_age_s=0.5)).state is State.OK
    res = check.evaluate(live_ctx(status={"state": "running"}, status_age_s=10.0))
    assert res.state is State.ERROR and "silent for 10.0 s" in res.message


def test_frontend_heartbeat() -> None:
    check = FrontendHeartbeatCheck()
    ok = {"state": "in_spill", "frontends": {"fe1": {"last_seen_s": 0.3, "state": "in_spill"}}}
    assert check.evaluate(live_ctx(status=ok, status_age_s=0.1)).state is State.OK
    silent = {"state": "in_spill", "frontends": {"fe1": {"last_seen_s": 9.0, "state": "in_spill"}}}
    assert check.evaluate(live_ctx(status=silent, status_age_s=0.1)).state is State.ERROR
    stalled = {"state": "in_spill", "frontends": {"fe1": {"last_seen_s": 0.2, "state": "STALLED"}}}
    res = check.evaluate(live_ctx(status=stalled, status_age_s=0.1))
    assert res.state is State.ERROR and "stalled" in res.message
    none = {"state": "running", "frontends": {}}
    assert check.evaluate(live_ctx(status=none, status_age_s=0.1)).state is State.WARN


def test_calibration_of_the_run() -> None:
    """The DAQ status's calibration entry: a refused run is an ERROR, undetermined channels of the energy sums
    a WARN, undetermined counters (V1, V2: halo only) are named but OK."""
    check = CalibrationCheck()

    def cal(**kw: Any) -> dict[str, Any]:
        doc = {
            "run": 7,
            "id": "cal-v1",
            "usable": True,
            "source": "cal/v1.json",
            "problem": "",
            "undetermined": [],
        }
        return {"state": "running", "calibration": {**doc, **kw}}

    assert check.evaluate(live_ctx(status={"state": "idle"}, status_age_s=0.1)).state is State.UNKNOWN
    ok = check.evaluate(live_ctx(status=cal(), status_age_s=0.1))
    assert ok.state is State.OK and ok.message == "run 7: cal-v1 (cal/v1.json)"
    refused = check.evaluate(
        live_ctx(
            status=cal(usable=False, id=None, problem="run 7: no calibration set is valid"), status_age_s=0.1
        )
    )
    assert (
        refused.state is State.ERROR and "not recorded: run 7: no calibration set is valid" in refused.message
    )
    halo = check.evaluate(live_ctx(status=cal(undetermined=["V1", "V2"]), status_age_s=0.1))
    assert halo.state is State.OK and "undetermined (nominal constants): V1, V2" in halo.message
    sums = check.evaluate(live_ctx(status=cal(undetermined=["V1", "ECAL00", "HCAL0_04"]), status_age_s=0.1))
    assert sums.state is State.WARN and "2 channels of the energy sums undetermined" in sums.message
    assert sums.details == ("V1", "ECAL00", "HCAL0_04")


def test_alarm_lifecycle() -> None:
    book = AlarmBook(log_size=10)
    warn = CheckResult("x", State.WARN, "w")
    err = CheckResult("x", State.ERROR, "e")
    ok = CheckResult("x", State.OK, "fine")
    unknown = CheckResult("x", State.UNKNOWN, "?")
    a = book.update(warn, 1.0, 1, 1)
    assert a is not None and a.lifecycle is Lifecycle.RAISED and a.severity is State.WARN
    assert book.update(warn, 2.0, 1, 2) is None  # same severity: no transition
    acked = book.acknowledge("x", 3.0, "shifter")
    assert acked is not None and acked.lifecycle is Lifecycle.ACKNOWLEDGED and acked.acked_by == "shifter"
    assert book.acknowledge("x", 3.5) is None  # already acknowledged
    assert book.update(unknown, 4.0, 1, 3) is None
    worse = book.update(err, 5.0, 1, 4)  # severity rises: raised again, acknowledgement dropped
    assert worse is not None and worse.lifecycle is Lifecycle.RAISED and worse.acked_at is None
    cleared = book.update(ok, 6.0, 1, 5)
    assert cleared is not None and cleared.lifecycle is Lifecycle.CLEARED and cleared.cleared_at == 6.0
    again = book.update(err, 7.0, 1, 6)
    assert again is not None and again.times_raised == 2
    assert [x.lifecycle for x in book.log] == [
        Lifecycle.RAISED,
        Lifecycle.ACKNOWLEDGED,
        Lifecycle.RAISED,
        Lifecycle.CLEARED,
        Lifecycle.RAISED,
    ]
    assert book.open_alarms()[0].name == "x"
