"""Pedestals and noise from random-trigger windows with 2 MHz pile-up; channel status."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import pedestals as P
from calibration.constants import DEAD, GOOD, HOT, NOISY
from daq import detector
from tests.calibration import synth

N_WINDOWS = 3000  # random-trigger windows, 2 MHz beam (~0.8 particles per window incl. 300 ns before it)


@pytest.fixture(scope="module")
def truth() -> synth.Truth:
    return synth.make_truth(3)


@pytest.fixture(scope="module")
def windows(truth: synth.Truth) -> np.ndarray:
    return synth.random_windows(np.random.default_rng(5), truth, N_WINDOWS)


def test_recovers_pedestals_within_0_1_counts_despite_pileup(truth: synth.Truth, windows: np.ndarray) -> None:
    r = P.pedestals(windows)
    d = np.concatenate([r.pedestal_even - truth.pedestal_even, r.pedestal_odd - truth.pedestal_odd])
    assert np.max(np.abs(d)) < 0.1, detector.channel_name(int(np.argmax(np.abs(d)) % detector.N_CHANNELS))
    assert np.sqrt(np.mean(d**2)) < 0.03
    np.testing.assert_allclose(r.noise, truth.noise, rtol=0.05)
    # errors are statistical and about right: pulls of order 1
    pulls = (r.pedestal_even - truth.pedestal_even) / r.pedestal_even_error
    assert 0.5 < np.std(pulls) < 2.0
    # the beam makes pulses: central ECAL cell and beam counters see ~60% of windows, HCAL only noise
    centre = detector.ecal_id(*detector.BEAM_CELL)
    assert 0.4 < r.pulse_fraction[centre] < 0.8
    assert r.pulse_fraction[detector.HCAL_IDS].max() < 0.15


def test_without_the_counter_veto_small_pileup_biases_the_cells_near_the_beam(
    truth: synth.Truth, windows: np.ndarray
) -> None:
    r = P.pedestals(windows, veto_channels=None)
    d = np.concatenate([r.pedestal_even - truth.pedestal_even, r.pedestal_odd - truth.pedestal_odd])
    assert np.max(d) > 0.15  # why the beam-counter veto exists (documented in docs/calibration.md)


def test_chunks_add_up_to_one_pass(windows: np.ndarray) -> None:
    start = P.initial_pedestals(windows[:500])
    one = P.PedestalAccumulator(*start, veto_channels=P.MARKER_IDS)
    one.add(windows[:1200])
    chunked = P.PedestalAccumulator(*start, veto_channels=P.MARKER_IDS)
    for i in range(0, 1200, 300):
        chunked.add(windows[i : i + 300])
    a, b = one.result(), chunked.result()
    np.testing.assert_allclose(a.pedestal_even, b.pedestal_even, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.noise, b.noise, rtol=1e-9)
    assert a.n_windows == b.n_windows == 1200


def test_initial_estimate_is_not_quantized() -> None:
    rng = np.random.default_rng(0)
    w = np.rint(rng.normal(200.3, 1.0, (400, 2, 32)) + 0.0).astype(np.uint16)
    pe, po, noise = P.initial_pedestals(w)
    np.testing.assert_allclose(pe, 200.3, atol=0.05)
    np.testing.assert_allclose(po, 200.3, atol=0.05)
    np.testing.assert_allclose(noise, np.sqrt(1 + 1 / 12), rtol=0.05)  # noise + quantization


def test_prepulse_cross_check_agrees(truth: synth.Truth, windows: np.ndarray) -> None:
    pe, po = P.prepulse_pedestals(windows, 4)
    assert np.max(np.abs(pe - truth.pedestal_even)) < 0.6
    assert np.max(np.abs(po - truth.pedestal_odd)) < 0.6
    with pytest.raises(ValueError, match="n_pre"):
        P.prepulse_pedestals(windows, 1)


def test_status_dead_hot_noisy(truth: synth.Truth) -> None:
    rng = np.random.default_rng(11)
    w = synth.random_windows(rng, truth, 800).astype(np.float64)
    dead, noisy, hot = detector.ecal_id(0, 0), detector.hcal_id(1, 0, 0), detector.srd_id(1)
    w[:, dead, :] = 0.0  # a flat, dead readout
    w[:, noisy, :] += rng.normal(0.0, 15.0, (800, 32))
    # a hot channel: spurious 100-2000 count pulses at random times in 3% of the windows (as the simulator's)
    for ev in np.flatnonzero(rng.random(800) < 0.03):
        w[ev, hot] += rng.uniform(100, 2000) * synth.pulse(np.arange(32) * 12.5 - rng.uniform(0, 350), 30.0)
    r = P.pedestals(np.clip(w, 0, detector.ADC_MAX).astype(np.uint16))
    status, reasons = P.classify_channels(r)
    assert status[dead] == DEAD and status[noisy] == NOISY and status[hot] == HOT
    assert (status == GOOD).sum() == detector.N_CHANNELS - 3
    assert any("ECAL00: dead" in x for x in reasons) and any("SRD1: hot" in x for x in reasons), reasons


def test_bad_input_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        P.initial_pedestals(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="channels"):
        P.PedestalAccumulator(np.zeros(3), np.zeros(3), np.ones(3)).add(np.zeros((2, 4, 32), np.uint16))


def test_dead_channel_has_no_signal_where_its_neighbourhood_predicts_one() -> None:
    """A shower on ECAL23 with a product-like lateral profile (falling 20x per cell far from the centre):
    a dead cell next to it (mean fixed-time signal 0) is found, and a dead beam counter; a live cell far
    out with a tiny signal, and cells nobody's particles reach, are not judged dead."""
    px = np.array([0.002, 0.05, 1.0, 0.05, 0.002])
    py = np.array([0.0005, 0.01, 0.2, 1.0, 0.2, 0.01])
    mean = np.zeros(detector.N_CHANNELS)
    err = np.full(detector.N_CHANNELS, 0.03)
    for x in range(detector.ECAL_NX):
        for y in range(detector.ECAL_NY):
            mean[detector.ecal_id(x, y)] = 3000.0 * px[x] * py[y]
    for name in detector.BEAM_COUNTERS:
        mean[detector.counter_id(name)] = 300.0
    mean[detector.ecal_id(2, 2)] = 0.01  # dead, next to the beam cell
    mean[detector.counter_id("S2")] = -0.02  # dead counter
    dead, reasons = P.dead_by_signal(mean, err, 5000)
    assert {detector.channel_name(int(c)) for c in np.flatnonzero(dead)} == {"ECAL22", "S2"}
    assert reasons[0].startswith("ECAL22: dead (mean signal 0.01 +- 0.03 counts in 5000 triggered events")
    expected = P.expected_signal(mean, err)
    assert expected[detector.ecal_id(2, 2)] == pytest.approx(600.0)  # S(2,3) S(1,2) / S(1,3)
    assert expected[detector.ecal_id(0, 0)] == pytest.approx(
        mean[detector.ecal_id(0, 0)], rel=1e-6
    ) or np.isnan(expected[detector.ecal_id(0, 0)])
    assert set(P.neighbours(detector.ecal_id(0, 0)).tolist()) == {
        detector.ecal_id(1, 0),
        detector.ecal_id(0, 1),
    }
    with pytest.raises(ValueError, match="entries"):
        P.dead_by_signal(mean[:10], err[:10], 100)


