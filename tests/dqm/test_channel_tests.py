"""The per-channel tests: calibrated false-alarm probability, and faults found with and without a
reference (a channel dead from the start of the run is in its own baseline: only the detector's
symmetry finds it)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from daq import detector
from daq.config_loader import from_dict
from dqm import channels, model
from dqm.book import Book, BookSpec
from dqm.checks import State
from dqm.config import ChannelCheckConfig, DqmConfig
from dqm.monitor import AlarmChanged, Monitor
from dqm.synthetic import SynthConfig, SyntheticDaq


def test_symmetry_groups_of_the_detector_model() -> None:
    esum = np.zeros(detector.N_CHANNELS)
    esum[detector.ecal_id(2, 3)] = 100.0
    groups = model.peer_groups(esum)
    assert groups.beam_cell == (2, 3)
    members = {frozenset(g) for g in groups.groups}
    neighbours = frozenset(detector.ecal_id(x, y) for x, y in ((1, 3), (3, 3), (2, 2), (2, 4)))
    assert neighbours in members  # the beam cell's four neighbours see the same
    assert frozenset(int(i) for i in detector.SRD_IDS) in members
    assert groups.inward[detector.ecal_id(0, 0)] == (detector.ecal_id(1, 0), detector.ecal_id(0, 1))
    # a beam between two cells: no mirror symmetry around a cell, the calorimeter groups are not used
    esum[detector.ecal_id(3, 3)] = 100.0
    off = model.peer_groups(esum)
    assert off.beam_cell is None and all(c not in detector.ECAL_IDS for g in off.groups for c in g)


def _book(hits: np.ndarray, n: float) -> Book:
    book = Book(BookSpec())
    book.arrays["hits"][1] = hits
    book.arrays["n_type"][1] = n
    book.arrays["esum"][1][detector.ecal_id(2, 3)] = 1.0  # the beam cell
    return book


def test_hits_against_the_baseline_keep_their_false_alarm_probability() -> None:
    """Same rates in spill and baseline: the family-wise false-alarm rate stays below alpha, with the
    effect-size floors switched off so that only the p-values and the look-elsewhere factor count."""
    rng = np.random.default_rng(3)
    cfg = ChannelCheckConfig(dead_fraction=0.9999, hot_factor=1.0001, hot_min_excess=0.0, min_expected=1.0)
    rates = rng.uniform(0.0, 0.9, detector.N_CHANNELS)
    alpha, trials, alarms = 0.1, 400, 0
    for _ in range(trials):
        n, n_ref = 500.0, 1500.0
        spill = _book(rng.binomial(int(n), rates).astype(float), n)
        ref = _book(rng.binomial(int(n_ref), rates).astype(float), n_ref)
        dead, hot = channels.hits_tests(spill, channels.Comparison(ref, source="ref"), cfg)
        # only the comparison with the baseline (the symmetry tests assume a symmetric detector)
        for fam in (dead, hot):
            fam.findings = [f for f in fam.findings if "symmetry" not in f.test and "neighbour" not in f.test]
        alarms += bool(channels.significant(dead, alpha / 2) or channels.significant(hot, alpha / 2))
    assert alarms / trials <= alpha + 3 * np.sqrt(alpha / trials), alarms


def run(mon: Monitor, daq: SyntheticDaq, spills: range) -> list[AlarmChanged]:
    out: list[AlarmChanged] = []
    for spill in spills:
        for msg in daq.spill_messages(1, spill):
            out += [n for n in mon.handle(msg, time.time()) if isinstance(n, AlarmChanged)]
    return out


@pytest.mark.parametrize("cell", [(2, 2), (1, 4), (2, 3), (0, 3)])
def test_a_channel_dead_from_the_start_is_found_without_a_reference(cell: tuple[int, int]) -> None:
    ch = detector.ecal_id(*cell)
    # the synthetic electron peak sits at the beam energy (the simulator's at 1.01 x)
    mon = Monitor(from_dict(DqmConfig, {"checks": {"electron_peak": {"expected_fraction": 1.0}}}), live=False)
    daq = SyntheticDaq(SynthConfig(events_per_spill=1500, batch_size=30), seed=4)
    daq.with_faults(dead=(ch,))
    changes = run(mon, daq, range(1, 6))
    dead = [c.alarm for c in changes if c.alarm.name == "dead_channels" and c.alarm.active]
    assert dead and dead[0].spill == 1 and dead[0].severity is State.ERROR, changes
    assert detector.channel_name(ch) in dead[0].message
    # the synthetic shower loses the dead cell's energy: the electron peak moves when it is a big share
    others = {c.alarm.name for c in changes if c.alarm.active} - {"dead_channels", "electron_peak"}
    assert not others, others
    if cell == (0, 3):  # a small share: the run baseline forms, with the dead channel left out of it
        assert mon.baseline is not None and ch in mon.baseline.masked


def test_clean_synthetic_spills_raise_nothing() -> None:
    cfg = from_dict(DqmConfig, {"baseline_spills": 2})
    mon = Monitor(cfg, live=False)
    daq = SyntheticDaq(SynthConfig(events_per_spill=1500, batch_size=30), seed=11)
    changes = run(mon, daq, range(1, 25))
    assert [c.alarm for c in changes if c.alarm.active] == []
    judged = {r.name for r in mon.results() if r.state is not State.UNKNOWN}
    assert {"dead_channels", "hot_channels", "pedestals", "electron_peak"} <= judged
