"""Z' physics (simulator.zprime) against the formulas of signal.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import zprime as z

MODELS = list(z.CHARGES)


def test_charges_table() -> None:
    assert z.charges("B-L") == {"u": 1 / 3, "d": 1 / 3, "e": -1.0, "mu": -1.0, "tau": -1.0}
    assert z.charges("B-3L_e")["e"] == -3.0 and z.charges("B-3L_e")["mu"] == 0.0
    assert z.charges("B-2L_e-L_mu")["e"] == -2.0 and z.charges("B-2L_e-L_mu")["mu"] == -1.0
    assert z.charges("B-L_e-2L_mu")["e"] == -1.0 and z.charges("B-L_e-2L_mu")["mu"] == -2.0
    with pytest.raises(ValueError, match="known"):
        z.charges("B-L_tau")


def test_fermion_width_formula() -> None:
    m, g, mf, q = 300.0, 1e-3, z.M_MU, -2.0
    a = g * g / (4 * math.pi)
    r = mf**2 / m**2
    expected = m * q * q * a / 3 * (1 + 2 * r) * math.sqrt(1 - 4 * r)
    assert z.width_fermion(m, q, g, mf) == pytest.approx(expected, rel=1e-12)
    assert z.width_fermion(200.0, q, g, z.M_MU) == 0.0  # below 2 m_mu
    assert z.width_fermion(m, q, g) == pytest.approx(m * q * q * a / 3, rel=1e-12)


def test_scalar_width_formula() -> None:
    m, g, mchi = 100.0, 1e-3, 20.0
    a = g * g / (4 * math.pi)
    assert z.width_scalar(m, 1.0, g, mchi) == pytest.approx(m * a / 12 * (1 - 4 * mchi**2 / m**2) ** 1.5)
    assert z.width_scalar(m, 1.0, g, 60.0) == 0.0


@pytest.mark.parametrize(
    ("model", "expected"),
    # below 2 m_mu: ee and the neutrinos only; Q_e^2 per channel
    [("B-L", 3 / 4), ("B-3L_e", 9 / 18), ("B-2L_e-L_mu", 5 / 9), ("B-L_e-2L_mu", 5 / 6)],
)
def test_invisible_br_below_muon_threshold(model: str, expected: float) -> None:
    # the only mass effect left at 100 MeV is the electron's: (1 + 2r) sqrt(1 - 4r) ~ 1 - 6e-10
    assert z.invisible_branching_ratio(model, 100.0, 1e-4) == pytest.approx(expected, rel=1e-6)


def test_invisible_br_above_muon_threshold_uses_muon_width() -> None:
    m = 300.0
    w = z.partial_widths("B-L", m, 1e-4)
    assert w["mumu"] > 0 and w["hadrons"] == 0.0 and w["tautau"] == 0.0
    inv = w["nu_e"] + w["nu_mu"] + w["nu_tau"]
    assert z.invisible_branching_ratio("B-L", m, 1e-4) == pytest.approx(inv / sum(w.values()), rel=1e-12)
    assert 0.6 < inv / sum(w.values()) < 0.75


def test_hadrons_neglected_below_500_mev_and_counted_above() -> None:
    assert z.partial_widths("B-L", 499.0, 1e-4)["hadrons"] == 0.0
    assert z.partial_widths("B-L", 800.0, 1e-4)["hadrons"] > 0.0


def test_dark_matter_channel_raises_invisible_br() -> None:
    without = z.invisible_branching_ratio("B-3L_e", 100.0, 1e-4)
    with_dm = z.invisible_branching_ratio("B-3L_e", 100.0, 1e-4, dm_mass_mev=10.0, dm_charge=3.0)
    assert with_dm > without
    w = z.partial_widths("B-3L_e", 100.0, 1e-4, dm_mass_mev=10.0, dm_charge=3.0)
    assert with_dm == pytest.approx((w["nu_e"] + w["chi"]) / sum(w.values()), rel=1e-12)


@given(
    model=st.sampled_from(MODELS),
    mass=st.floats(1.5, 1500.0),
    g=st.floats(1e-6, 1e-2),
)
def test_br_is_a_fraction_independent_of_coupling_and_widths_scale_as_g2(
    model: str, mass: float, g: float
) -> None:
    br = z.invisible_branching_ratio(model, mass, g)
    assert 0.0 < br < 1.0
    assert br == pytest.approx(z.invisible_branching_ratio(model, mass, 2 * g), rel=1e-9)
    w1 = z.total_width(z.partial_widths(model, mass, g))
    w2 = z.total_width(z.partial_widths(model, mass, 2 * g))
    assert w2 == pytest.approx(4 * w1, rel=1e-9)


def test_resonant_energy() -> None:
    assert z.resonant_energy_gev(250.0) == pytest.approx(61.15, abs=0.01)  # signal.md: ~61 GeV
    m = 100.0
    assert z.resonant_energy_gev(m) == pytest.approx((m * m - 2 * z.M_E**2) / (2 * z.M_E) / 1000)


def test_peak_cross_section_factor() -> None:
    w = z.partial_widths("B-L", 100.0, 1e-4)
    inv = w["nu_e"] + w["nu_mu"] + w["nu_tau"]
    assert z.peak_cross_section_factor("B-L", 100.0, 1e-4) == pytest.approx(
        w["ee"] * inv / sum(w.values()) ** 2
    )


@pytest.mark.parametrize("mass", [1.0, 16.7, 100.0])
def test_brems_sampler_follows_the_dmg4_shape(mass: float) -> None:
    """Histogram of 200k sampled x vs the integral of the formula in 20 bins: every bin within 5 sigma
    (Poisson) or 1% of its expectation, whichever is larger."""
    e0 = 100.0
    sampler = z.BremsSampler(mass, e0)
    x = sampler.sample(200_000, np.random.default_rng(7))
    x_min = mass / (e0 * 1000)
    assert x.min() >= x_min and x.max() <= 1.0
    edges = x_min + (1 - x_min) * np.linspace(0, 1, 21) ** 0.5
    counts, _ = np.histogram(x, edges)
    fine = np.linspace(x_min, 1 - 1e-12, 400_001)
    pdf = z.brems_dsigma_dx(fine, mass, e0)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(fine))])
    expected = np.diff(np.interp(edges, fine, cdf / cdf[-1])) * x.size
    tol = np.maximum(5 * np.sqrt(expected), 0.01 * expected)
    assert np.all(np.abs(counts - expected) <= tol + 5), (counts, expected)


def test_brems_spectrum_peaks_towards_one_for_heavy_mediators() -> None:
    light = z.BremsSampler(1.0, 100.0).sample(50_000, np.random.default_rng(1))
    heavy = z.BremsSampler(100.0, 100.0).sample(50_000, np.random.default_rng(1))
    assert np.median(heavy) > 0.98 > np.median(light)
    with pytest.raises(ValueError):
        z.BremsSampler(200_000.0, 100.0)


def test_resonant_missing_energy_peaks_at_er() -> None:
    m, width = 250.0, 1e-3
    e = z.sample_resonant_missing_energy(100_000, np.random.default_rng(3), m, width, smear=0.02)
    e_r = z.resonant_energy_gev(m)
    assert np.median(e) == pytest.approx(e_r, rel=0.002)
    core = e[np.abs(e - e_r) < 5 * 0.02 * e_r]
    assert core.size > 0.99 * e.size
    assert core.std() == pytest.approx(0.02 * e_r, rel=0.03)  # broadening of the atomic electrons' motion
