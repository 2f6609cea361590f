"""Waveform reconstruction (the multi-pulse fit) on synthetic windows with known pulses."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import detector
from daq.waveform import (
    MAX_NEIGHBOURS,
    ChannelTracker,
    Neighbours,
    RecoConfig,
    event_sums,
    find_neighbours,
    reconstruct,
    synthesize,
    template,
    window_phase,
)

GAINS = detector.nominal_gains()
NOISE = np.full(detector.N_CHANNELS, 1.5)
CENTRE = detector.ecal_id(2, 3)  # a trigger-block cell: its neighbours' primitives are known
OUTER = detector.ecal_id(0, 0)  # not in the primitives
PRIM = detector.default_primitive_channels()
PERIOD = detector.SAMPLE_PERIOD_NS
EM_FWHM = RecoConfig().em_fwhm_ns


def em(t_ns: np.ndarray, peak_ns: float) -> np.ndarray:
    return template(np.asarray(t_ns) - peak_ns, 3, EM_FWHM)


def window(
    pulses: list[tuple[float, float]],
    ped: tuple[float, float] = (200.0, 207.0),
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One channel's 32 samples (float) with pulses (amplitude, peak ns) on even/odd pedestals."""
    t = np.arange(detector.N_SAMPLES) * PERIOD
    w = np.zeros(detector.N_SAMPLES)
    w[0::2], w[1::2] = ped
    for a, p in pulses:
        w += a * em(t, p)
    if noise:
        w += (rng or np.random.default_rng(1)).normal(0, noise, w.shape)
    return w


def event(channel_windows: dict[int, np.ndarray], rng: np.random.Generator | None = None) -> np.ndarray:
    """(1, 110, 32) uint16: the given channels, every other channel a quiet pedestal with noise."""
    r = rng or np.random.default_rng(2)
    w = 200.0 + r.normal(0, 1.5, (1, detector.N_CHANNELS, detector.N_SAMPLES))
    for ch, x in channel_windows.items():
        w[0, ch] = x
    return np.clip(np.rint(w), 0, detector.ADC_MAX).astype(np.uint16)


def neighbours(dt_ns: list[float], prim: dict[int, list[float]] | None = None) -> Neighbours:
    """One event's neighbours at dt_ns, with primitive amplitudes per channel id (default 0)."""
    nb = Neighbours.none(1, PRIM)
    nb.count[0] = len(dt_ns)
    nb.dt_ns[0, : len(dt_ns)] = dt_ns
    for ch, amps in (prim or {}).items():
        nb.amp[0, : len(amps), list(PRIM).index(ch)] = amps
    return nb


