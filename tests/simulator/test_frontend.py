"""Front-end core: electronics truth, waveforms, readout answers, faults, truth rows (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from daq import detector, protocol
from daq.config_loader import from_dict
from daq.errors import ConfigError
from simulator import electronics as el
from simulator.config import SimConfig
from simulator.faults import parse_fault
from simulator.frontend import FrontEnd
from simulator.physics import Kind

BEAM_CELL = detector.ecal_id(*detector.BEAM_CELL)


def make(
    rate: float = 2e6, faults: tuple[str, ...] = (), seed: int = 1, run: int = 1, **sections: dict
) -> FrontEnd:
    readout = {"noise_pool_size": 1 << 18, **sections.pop("readout", {})}
    data: dict = {
        "beam": {"rate_hz": rate, **sections.pop("beam", {})},
        "faults": list(faults),
        "seed": seed,
        "run": run,
        "readout": readout,
        **sections,
    }
    return FrontEnd(from_dict(SimConfig, data))


def request(
    fe: FrontEnd, spill: int, sid: int, index: np.ndarray, t_ns: np.ndarray | None = None
) -> list[protocol.Fragment]:
    idx = np.asarray(index, dtype=np.uint32)
    req = protocol.ReadoutRequest(run=1, spill=spill, slice_id=sid, n_events=idx.size, index=idx, t_ns=t_ns)
    return fe.answer(protocol.decode(protocol.encode(req)))  # type: ignore[arg-type]


def stitched(frags: list[protocol.Fragment]) -> np.ndarray:
    """(K, 110, ns) from the six fragments."""
    return np.concatenate([f.waveforms for f in sorted(frags, key=lambda f: f.source)], axis=1)


def amplitude(wf: np.ndarray, ped: np.ndarray) -> np.ndarray:
    """Pulse height with parabolic interpolation of the maximum (float, (K, C))."""
    x = wf.astype(np.float64) - ped
    k = np.clip(np.argmax(x, axis=-1), 1, x.shape[-1] - 2)
    a, b, c = (np.take_along_axis(x, (k + d)[..., None], axis=-1)[..., 0] for d in (-1, 0, 1))
    den = a - 2 * b + c
    return np.where(den < 0, b - (a - c) ** 2 / (8 * den), b)


# ---------------------------------------------------------------- electronics truth
def test_electronics_truth_follows_nominal_values() -> None:
    fe = make()
    e = fe.electronics
    ratio = e.gain / detector.nominal_gains()
    block = [detector.ecal_id(x, y) for x, y in detector.block_cells()]
    others = np.setdiff1d(np.arange(detector.N_CHANNELS), block + [b + 30 for b in block])
    assert 0.95 < ratio[others].mean() < 1.02 and 0.05 < ratio[others].std() < 0.11
    assert ratio.min() >= 0.75 and ratio.max() <= 1.10
    prs_block = [b + 30 for b in block]
    assert np.all(ratio[block + prs_block] == 1.0)  # the trigger block is HV-equalised: exactly nominal
    assert np.all((e.pedestal_even > 100) & (e.pedestal_even < 300))
    assert 1.0 < np.abs(e.pedestal_odd - e.pedestal_even).mean() < 5.0
    assert np.all((e.noise >= 1) & (e.noise <= 3))


@pytest.mark.parametrize("fwhm", [30.0, 40.0, 70.0])
def test_pulse_shape_fwhm(fwhm: float) -> None:
    tau = el.shape_tau(3, fwhm)
    assert el.fwhm_of(3, tau) == pytest.approx(fwhm, abs=0.2)
    assert el.pulse(np.array([0.0]), 3, tau)[0] == pytest.approx(1.0)


def test_saturation_at_adc_max() -> None:
    fe = make()
    shapes, st = fe.shapes, fe.electronics_state(1, 0.0)
    pulses = el.WindowPulses(
        np.array([0]), np.array([0.0]), np.full((1, detector.N_CHANNELS), 10_000, np.float32)
    )
    wf = el.waveforms(
        1,
        np.array([5000]),
        pulses,
        shapes,
        st.baseline,
        st.noise32,
        np.random.default_rng(0),
        10.0,
        np.zeros(detector.N_CHANNELS),
    )
    assert wf.max() == detector.ADC_MAX
    assert wf.dtype == np.uint16


def _same_draws(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    return np.random.default_rng(seed), np.random.default_rng(seed)


@pytest.mark.parametrize("pool", [True, False])
def test_waveform_kernel_equals_numpy_reference_bit_for_bit(pool: bool) -> None:
    """The numba kernel and the numpy reference give identical samples, with pile-up of several pulses
    in one channel, pulses outside the table (clipped), saturation, heights below MIN_PULSE, windows
    without pulses, and both noise sources (pool chunk and fresh draws)."""
    fe = make()
    shapes, st = fe.shapes, fe.electronics_state(1, 0.0)
    g = np.random.default_rng(7)
    n_win, n_p = 40, 300
    win = g.integers(0, n_win - 5, n_p)  # the last 5 windows get no pulse
    win[:20] = 3  # heavy pile-up in window 3
    dt = g.uniform(-1500.0, 1500.0, n_p)  # beyond the table on both sides
    dt[:30] = g.uniform(-50.0, 100.0, 30)  # near the peak sample
    h = (
        g.exponential(30.0, (n_p, detector.N_CHANNELS)) * (g.random((n_p, detector.N_CHANNELS)) < 0.3)
    ).astype(np.float32)
    h[5, :10] = 20_000  # saturation
    h[6, :10] = 0.2  # below MIN_PULSE: not drawn
    pulses = el.WindowPulses(win, dt, h)
    trig = g.integers(10**6, 10**7, n_win)
    ra, rb = _same_draws(3)
    normal = fe.wave_pool if pool else None
    args = (pulses, shapes, st.baseline, st.noise32)
    tail = (10.0, fe.electronics.time_offset_ns, normal)
    a = el.waveforms(n_win, trig, *args, ra, *tail)
    b = el.waveforms_numpy(n_win, trig, *args, rb, *tail)
    assert a.dtype == b.dtype == np.uint16 and a.shape == (n_win, detector.N_CHANNELS, 32)
    assert np.array_equal(a, b)
    assert a.max() == detector.ADC_MAX and (a[3].astype(int) - b[n_win - 1].astype(int)).max() > 100
    empty = el.WindowPulses(np.zeros(0, np.intp), np.zeros(0), np.zeros((0, detector.N_CHANNELS), np.float32))
    ra, rb = _same_draws(4)
    assert np.array_equal(
        el.waveforms(3, trig[:3], empty, *args[1:], ra, *tail),
        el.waveforms_numpy(3, trig[:3], empty, *args[1:], rb, *tail),
    )
    assert el.waveforms(0, trig[:0], empty, *args[1:], ra, *tail).shape == (0, detector.N_CHANNELS, 32)


def test_primitive_digitisation_kernel_equals_numpy_reference() -> None:
    """Noise add, clip to [0, max_counts] and uint16 truncation: the compiled pass equals the numpy one
    bit for bit on padded work rows and strided outputs (as the front-end calls it), including values
    below 0 and above the ADC range, and both leave the noise pool in the same state."""
    g = np.random.default_rng(11)
    work = np.empty((29, 5000 + 24), np.float32)
    heights = work[:, :5000]
    heights[:] = g.exponential(300.0, heights.shape)
    heights[3, :7] = 1e6
    heights[4, :7] = -80.0
    max_counts = g.uniform(3400, 4000, 29).astype(np.float32)
    outs, pools = [], []
    for fn in (el.digitise_primitives, el.digitise_primitives_numpy):
        noise = el.PrimitiveNoise(np.linspace(1, 3, 29), np.random.default_rng(5), 1 << 14)
        out = np.zeros((29, 6000), np.uint16)
        for c0 in (0, 1000):  # two calls: the pool is renewed in between
            fn(heights.copy(), noise, max_counts, out=out[:, c0 : c0 + 5000])
        outs.append(out)
        pools.append(noise.pool)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(pools[0], pools[1])
    assert outs[0][3, 1000:1007].tolist() == [int(m) for m in max_counts[3:4].repeat(7)]
    assert outs[0][4, 1000:1007].max() == 0 and outs[0][:, 6000 - 1].max() > 0
    assert np.all(outs[0][:, 1000:].max(axis=1) <= max_counts)


def test_readout_answers_use_the_kernel_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    """A front-end answering real requests (pile-up from neighbouring slices, a hot channel) with the
    numpy reference instead of the kernel sends the same fragments."""
    from simulator import frontend

    answers = []
    for fn in (el.waveforms, el.waveforms_numpy):
        monkeypatch.setattr(frontend, "waveforms", fn)
        fe = make(faults=("hot:40:0.3",))
        fe.begin_spill(1, 0)
        for i in range(3):
            fe.slice_message(1, i)
        n = len(fe.buffer[(1, 1)].batch)
        idx = np.r_[0:5, n - 5 : n]  # windows reaching into slices 0 and 2
        answers.append(stitched(request(fe, 1, 1, idx)))
    assert answers[0].shape == (10, detector.N_CHANNELS, 32)
    assert np.array_equal(answers[0], answers[1])


# ---------------------------------------------------------------- slices and readout
def test_slices_are_deterministic_given_the_seed() -> None:
    a, b, c = make(), make(), make(seed=2)
    for fe in (a, b, c):
        fe.begin_spill(1, 0)
    sa, sb, sc = a.slice_message(1, 0), b.slice_message(1, 0), c.slice_message(1, 0)
    np.testing.assert_array_equal(sa.t_ns, sb.t_ns)
    np.testing.assert_array_equal(sa.amp, sb.amp)
    assert sa.amp.shape == (29, sa.n_particles) and sa.amp.dtype == np.uint16
    assert sa.t_ns.shape != sc.t_ns.shape or not np.array_equal(sa.t_ns, sc.t_ns)


def test_answer_has_one_fragment_per_group_in_request_order() -> None:
    fe = make()
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    fe.prepare(1, 1)
    b = fe.buffer[(1, 0)].batch
    gaps = np.diff(b.t_ns)
    isolated = (gaps[:-1] > 200) & (gaps[1:] > 200) & (b.kind[1:-1] == Kind.ELECTRON)  # no pile-up peak
    first = int(np.flatnonzero(isolated)[5]) + 1
    idx = np.array([first, 3, 900, 3], np.uint32)  # any order, repeats allowed
    frags = request(fe, 1, 0, idx)
    assert sorted(f.source for f in frags) == list(range(detector.N_GROUPS))
    for f in frags:
        ids = detector.GROUP_IDS[f.source]
        assert (f.run, f.spill, f.slice_id, f.n_events) == (1, 1, 0, 4)
        assert f.waveforms is not None and f.waveforms.shape == (4, ids.size, 32)
        np.testing.assert_array_equal(f.index, idx)
    wf = stitched(frags).astype(np.int32)
    assert np.abs(wf[1, BEAM_CELL] - wf[3, BEAM_CELL]).max() < 30  # same particle, fresh noise
    assert np.argmax(wf[0, BEAM_CELL]) in (8, 9, 10, 11)
    c = fe.counters[1]
    assert (c.n_requests, c.n_fragments, c.n_events_read) == (1, 6, 4)
    assert msg.n_particles == c.n_particles


def test_empty_request_gets_empty_arrays() -> None:
    fe = make()
    fe.begin_spill(1, 0)
    fe.slice_message(1, 0)
    frags = request(fe, 1, 0, np.zeros(0))
    assert len(frags) == 6
    for f in frags:
        assert f.index is not None and f.index.shape == (0,)
        assert f.waveforms is not None and f.waveforms.shape == (0, detector.GROUP_IDS[f.source].size, 32)
        protocol.decode(protocol.encode(f))


def test_expired_and_unknown_slices_get_header_only_fragments() -> None:
    fe = make(rate=2e4, readout={"latency_buffer_s": 0.05})
    fe.begin_spill(1, 0)
    for i in range(20):
        fe.prepare(1, i)
        fe.slice_message(1, i)
    frags = request(fe, 1, 0, np.array([0]))  # evicted: the buffer holds 5 slices + 2
    assert len(frags) == 6 and all(f.empty for f in frags)
    frags = request(fe, 1, 50, np.array([0]))  # never sent
    assert all(f.empty for f in frags)
    request(fe, 7, 0, np.array([0]))  # unknown spill
    c = fe.counters[1]
    assert (c.n_expired, c.n_unknown, c.n_empty_fragments) == (1, 1, 12)
    assert fe.run_unknown_requests == 1


def template_fit(fe: FrontEnd, x: np.ndarray, ch: int) -> np.ndarray:
    """Least-squares pulse height of (K, ns) pedestal-subtracted samples with the channel's pulse shape,
    scanning the peak position over the window in 0.125 ns steps."""
    table = fe.shapes.windows[fe.shapes.shape_of_channel[ch]]  # (positions, ns)
    num = x @ table.T  # (K, positions)
    den = (table * table).sum(axis=1)
    ok = den > 1e-3
    a = np.where(ok, num / np.where(ok, den, 1), 0)
    chi2 = (x * x).sum(axis=1)[:, None] - a * num
    return a[np.arange(x.shape[0]), np.argmin(np.where(ok, chi2, np.inf), axis=1)]


def test_primitives_match_waveform_pulse_heights() -> None:
    """Electrons without another particle within 500 ns: the pulse height fitted to the waveform
    (counter S0, beam cell in ECAL and PRS) agrees with the primitive within 2% + 6 counts for >= 98%
    of them, and the highest sample is 85-100% of the primitive (+ noise)."""
    fe = make(rate=2e4)
    fe.begin_spill(1, 0)
    prims, wfs = [], []
    for i in range(20):
        msg = fe.slice_message(1, i)
        fe.prepare(1, i + 1)
        t = msg.t_ns
        alone = np.diff(np.r_[-(10**9), t]) > 500
        alone &= np.diff(np.r_[t, 10**12]) > 500
        idx = np.flatnonzero((fe.buffer[(1, i)].batch.kind == Kind.ELECTRON) & alone)[:15].astype(np.uint32)
        prims.append(msg.amp[:, idx])
        wfs.append(stitched(request(fe, 1, i, idx)))
    amp = np.concatenate(prims, axis=1).astype(np.float64)
    wf = np.concatenate(wfs)
    assert wf.shape[0] >= 250
    st = fe.electronics_state(1, 0.0)
    prim = list(fe.prim_channels)
    for ch in (detector.counter_id("S0"), BEAM_CELL, BEAM_CELL + 30):
        row = prim.index(ch)
        x = wf[:, ch, :].astype(np.float64) - (st.baseline[ch] - 0.5)
        fitted = template_fit(fe, x, ch)
        ok = np.abs(fitted - amp[row]) <= 0.02 * amp[row] + 6
        assert ok.mean() >= 0.98, (ch, fitted[~ok][:5], amp[row][~ok][:5])
        top = x.max(axis=1)
        assert np.all(top <= amp[row] + 12) and np.all(top >= 0.85 * amp[row] - 12)


def test_pileup_adds_pulses_at_their_own_time() -> None:
    """A random-trigger window 100 ns before a particle shows that particle's pulse 8 samples late."""
    fe = make(rate=2e4)
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    fe.prepare(1, 1)
    b = fe.buffer[(1, 0)].batch
    i = int(np.flatnonzero((b.kind == Kind.ELECTRON) & (np.diff(np.r_[0, b.t_ns]) > 5000))[1])
    t = np.array([msg.t_ns[i] - 100, msg.t_ns[i]], np.int64)
    wf = stitched(request(fe, 1, 0, np.array([protocol.NO_PARTICLE, i]), t))
    k_rand, k_self = int(np.argmax(wf[0, BEAM_CELL])), int(np.argmax(wf[1, BEAM_CELL]))
    assert k_rand - k_self == 8
    assert fe.counters[1].n_random == 1


