"""The compiled reconstruction pass agrees bit for bit with its numpy formulation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daq import detector, reco_kernel
from daq.reco_kernel import reconstruct_rows, reconstruct_rows_numpy, row_params
from daq.waveform import RecoConfig, _correction_tables, reconstruct, reconstruct_numpy, synthesize

NAMES = ("p_even", "p_odd", "amplitude", "peak_time", "energy", "pileup")


def assert_same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    for name, x, y in zip(NAMES, a, b, strict=True):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def params(
    rng: np.random.Generator, n_ch: int, method: int, n_ped: int = 6, offsets: bool = True, **kw: float
):
    table = _correction_tables(RecoConfig(), detector.SAMPLE_PERIOD_NS)
    return row_params(
        n_ped,
        kw.get("frac", 0.3),
        int(kw.get("sep", 4)),
        method,
        rng.integers(0, 3, n_ch) * table.shape[1],
        table,
        detector.SAMPLE_PERIOD_NS,
        rng.choice([0.0, 7.5, 30.0], n_ch),
        rng.uniform(1e-5, 1e-3, n_ch),
        rng.random(n_ch) < 0.2,
        rng.uniform(-20, 20, n_ch) if offsets else None,
        kw.get("expected", 125.0),
        kw.get("window", 75.0),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 6),  # events
    st.integers(1, 7),  # channels
    st.integers(9, 40),  # samples (odd ones too)
    st.sampled_from([2, 4, 6]),
    st.sampled_from([0, 1, 2]),
    st.floats(0.0, 1.0, width=32),
    st.integers(1, 8),
    st.booleans(),
    st.sampled_from([4095, 65535]),
)
def test_kernel_matches_numpy_on_arbitrary_windows(
    seed, n_ev, n_ch, n_s, n_ped, method, frac, sep, offsets, top
):
    """Any samples (to the full uint16 range, ties, flat windows), any settings."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3)
    if kind == 0:  # arbitrary
        w = rng.integers(0, top + 1, (n_ev * n_ch, n_s))
    elif kind == 1:  # few distinct values: many ties between and within parities
        w = rng.choice([0, 1, 200, 201, top], (n_ev * n_ch, n_s))
    else:  # pedestal with small steps and a pulse somewhere
        w = 200 + rng.integers(0, 3, (n_ev * n_ch, n_s))
        w[:, rng.integers(0, n_s)] += rng.integers(0, 3000)
    w = w.astype(np.uint16)
    p = params(rng, n_ch, method, n_ped, offsets, frac=frac, sep=sep)
    assert_same(reconstruct_rows(w, p), reconstruct_rows_numpy(w, p))


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.uint16, st.tuples(st.integers(0, 12), st.integers(9, 33)), elements=st.integers(0, 65535))
)
def test_kernel_matches_numpy_one_channel_per_row(w) -> None:
    rng = np.random.default_rng(w.shape[0])
    p = params(rng, 1, 2)
    assert_same(reconstruct_rows(w, p), reconstruct_rows_numpy(w, p))


@pytest.mark.parametrize("method", [0, 1, 2])
@pytest.mark.parametrize("seed", [1, 2])
def test_kernel_matches_numpy_on_pulses_with_noise_and_pileup(seed: int, method: int) -> None:
    """Pulses at every phase, in and out of time, with a late second pulse in many windows."""
    rng = np.random.default_rng(seed)
    n_ev = 60
    amp = rng.uniform(0, 3000, (n_ev, detector.N_CHANNELS)) * (rng.random((n_ev, detector.N_CHANNELS)) < 0.5)
    w = synthesize(amp, peak_ns=rng.uniform(0, 400, (n_ev, detector.N_CHANNELS)), noise=1.5, rng=rng)
    late = synthesize(amp[::-1] * 0.5, peak_ns=300.0, pedestal_even=0, pedestal_odd=0)
    w = (
        np.minimum(w.astype(np.int32) + late, detector.ADC_MAX)
        .astype(np.uint16)
        .reshape(-1, detector.N_SAMPLES)
    )
    p = params(rng, detector.N_CHANNELS, method)
    got = reconstruct_rows(w, p)
    assert_same(got, reconstruct_rows_numpy(w, p))
    pileup, energy = got[5], got[4]
    assert pileup.any() and not pileup.all() and (energy > 0).any() and (energy == 0).any()


