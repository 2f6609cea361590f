"""The monitor state machine: ranges, spill boundaries, late and unattributed events, bad input, snapshots."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from daq import protocol
from daq.config_loader import from_dict
from dqm import snapshot
from dqm.checks import State
from dqm.config import DqmConfig
from dqm.monitor import Monitor, SpillClosed
from dqm.synthetic import SynthConfig, SyntheticDaq


def feed(mon: Monitor, daq: SyntheticDaq, run: int, spill: int, now: float = 0.0) -> list[object]:
    out: list[object] = []
    for msg in daq.spill_messages(run, spill):
        out += mon.handle(msg, now)
    return out


@pytest.fixture
def daq() -> SyntheticDaq:
    return SyntheticDaq(SynthConfig(events_per_spill=200, batch_size=20), seed=5)


def test_ranges_spill_last_n_run(daq: SyntheticDaq) -> None:
    cfg = from_dict(DqmConfig, {"last_n_spills": 3})
    mon = Monitor(cfg, live=False)
    for spill in range(1, 6):
        feed(mon, daq, 1, spill)
    assert mon.range_book("spill").n_events == 200
    assert mon.range_book("last").n_events == 3 * 200
    assert mon.range_book("run").n_events == 5 * 200
    # events of a new spill: "spill" is the open one, "last" and "run" include it
    for msg in list(daq.spill_events(1, 6))[:2]:
        mon.handle(msg, 0.0)
    assert mon.range_book("spill").n_events == 40
    assert mon.range_book("last").n_events == 3 * 200 + 40
    assert mon.range_book("run").n_events == 5 * 200 + 40
    assert mon.eot_run == 5 * 200 * daq.config.eot_per_event


def test_new_run_resets_run_views(daq: SyntheticDaq) -> None:
    mon = Monitor(live=False)
    feed(mon, daq, 1, 1)
    feed(mon, daq, 2, 1)
    assert mon.run == 2 and mon.range_book("run").n_events == 200
    assert [r.run for r in mon.history] == [1, 2]


def test_live_waits_for_late_events_before_checking(daq: SyntheticDaq) -> None:
    """The DAQ may publish a spill's last events after its summary, or label them spill 0 between spills."""
    mon = Monitor(live=True)
    events = list(daq.spill_events(1, 1))
    for msg in events[:-2]:
        mon.handle(msg, 0.0)
    assert mon.handle(daq.summary_message(1, 1), 10.0) == []  # pending, not checked yet
    mon.handle(dataclasses.replace(events[-2], spill=0), 10.2)  # between spills
    mon.handle(events[-1], 10.4)  # labelled with its spill, after the summary
    assert not [n for n in mon.tick(10.5) if isinstance(n, SpillClosed)]
    closed = [n for n in mon.tick(12.0) if isinstance(n, SpillClosed)]
    assert len(closed) == 1 and closed[0].record.n_monitored == 200
    # an event arriving after the check still reaches the views, counted as late
    mon.handle(dataclasses.replace(events[0], spill=1), 13.0)
    assert mon.counters.late_events == events[0].n_events
    assert mon.range_book("run").n_events == 200 + events[0].n_events


def test_events_of_the_next_spill_close_the_pending_one(daq: SyntheticDaq) -> None:
    mon = Monitor(live=True)
    for msg in daq.spill_events(1, 1):
        mon.handle(msg, 0.0)
    mon.handle(daq.summary_message(1, 1), 1.0)
    first_of_next = next(iter(daq.spill_events(1, 2)))
    notices = mon.handle(first_of_next, 1.1)
    assert [n.record.spill for n in notices if isinstance(n, SpillClosed)] == [1]


def test_missing_summaries_are_counted_and_bounded(daq: SyntheticDaq) -> None:
    mon = Monitor(live=False)
    for spill in range(1, 6):
        for msg in daq.spill_events(1, spill):
            mon.handle(msg, 0.0)
    assert len(mon.open) <= 2
    assert mon.counters.summaries_missing == 3
    assert mon.range_book("run").n_events == 5 * 200