def test_bad_index_is_counted_and_answered() -> None:
    fe = make(rate=2e4)
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    frags = request(fe, 1, 0, np.array([msg.n_particles + 5]))
    assert all(f.n_events == 1 for f in frags)
    assert fe.counters[1].n_bad_index == 1


def test_truth_rows_of_read_out_particles() -> None:
    rows: list[dict[str, np.ndarray]] = []
    fe = make()
    fe.truth_sink = rows.append
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    idx = np.array([5, 1, protocol.NO_PARTICLE], np.uint32)
    request(fe, 1, 0, idx, np.array([msg.t_ns[5], msg.t_ns[1], 1000], np.int64))
    (row,) = rows
    np.testing.assert_array_equal(row["index"], [5, 1])  # random triggers have no particle truth
    np.testing.assert_array_equal(row["t_ns"], msg.t_ns[[5, 1]])
    b = fe.buffer[(1, 0)].batch
    assert row["e_ecal_gev"][0] == pytest.approx(b.e_ecal[5] * 0.99, rel=0.02)  # minus lateral leakage
    assert set(row) >= {
        "run",
        "spill",
        "slice",
        "kind",
        "process",
        "energy_gev",
        "x_mm",
        "y_mm",
        "e_prs_gev",
        "e_hcal_gev",
        "e_veto_gev",
        "e_srd_gev",
        "signal",
        "e_miss_gev",
    }


