"""Examples of trigger unit tests a physicist writes with the fixtures of tests/replay/plugin.py.

Canned scenarios come from the simulator's own front-end in process (every particle of a short spill,
with truth); recorded spills from the real simulate -> daq chain (or your data: NA64_RECORDED_SPILLS).
The trigger is the live DAQ's (daq.trigger) through daq.retrigger.run_trigger.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from daq.contract import PHYSICS, S_TRIG
from daq.retrigger import CONDITION_BITS, RecordedPrimitives, run_trigger
from daq.trigger import TriggerConfig
from simulator.scenarios import ScenarioStream

Scenario = Callable[..., ScenarioStream]


def _physics_per_strig(s: ScenarioStream, config: TriggerConfig | None = None) -> float:
    r = run_trigger(s.slices, config, None, s.prim_channels)
    return r.counts["fired_physics"] / r.counts["n_strig"]


def test_a_dead_beam_cell_makes_every_electron_look_like_missing_energy(trigger_scenario: Scenario) -> None:
    nominal = _physics_per_strig(trigger_scenario("nominal"))
    dead = _physics_per_strig(trigger_scenario("dead_ecal_cell"))
    assert nominal < 0.1 < 0.5 < dead  # the 3x4 block keeps only the ~20% of the shower outside the cell


def test_a_dead_beam_cell_fills_the_dead_time(trigger_scenario: Scenario) -> None:
    s = trigger_scenario("dead_ecal_cell")
    r = run_trigger(s.slices, TriggerConfig(), None, s.prim_channels)
    assert r.counts["dead_time_lost"] > 0.3 * r.counts["fired_physics"]
    # accepted triggers are never closer than the dead time
    t = np.sort(r.readout_t_ns)
    assert np.diff(t).min() >= TriggerConfig().dead_time_ns


def test_an_intensity_spike_saturates_the_ecal_and_fakes_physics_triggers_early(
    trigger_scenario: Scenario,
) -> None:
    s = trigger_scenario("intensity_spike")
    r = run_trigger(s.slices, TriggerConfig(), None, s.prim_channels)
    t = np.concatenate([m.t_ns for m in s.slices])
    early = t < 0.3 * s.spill_ns
    rate_early = r.physics[early].mean()
    rate_late = r.physics[~early].mean()
    assert rate_early > 10 * rate_late
    assert early.mean() > 0.5  # 4x intensity in 30% of the spill: most particles come early


def test_a_hadron_burst_is_cut_by_a_higher_prs_threshold_not_the_electrons(
    trigger_scenario: Scenario,
) -> None:
    s = trigger_scenario("hadron_burst")
    hadron = s.is_hadron()
    assert 0.3 < hadron.mean() < 0.45
    base = run_trigger(s.slices, TriggerConfig(), None, s.prim_channels)
    tight = run_trigger(s.slices, TriggerConfig(prs_min_gev=0.6), None, s.prim_channels)
    assert tight.physics[hadron].sum() < 0.8 * base.physics[hadron].sum()
    assert tight.physics[~hadron].sum() >= 0.9 * base.physics[~hadron].sum()


@pytest.mark.parametrize("ecal_max_gev", [40.0, 60.0, 80.0, 95.0])
def test_physics_acceptance_grows_with_the_ecal_threshold(
    trigger_scenario: Scenario, ecal_max_gev: float
) -> None:
    s = trigger_scenario("nominal")
    lower = _physics_per_strig(s, TriggerConfig(ecal_max_gev=ecal_max_gev - 10))
    assert _physics_per_strig(s, TriggerConfig(ecal_max_gev=ecal_max_gev)) >= lower


# ---------------------------------------------------------------- recorded spills
def test_the_recorded_decisions_come_back_from_the_recorded_primitives(
    recorded_spill: RecordedPrimitives,
) -> None:
    r = recorded_spill
    run = run_trigger([r.batch()], r.config, None, r.prim_channels)
    part = np.flatnonzero(r.particles)
    part = part[np.argsort(r.t_ns[part], kind="stable")]
    np.testing.assert_array_equal(run.mask & CONDITION_BITS, r.trigger_mask[part] & CONDITION_BITS)
    assert np.all(run.mask & S_TRIG)  # every recorded particle passed S_trig


def test_what_if_a_tighter_ecal_threshold(recorded_spill: RecordedPrimitives) -> None:
    same = recorded_spill.retrigger()
    assert same["mismatch"] == 0 and same["new"] == same["recorded"]
    tight = recorded_spill.retrigger(ecal_max_gev=50.0)
    assert tight["new"]["physics"] < same["recorded"]["physics"]
    assert tight["physics_lost"] == same["recorded"]["physics"] - tight["physics_kept"]
    # events lost have E_ECAL(block) between 50 and 80 GeV: their (reconstructed) missing energy is mostly
    # below ~50 GeV (reconstruction sums the whole calorimeter, with noise and pile-up: not exactly)
    lost_hist = tight["hist"]["e_miss_recorded"][0] - tight["hist"]["e_miss_new"][0]
    centers = 0.5 * (tight["hist"]["e_miss_new"][1][1:] + tight["hist"]["e_miss_new"][1][:-1])
    assert lost_hist.sum() == tight["physics_lost"] > 0
    assert np.all(lost_hist >= 0)
    assert lost_hist[centers < 55.0].sum() >= 0.9 * lost_hist.sum()
    assert (recorded_spill.trigger_mask & PHYSICS).any()
