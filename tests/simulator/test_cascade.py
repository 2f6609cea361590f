"""The cascade track lengths (simulator.cascade) against results of shower theory computed here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator import cascade as c


def test_brems_and_pair_spectra_integrate_as_in_tsai() -> None:
    """Tsai's complete-screening spectra: int y phi(y) dy = 1 per X0 (the definition of X0), pair total
    7/9 (PDG 34.31); the antiderivatives agree with a midpoint integration."""
    y = (np.arange(1_000_000) + 0.5) / 1_000_000
    phi = (4 / 3 - 4 / 3 * y + y * y) / y
    assert np.mean(y * phi) == pytest.approx(1.0, rel=1e-9)
    assert float(c.pair_primitive(1.0) - c.pair_primitive(0.0)) == pytest.approx(7 / 9, rel=1e-12)
    lo, hi = 0.2, 0.7
    sel = (y > lo) & (y < hi)
    assert float(c.brems_primitive(hi) - c.brems_primitive(lo)) == pytest.approx(
        phi[sel].sum() / y.size, rel=1e-5
    )


def test_asymptotic_constants_are_rossis() -> None:
    """Energy conservation in Approximation A gives the E0/E^2 constants; Rossi quotes 0.437 (e+-) and
    0.572 (photons) with slightly different cross-sections: within 2%."""
    a_e, a_g = c.asymptotic_constant()
    assert a_e == pytest.approx(0.437, rel=0.02)
    assert a_g == pytest.approx(0.572, rel=0.02)
    assert a_g == pytest.approx(9 / 7 * a_e, rel=1e-12)


def test_track_lengths_far_below_e0_follow_approximation_a() -> None:
    """At E = E0/50 the e+- track length per GeV is a_e E0 / E^2 and the photons' a_gamma E0 / E^2 within
    2% (the grid of 1% in energy undershoots by ~1%); positrons are half of the shower e+- (the beam
    electron's own track is ~3% there)."""
    tl = c.track_lengths(2.0, 100.0, h=0.01)
    a_e, a_g = c.asymptotic_constant()
    e = tl.energies[-1]
    assert e == pytest.approx(2.0, rel=0.01)
    e_pm = sum(tl.per_gev(s)[-1] for s in (c.BEAM_ELECTRON, c.SHOWER_ELECTRON, c.POSITRON))
    assert e_pm * e * e / 100.0 == pytest.approx(a_e, rel=0.02)
    assert tl.per_gev(c.PHOTON)[-1] * e * e / 100.0 == pytest.approx(a_g, rel=0.02)
    shower = tl.per_gev(c.SHOWER_ELECTRON)[-1] + tl.per_gev(c.POSITRON)[-1]
    np.testing.assert_allclose(tl.per_gev(c.POSITRON), tl.per_gev(c.SHOWER_ELECTRON), rtol=1e-12)
    assert tl.per_gev(c.POSITRON)[-1] / e_pm == pytest.approx(0.5 * shower / e_pm, rel=1e-9)
    assert tl.per_gev(c.POSITRON)[-1] / e_pm == pytest.approx(0.5, abs=0.03)


def test_beam_electron_keeps_1_over_e_of_its_energy_per_x0() -> None:
    """<E(t)> = E0 exp(-t) for Tsai's spectrum (int y phi = 1): the beam electron's mean energy over each
    depth step within 2% up to 2 X0 (energy that fell below the grid, < 1 GeV, is under 1% of it)."""
    tl = c.track_lengths(1.0, 100.0, h=0.01, dt=0.1)
    for k in (0, 5, 10, 19):
        t0, t1 = k * tl.dt, (k + 1) * tl.dt
        mean_e = float((tl.tracks[c.BEAM_ELECTRON, :, k] * tl.energies).sum()) / tl.dt
        expected = 100.0 * (math.exp(-t0) - math.exp(-t1)) / tl.dt
        assert mean_e == pytest.approx(expected, rel=0.02), k


def test_no_particle_above_the_beam_and_nothing_below_the_grid_matters() -> None:
    """Transitions only go down in energy: the bins above E_min are the same whatever the threshold."""
    coarse = c.track_lengths(20.0, 100.0)
    fine = c.track_lengths(10.0, 100.0)
    n = coarse.n_bins
    np.testing.assert_allclose(
        fine.tracks[:, :n, : coarse.tracks.shape[2]], coarse.tracks, rtol=1e-9, atol=1e-15
    )
    assert coarse.scaled(50.0).energies[0] == pytest.approx(50.0 * math.exp(-coarse.h / 2))


def test_gamma_p_and_prs_fraction() -> None:
    """P(a, x) against closed forms for a = 1, 2, 3; the PRS share of a shower is the gamma profile's
    P(a, b (4 - t0)) with a = 1 + b (ln(E/E_c) - 0.5) at the table nodes, 0 from 4 X0 on, larger for
    lower energies and earlier starts."""
    x = np.array([0.05, 0.5, 1.0, 2.0, 6.0])
    np.testing.assert_allclose(c.gamma_p(1.0, x), 1 - np.exp(-x), rtol=1e-12)
    np.testing.assert_allclose(c.gamma_p(2.0, x), 1 - (1 + x) * np.exp(-x), rtol=1e-12)
    np.testing.assert_allclose(c.gamma_p(3.0, x), 1 - (1 + x + x * x / 2) * np.exp(-x), rtol=1e-9)
    f = c.PrsFraction(0.008, 0.5, 4.0, -0.5)
    ln_e, t_grid, _ = f._table
    e = np.exp(ln_e[[150, 200, 230]])  # ~1, 10, 50 GeV nodes
    for t0 in (t_grid[0], t_grid[40]):
        a = 1 + 0.5 * (np.log(e / 0.008) - 0.5)
        np.testing.assert_allclose(f(e, np.full(3, t0)), c.gamma_p(a, 0.5 * (4 - t0)), rtol=1e-9)
    assert f(np.array([100.0]), np.array([4.0]))[0] == 0.0
    assert f(np.array([1.0]), np.array([0.0]))[0] > f(np.array([100.0]), np.array([0.0]))[0]
    assert f(np.array([100.0]), np.array([0.0]))[0] > f(np.array([100.0]), np.array([1.0]))[0]