# ---------------------------------------------------------------- faults
def test_fault_parsing_and_errors() -> None:
    f = parse_fault("gain_drift:ECAL:-3")
    assert f.value == -3 and len(f.channels) == 30
    assert parse_fault("dead:ECAL22").channels == (detector.channel_id("ECAL22"),)
    assert parse_fault("no_answer:hcal:3:1.5").group == detector.Detector.HCAL
    assert parse_fault("stall:1:0.5:1:restart").restart
    for bad in ("bogus", "dead", "dead:ECAL99", "hot:S0:2", "stall:1:0:1:again", "no_answer:TRACKER"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)
    with pytest.raises(ConfigError, match="faults"):
        from_dict(SimConfig, {"faults": ["dead:nowhere"]})


def test_dead_noisy_and_hot_channels() -> None:
    fe = make(rate=2e4, faults=("dead:ECAL23", "noisy:ECAL21:20", "hot:SRD0:0.5"))
    assert fe.electronics.status[detector.channel_id("ECAL23")] == 1
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    fe.prepare(1, 1)
    idx = np.flatnonzero(fe.buffer[(1, 0)].batch.kind == Kind.ELECTRON)[:40].astype(np.uint32)
    wf = stitched(request(fe, 1, 0, idx)).astype(np.float64)
    st = fe.electronics_state(1, 0.0)
    dead = detector.channel_id("ECAL23")
    assert st.gain[dead] == 0
    assert np.abs(wf[:, dead] - st.baseline[dead] + 0.5).max() < 15  # pedestal + noise only
    assert msg.amp[list(fe.prim_channels).index(dead)].max() < 20
    noisy = detector.channel_id("ECAL21")
    assert 15 < (wf[:, noisy, :4] - wf[:, noisy, :4].mean()).std() < 25
    hot = detector.channel_id("SRD0")
    assert st.hot_prob[hot] > 0 and (wf[:, hot].max(axis=1) - st.baseline[hot].max() > 150).sum() >= 10