def test_hcal_cells_are_judged_only_in_a_uniformly_lit_module() -> None:
    """Muons through the central HCAL cell only, a little shower leakage around it: the live edge cells are
    not called dead (the grid product rule would predict the central cell's signal for them); with the
    muon beam spread over the face, a dead cell is found."""
    mean = np.zeros(detector.N_CHANNELS)
    err = np.full(detector.N_CHANNELS, 0.02)
    for module in range(4):
        for x in range(3):
            for y in range(3):
                ch = detector.hcal_id(module, x, y)
                mean[ch] = 9.0 if (x, y) == (1, 1) else (0.3 if x == 1 or y == 1 else 0.1)
    mean[detector.hcal_id(1, 1, 0)] = 0.08  # live, merely little leakage
    mean[detector.hcal_id(1, 0, 0)] = 0.3  # corner a bit higher than its edge neighbours
    dead, _ = P.dead_by_signal(mean, err, 5000)
    assert not dead[detector.HCAL_IDS].any()
    for module in range(4):
        for x in range(3):
            for y in range(3):
                mean[detector.hcal_id(module, x, y)] = 2.5 + 0.1 * x - 0.05 * y
    mean[detector.hcal_id(2, 0, 1)] = 0.01
    dead, reasons = P.dead_by_signal(mean, err, 5000)
    name = detector.channel_name(detector.hcal_id(2, 0, 1))
    assert [detector.channel_name(int(c)) for c in np.flatnonzero(dead)] == [name]
    assert reasons[0].startswith(f"{name}: dead")
