"""Waveform reconstruction on synthetic pulses with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import detector
from daq.waveform import RecoConfig, event_sums, pulse, reconstruct, synthesize

GAINS = detector.nominal_gains()


def one_channel(amp: float, peak_ns: float = 125.0, **kw: object) -> np.ndarray:
    a = np.zeros((1, detector.N_CHANNELS))
    a[0, 0] = amp
    return synthesize(a, peak_ns=peak_ns, **kw)  # type: ignore[arg-type]


def test_pedestals_even_and_odd_and_amplitude() -> None:
    w = one_channel(800.0, pedestal_even=190.0, pedestal_odd=212.0)
    r = reconstruct(w, GAINS)
    assert r.pedestal_even[0, 0] == pytest.approx(190.0, abs=0.5)
    assert r.pedestal_odd[0, 0] == pytest.approx(212.0, abs=0.5)
    assert r.amplitude[0, 0] == pytest.approx(800.0, abs=2.0)
    assert r.amplitude[0, 1] == pytest.approx(0.0, abs=1.0)  # an empty channel of the same event


def test_energy_is_amplitude_over_gain_in_gev() -> None:
    w = one_channel(900.0)
    r = reconstruct(w, GAINS, noise=np.full(detector.N_CHANNELS, 1.5))
    assert r.energy[0, 0] == pytest.approx(r.amplitude[0, 0] / GAINS[0] / 1000.0, rel=1e-6)
    assert r.energy[0, 0] == pytest.approx(20.0, rel=0.01)  # 900 counts / 0.045 counts per MeV


def test_zero_suppression_and_dead_channels() -> None:
    a = np.zeros((1, detector.N_CHANNELS))
    a[0, :3] = [6.0, 9.0, 500.0]
    w = synthesize(a)
    status = np.zeros(detector.N_CHANNELS, np.uint8)
    status[2] = 1
    r = reconstruct(w, GAINS, noise=np.full(detector.N_CHANNELS, 1.5), status=status)
    assert r.energy[0, 0] == 0.0  # 6 counts < 5 sigma = 7.5 counts
    assert r.energy[0, 1] > 0.0
    assert r.energy[0, 2] == 0.0 and r.amplitude[0, 2] > 400  # dead: amplitude kept, no energy


@pytest.mark.parametrize("peak", [100.0, 112.5, 118.75, 125.0, 131.25, 150.0])
def test_peak_time_within_a_few_ns(peak: float) -> None:
    r = reconstruct(one_channel(1000.0, peak_ns=peak), GAINS)
    assert r.peak_time[0, 0] == pytest.approx(peak, abs=3.0)


def test_peak_time_is_monotonic_and_time_offsets_are_subtracted() -> None:
    peaks = np.arange(100.0, 150.0, 1.5)
    a = np.zeros((peaks.size, detector.N_CHANNELS))
    a[:, 5] = 1000.0
    w = synthesize(a, peak_ns=peaks[:, None])
    offsets = np.zeros(detector.N_CHANNELS)
    offsets[5] = 10.0
    t = reconstruct(w, GAINS, time_offset_ns=offsets).peak_time[:, 5]
    assert np.all(np.diff(t) > 0)
    assert np.allclose(t, peaks - 10.0, atol=3.0)


def test_pileup_second_pulse_and_out_of_time_pulse() -> None:
    noise = np.full(detector.N_CHANNELS, 1.5)
    clean = one_channel(1000.0)
    second = clean.copy()
    t = np.arange(detector.N_SAMPLES) * detector.SAMPLE_PERIOD_NS
    second[0, 0] += np.rint(400 * pulse(t, 275.0, 13.0)).astype(np.uint16)
    late = one_channel(1000.0, peak_ns=300.0)
    small = one_channel(20.0, peak_ns=300.0)  # out of time but tiny: flagged only above threshold
    r = reconstruct(np.concatenate([clean, second, late, small]), GAINS, noise=noise)
    assert r.pileup[:, 0].tolist() == [False, True, True, True]
    r = reconstruct(
        np.concatenate([clean, second, late, one_channel(5.0, peak_ns=300.0)]), GAINS, noise=noise
    )
    assert r.pileup[3, 0] == False  # noqa: E712  below 5 sigma: no pulse, no pile-up


def test_noise_alone_gives_no_energy() -> None:
    rng = np.random.default_rng(2)
    w = synthesize(np.zeros((50, detector.N_CHANNELS)), noise=1.5, rng=rng)
    r = reconstruct(w, GAINS, noise=np.full(detector.N_CHANNELS, 1.5))
    assert np.count_nonzero(r.energy) < 0.01 * r.energy.size  # 5 sigma of a max over 32 samples: rare
    assert not np.any(r.pileup & (r.energy == 0))  # pile-up is only flagged on pulses above threshold


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.integers(12, 40))
def test_any_shape_of_events_channels_samples(n_ev: int, n_ch: int, n_s: int) -> None:
    w = np.full((n_ev, n_ch, n_s), 200, np.uint16)
    w[:, :, n_s // 2] += 100
    # a one-sample spike is no pulse shape: the maximum sample, and the parabola vertex, are its height
    for method in ("max", "parabola"):
        cfg = RecoConfig(n_pedestal=4, expected_peak_ns=n_s // 2 * 12.5, amplitude_method=method)
        r = reconstruct(w, np.ones(n_ch), config=cfg)
        assert r.amplitude.shape == (n_ev, n_ch)
        assert np.allclose(r.amplitude, 100.0)
        assert np.allclose(r.peak_time, n_s // 2 * 12.5)
        assert np.allclose(r.energy, 0.1)
    r = reconstruct(w, np.ones(n_ch), config=RecoConfig(n_pedestal=4, expected_peak_ns=n_s // 2 * 12.5))
    assert np.all((r.amplitude >= 100.0) & (r.amplitude < 102.0))  # EM template correction at delta 0


def test_event_sums() -> None:
    e = np.zeros((2, detector.N_CHANNELS), np.float32)
    e[0, detector.ECAL_IDS[:3]] = 10.0
    e[0, detector.PRS_IDS[0]] = 2.0
    e[0, detector.HCAL_IDS[-1]] = 50.0
    e[0, detector.VETO_IDS[:2]] = [0.004, 0.009]  # slab 0: sqrt(0.004 * 0.009) = 0.006
    e[0, detector.SRD_IDS] = 0.03
    s = event_sums(e, beam_energy_gev=100.0)
    assert s[:, 0] == pytest.approx([2.0, 32.0, 50.0, 0.006, 0.09, 68.0], rel=1e-5)
    assert s[:, 1] == pytest.approx([0, 0, 0, 0, 0, 100.0])
    scaled = event_sums(e, beam_energy_gev=100.0, ecal_scale=1.01)  # calibration's shower energy scale
    assert scaled[:, 0] == pytest.approx([2.0, 32.32, 50.0, 0.006, 0.09, 67.68], rel=1e-5)


def test_bad_config_values() -> None:
    with pytest.raises(ValueError, match="n_pedestal"):
        RecoConfig(n_pedestal=1)
    with pytest.raises(ValueError, match="too few"):
        reconstruct(np.zeros((1, 1, 5), np.uint16), np.ones(1))
    with pytest.raises(ValueError, match="amplitude_method"):
        RecoConfig(amplitude_method="fit")
    with pytest.raises(ValueError, match="em_fwhm_ns"):
        RecoConfig(em_fwhm_ns=0.0)
    with pytest.raises(ValueError, match="shape"):
        reconstruct(np.zeros((1, 2, 32), np.uint16), np.ones(2), shape=np.array([0, 7]))


# ---------------------------------------------------------------- amplitude estimator vs the simulator
def _simulator_pulses(cls: detector.PulseShape, fwhm_scale: float = 1.0, n: int = 4000) -> np.ndarray:
    """Waveforms (n, 1, 32) of 1000-count pulses of the simulator's shape of a class (uniform sub-sample
    phase, as the trigger gives), so the estimator is tested against the model it must be unbiased for."""
    from simulator import electronics
    from simulator.config import ElectronicsConfig

    cfg = ElectronicsConfig()
    fwhm = {
        detector.PulseShape.EM: cfg.em_fwhm_ns,
        detector.PulseShape.HADRONIC: cfg.hadronic_fwhm_ns,
        detector.PulseShape.FAST: cfg.fast_fwhm_ns,
    }[cls]
    tau = electronics.shape_tau(cfg.shape_order, fwhm * fwhm_scale)
    period = detector.SAMPLE_PERIOD_NS
    peak = cfg.peak_sample * period - np.random.default_rng(3).uniform(0.0, period, n)
    t = np.arange(cfg.n_samples) * period
    w = 1000.0 * electronics.pulse(t[None, :] - peak[:, None], cfg.shape_order, tau) + 200.0
    return np.rint(w)[:, None, :].astype(np.uint16)


@pytest.mark.parametrize("cls", list(detector.PulseShape))
def test_template_amplitude_is_unbiased_for_every_pulse_shape(cls: detector.PulseShape) -> None:
    """Uniform sub-sample phase: the maximum sample reads 1-4% low with as much spread; the template-
    corrected parabola vertex is within 0.1% on average (0.3% required) and 0.1% event to event."""
    w = _simulator_pulses(cls)
    shape = np.array([int(cls)])
    amp = reconstruct(w, np.ones(1), shape=shape).amplitude[:, 0] / 1000.0
    top = reconstruct(w, np.ones(1), shape=shape, config=RecoConfig(amplitude_method="max")).amplitude[:, 0]
    assert abs(amp.mean() - 1.0) < 0.001
    assert amp.std() < 0.002
    assert top.mean() / 1000.0 < 0.995 and top.std() / 1000.0 > 3 * amp.std()  # what it replaces


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_template_amplitude_tolerates_a_wrong_pulse_width(scale: float) -> None:
    """A real pulse 10% narrower or wider than the template: still within 0.4% on average (1% for the
    fast shape, 30 ns FWHM sampled every 12.5 ns), against 1-4% for the maximum sample."""
    tolerance = {
        detector.PulseShape.EM: 0.004,
        detector.PulseShape.HADRONIC: 0.004,
        detector.PulseShape.FAST: 0.01,
    }
    for cls in detector.PulseShape:
        w = _simulator_pulses(cls, fwhm_scale=scale)
        amp = reconstruct(w, np.ones(1), shape=np.array([int(cls)])).amplitude[:, 0] / 1000.0
        assert abs(amp.mean() - 1.0) < tolerance[cls], (cls, amp.mean())


def test_default_shapes_are_the_channels_classes_and_pileup_is_unchanged() -> None:
    """With 110 channels each channel uses its own class; the pile-up flag and the peak time do not depend
    on the amplitude method."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1500, (40, detector.N_CHANNELS))
    w = synthesize(a, peak_ns=rng.uniform(110, 140, (40, 1)), noise=1.5, rng=rng)
    t = np.arange(detector.N_SAMPLES) * detector.SAMPLE_PERIOD_NS
    w[::3] += np.rint(500 * pulse(t, 290.0, 13.0)).astype(np.uint16)  # pile-up in every third event
    noise = np.full(detector.N_CHANNELS, 1.5)
    new = reconstruct(w, GAINS, noise=noise)
    old = reconstruct(w, GAINS, noise=noise, config=RecoConfig(amplitude_method="max"))
    explicit = reconstruct(w, GAINS, noise=noise, shape=detector.CHANNELS["shape"])
    np.testing.assert_array_equal(new.amplitude, explicit.amplitude)
    np.testing.assert_array_equal(new.pileup, old.pileup)
    np.testing.assert_array_equal(new.peak_time, old.peak_time)
    assert new.pileup[::3].mean() > 0.5 and new.pileup[1::3].mean() < 0.05
    # even for synthesize()'s pulses (CR-RC^2, not the template's CR-RC^3) the pulse height is closer
    clean = (a > 100) & ~new.pileup
    assert np.mean(np.abs(new.amplitude - a)[clean]) < 0.5 * np.mean(np.abs(old.amplitude - a)[clean])