def test_gain_drift_and_pedestal_jump() -> None:
    fe = make(faults=("gain_drift:ECAL:-2", "pedestal_jump:PRS:20:2"))
    fe.begin_spill(1, 0)
    fe.begin_spill(2, 0)
    g0 = fe.electronics.gain
    ecal = detector.ECAL_IDS
    np.testing.assert_allclose(fe.electronics_state(1, 0.0).gain[ecal], g0[ecal])
    np.testing.assert_allclose(fe.electronics_state(2, 0.0).gain[ecal], 0.98 * g0[ecal], rtol=1e-3)
    np.testing.assert_allclose(fe.electronics_state(2, 2.4).gain[ecal], 0.97 * g0[ecal], rtol=1e-3)
    prs = detector.PRS_IDS
    assert np.allclose(fe.electronics_state(1, 0.0).pedestal_even[prs], fe.electronics.pedestal_even[prs])
    assert np.allclose(
        fe.electronics_state(2, 0.0).pedestal_even[prs], fe.electronics.pedestal_even[prs] + 20
    )


def test_no_answer_and_empty_fragment_faults() -> None:
    fe = make(rate=2e4, faults=("no_answer:HCAL:1:0.02", "empty_fragment:SRD:1:0.0"))
    fe.begin_spill(1, 0)
    for i in range(4):
        fe.slice_message(1, i)
    first = request(fe, 1, 0, np.array([0]))
    assert len(first) == 6 and [f.empty for f in sorted(first, key=lambda f: f.source)] == [
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    later = request(fe, 1, 3, np.array([0]))  # 30 ms into the spill: HCAL silent from 20 ms on
    assert sorted(f.source for f in later) == [0, 1, 3, 4, 5]
    c = fe.counters[1]
    assert (c.n_silent, c.n_empty_fragments, c.n_fragments) == (1, 2, 11)


def test_spike_and_beam_off() -> None:
    fe = make(rate=2e5, faults=("spike:5:0.05:2000", "beam_off:2"))
    fe.begin_spill(1, 0)
    n_spike = len(fe.prepare(1, 0).batch)
    n_after = len(fe.prepare(1, 10).batch)
    assert n_spike == pytest.approx(5 * n_after, rel=0.25)
    st = fe.electronics_state(1, 0.0)
    assert st.saturation[BEAM_CELL] == 2000 and np.isinf(fe.electronics_state(1, 0.2).saturation).all()
    prim = fe.slice_message(1, 0).amp
    row = list(fe.prim_channels).index(BEAM_CELL)
    assert prim[row].max() <= 2000 + 10  # PMT saturation (+ noise)
    fe.begin_spill(2, 0)
    assert len(fe.prepare(2, 0).batch) == 0


def test_isolated_waveforms_helper() -> None:
    """The pure helper: a 1 GeV deposit in ECAL22 peaks at sample 10 with height gain x 1000 counts."""
    fe = make()
    dep = np.zeros((3, detector.N_CHANNELS), np.float32)
    ch = detector.channel_id("ECAL22")
    dep[:, ch] = 1000.0
    wf = el.isolated_waveforms(dep, fe.electronics, fe.shapes, np.random.default_rng(1))
    assert wf.shape == (3, detector.N_CHANNELS, 32) and wf.dtype == np.uint16
    height = wf[:, ch].max(axis=1) - fe.electronics.pedestal_even[ch]
    expected = 1000 * fe.electronics.gain[ch]
    assert np.all(np.abs(height - expected) < 0.02 * expected + 8)
    assert np.all(np.abs(np.argmax(wf[:, ch], axis=1) - 10) <= 1)


# ---------------------------------------------------------------- detector identity, steering, dead channels
def test_detector_truth_depends_on_the_seed_only() -> None:
    """Runs 1 and 2 of seed 5 are the same detector (calibration carries over) with a different beam;
    seed 6 is another detector. The block spread is a config key (0 = exactly nominal, the default)."""
    a, b, c = make(seed=5), make(seed=5, run=2), make(seed=6)
    for name in ("gain", "pedestal_even", "pedestal_odd", "noise", "time_offset_ns"):
        np.testing.assert_array_equal(getattr(a.electronics, name), getattr(b.electronics, name))
        assert not np.array_equal(getattr(a.electronics, name), getattr(c.electronics, name))
    for fe in (a, b):
        fe.begin_spill(1, 0)
    assert not np.array_equal(a.prepare(1, 0).batch.t_ns, b.prepare(1, 0).batch.t_ns)
    spread = make(electronics={"block_gain_spread": 0.05}).electronics.gain / detector.nominal_gains()
    block = [detector.ecal_id(x, y) for x, y in detector.block_cells()]
    assert 0.01 < spread[block].std() < 0.1


def test_dead_channel_gives_pedestal_and_noise_only() -> None:
    """dead:CH = gain 0: the waveforms of the beam cell are its even/odd pedestal with the channel's
    noise (mean within 0.3 counts, RMS within 15%, no sample beyond 6 sigma) although every read-out
    electron showers there (a live beam cell has ~3000-count pulses); its primitive is noise only."""
    dead = BEAM_CELL
    fe = make(rate=2e5, faults=(f"dead:{dead}",))
    fe.begin_spill(1, 0)
    msg = fe.slice_message(1, 0)
    fe.prepare(1, 1)
    idx = np.flatnonzero(fe.buffer[(1, 0)].batch.kind == Kind.ELECTRON)[:200].astype(np.uint32)
    wf = stitched(request(fe, 1, 0, idx)).astype(np.float64)[:, dead]  # (K, 32)
    e = fe.electronics
    for parity, ped in ((0, e.pedestal_even[dead]), (1, e.pedestal_odd[dead])):
        assert wf[:, parity::2].mean() == pytest.approx(ped, abs=0.3)
    resid = wf.copy()
    resid[:, 0::2] -= e.pedestal_even[dead]
    resid[:, 1::2] -= e.pedestal_odd[dead]
    assert resid.std() == pytest.approx(np.hypot(e.noise[dead], 1 / np.sqrt(12)), rel=0.15)
    assert np.abs(resid).max() < 6 * e.noise[dead] + 1
    row = list(fe.prim_channels).index(dead)
    assert msg.amp[row].mean() < 2 and msg.amp[row].max() < 6 * e.noise[dead] + 1
    live = make(rate=2e5)
    live.begin_spill(1, 0)
    assert np.median(live.slice_message(1, 0).amp[row]) > 1000


def _dominant_cells(fe: FrontEnd, spill: int, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(ECAL cell with the largest deposit, particle kind) of every particle of the first slices."""
    from simulator import randoms

    cells, kinds = [], []
    for sid in range(n_slices):
        b = fe.prepare(spill, sid).batch
        dep = fe.model.deposits(b, randoms.particle_keys(1, spill, sid, np.arange(len(b))))
        cells.append(dep[:, detector.ECAL_IDS].argmax(axis=1))
        kinds.append(b.kind)
    return np.concatenate(cells), np.concatenate(kinds)


def test_beam_scan_over_every_ecal_cell_in_one_run() -> None:
    """scan_mode particle: electron showers are centred on all 30 cells, each within 25% of 1/30 of the
    electrons (2e4 electrons: ~670 per cell, 5 sigma ~ 15%); counters still fire on the beam axis."""
    all_cells = [[x, y] for y in range(6) for x in range(5)]
    fe = make(rate=2e5, beam={"rate_hz": 2e5, "scan_cells": all_cells, "scan_mode": "particle"})
    fe.begin_spill(1, 0)
    cells, kinds = _dominant_cells(fe, 1, 10)
    per_cell = np.bincount(cells[kinds == Kind.ELECTRON], minlength=30)
    assert per_cell.min() > 0.75 * per_cell.mean() and per_cell.max() < 1.25 * per_cell.mean()
    b = fe.buffer[(1, 0)].batch
    assert (b.counters[0] > 0).mean() > 0.95  # S0 fires wherever the ECAL is


def test_beam_scan_per_spill_and_aim_cell() -> None:
    """scan_mode spill: spill k is aimed at scan_cells[(k-1) % n]; aim_cell aims a whole run; the impact
    points (truth) are centred on the cell within 0.5 mm (sigma 5 mm, 2e3 particles)."""
    fe = make(rate=2e5, beam={"rate_hz": 2e5, "scan_cells": [[0, 0], [4, 5]]})
    for spill, cell in ((1, (0, 0)), (2, (4, 5)), (3, (0, 0))):
        fe.begin_spill(spill, 0)
        b = fe.prepare(spill, 0).batch
        core = np.hypot(*(np.stack([b.x, b.y]) - np.array(detector.cell_center_mm(*cell))[:, None])) < 20
        assert core.mean() > 0.95
        assert np.mean(b.x[core]) == pytest.approx(detector.cell_center_mm(*cell)[0], abs=0.5)
    one = make(rate=2e5, beam={"rate_hz": 2e5, "aim_cell": [4, 0]})
    one.begin_spill(1, 0)
    cells, kinds = _dominant_cells(one, 1, 1)
    assert np.mean(cells[kinds == Kind.ELECTRON] == detector.ecal_id(4, 0)) > 0.9
    assert list(one.prim_channels) == list(detector.default_primitive_channels())  # block unchanged
    with pytest.raises(ConfigError, match="not an ECAL cell"):
        from_dict(SimConfig, {"beam": {"scan_cells": [[5, 0]]}})


def test_muons_cross_every_hcal_cell_and_all_veto_pmts() -> None:
    """hcal.track_cells uniform: muons put their MIP in one of the 9 cells of every module, each cell
    within 30% of 1/9 of the muons (~2000 muons); all 6 VETO PMTs see every muon. Default: central only."""
    from simulator import randoms

    def muon_deposits(**hcal: str) -> np.ndarray:
        fe = make(rate=2e5, beam={"rate_hz": 2e5, "muon_fraction": 0.3}, hcal=hcal)
        fe.begin_spill(1, 0)
        b = fe.prepare(1, 0).batch
        mu = np.flatnonzero(b.kind == Kind.MUON)
        return fe.model.deposits(b.take(mu), randoms.particle_keys(1, 1, 0, mu))

    dep = muon_deposits(track_cells="uniform")
    hcal = dep[:, detector.HCAL_IDS].reshape(-1, 4, 9)
    hit = hcal > 1000  # MeV: a MIP is ~2.5 GeV per module
    assert np.all(hit.sum(axis=2) == 1)  # one cell per module ...
    assert np.all(hit.argmax(axis=2) == hit[:, :1].argmax(axis=2))  # ... the same (x, y) in all four
    per_cell = hit.sum(axis=0)  # (4, 9)
    assert per_cell.min() > 0.7 * per_cell.mean() and per_cell.max() < 1.3 * per_cell.mean()
    assert np.all(dep[:, detector.VETO_IDS] > 3)
    central = muon_deposits().reshape(-1, 110)[:, detector.HCAL_IDS].reshape(-1, 4, 9)
    assert np.all(central.argmax(axis=2) == 4)


def test_pooled_arrivals_are_poisson() -> None:
    """The front-end's arrival times (pooled fixed-point gaps): 100 slices of 2 MHz, counts per slice
    within 5 sigma of 2 MHz x slice length on average with variance/mean 1 +- 0.3, gaps exponential
    (mean 500 ns +- 1%, P(gap > 1 us) = exp(-2) +- 1%)."""
    fe = make()
    fe.begin_spill(1, 0)
    times = [fe.prepare(1, i).batch.t_ns for i in range(100)]
    counts = np.array([t.size for t in times], dtype=np.float64)
    expected = 2e6 * fe.slice_ns / 1e9
    assert abs(counts.mean() - expected) < 5 * np.sqrt(expected / 100)
    assert 0.7 < counts.var() / counts.mean() < 1.3
    gaps = np.concatenate([np.diff(t) for t in times]).astype(np.float64)
    assert gaps.mean() == pytest.approx(500.0, rel=0.01)
    assert (gaps > 1000).mean() == pytest.approx(np.exp(-2), abs=0.01)


def test_pooled_primitives_equal_the_template_gathers() -> None:
    """The spot-pool path (pre-scaled shares x energy, row gathers for hadrons and muons) gives exactly
    the heights of the plain per-particle template gathers, for a beam with many hadrons and muons."""
    fe = make(beam={"muon_fraction": 0.2, "pion_fraction": 0.2})
    fe.begin_spill(1, 0)
    fe.warm_up()
    b = fe.model.generate(20000, fe.randoms)
    assert b.origin is not None and b.special is not None and b.special.size > 5000
    scale = fe.electronics_state(1, 0.0).gain32[fe.prim_channels.astype(np.intp)]
    pooled = fe.model.primitives(b, scale)
    b.origin = b.special = None
    np.testing.assert_array_equal(pooled, fe.model.primitives(b, scale))


@pytest.mark.parametrize(
    ("faults", "beam", "slice_ms"),
    [
        ((), {}, 20.0),
        # gain drift (ratio rows), a dead ECAL cell (ratio 0), a saturating spike, a pedestal jump,
        # many hadrons and muons, slices of two column blocks (80k particles)
        (
            ("gain_drift:ECAL:-30", "dead:ECAL22", "spike:1.5:0.05:600:0", "pedestal_jump:PRS:40:1"),
            {"muon_fraction": 0.05, "pion_fraction": 0.1},
            40.0,
        ),
        (("hot:ECAL23:0.05", "noisy:PRS:20"), {}, 5.0),  # faults drawing beam randoms: the reference path
    ],
)
def test_fused_primitives_equal_the_reference_path(
    faults: tuple[str, ...], beam: dict, slice_ms: float
) -> None:
    """Same seed: the SLICE primitives of the fused kernel paths (bulk-electron energies and counters in
    one pass; no float heights for bulk electrons, hadrons and muons patched afterwards) equal those of
    the reference paths (numpy generate, model heights, faults, digitisation kernel) bit for bit, slice after slice and across spills, and both leave the beam
    generator and the noise pool in the same state."""
    fes = []
    for fused in (True, False):
        fe = make(faults=faults, beam=beam, readout={"slice_ms": slice_ms})
        fe.fused_primitives = fe.model.fused_generate = fused
        fes.append(fe)
    n_special = 0
    for spill in (1, 2):
        sids = (0, 1, 2, fes[0].n_slices - 1) if spill == 1 else (0, 3)
        for fe in fes:
            fe.begin_spill(spill, 0)
        for sid in sids:
            a, b = (fe.slice_message(spill, sid) for fe in fes)
            assert a.amp.shape == (29, a.n_particles) and a.n_particles > 0
            np.testing.assert_array_equal(a.t_ns, b.t_ns)
            np.testing.assert_array_equal(a.amp, b.amp)
            special = fes[0].buffer[(spill, sid)].batch.special
            n_special += 0 if special is None else special.size
    assert np.array_equal(fes[0].prim_noise.pool, fes[1].prim_noise.pool)
    assert fes[0].beam_rng.random() == fes[1].beam_rng.random()
    # the reference path allocates its float work buffer; the fused one never does
    fused = not any(f.startswith(("hot", "noisy")) for f in faults)
    assert (fes[0]._work.size == 0) == fused and fes[1]._work.size > 0
    if beam:
        assert n_special > 1000
    if "spike" in " ".join(faults):  # the spike saturated ECAL cells in the first slices of spill 1
        fe = make(faults=faults, beam=beam, readout={"slice_ms": slice_ms})
        fe.begin_spill(1, 0)
        amp = fe.slice_message(1, 0).amp
        assert amp[5:17].max() <= 600 + 50


@pytest.mark.parametrize("energy", [100.0, 0.03])  # 30 MeV: resolution 58%, energies clamped at 0
def test_fused_generate_equals_the_numpy_path(energy: float) -> None:
    """The compiled bulk-electron pass of generate() gives the numpy path's batch bit for bit (every
    field, rare particles included) and draws the same random numbers."""
    batches = []
    for fused in (True, False):
        fe = make(beam={"energy_gev": energy, "muon_fraction": 0.05})
        fe.model.fused_generate = fused
        batches.append([fe.model.generate(n, fe.randoms) for n in (40000, 1, 25000)])
        batches[-1].append(fe.beam_rng.random(3))
    for a, b in zip(batches[0][:-1], batches[1][:-1], strict=True):
        assert a.origin is not None and b.origin is not None and a.origin[1:] == b.origin[1:]
        np.testing.assert_array_equal(a.special, b.special)
        for name in ("kind", "process", "e_beam", "x", "y", "bin", "e_prs", "e_ecal", "e_hcal", "counters"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=name)
    np.testing.assert_array_equal(batches[0][-1], batches[1][-1])
    if energy < 1:
        assert (batches[0][0].e_prs == 0).any()  # the clamp was exercised