def test_bad_input_is_counted_not_fatal(daq: SyntheticDaq) -> None:
    mon = Monitor(live=False)
    mon.handle(protocol.Summary.of(1, "{not json", run=1, spill=1), 0.0)
    mon.handle(protocol.Summary.of(1, "[1, 2]", run=1, spill=1), 0.0)
    mon.handle(protocol.Summary.of(1, json.dumps({"run": "x", "spill": 1}), run=1, spill=1), 0.0)
    bad = protocol.Events(
        run=1,
        spill=1,
        n_events=1,
        event_id=np.zeros(1, np.uint64),
        t_ns=np.zeros(1, np.int64),
        trigger_mask=np.ones(1, np.uint32),
        sums=np.zeros((6, 1), np.float32),
        energy=np.zeros((1, 3), np.float32),
        peak_time=np.zeros((1, 3), np.float32),
        waveforms=np.zeros((0, 3, 32), np.uint16),
    )
    mon.handle(bad, 0.0)
    mon.handle(protocol.Heartbeat(), 0.0)
    assert mon.counters.bad_summaries == 3
    assert mon.counters.bad_batches == 1
    assert mon.counters.ignored_messages == 1
    feed(mon, daq, 1, 1)  # still works
    assert mon.counters.spills_closed == 1


def test_reset_clears_histograms_but_keeps_history(daq: SyntheticDaq) -> None:
    mon = Monitor(live=False)
    feed(mon, daq, 1, 1)
    feed(mon, daq, 1, 2)
    mon.reset()
    assert mon.range_book("run").n_events == 0
    assert len(mon.history) == 2


def test_snapshot_has_fixed_size(daq: SyntheticDaq) -> None:
    """What a browser receives does not grow with the run: same array shapes after 3 and after 40 spills."""
    mon = Monitor(from_dict(DqmConfig, {"history_spills": 20}), live=False)

    def shapes() -> dict[str, tuple[int, ...]]:
        snap = snapshot.build(mon)
        out = {f"history.{k}": v.shape for k, v in snap.history.items()}
        for r, view in snap.ranges.items():
            out |= {f"{r}.h1.{k}": v.shape for k, v in view.h1.items()}
            out |= {f"{r}.h2.{k}": v.shape for k, v in view.h2.items()}
            out |= {f"{r}.spectra": view.spectra.shape, f"{r}.times": view.times.shape}
        out["matrix"] = snap.check_matrix.shape
        assert len(snap.alarm_log) <= 50
        return out

    for spill in range(1, 4):
        feed(mon, daq, 1, spill)
    early = shapes()
    for spill in range(4, 41):
        feed(mon, daq, 1, spill)
    assert shapes() == early
    assert len(mon.history) == 20


def status_doc(state: str, run: int | None, eot: int) -> protocol.Summary:
    doc = {"state": state, "run": run, "eot_run": eot, "frontends": {}, "run_frontends": []}
    return protocol.Summary.of(protocol.Summary.KIND_STATUS, json.dumps(doc))


def test_eot_of_the_run_never_goes_back(daq: SyntheticDaq) -> None:
    """The DAQ's running count is ahead mid-spill; at the run's end its status forgets the run: the
    page's EOT used to drop to the sum of the checked spills (14 479 064 -> 11 834 171)."""
    mon = Monitor(live=True)
    feed(mon, daq, 1, 1, now=0.0)
    shown = [mon.eot_total()]
    mon.handle(status_doc("in_spill", 1, 10 * daq.config.eot_per_event * 200), 1.0)
    shown.append(mon.eot_total())
    mon.handle(status_doc("idle", None, 0), 2.0)  # run over
    shown.append(mon.eot_total())
    mon.tick(5.0)  # the pending spill is checked: the sum of spills grows, still below the DAQ's count
    shown.append(mon.eot_total())
    assert shown == sorted(shown) and shown[-1] == 10 * daq.config.eot_per_event * 200
    mon.handle(status_doc("running", 2, 5), 6.0)  # a new run starts from its own count
    assert mon.eot_total() == 5


def test_a_silent_daq_reads_unknown_not_its_last_state() -> None:
    mon = Monitor(live=True)
    mon.handle(status_doc("idle", None, 0), 100.0)
    fresh = snapshot.build(mon, now=101.0)
    assert fresh.header["daq_state"] == "idle" and not fresh.header["daq_stale"]
    stale = snapshot.build(mon, now=130.0)
    assert stale.header["daq_stale"] and stale.header["daq_state"].startswith("unknown: last status 30 s ago")
    assert stale.header["status_age_s"] == 30.0


def test_a_spill_without_monitored_events_is_not_judged_ok(daq: SyntheticDaq) -> None:
    mon = Monitor(live=False)
    (closed,) = [n for n in mon.handle(daq.summary_message(1, 1), 0.0) if isinstance(n, SpillClosed)]
    states = {r.name: r.state for r in closed.results}
    for name in ("dead_channels", "hot_channels", "pedestals", "electron_peak", "early_saturation"):
        assert states[name] is State.UNKNOWN, name
