"""Quality checks and alarm lifecycle on synthetic spills with injected faults (pure, no I/O)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from daq import detector, protocol
from daq.summary import DaqStatus
from dqm.alarms import AlarmState
from dqm.checks import (
    CalibrationCheck,
    DaqHeartbeatCheck,
    FrontendHeartbeatCheck,
    LiveContext,
    State,
    default_live_checks,
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
    raised = {c.alarm.name: c.alarm for c in changes if "raised" in c.events}
    assert alarm in raised, f"{alarm} not raised; raised: {sorted(raised)}"
    assert raised[alarm].severity is severity
    assert text in raised[alarm].message
    # the fault goes away: the alarm returns to normal after alarms.clear_after_spills (2) good spills
    daq.with_faults()
    changes = run_spills(mon, daq, range(GOOD_SPILLS + 2, GOOD_SPILLS + 3))
    assert (
        mon.alarms.get(alarm).active
        and "back to normal after 1 more good spill" in mon.alarms.get(alarm).message
    )
    changes = run_spills(mon, daq, range(GOOD_SPILLS + 3, GOOD_SPILLS + 4))
    cleared = {c.alarm.name for c in changes if "returned to normal" in c.events}
    assert alarm in cleared
    assert not [a for a in mon.alarms.open_alarms() if a.active]
    # returned to normal, but listed until a person has seen it
    assert alarm in {a.name for a in mon.alarms.open_alarms()}
    mon.acknowledge("all", time.time(), "shifter")
    assert not mon.alarms.open_alarms()


def test_a_good_spill_raises_nothing(primed: tuple[Monitor, SyntheticDaq]) -> None:
    mon, daq = primed
    changes = run_spills(mon, daq, range(GOOD_SPILLS + 1, GOOD_SPILLS + 4))
    assert [c.alarm for c in changes if c.alarm.state is not AlarmState.NORMAL] == []


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


def test_frontend_heartbeat_judges_the_current_runs_frontends() -> None:
    check = FrontendHeartbeatCheck()

    def status(state: str, fes: dict[str, Any], run_fes: list[str] | None) -> LiveContext:
        doc: dict[str, Any] = {"state": state, "run": 7, "frontends": fes}
        if run_fes is not None:
            doc["run_frontends"] = run_fes
        return live_ctx(status=doc, status_age_s=0.1)

    alive = {"fe1": {"last_seen_s": 0.3, "state": "in_spill"}}
    assert check.evaluate(status("in_spill", alive, ["fe1"])).state is State.OK
    silent = {"fe1": {"last_seen_s": 9.0, "state": "in_spill"}}
    assert check.evaluate(status("in_spill", silent, ["fe1"])).state is State.ERROR
    stalled = {"fe1": {"last_seen_s": 0.2, "state": "STALLED"}}
    res = check.evaluate(status("in_spill", stalled, ["fe1"]))
    assert res.state is State.ERROR and "stalled" in res.message
    # an earlier run's front-end (kept in the DAQ's list for an hour) is no concern
    old_and_new = {
        "old": {"last_seen_s": 71.5, "state": "idle"},
        "fe2": {"last_seen_s": 0.2, "state": "running"},
    }
    assert check.evaluate(status("running", old_and_new, ["fe2"])).state is State.OK
    # ... but without run_frontends (an older DAQ) every listed one is expected
    assert check.evaluate(status("running", old_and_new, None)).state is State.ERROR
    # the run's front-end is not even connected
    res = check.evaluate(status("running", {}, ["fe3"]))
    assert res.state is State.ERROR and "not connected" in res.message
    assert check.evaluate(status("running", {}, [])).state is State.WARN
    # between runs, and without a current DAQ status: not judged (never OK)
    assert check.evaluate(status("idle", silent, [])).state is State.UNKNOWN
    assert check.evaluate(live_ctx(status={"state": "running"}, status_age_s=30.0)).state is State.UNKNOWN


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


def test_frontend_alarm_is_suppressed_between_runs_not_raised() -> None:
    """The issue's false ERROR: a clean end of run used to raise "<id> silent 4.2 s" for ever."""
    mon = Monitor(live=True)

    def status(state: str, fes: dict[str, Any], run_fes: list[str], now: float) -> None:
        doc = {"state": state, "run": 1, "frontends": fes, "run_frontends": run_fes, "eot_run": 0}
        mon.handle(protocol.Summary.of(protocol.Summary.KIND_STATUS, json.dumps(doc)), now)

    status("in_spill", {"fe": {"last_seen_s": 0.1, "state": "in_spill"}}, ["fe"], 0.0)
    mon.tick(0.5)
    assert mon.alarms.get("frontend_heartbeat").state is AlarmState.NORMAL
    for t in range(1, 80):  # run over: the front-end goes quiet, the DAQ reports idle
        status("idle", {"fe": {"last_seen_s": float(t), "state": "idle"}}, [], float(t))
        mon.tick(t + 0.5)
    a = mon.alarms.get("frontend_heartbeat")
    assert a.state is AlarmState.SUPPRESSED and not a.open and a.times_raised == 0
    status(
        "running",
        {"fe": {"last_seen_s": 80.0, "state": "idle"}, "fe2": {"last_seen_s": 0.1, "state": "running"}},
        ["fe2"],
        80.0,
    )
    mon.tick(80.5)
    a = mon.alarms.get("frontend_heartbeat")
    assert a.state is AlarmState.NORMAL and a.severity is State.OK, a


