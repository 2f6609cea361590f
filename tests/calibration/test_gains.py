"""ECAL/PRS gains by least squares on electron showers (synthetic, simulator-like showers with known gains)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.gains import (
    cell_peaks,
    complete_amplitudes,
    fixed_time_amplitudes,
    relative_delays,
    shower_gains,
)
from daq import detector, waveform
from tests.calibration import synth

SCAN_EVENTS = 400  # electrons per scanned cell: 30 cells x 400 = 12000 events


@pytest.fixture(scope="module")
def scan() -> tuple[synth.Truth, np.ndarray, np.ndarray]:
    """A beam scan over all 30 ECAL cells, 100 GeV e-, 2% radiative tail, 0.5% hadron-like junk."""
    truth = synth.make_truth(4)
    rng = np.random.default_rng(8)
    amps, targets = [], []
    for y in range(detector.ECAL_NY):
        for x in range(detector.ECAL_NX):
            a, _ = synth.electron_showers(rng, truth, SCAN_EVENTS, (x, y), radiative_fraction=0.02)
            a[: SCAN_EVENTS // 200] *= 0.3  # hadrons / muons: far below the peak
            amps.append(a)
            targets.append(np.full(SCAN_EVENTS, 1e5 * synth.containment((x, y))))
    return truth, np.concatenate(amps), np.concatenate(targets)


def test_scan_recovers_all_ecal_gains_within_1_percent(
    scan: tuple[synth.Truth, np.ndarray, np.ndarray],
) -> None:
    truth, amp, target = scan
    prior = detector.nominal_gains()[synth.CALO_IDS]
    r = shower_gains(amp, target, prior)
    true = truth.gain[synth.CALO_IDS]
    ecal = slice(0, 30)
    assert r.determined[ecal].all()
    rel = r.gain[ecal] / true[ecal] - 1
    assert np.sqrt(np.mean(rel**2)) < 0.01
    assert np.max(np.abs(rel)) < 0.025
    # the quoted errors cover the deviations (conservative: the PRS prior is wider than the truth spread)
    pulls = rel / (r.gain_error[ecal] / r.gain[ecal])
    assert 0.3 < np.std(pulls) < 1.5
    # the resolution of the calibrated sum is the shower's (4.1% at 100 GeV) and the peak is at the target
    assert 0.035 < r.resolution < 0.05
    assert r.peak == pytest.approx(1.0, abs=0.005)
    # the radiative tail and junk are outside the fit window
    assert r.n_events < 0.985 * amp.shape[0]


def test_per_cell_peaks_sit_at_the_target(scan: tuple[synth.Truth, np.ndarray, np.ndarray]) -> None:
    _, amp, target = scan
    r = shower_gains(amp, target, detector.nominal_gains()[synth.CALO_IDS])
    checks = cell_peaks(amp, r.gain, target, np.arange(30))
    assert (checks.n_events[:30] >= SCAN_EVENTS * 0.9).all()
    assert np.nanmax(np.abs(checks.peak[:30] - 1)) < 0.02
    # with the nominal gains instead, the peaks are off by the true gain spread (10%)
    wrong = cell_peaks(amp, detector.nominal_gains()[synth.CALO_IDS], target, np.arange(30))
    assert np.nanstd(wrong.peak[:30]) > 0.03


def test_a_single_beam_cell_determines_only_that_cell() -> None:
    truth = synth.make_truth(5)
    amp, _ = synth.electron_showers(np.random.default_rng(1), truth, 3000, (2, 3))
    prior = detector.nominal_gains()[synth.CALO_IDS]
    r = shower_gains(amp, 1e5 * synth.containment((2, 3)), prior)
    centre = detector.ecal_id(2, 3)
    assert r.determined[centre]
    assert r.gain[centre] == pytest.approx(truth.gain[centre], rel=0.01)
    others = np.arange(30) != centre
    assert not r.determined[:30][others].any()
    np.testing.assert_array_equal(r.gain[~r.determined], prior[~r.determined])  # kept at the prior
    assert np.isnan(r.gain_error[~r.determined]).all()


def test_refuses_input_it_cannot_fit() -> None:
    truth = synth.make_truth(5)
    amp, _ = synth.electron_showers(np.random.default_rng(1), truth, 500, (2, 3))
    prior = detector.nominal_gains()[synth.CALO_IDS]
    with pytest.raises(ValueError, match="electron-like events"):
        shower_gains(amp[:20], 1e5, prior)
    with pytest.raises(ValueError, match="prior_gain"):
        shower_gains(amp, 1e5, prior[:5])
    with pytest.raises(ValueError, match=r"electron peak is at 2.0\d x the expected"):
        shower_gains(amp, 5e4, prior)  # told 50 GeV for a 100 GeV beam
    with pytest.raises(ValueError, match="target_mev"):
        shower_gains(amp, -1.0, prior)


def test_fixed_cells_keep_their_gain_and_pass_on_their_uncertainty(
    scan: tuple[synth.Truth, np.ndarray, np.ndarray],
) -> None:
    """PRS cells fixed at (here: their true) gains, as after the MIP step: the ECAL cells are fitted with
    them held, and a 2% uncertainty on the held cells widens the ECAL errors."""
    truth, amp, target = scan
    prior = detector.nominal_gains()[synth.CALO_IDS]
    held = np.zeros(60, bool)
    held[30:] = True
    prior[30:] = truth.gain[synth.CALO_IDS][30:]
    sharp = shower_gains(amp, target, prior, prior_rel=np.where(held, 1e-4, 0.15), fixed=held)
    loose = shower_gains(amp, target, prior, prior_rel=np.where(held, 0.02, 0.15), fixed=held)
    assert not sharp.determined[30:].any() and sharp.determined[:30].all()
    np.testing.assert_array_equal(sharp.gain[30:], prior[30:])
    rel = sharp.gain[:30] / truth.gain[synth.CALO_IDS][:30] - 1
    assert np.sqrt(np.mean(rel**2)) < 0.01
    assert np.all(loose.gain_error[:30] > sharp.gain_error[:30])
    with pytest.raises(ValueError, match="fixed"):
        shower_gains(amp, target, prior, fixed=held[:10])


def _template(dt: np.ndarray, cls: int) -> np.ndarray:
    return waveform.template(dt, 3, waveform.shape_fwhm(waveform.RecoConfig())[detector.PulseShape(cls)])


def test_fixed_time_amplitudes_are_unbiased_below_the_threshold() -> None:
    """Small pulses (2 counts, under a 5 x 1.5 count threshold) and no pulse at all: the fixed-time fit
    averages to the true height (and to 0), as the DAQ's pulse fit does (below its threshold it fits at
    the in-time position too, no maximum search); a cell's delay
    relative to the event time is measured from its large pulses."""
    rng = np.random.default_rng(3)
    n = 4000
    amp = np.zeros((n, 3))
    amp[:, 0] = 2.0  # small EM pulse
    amp[: n // 2, 2] = 800.0  # a big pulse in half the events, 4 ns late: measures the delay
    peak = 125.0 + rng.uniform(-3, 3, n)
    delay = np.array([0.0, 0.0, 4.0])
    # CR-RC^3 EM pulses (the simulator's and the template's shape) on even/odd pedestals, 1.5 counts noise
    t = np.arange(detector.N_SAMPLES) * detector.SAMPLE_PERIOD_NS
    dt = t[None, None, :] - (peak[:, None] + delay[None, :])[:, :, None]
    w = amp[:, :, None] * _template(dt, 0) + rng.normal(0.0, 1.5, (n, 3, t.size))
    w[:, :, 0::2] += 200.0
    w[:, :, 1::2] += 203.0
    w = np.rint(w).astype(np.uint16)
    shape = np.zeros(3, int)
    fwhm = {int(k): v for k, v in waveform.shape_fwhm(waveform.RecoConfig()).items()}
    r = waveform.reconstruct(w, np.ones(3), shape=shape)
    d = relative_delays(r.peak_time, r.amplitude, peak, 30.0)
    assert d[0] == 0.0 and d[1] == 0.0  # no large pulses: no delay measured
    fit = fixed_time_amplitudes(w, peak, shape, _template, fwhm, 6, offset_ns=d)
    assert fit[:, 0].mean() == pytest.approx(2.0, abs=0.1)
    assert fit[:, 1].mean() == pytest.approx(0.0, abs=0.05)
    assert r.amplitude[:, 1].mean() == pytest.approx(0.0, abs=0.1)  # the DAQ's fit of noise alone
    full = complete_amplitudes(r.amplitude, fit, np.full(3, 7.5))
    np.testing.assert_array_equal(full[:, 1], fit[:, 1])
    big = amp[:, 2] > 0
    np.testing.assert_array_equal(full[big, 2], r.amplitude[big, 2])
    assert d[2] == pytest.approx(4.0, abs=2.0)  # vertex time of synthesize's pulse vs its true peak


def test_a_mixed_beam_with_45_percent_muons_fits_the_electrons(
    scan: tuple[synth.Truth, np.ndarray, np.ndarray],
) -> None:
    """Muons (~1% of the beam energy in the calorimeter) as 45% of the events: they are left out before
    the electron peak is looked for, and the gains are those of the electrons alone."""
    _, amp, target = scan
    n_mu = int(0.45 / 0.55 * amp.shape[0])
    rng = np.random.default_rng(9)
    muons = amp[rng.integers(0, amp.shape[0], n_mu)] * 0.01
    prior = detector.nominal_gains()[synth.CALO_IDS]
    mixed = shower_gains(np.concatenate([amp, muons]), np.concatenate([target, target[:n_mu]]), prior)
    alone = shower_gains(amp, target, prior)
    np.testing.assert_allclose(mixed.gain, alone.gain, rtol=1e-9)
    assert mixed.n_input == amp.shape[0] + n_mu