def fit(w: np.ndarray, nb: Neighbours | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return reconstruct(w, GAINS, noise=NOISE, neighbours=nb, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- one pulse
def test_pedestals_even_and_odd_amplitude_and_time() -> None:
    r = fit(event({OUTER: window([(800.0, 125.0)], ped=(190.0, 212.0))}))
    assert r.pedestal_even[0, OUTER] == pytest.approx(190.0, abs=0.6)
    assert r.pedestal_odd[0, OUTER] == pytest.approx(212.0, abs=0.6)
    assert r.amplitude[0, OUTER] == pytest.approx(800.0, abs=2.0)
    assert r.peak_time[0, OUTER] == pytest.approx(125.0, abs=0.2)
    assert r.n_pulses[0, OUTER] == 1 and not r.pileup[0, OUTER]
    assert r.chi2[0, OUTER] < 3
    assert abs(r.amplitude[0, OUTER + 1]) < 3 and r.n_pulses[0, OUTER + 1] == 0  # a quiet channel


def test_energy_is_amplitude_over_gain_in_gev() -> None:
    r = fit(event({OUTER: window([(900.0, 125.0)])}))
    assert r.energy[0, OUTER] == pytest.approx(r.amplitude[0, OUTER] / GAINS[OUTER] / 1000.0, rel=1e-6)
    assert r.energy[0, OUTER] == pytest.approx(20.0, rel=0.005)  # 900 counts / 0.045 counts per MeV


def test_zero_suppression_and_dead_channels() -> None:
    a = np.zeros((1, detector.N_CHANNELS))
    a[0, :3] = [6.0, 12.0, 500.0]
    status = np.zeros(detector.N_CHANNELS, np.uint8)
    status[2] = 1
    r = reconstruct(synthesize(a), GAINS, noise=NOISE, status=status)
    assert r.energy[0, 0] == 0.0  # 6 counts < 5 sigma = 7.5 counts
    assert r.energy[0, 1] > 0.0
    assert r.energy[0, 2] == 0.0 and r.amplitude[0, 2] > 450  # dead: amplitude kept, no energy


@pytest.mark.parametrize("shift", [-6.0, -2.5, 0.0, 1.3, 4.0, 6.0])
def test_an_unknown_time_offset_is_fitted(shift: float) -> None:
    """The channel's pulse sits `shift` ns from where its (uncalibrated) offset says: the fit moves the
    template there; amplitude and time are right."""
    r = fit(event({CENTRE: window([(3000.0, 125.0 + shift)])}))
    assert r.peak_time[0, CENTRE] == pytest.approx(125.0 + shift, abs=0.1)
    assert r.amplitude[0, CENTRE] == pytest.approx(3000.0, rel=2e-3)


def test_calibrated_time_offsets_place_the_template_and_are_subtracted() -> None:
    offsets = np.zeros(detector.N_CHANNELS)
    offsets[OUTER] = 3.0
    tight = np.full(detector.N_CHANNELS, 0.05)
    r = fit(event({OUTER: window([(2000.0, 128.0)])}), time_offset_ns=offsets, time_offset_error_ns=tight)
    assert r.amplitude[0, OUTER] == pytest.approx(2000.0, rel=1e-3)
    assert r.peak_time[0, OUTER] == pytest.approx(125.0, abs=0.1)  # the channel's offset taken off


# ---------------------------------------------------------------- what a run learns


def test_a_run_learns_an_uncalibrated_time_offset_and_then_uses_it() -> None:
    """A channel whose pulses sit 3 ns late, with no calibrated offset: after time_track_pulses isolated
    pulses the tracker holds the offset, later windows are fitted at it (no shift fitted), and any split
    of the events into batches learns the same; without trigger times nothing is learned."""
    cfg = RecoConfig(time_track_pulses=20)
    rng = np.random.default_rng(5)
    w = np.concatenate([event({OUTER: window([(800.0, 128.0)], noise=1.5, rng=rng)}, rng) for _ in range(40)])
    one = ChannelTracker.new()
    on_edge = np.zeros(40, np.int64)  # trigger times on a clock edge: the in-time pulse at 125 ns
    r = reconstruct(w, GAINS, noise=NOISE, config=cfg, tracker=one, trigger_ns=on_edge)
    assert one.n[OUTER] >= 20 and one.offsets_ns(20)[OUTER] == pytest.approx(3.0, abs=0.3)
    assert np.isnan(one.offsets_ns(20)[CENTRE])  # nothing there to learn from
    assert r.amplitude[-1, OUTER] == pytest.approx(800.0, rel=0.01)
    split = ChannelTracker.new()
    for part in np.array_split(np.arange(40), [7, 19, 20]):
        reconstruct(w[part], GAINS, noise=NOISE, config=cfg, tracker=split, trigger_ns=on_edge[part])
    unknown = ChannelTracker.new()  # trigger times unknown: nothing to learn the offset against
    reconstruct(w, GAINS, noise=NOISE, config=cfg, tracker=unknown)
    assert np.isnan(unknown.offsets_ns(20)).all()
    np.testing.assert_array_equal(split.n, one.n)
    np.testing.assert_array_equal(split.sum_ns, one.sum_ns)


def test_a_run_learns_the_noise_where_the_constants_give_none() -> None:
    """A channel with 3 ADC counts of noise, given as 1.5 without an uncertainty: once learned, its quiet
    windows have a unit chi2 (about 4 before); with a calibrated noise (an uncertainty given) nothing is
    learned."""
    rng = np.random.default_rng(9)
    n = 400
    w = 200.0 + rng.normal(0, 1.5, (n, detector.N_CHANNELS, detector.N_SAMPLES))
    w[:, OUTER] = 200.0 + rng.normal(0, 3.0, (n, detector.N_SAMPLES))
    w = np.rint(w).astype(np.uint16)
    cfg = RecoConfig(noise_track_windows=100)
    tr = ChannelTracker.new()
    r = reconstruct(
        w, GAINS, noise=NOISE, config=cfg, tracker=tr, noise_error=np.full(detector.N_CHANNELS, np.nan)
    )
    learned = tr.noise(100)
    assert learned[OUTER] == pytest.approx(3.0, rel=0.1)
    assert learned[CENTRE] == pytest.approx(1.5, rel=0.1)
    late = slice(200, None)  # after learning
    assert np.median(r.chi2[late, OUTER]) == pytest.approx(1.0, abs=0.25)
    assert np.median(r.chi2[:100, OUTER]) > 3.0  # before: errors of 1.5 counts for 3 counts of noise
    fixed = ChannelTracker.new()
    reconstruct(
        w, GAINS, noise=NOISE, config=cfg, tracker=fixed, noise_error=np.full(detector.N_CHANNELS, 0.1)
    )
    assert not fixed.noise_n.any()


def test_windows_without_data_are_not_fitted_and_teach_nothing() -> None:
    """An absent readout group's windows are zeros: not fitted, no noise learned from them (a learned
    noise of 0 divided by zero in the DAQ once); a stuck ADC (a constant window) learns the floor."""
    rng = np.random.default_rng(4)
    w = np.rint(200.0 + rng.normal(0, 1.5, (300, detector.N_CHANNELS, detector.N_SAMPLES))).astype(np.uint16)
    w[:, OUTER] = 0
    w[:, CENTRE] = 200
    tr = ChannelTracker.new()
    nan = np.full(detector.N_CHANNELS, np.nan)
    r = reconstruct(
        w, GAINS, noise=NOISE, config=RecoConfig(noise_track_windows=50), tracker=tr, noise_error=nan
    )
    assert tr.noise_n[OUTER] == 0 and not r.energy[:, OUTER].any() and not r.chi2[:, OUTER].any()
    assert (
        tr.noise(50)[CENTRE] < 0.05
    )  # learned as 0 (its histogram's first bin), used as the 0.3-count floor
    assert np.isfinite(r.chi2).all() and not r.energy[:, CENTRE].any()


def test_the_trigger_phase_moves_the_in_time_pulse() -> None:
    # a trigger 5 ns after a clock edge: its window starts at the next edge, the pulse peaks 7.5 ns earlier
    t = 1_000_005
    phase = float(window_phase(np.array([t]), 125.0, PERIOD)[0])
    assert phase == pytest.approx(117.5)
    r = fit(event({CENTRE: window([(1500.0, phase)])}), trigger_ns=np.array([t]))
    assert r.amplitude[0, CENTRE] == pytest.approx(1500.0, rel=2e-3)
    assert r.peak_time[0, CENTRE] == pytest.approx(phase, abs=0.1)


# ---------------------------------------------------------------- pile-up
@pytest.mark.parametrize("dt", [-60.0, -25.0, 20.0, 40.0, 90.0])
def test_two_overlapping_pulses_are_separated(dt: float) -> None:
    """An announced neighbour dt ns away, in a cell without its primitive: both fitted, the in-time one
    kept, the other removed and flagged."""
    w = event({OUTER: window([(1200.0, 125.0), (2500.0, 125.0 + dt)], noise=1.5)})
    r = fit(w, neighbours([dt]))
    assert r.amplitude[0, OUTER] == pytest.approx(1200.0, abs=15.0 if abs(dt) < 30 else 6.0)
    assert r.pileup[0, OUTER] and r.n_pulses[0, OUTER] == 2
    plain = fit(w)  # not announced: the residual search finds it only if it is far enough
    if abs(dt) >= 40:
        assert plain.amplitude[0, OUTER] == pytest.approx(1200.0, abs=10.0)


def test_a_pulse_in_the_pedestal_region_does_not_spoil_the_pedestal() -> None:
    """A particle 100 ns before the trigger peaks in the first samples (the old reconstruction's
    pedestal)."""
    w = event({OUTER: window([(900.0, 125.0), (3000.0, 25.0)], ped=(195.0, 199.0), noise=1.5)})
    r = fit(w, neighbours([-100.0]))
    assert r.pedestal_even[0, OUTER] == pytest.approx(195.0, abs=1.0)
    assert r.pedestal_odd[0, OUTER] == pytest.approx(199.0, abs=1.0)
    assert r.amplitude[0, OUTER] == pytest.approx(900.0, abs=5.0)


def test_saturated_samples_are_left_out() -> None:
    """A 5000-count pulse clipped at 4095: the unsaturated samples still give its height."""
    x = window([(5000.0, 125.0)])
    assert (np.clip(x, 0, 4095) == 4095).sum() >= 2
    r = fit(event({CENTRE: x}))
    assert r.amplitude[0, CENTRE] == pytest.approx(5000.0, rel=5e-3)


def test_saturation_with_a_pile_up_pulse_on_top() -> None:
    """Two 100 GeV showers 15 ns apart in the beam cell (the case the old reconstruction stored as 17.6
    instead of 86 GeV): the neighbour's primitive pins its part, the in-time one comes out."""
    w = event({CENTRE: window([(3600.0, 125.0), (3500.0, 110.0)], noise=1.5)})
    assert (w == 4095).sum() >= 2
    r = fit(w, neighbours([-15.0], {CENTRE: [3500.0]}))
    assert r.amplitude[0, CENTRE] == pytest.approx(3600.0, rel=0.01)


def test_a_neighbour_too_close_to_separate_is_taken_off_by_its_primitive() -> None:
    w = event({CENTRE: window([(2000.0, 125.0), (1500.0, 127.0)], noise=1.5)})
    with_prior = fit(w, neighbours([2.0], {CENTRE: [1500.0]}))
    assert with_prior.amplitude[0, CENTRE] == pytest.approx(2000.0, rel=0.02)
    merged = fit(w, neighbours([2.0]))  # no primitive: the two cannot be told apart, the sum is kept
    assert merged.amplitude[0, CENTRE] == pytest.approx(3500.0, rel=0.02)


def test_a_pulse_the_stream_did_not_announce_is_found_in_the_residuals() -> None:
    w = event({OUTER: window([(700.0, 125.0), (1500.0, 262.5)], noise=1.5)})
    r = fit(w)
    assert r.amplitude[0, OUTER] == pytest.approx(700.0, abs=6.0)
    assert r.n_pulses[0, OUTER] == 2 and r.pileup[0, OUTER]
    assert r.chi2[0, OUTER] < 3
    none = fit(w, config=RecoConfig(extra_pulses=0))  # without the search: a bad chi2 says so
    assert none.chi2[0, OUTER] > 10


def test_a_neighbour_that_left_nothing_in_the_channel_costs_nothing() -> None:
    w = event({OUTER: window([(1000.0, 125.0)], noise=1.5)})
    r = fit(w, neighbours([30.0, -45.0]))
    assert r.amplitude[0, OUTER] == pytest.approx(1000.0, abs=6.0)
    assert r.n_pulses[0, OUTER] == 1 and not r.pileup[0, OUTER]


@settings(max_examples=80, deadline=None)
@given(
    st.floats(50.0, 3000.0),
    st.lists(
        st.tuples(st.floats(0.0, 3000.0), st.integers(-250, 250)), max_size=3
    ),  # arrival times: whole ns
    st.floats(-4.0, 4.0),
    st.booleans(),
)
def test_noise_free_windows_are_fitted_exactly(
    a0: float, others: list[tuple[float, int]], shift: float, calibrated: bool
) -> None:
    """Any in-time pulse with up to three announced neighbours, no noise but the ADC's rounding: the fit
    recovers the in-time amplitude (a cell without primitives: the samples alone). With a calibrated time
    offset the neighbours may be 20 ns close; with an unknown one (fitted) 50 ns."""
    far = 20.0 if calibrated else 50.0
    shift = 0.0 if calibrated else shift
    others = [(a, dt) for a, dt in others if abs(dt) >= far]
    pulses = [(a0, 125.0 + shift)] + [(a, 125.0 + shift + dt) for a, dt in others]
    x = window(pulses)
    if x.max() >= 4095:
        return
    w = event({OUTER: x}, rng=np.random.default_rng(0))
    w[0, OUTER] = np.rint(x)
    errors = np.full(detector.N_CHANNELS, 0.0 if calibrated else np.nan)
    r = fit(w, neighbours([dt for _, dt in others]), time_offset_error_ns=errors)
    assert r.amplitude[0, OUTER] == pytest.approx(a0, abs=2.0 + 2e-3 * a0)


def test_the_fit_is_least_squares() -> None:
    """With known positions and nothing constrained, the amplitudes are numpy's least-squares solution of
    the same model (pedestals even/odd + templates): an independent check of the compiled algebra."""
    rng = np.random.default_rng(5)
    t = np.arange(detector.N_SAMPLES) * PERIOD
    dts = [-70.0, 35.0]
    truth = [(800.0, 125.0), (600.0, 55.0), (900.0, 160.0)]
    x = np.rint(window(truth, noise=1.5, rng=rng))
    tight = np.full(detector.N_CHANNELS, 0.0)  # no time fit: the positions are the model's
    r = fit(event({OUTER: x}), neighbours(dts), time_offset_error_ns=tight)
    design = np.stack(
        [t * 0 + (np.arange(32) % 2 == 0), np.arange(32) % 2 == 1] + [em(t, 125.0 + d) for d in [0.0, *dts]],
        axis=1,
    )
    sol = np.linalg.lstsq(design.astype(float), x, rcond=None)[0]
    assert r.pedestal_even[0, OUTER] == pytest.approx(sol[0], abs=0.02)
    assert r.amplitude[0, OUTER] == pytest.approx(sol[2], abs=0.05)


def test_quiet_windows_have_a_unit_chi2_and_no_pulse() -> None:
    rng = np.random.default_rng(3)
    w = synthesize(np.zeros((200, detector.N_CHANNELS)), noise=1.5, rng=rng)
    r = reconstruct(w, GAINS, noise=NOISE)
    assert np.median(r.chi2) == pytest.approx(1.0, abs=0.1)
    assert abs(float(np.mean(r.amplitude))) < 0.2
    assert np.mean(r.n_pulses) < 0.01 and not r.pileup.any()


# ---------------------------------------------------------------- neighbours from the stream
def test_find_neighbours_takes_the_stream_around_each_trigger_but_not_the_trigger() -> None:
    stream = np.array([0, 100, 450, 500, 520, 900, 2000], np.int64)
    amp = np.arange(29 * 7, dtype=np.uint16).reshape(29, 7)
    trig = np.array([500, 1000], np.int64)
    nb, over = find_neighbours(trig, np.array([3, -1]), stream, amp, PRIM, 400.0, 330.0)
    assert nb.count.tolist() == [3, 1] and over.size == 0  # 900 is 400 ns after 500: beyond 330
    assert nb.dt_ns[0, :3].tolist() == [20, -50, -400]  # closest first; the trigger's own left out
    assert nb.dt_ns[1, 0] == -100 and (nb.amp[1, 0] == amp[:, 5]).all()


def test_find_neighbours_keeps_the_closest_when_there_are_too_many() -> None:
    stream = np.arange(-200, 201, 10, dtype=np.int64)
    nb, over = find_neighbours(
        np.array([0]), np.array([-1]), stream, np.zeros((29, stream.size), np.uint16), PRIM, 400, 330
    )
    assert nb.count[0] == MAX_NEIGHBOURS and over.tolist() == [0]
    assert np.abs(nb.dt_ns[0]).max() <= 60


def test_bad_settings_are_refused() -> None:
    for bad in ({"quiet_sigma": 0}, {"pulse_order": 0}, {"em_fwhm_ns": 1.0}, {"extra_pulses": 9}):
        with pytest.raises(ValueError):
            RecoConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples"):
        reconstruct(np.zeros((1, 1, 3), np.uint16), np.ones(1))
    with pytest.raises(ValueError, match="shape"):
        reconstruct(np.zeros((1, 2, 32), np.uint16), np.ones(2), shape=np.array([0, 7]))


def test_event_sums() -> None:
    e = np.zeros((2, detector.N_CHANNELS), np.float32)
    e[0, detector.ECAL_IDS[:3]] = 10.0
    e[0, detector.PRS_IDS[0]] = 2.0
    e[0, detector.HCAL_IDS[:2]] = 1.5
    veto = detector.VETO_IDS.reshape(detector.VETO_SLABS, detector.VETO_PMTS)
    e[0, veto[0]] = [4.0, 9.0]
    s = event_sums(e, beam_energy_gev=100.0)
    assert s[:, 0].tolist() == pytest.approx([2.0, 32.0, 3.0, 6.0, 0.0, 68.0])
    scaled = event_sums(e, beam_energy_gev=100.0, ecal_scale=1.01)  # calibration's shower energy scale
    assert scaled[1, 0] == pytest.approx(32.32) and scaled[5, 0] == pytest.approx(67.68)


def test_synthesize_uses_the_templates() -> None:
    a = np.zeros((1, detector.N_CHANNELS))
    a[0, CENTRE] = 1000.0
    w = synthesize(a, pedestal_even=0, pedestal_odd=0)
    t = np.arange(32) * PERIOD
    assert np.allclose(w[0, CENTRE], np.rint(1000 * em(t, 125.0)), atol=0.5)
    assert functools.reduce(max, w[0, CENTRE]) == 1000