def test_daq_alarms_in_the_status_become_dqm_alarms() -> None:
    doc = {"state": "running", "alarms": {"calibration": "run 3: no constants; using nominal-v1", "new": "x"}}
    ctx = live_ctx(status=doc, status_age_s=0.2)
    daq_checks = [
        c for c in default_live_checks(DqmConfig()) if c.name.startswith("daq_") and c.name != "daq_heartbeat"
    ]
    res = {c.name: c.evaluate(ctx) for c in daq_checks}
    assert "daq_calibration" not in res  # the calibration check judges the status's calibration entry
    assert res["daq_other"].state is State.WARN and res["daq_other"].message == "DAQ: new: x"
    assert res["daq_disk"].state is State.OK and res["daq_write"].state is State.OK
    stale = live_ctx(status=doc, status_age_s=60.0)
    assert all(c.evaluate(stale).state is State.UNKNOWN for c in daq_checks)


def test_daq_idle_while_a_frontend_runs_is_an_error() -> None:
    """Issue 16: a DAQ restarted mid-run said "idle" and the page stayed green while the beam's data went
    nowhere; now that is an ERROR until the DAQ records the run again."""
    from dqm.checks import DaqIdleBeamCheck

    check = DaqIdleBeamCheck()
    busy = {"fe1": {"last_seen_s": 0.4, "state": "in_spill", "name": "na64 simulate"}}
    res = check.evaluate(live_ctx(status={"state": "idle", "frontends": busy}, status_age_s=0.2))
    assert res.state is State.ERROR and "DAQ idle while na64 simulate fe1 (in_spill) runs" in res.message
    quiet = {"fe1": {"last_seen_s": 0.4, "state": "idle"}}
    assert (
        check.evaluate(live_ctx(status={"state": "idle", "frontends": quiet}, status_age_s=0.2)).state
        is State.OK
    )
    gone = {"fe1": {"last_seen_s": 600.0, "state": "in_spill"}}
    assert (
        check.evaluate(live_ctx(status={"state": "idle", "frontends": gone}, status_age_s=0.2)).state
        is State.OK
    )
    assert (
        check.evaluate(live_ctx(status={"state": "in_spill", "frontends": busy}, status_age_s=0.2)).state
        is State.OK
    )
    assert (
        check.evaluate(live_ctx(status={"state": "idle", "frontends": busy}, status_age_s=60)).state
        is State.UNKNOWN
    )
    assert "daq_idle_beam" in {c.name for c in default_live_checks(DqmConfig())}