def test_reconstruct_matches_numpy_reference_with_calibration() -> None:
    """daq.waveform.reconstruct (compiled) equals reconstruct_numpy, with noise, offsets, dead channels."""
    rng = np.random.default_rng(5)
    amp = rng.exponential(300, (40, detector.N_CHANNELS)) * (rng.random((40, detector.N_CHANNELS)) < 0.4)
    w = synthesize(amp, peak_ns=rng.uniform(100, 150, amp.shape), noise=1.5, rng=rng)
    status = (rng.random(detector.N_CHANNELS) < 0.1).astype(np.uint8)
    noise = np.full(detector.N_CHANNELS, 1.5)
    offsets = rng.normal(0, 3, detector.N_CHANNELS)
    gain = detector.nominal_gains()
    for cfg in (RecoConfig(), RecoConfig(amplitude_method="parabola", n_pedestal=5, pileup_separation=3)):
        a = reconstruct(w, gain, noise, offsets, status, cfg)
        b = reconstruct_numpy(w, gain, noise, offsets, status, cfg)
        for name in ("pedestal_even", "pedestal_odd", "amplitude", "peak_time", "pileup", "energy"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.shape == y.shape == (40, detector.N_CHANNELS) and x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        assert (a.energy[:, status == 1] == 0).all() and (a.amplitude[:, status == 1] > 0).any()


def test_threshold_is_strict_and_dead_channels_have_no_energy() -> None:
    """A pulse exactly at the zero-suppression threshold has no energy (``>``, as in the reference)."""
    w = np.full((1, 3, 16), 200, np.uint16)
    w[0, :, 8] = [230, 231, 231]  # 30 and 31 counts above the pedestal (max-sample amplitude)
    p = row_params(
        4, 0.3, 4, 0, np.zeros(3), np.ones((1, 4)), 12.5, np.full(3, 30.0), np.ones(3), np.array([0, 0, 1])
    )
    got = reconstruct_rows(w.reshape(-1, 16), p)
    assert_same(got, reconstruct_rows_numpy(w.reshape(-1, 16), p))
    np.testing.assert_array_equal(got[2], [30.0, 31.0, 31.0])
    np.testing.assert_array_equal(got[4], [0.0, 31.0, 0.0])


def test_warm_up_covers_every_run_time_signature() -> None:
    """After warm_up, reconstructing writable or read-only waveforms compiles nothing more."""
    reco_kernel.warm_up()
    n = len(reco_kernel._reco.signatures)
    w = synthesize(np.full((3, detector.N_CHANNELS), 500.0))
    reconstruct(w, detector.nominal_gains(), noise=np.ones(detector.N_CHANNELS))
    w.flags.writeable = False
    reconstruct(w, detector.nominal_gains(), time_offset_ns=np.zeros(detector.N_CHANNELS))
    reconstruct(w[:, :5], np.ones(5), status=np.zeros(5, np.uint8), config=RecoConfig(amplitude_method="max"))
    assert len(reco_kernel._reco.signatures) == n


def test_constants_changed_in_place_are_not_served_from_the_cache() -> None:
    """The per-channel parameters are cached by content: editing the same arrays takes effect."""
    w = synthesize(np.full((2, detector.N_CHANNELS), 500.0))
    gain = detector.nominal_gains().copy()
    status = np.zeros(detector.N_CHANNELS, np.uint8)
    first = reconstruct(w, gain, status=status).energy.copy()
    gain *= 2
    status[3] = 1
    second = reconstruct(w, gain, status=status).energy
    assert second[0, 3] == 0 and first[0, 3] > 0
    np.testing.assert_allclose(np.delete(second, 3, axis=1), np.delete(first, 3, axis=1) / 2, rtol=1e-6)


def test_rejects_windows_that_are_not_whole_events() -> None:
    p = params(np.random.default_rng(0), 3, 2)
    with pytest.raises(ValueError, match="whole events"):
        reconstruct_rows(np.zeros((4, 32), np.uint16), p)


@pytest.mark.skipif(
    not os.environ.get("NA64_RECORDED_RUN"), reason="set NA64_RECORDED_RUN=<dir of spill files>"
)
def test_reproduces_recorded_reco_datasets() -> None:
    """The DAQ's recorded reco/* (nominal constants) are reproduced exactly from the recorded waveforms."""
    import h5py
    import hdf5plugin  # noqa: F401  (the files' compression filters)

    from calibration.constants import nominal

    c = nominal()
    path = sorted(Path(os.environ["NA64_RECORDED_RUN"]).glob("*.h5"))[0]
    with h5py.File(path) as f:
        n = min(3000, f["waveforms"].shape[0])
        r = reconstruct(
            f["waveforms"][:n], c.gain, noise=c.noise, time_offset_ns=c.time_offset_ns, status=c.status
        )
        for name in ("amplitude", "energy", "peak_time", "pileup"):
            want = f["reco/" + name][:n]
            np.testing.assert_array_equal(getattr(r, name).astype(want.dtype), want, err_msg=name)
