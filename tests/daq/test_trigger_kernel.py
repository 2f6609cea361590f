"""The compiled trigger pass (daq.trigger_kernel) gives exactly the decisions of the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import detector, trigger, trigger_kernel
from daq.protocol import NO_PARTICLE
from daq.trigger import Decisions, PrimitiveBatch, Trigger, TriggerConfig, make_batch

DEFAULT_PRIM = np.asarray(detector.default_primitive_channels())


def assert_same(a: Decisions, b: Decisions) -> None:
    for name in ("strig", "s_prs", "s_ec", "physics", "beam_pos", "index", "t_ns", "trigger_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    # the integer sums may be uint16 or uint32: the energies are the same
    np.testing.assert_array_equal(a.prs_energy.sums, b.prs_energy.sums)
    np.testing.assert_array_equal(a.ecal_energy.sums, b.ecal_energy.sums)
    np.testing.assert_array_equal(a.e_prs, b.e_prs)
    np.testing.assert_array_equal(a.e_ecal, b.e_ecal)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.accept, b.accept)
    assert a.counts == b.counts


def test_the_kernel_serves_uniform_gains_only() -> None:
    from calibration.constants import nominal

    assert Trigger().compiled and not Trigger(compiled=False).compiled
    gains = detector.nominal_gains() * np.linspace(0.9, 1.1, detector.N_CHANNELS)
    assert not Trigger(constants=nominal().replace(gain=gains)).compiled


def test_the_kernel_constants_are_the_trigger_bits() -> None:
    k = trigger_kernel
    assert (k._S_TRIG, k._S_PRS, k._S_EC, k._PHYSICS, k._BEAM, k._RANDOM) == (
        trigger.S_TRIG,
        trigger.S_PRS,
        trigger.S_EC,
        trigger.PHYSICS,
        trigger.BEAM,
        trigger.RANDOM,
    )
    assert k._NO_PARTICLE == NO_PARTICLE


cells = st.sampled_from(
    [f"ECAL{x}{y}" for x in range(1, 4) for y in range(1, 5)] + ["PRS22", "PRS13", "PRS34"]
)
configs = st.builds(
    TriggerConfig,
    prs_min_gev=st.sampled_from([0.0, 0.3, 1.0, 7.5]),
    ecal_max_gev=st.sampled_from([0.01, 20.0, 80.0, 1000.0, 1e7]),
    s0_adc=st.integers(0, 400),
    v1_adc=st.integers(0, 400),
    masked_cells=st.lists(cells, max_size=3, unique=True).map(tuple),
    beam_prescale=st.integers(0, 7),
    random_period_ns=st.sampled_from([0, 700, 5_000]),
    dead_time_ns=st.sampled_from([0, 1, 400, 3_000]),
)


@st.composite
def batches(draw: st.DrawFn, n_rows: int) -> PrimitiveBatch:
    """Random primitives, sometimes with amplitudes beyond 12 bits, times out of order or equal, empty,
    or as a strided view."""
    n = draw(st.integers(0, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = draw(st.sampled_from([500, 4096, 65536]))
    amp = rng.integers(0, top, (n_rows, n)).astype(np.uint16)
    amp[rng.random(amp.shape) < 0.5] //= 12  # near the counter thresholds and the block-sum ones
    t = np.cumsum(rng.integers(0, 900, n)).astype(np.int64)
    if draw(st.booleans()):
        t = rng.permutation(t)
    if draw(st.booleans()):  # a strided view, as a slice of a larger array
        wide = np.zeros((n_rows, 2 * n), np.uint16)
        wide[:, ::2] = amp
        amp = wide[:, ::2]
    t0 = int(t.min()) if n else 0
    return PrimitiveBatch(t_ns=t, amp=amp, t0_ns=t0, length_ns=int(np.ptp(t)) + 1000 if n else 1000)


def at_thresholds(trig: Trigger, amp: np.ndarray, rng: np.random.Generator) -> None:
    """Put a third of the particles at, just below or just above the counter and block-sum thresholds."""
    n = amp.shape[1]
    pick = np.flatnonzero(rng.random(n) < 0.33)
    if not pick.size:
        return
    cfg = trig.config
    thr = [cfg.s0_adc, cfg.s2_adc, cfg.s3_adc, cfg.v1_adc, cfg.v2_adc]
    for row, t in zip(trig._counter_rows, thr, strict=True):
        amp[row, pick] = np.clip(t + rng.integers(-1, 2, pick.size), 0, 65535)
    ecal, prs = trig._blocks
    for block, k in ((ecal, ecal.k_below(cfg.ecal_max_gev)), (prs, prs.k_above(cfg.prs_min_gev))):
        if block.rows.size:
            amp[block.rows[:, None], pick] = 0
            amp[block.rows[0], pick] = np.clip(k + rng.integers(-1, 2, pick.size), 0, 65535)


@settings(max_examples=150, deadline=None)
@given(configs, st.booleans(), st.data())
def test_kernel_and_numpy_give_the_same_decisions(
    cfg: TriggerConfig, shuffle: bool, data: st.DataObject
) -> None:
    # primitive rows in the default order, or shuffled (counter and block rows not contiguous)
    prim = DEFAULT_PRIM[data.draw(st.permutations(range(DEFAULT_PRIM.size)))] if shuffle else DEFAULT_PRIM
    fast = Trigger(cfg, None, prim)
    ref = Trigger(cfg, None, prim, compiled=False)
    assert fast.compiled and not ref.compiled
    for b in data.draw(st.lists(batches(prim.size), min_size=1, max_size=3)):
        at_thresholds(fast, b.amp, np.random.default_rng(b.n))
        assert_same(fast.evaluate(b), ref.evaluate(b))
        assert fast.state == ref.state
        for x, y in zip(fast.conditions(b.amp), ref.conditions(b.amp), strict=True):
            np.testing.assert_array_equal(x, y)
        if data.draw(st.booleans()):
            fast.new_spill()
            ref.new_spill()


def test_sums_beyond_16_bits_are_exact() -> None:
    cfg = TriggerConfig(ecal_max_gev=1e6, prs_min_gev=0.0, beam_prescale=0, random_period_ns=0)
    b = make_batch(ecal_cells_gev={(x, y): 1000.0 for x in range(1, 4) for y in range(1, 5)})
    fast, ref = Trigger(cfg), Trigger(cfg, compiled=False)
    d = fast.evaluate(b)
    assert d.ecal_energy.sums is not None and int(d.ecal_energy.sums[0]) > 65535
    assert_same(d, ref.evaluate(b))


@pytest.mark.parametrize("n", [0, 1, 7, 2047, 2048, 2049, 5000])
def test_chunk_edges_and_prescale_ordinals(n: int) -> None:
    rng = np.random.default_rng(n)
    cfg = TriggerConfig(beam_prescale=3, dead_time_ns=0, random_period_ns=0)
    b = make_batch(
        n=max(n, 1),
        counters={"V1": np.where(rng.random(max(n, 1)) < 0.3, 1000, 0)},
        ecal_block_gev=rng.uniform(0, 100, max(n, 1)),
        prs_block_gev=1.0,
    )
    if n == 0:
        b = PrimitiveBatch(t_ns=b.t_ns[:0], amp=b.amp[:, :0])
    fast, ref = Trigger(cfg), Trigger(cfg, compiled=False)
    for _ in range(2):  # the prescale counter carries over
        assert_same(fast.evaluate(b), ref.evaluate(b))
    assert fast.state == ref.state
