"""ECAL/PRS gains by least squares on electron showers (synthetic, simulator-like showers with known gains)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.gains import cell_peaks, shower_gains
from daq import detector
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
