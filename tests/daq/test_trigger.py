"""The trigger, as a physicist would test it: a few particles built by hand, decisions and bits read back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.constants import nominal
from daq import detector
from daq.config_loader import from_dict
from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_PRS, S_TRIG, mask_names
from daq.errors import ConfigError
from daq.protocol import NO_PARTICLE
from daq.trigger import PrimitiveBatch, Trigger, TriggerConfig, TriggerState, _dead_time, make_batch

ECAL_GAIN = detector.NOMINAL_GAIN[detector.Detector.ECAL]  # counts per MeV
PRS_GAIN = detector.NOMINAL_GAIN[detector.Detector.PRS]
ECAL_COUNT_GEV = 1 / (1000 * ECAL_GAIN)  # one ADC count in GeV
PRS_COUNT_GEV = 1 / (1000 * PRS_GAIN)
ALL_CHANNELS = np.arange(detector.N_CHANNELS)


def quiet(**kw: object) -> TriggerConfig:
    """Thresholds only: no prescale, no random trigger, no dead time."""
    args: dict[str, object] = {"beam_prescale": 0, "random_period_ns": 0, "dead_time_ns": 0, **kw}
    return TriggerConfig(**args)  # type: ignore[arg-type]


def electron(**kw: object) -> PrimitiveBatch:
    """One clean beam particle with a low-energy ECAL shower: passes S_phys by default."""
    args: dict[str, object] = {"ecal_block_gev": 40.0, "prs_block_gev": 2.0}
    args.update(kw)
    return make_batch(**args)  # type: ignore[arg-type]


def test_a_handful_of_particles() -> None:
    trig = Trigger(quiet())
    batch = make_batch(
        ecal_block_gev=[40.0, 100.0, 40.0, 40.0],
        prs_block_gev=[2.0, 2.0, 0.0, 2.0],
        counters={"V1": [0, 0, 0, 2000]},
        t_ns=[100, 2000, 3000, 4000],
    )
    d = trig.evaluate(batch)
    assert d.accept.tolist() == [True, False, False, False]
    assert [mask_names(int(m)) for m in d.mask] == [
        ["PHYSICS", "S_TRIG", "S_PRS", "S_EC"],
        ["S_TRIG", "S_PRS"],
        ["S_TRIG", "S_EC"],
        ["S_PRS", "S_EC"],
    ]
    assert d.e_ecal == pytest.approx([40.0, 100.0, 40.0, 40.0], abs=ECAL_COUNT_GEV)
    assert d.index.tolist() == [0] and d.t_ns.tolist() == [100]
    assert d.trigger_mask.tolist() == [PHYSICS | S_TRIG | S_PRS | S_EC]
    assert d.counts["n_strig"] == 3 and d.counts["n_accepted"] == 1


@pytest.mark.parametrize("counter", ["S0", "S2", "S3"])
@pytest.mark.parametrize(("amp", "fires"), [(149, False), (150, False), (151, True)])
def test_beam_counters_at_below_and_above_threshold(counter: str, amp: int, fires: bool) -> None:
    d = Trigger(quiet()).evaluate(electron(counters={counter: amp}))
    assert bool(d.mask[0] & S_TRIG) is fires
    assert bool(d.accept[0]) is fires


@pytest.mark.parametrize("counter", ["V1", "V2"])
@pytest.mark.parametrize(("amp", "vetoes"), [(149, False), (150, False), (151, True)])
def test_hole_vetoes_at_below_and_above_threshold(counter: str, amp: int, vetoes: bool) -> None:
    d = Trigger(quiet()).evaluate(electron(counters={counter: amp}))
    assert bool(d.mask[0] & S_TRIG) is not vetoes


def test_per_counter_thresholds_are_independent() -> None:
    trig = Trigger(quiet(s2_adc=500, v2_adc=10))
    assert not trig.evaluate(electron(counters={"S2": 400})).mask[0] & S_TRIG
    assert trig.evaluate(electron(counters={"S2": 501, "S0": 151})).mask[0] & S_TRIG
    assert not trig.evaluate(electron(counters={"S2": 600, "V2": 11})).mask[0] & S_TRIG


@pytest.mark.parametrize(("counts_off", "fires"), [(-1, False), (0, False), (1, True)])
def test_prs_threshold_at_below_and_above(counts_off: int, fires: bool) -> None:
    e = 0.3 + counts_off * PRS_COUNT_GEV  # one ADC count below, at, above 300 MeV
    d = Trigger(quiet()).evaluate(electron(prs_block_gev=e))
    assert d.e_prs[0] == pytest.approx(e, abs=1e-6)
    assert bool(d.mask[0] & S_PRS) is fires
    assert bool(d.mask[0] & PHYSICS) is fires


@pytest.mark.parametrize(("counts_off", "fires"), [(-1, True), (0, False), (1, False)])
def test_ecal_threshold_at_below_and_above(counts_off: int, fires: bool) -> None:
    e = 80.0 + counts_off * ECAL_COUNT_GEV
    d = Trigger(quiet()).evaluate(electron(ecal_block_gev=e))
    assert bool(d.mask[0] & S_EC) is fires
    assert bool(d.accept[0]) is fires


def test_thresholds_are_configurable() -> None:
    trig = Trigger(quiet(prs_min_gev=1.0, ecal_max_gev=50.0))
    assert trig.evaluate(electron(ecal_block_gev=49.0, prs_block_gev=1.1)).accept[0]
    assert not trig.evaluate(electron(ecal_block_gev=51.0, prs_block_gev=1.1)).accept[0]
    assert not trig.evaluate(electron(ecal_block_gev=49.0, prs_block_gev=0.9)).accept[0]


@pytest.mark.parametrize("cell", [(x, y) for y in range(detector.ECAL_NY) for x in range(detector.ECAL_NX)])
def test_block_geometry_every_cell(cell: tuple[int, int]) -> None:
    """Only the 3x4 cells around the beam cell (x 1..3, y 1..4) enter the sums."""
    trig = Trigger(quiet(), prim_channels=ALL_CHANNELS)
    batch = make_batch(ecal_cells_gev={cell: 10.0}, prs_cells_gev={cell: 1.0}, prim_channels=ALL_CHANNELS)
    d = trig.evaluate(batch)
    inside = cell in detector.block_cells()
    assert d.e_ecal[0] == pytest.approx(10.0 if inside else 0.0, abs=ECAL_COUNT_GEV)
    assert d.e_prs[0] == pytest.approx(1.0 if inside else 0.0, abs=PRS_COUNT_GEV)


def test_the_block_moves_with_the_beam_cell() -> None:
    cfg = quiet(beam_cell=(1, 1), block_size=(3, 3))
    trig = Trigger(cfg, prim_channels=ALL_CHANNELS)
    assert set(detector.block_cells((1, 1), (3, 3))) == {(x, y) for x in range(3) for y in range(3)}
    inside = make_batch(ecal_cells_gev={(0, 0): 20.0}, prim_channels=ALL_CHANNELS)
    outside = make_batch(ecal_cells_gev={(3, 3): 20.0}, prim_channels=ALL_CHANNELS)
    assert trig.evaluate(inside).e_ecal[0] == pytest.approx(20.0, abs=ECAL_COUNT_GEV)
    assert trig.evaluate(outside).e_ecal[0] == 0.0


def test_masked_cells_are_left_out_of_the_sums() -> None:
    trig = Trigger(quiet(masked_cells=("ECAL23", "PRS12")))
    batch = make_batch(ecal_cells_gev={(2, 3): 60.0, (1, 3): 5.0}, prs_cells_gev={(1, 2): 3.0, (2, 2): 0.5})
    d = trig.evaluate(batch)
    assert d.e_ecal[0] == pytest.approx(5.0, abs=ECAL_COUNT_GEV)
    assert d.e_prs[0] == pytest.approx(0.5, abs=PRS_COUNT_GEV)


def test_masked_cells_need_not_be_in_the_primitives() -> None:
    prim = [c for c in detector.default_primitive_channels() if c != detector.ecal_id(2, 3)]
    Trigger(quiet(masked_cells=("ECAL23",)), prim_channels=prim)
    with pytest.raises(ConfigError, match="ECAL23"):
        Trigger(quiet(), prim_channels=prim)


def test_a_block_outside_the_primitives_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not in the front-end's primitive channels"):
        Trigger(quiet(beam_cell=(1, 2)))  # default primitives carry the block around (2, 3)
    with pytest.raises(ConfigError, match="S0"):
        Trigger(quiet(), prim_channels=detector.default_primitive_channels()[1:])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prs_min_gev", -0.1),
        ("ecal_max_gev", 0),
        ("s0_adc", 70000),
        ("beam_prescale", -1),
        ("random_period_ns", -5),
        ("dead_time_ns", -1),
        ("masked_cells", ["HCAL0_11"]),
        ("beam_cell", [4, 5]),
    ],
)
def test_invalid_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match="config error at trigger"):
        from_dict(TriggerConfig, {key: value}, "trigger")


def test_calibrated_gains_change_the_energies() -> None:
    gains = detector.nominal_gains()
    gains[detector.ecal_id(2, 3)] *= 2.0  # this cell gives twice the counts per MeV
    c = nominal().replace(gain=gains, version="test")
    batch = make_batch(ecal_cells_gev={(2, 3): 40.0, (1, 3): 10.0})  # amplitudes made with nominal gains
    d = Trigger(quiet(), c).evaluate(batch)
    assert d.e_ecal[0] == pytest.approx(20.0 + 10.0, abs=2 * ECAL_COUNT_GEV)


def test_calibrated_and_nominal_paths_agree_away_from_thresholds() -> None:
    rng = np.random.default_rng(4)
    n = 5000
    batch = make_batch(
        ecal_block_gev=rng.uniform(0, 120, n),
        prs_block_gev=rng.uniform(0, 1, n),
        ecal_cells_gev={(1, 2): rng.uniform(0, 5, n)},
    )
    gains = detector.nominal_gains() * (1 + 1e-9 * rng.random(detector.N_CHANNELS))  # not exactly equal
    uniform = Trigger(quiet()).evaluate(batch)
    general = Trigger(quiet(), nominal().replace(gain=gains)).evaluate(batch)
    assert np.allclose(uniform.e_ecal, general.e_ecal, rtol=1e-5)
    far = (np.abs(uniform.e_ecal - 80) > 0.01) & (np.abs(uniform.e_prs - 0.3) > 0.001)
    assert np.array_equal(uniform.mask[far], general.mask[far])


def test_saturated_blocks_do_not_overflow() -> None:
    batch = make_batch(ecal_cells_gev={c: 2000.0 for c in detector.block_cells()})  # 65535 counts each
    d = Trigger(quiet()).evaluate(batch)
    assert d.e_ecal[0] == pytest.approx(12 * 65535 * ECAL_COUNT_GEV, rel=1e-6)
    assert not d.mask[0] & S_EC


# ---------------------------------------------------------------- prescale, random, dead time
def test_prescale_counts_across_batches() -> None:
    trig = Trigger(TriggerConfig(beam_prescale=7, random_period_ns=0, dead_time_ns=0))
    fired: list[int] = []
    offset = 0
    for n in (3, 10, 1, 0, 20, 6):
        b = electron(ecal_block_gev=np.full(n, 100.0), t_ns=np.arange(n) * 1000 + offset)
        d = trig.evaluate(b)
        fired += (np.flatnonzero(d.mask & BEAM) + offset // 1000).tolist()
        assert np.all(d.trigger_mask & BEAM)
        offset += n * 1000
    assert fired == [6, 13, 20, 27, 34]  # every 7th S_trig particle, whatever the batching


def test_prescale_counts_only_strig_particles() -> None:
    trig = Trigger(TriggerConfig(beam_prescale=2, random_period_ns=0, dead_time_ns=0))
    b = make_batch(ecal_block_gev=100.0, counters={"V1": [0, 500, 0, 500, 0, 0]}, t_ns=np.arange(6) * 1000)
    d = trig.evaluate(b)
    assert np.flatnonzero(d.mask & BEAM).tolist() == [2, 5]


def test_beam_and_physics_on_one_particle_give_one_event() -> None:
    trig = Trigger(TriggerConfig(beam_prescale=1, random_period_ns=0, dead_time_ns=0))
    d = trig.evaluate(electron())
    assert d.n_readout == 1 and d.trigger_mask[0] & PHYSICS and d.trigger_mask[0] & BEAM
    assert d.counts["triggers_physics"] == d.counts["triggers_beam"] == d.counts["n_accepted"] == 1


def test_random_trigger_runs_on_a_clock_across_batches() -> None:
    trig = Trigger(TriggerConfig(beam_prescale=0, random_period_ns=1000, dead_time_ns=0))
    empty = np.zeros((29, 0), np.uint16)
    times: list[int] = []
    for t0, length in ((0, 2500), (2500, 2500), (10_000, 2000)):  # the last after a gap
        d = trig.evaluate(PrimitiveBatch(t_ns=np.zeros(0, np.int64), amp=empty, t0_ns=t0, length_ns=length))
        assert np.all(d.index == NO_PARTICLE) and np.all(d.trigger_mask == RANDOM)
        times += d.t_ns.tolist()
    assert times == [500, 1500, 2500, 3500, 4500, 10_500, 11_500]
    trig.new_spill()
    d = trig.evaluate(PrimitiveBatch(t_ns=np.zeros(0, np.int64), amp=empty, t0_ns=0, length_ns=1000))
    assert d.t_ns.tolist() == [500]


@pytest.mark.parametrize(("gap", "both"), [(4999, False), (5000, True), (5001, True)])
def test_dead_time_at_below_and_above(gap: int, both: bool) -> None:
    trig = Trigger(quiet(dead_time_ns=5000))
    d = trig.evaluate(electron(ecal_block_gev=[40.0, 40.0], t_ns=[1000, 1000 + gap]))
    assert d.accept.tolist() == [True, both]
    assert d.counts["dead_time_lost"] == (0 if both else 1)
    assert d.mask[1] & PHYSICS  # the condition fired; the trigger was lost to dead time


def test_dead_time_is_not_paralysable() -> None:
    d = Trigger(quiet(dead_time_ns=5000)).evaluate(electron(ecal_block_gev=[40.0] * 3, t_ns=[0, 3000, 6000]))
    assert d.accept.tolist() == [True, False, True]  # 6000 is 6 us after the last *accepted* trigger


def test_dead_time_carries_across_batches_and_resets_per_spill() -> None:
    trig = Trigger(quiet(dead_time_ns=5000))
    assert trig.evaluate(electron(t_ns=[10_000])).accept[0]
    assert not trig.evaluate(electron(t_ns=[12_000])).accept[0]
    assert trig.evaluate(electron(t_ns=[15_000])).accept[0]
    trig.new_spill()
    assert trig.evaluate(electron(t_ns=[0])).accept[0]


def test_random_triggers_are_subject_to_dead_time() -> None:
    trig = Trigger(TriggerConfig(beam_prescale=0, random_period_ns=10_000, dead_time_ns=5000))
    d = trig.evaluate(electron(t_ns=[3000], length_ns=20_000))  # random at 5000 and 15000
    assert d.t_ns.tolist() == [3000, 15_000] and d.counts["dead_time_lost"] == 1
    assert d.trigger_mask.tolist() == [PHYSICS | S_TRIG | S_PRS | S_EC, RANDOM]


# ---------------------------------------------------------------- properties
particles = st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 120), min_size=n, max_size=n),
        st.lists(st.floats(0, 2), min_size=n, max_size=n),
        st.lists(st.integers(0, 400), min_size=n, max_size=n),
        st.lists(st.integers(0, 20_000), min_size=n, max_size=n),
    )
)


def _batch(p: tuple[list[float], list[float], list[int], list[int]]) -> PrimitiveBatch:
    e, prs, v1, t = p
    return make_batch(
        ecal_block_gev=e, prs_block_gev=prs, counters={"V1": v1}, t_ns=np.sort(t), length_ns=30_000
    )


@settings(max_examples=60, deadline=None)
@given(particles, st.floats(1, 120), st.floats(0, 40))
def test_raising_the_ecal_threshold_never_removes_a_physics_event(p, low: float, more: float) -> None:
    b = _batch(p)
    before = Trigger(quiet(ecal_max_gev=low)).evaluate(b)
    after = Trigger(quiet(ecal_max_gev=low + more)).evaluate(b)
    assert np.all(after.accept[before.accept])
    assert np.all(after.physics[before.physics])


@settings(max_examples=60, deadline=None)
@given(particles, st.floats(0, 2), st.floats(0, 1))
def test_lowering_the_prs_threshold_never_removes_a_physics_event(p, high: float, less: float) -> None:
    b = _batch(p)
    before = Trigger(quiet(prs_min_gev=high)).evaluate(b)
    after = Trigger(quiet(prs_min_gev=max(high - less, 0))).evaluate(b)
    assert np.all(after.physics[before.physics])


@settings(max_examples=60, deadline=None)
@given(particles, st.lists(st.integers(0, 30_000), max_size=4))
def test_splitting_a_batch_changes_nothing(p, cuts: list[int]) -> None:
    """Prescale, random clock and dead time carry across batches: any split gives the same triggers."""
    b = _batch(p)
    cfg = TriggerConfig(beam_prescale=3, random_period_ns=4000, dead_time_ns=2500)
    whole = Trigger(cfg).evaluate(b)
    trig = Trigger(cfg)
    edges = sorted({0, 30_000, *cuts})
    got_t: list[int] = []
    got_m: list[int] = []
    for lo, hi in itertools.pairwise(edges):
        sel = (b.t_ns >= lo) & (b.t_ns < hi)
        d = trig.evaluate(PrimitiveBatch(t_ns=b.t_ns[sel], amp=b.amp[:, sel], t0_ns=lo, length_ns=hi - lo))
        got_t += d.t_ns.tolist()
        got_m += d.trigger_mask.tolist()
    assert got_t == whole.t_ns.tolist()
    assert got_m == whole.trigger_mask.tolist()


@settings(max_examples=40, deadline=None)
@given(particles)
def test_accepted_triggers_respect_the_dead_time(p) -> None:
    d = Trigger(TriggerConfig(beam_prescale=2, random_period_ns=3000, dead_time_ns=1000)).evaluate(_batch(p))
    assert np.all(np.diff(d.t_ns) >= 1000)
    assert d.counts["n_accepted"] == d.n_readout
    fired = d.counts["fired_physics"] + d.counts["fired_beam"] + d.counts["fired_random"]
    both = int(np.count_nonzero((d.mask & PHYSICS) & ((d.mask & BEAM) >> 1)))
    assert d.counts["n_accepted"] + d.counts["dead_time_lost"] == fired - both


def _greedy_dead_time(t: list[int], dead_until: int, dead_ns: int) -> list[int]:
    """Reference: accept a candidate when it is not within the dead time of the last accepted one."""
    kept, until = [], dead_until
    for i, ti in enumerate(t):
        if ti >= until:
            kept.append(i)
            until = ti + dead_ns
    return kept


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 20_000), max_size=60),
    st.integers(-5_000, 5_000),
    st.integers(0, 3_000),
)
def test_dead_time_matches_the_greedy_rule(times, dead_until, dead_ns) -> None:
    t = np.sort(np.array(times, dtype=np.int64))
    state = TriggerState(dead_until_ns=dead_until)
    keep = _dead_time(t, state, dead_ns)
    got = list(range(t.size)) if keep is None else keep.tolist()
    assert got == _greedy_dead_time(t.tolist(), dead_until, dead_ns)


def test_a_block_with_every_cell_masked_sums_to_zero() -> None:
    """All trigger-block cells masked: E_PRS = E_ECAL = 0, so S_PRS never fires and S_EC always does; the
    trigger keeps running (no error)."""
    ecal_cells = [detector.channel_name(c) for c in TriggerConfig().block_channels()[0]]
    prs_cells = [detector.channel_name(c) for c in TriggerConfig().block_channels()[1]]
    cfg = TriggerConfig(masked_cells=tuple(ecal_cells + prs_cells))
    trig = Trigger(cfg)
    d = trig.evaluate(make_batch(ecal_block_gev=[50.0, 100.0], prs_block_gev=[1.0, 1.0], t_ns=[0, 10_000]))
    assert d.e_ecal.tolist() == [0.0, 0.0] and d.e_prs.tolist() == [0.0, 0.0]
    assert not d.s_prs.any() and d.s_ec.all() and not d.physics.any()
