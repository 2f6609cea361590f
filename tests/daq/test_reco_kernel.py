"""The compiled per-window pass agrees bit for bit with its numpy formulation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daq import detector
from daq.reco_kernel import window_features, window_features_numpy
from daq.waveform import synthesize


def assert_same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    names = ("p_even", "p_odd", "imax", "top", "ym", "y0", "yp", "second")
    for name, x, y in zip(names, a, b, strict=True):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.uint16, st.tuples(st.integers(0, 40), st.integers(9, 40)), elements=st.integers(0, 4095)),
    st.sampled_from([2, 4, 6]),
    st.floats(0.0, 1.0, width=32),
    st.integers(1, 8),
    st.floats(0.0, 50.0, width=32),
)
def test_kernel_matches_numpy_on_arbitrary_windows(w, n_ped, frac, sep, limit) -> None:
    lim = np.full(w.shape[0], limit, np.float32)
    assert_same(window_features(w, n_ped, lim, frac, sep), window_features_numpy(w, n_ped, lim, frac, sep))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kernel_matches_numpy_on_pulses_with_noise_and_pileup(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_ev = 50
    amp = rng.uniform(0, 3000, (n_ev, detector.N_CHANNELS)) * (rng.random((n_ev, detector.N_CHANNELS)) < 0.4)
    w = synthesize(amp, peak_ns=rng.uniform(90, 160, (n_ev, detector.N_CHANNELS)), noise=1.5, rng=rng)
    late = synthesize(amp[::-1] * 0.5, peak_ns=300.0, pedestal_even=0, pedestal_odd=0)  # pile-up
    w = (
        np.minimum(w.astype(np.int32) + late, detector.ADC_MAX)
        .astype(np.uint16)
        .reshape(-1, detector.N_SAMPLES)
    )
    lim = rng.uniform(0, 10, w.shape[0]).astype(np.float32)
    got = window_features(w, 6, lim, 0.3, 4)
    assert_same(got, window_features_numpy(w, 6, lim, 0.3, 4))
    assert got[-1].any() and not got[-1].all()  # some windows do have a second pulse


@pytest.mark.parametrize("method", [0, 1, 2])
def test_estimate_matches_numpy_bit_for_bit(method: int) -> None:
    """Amplitude (max sample, parabola vertex, vertex x template correction), peak time, pile-up and energy:
    the compiled pass equals its numpy formulation, pulses at every phase, in and out of time."""
    from daq.reco_kernel import estimate, estimate_numpy
    from daq.waveform import RecoConfig, _correction_tables, _shape_classes

    rng = np.random.default_rng(11 + method)
    n_ev = 80
    amp = rng.uniform(0, 3000, (n_ev, detector.N_CHANNELS)) * (rng.random((n_ev, detector.N_CHANNELS)) < 0.5)
    w = synthesize(amp, peak_ns=rng.uniform(0, 400, (n_ev, detector.N_CHANNELS)), noise=1.5, rng=rng)
    thr = np.full(detector.N_CHANNELS, 7.5, np.float32)
    f = window_features(w.reshape(-1, detector.N_SAMPLES), 6, np.tile(thr, n_ev), 0.3, 4)
    table = _correction_tables(RecoConfig(), detector.SAMPLE_PERIOD_NS)
    cls = _shape_classes(None, detector.N_CHANNELS).astype(np.int64) * table.shape[1]
    gpc = (1.0 / (1000.0 * detector.nominal_gains())).astype(np.float32)
    args = (f, detector.N_SAMPLES, method, cls, table, detector.SAMPLE_PERIOD_NS, thr, gpc, 125.0, 75.0)
    got, want = estimate(*args), estimate_numpy(*args)
    for name, x, y in zip(("amplitude", "t_raw", "pileup", "energy"), got, want, strict=True):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert got[2].any() and (got[3] > 0).any() and (got[3] == 0).any()
