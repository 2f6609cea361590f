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


@pytest.mark.parametrize("mass", [16.7, 100.0, 300.0])
def test_iww_cross_section_matches_the_log_approximation(mass: float) -> None:
    """sigma ~ (4/3) alpha^2 alpha' Q_e^2 chi ln(m^2/m_e^2) / m^2 for m_e << m << E (Bjorken et al. 2009,
    Eq. 10; DMG4's analytic total before its K-factor): the numerical integral of the DMG4 dsigma/dx with
    the 2 alpha^2 alpha' Q_e^2 chi / E normalisation agrees within 5%."""
    e, g, q, zz, aa = 100.0, 1e-4, -1.0, 82.0, 207.2
    chi = z.form_factor_flux(e, mass, zz, aa)
    m = mass / 1000
    approx = (
        4 / 3 * z.ALPHA**2 * z.alpha_prime(g) * q * q * chi * math.log(m * m / (z.M_E / 1000) ** 2) / m**2
    )
    got = z.brems_cross_section_cm2(e, mass, g, q, zz, aa)
    assert got == pytest.approx(approx * z.HBARC2_GEV2_CM2, rel=0.05)


def test_brems_cross_section_scales_with_g2_q2_and_drops_with_the_cut() -> None:
    base = z.brems_cross_section_cm2(100.0, 50.0, 1e-3, -1.0, 82.0, 207.2)
    assert z.brems_cross_section_cm2(100.0, 50.0, 3e-3, -1.0, 82.0, 207.2) == pytest.approx(
        9 * base, rel=1e-12
    )
    assert z.brems_cross_section_cm2(100.0, 50.0, 1e-3, -3.0, 82.0, 207.2) == pytest.approx(
        9 * base, rel=1e-12
    )
    cut = z.brems_cross_section_cm2(100.0, 50.0, 1e-3, -1.0, 82.0, 207.2, x_min=0.5)
    assert 0 < cut < base
    assert z.brems_cross_section_cm2(10.0, 50.0, 1e-3, -1.0, 82.0, 207.2, x_min=1.0) == 0.0


def test_form_factor_flux_against_its_definition() -> None:
    """chi = int (t - t_min)/t^2 G2 dt with Tsai's G2: a plain midpoint sum over t (not in ln t)."""
    e, mass, zz, aa = 100.0, 100.0, 82.0, 207.2
    me, m = z.M_E / 1000, mass / 1000
    t_min, t_max = (m * m / (2 * e)) ** 2, m * m + me * me
    a_s, d = 111 * zz ** (-1 / 3) / me, 0.164 * aa ** (-2 / 3)
    edges = np.geomspace(t_min, t_max, 2_000_001)
    t = 0.5 * (edges[1:] + edges[:-1])
    g2 = zz * zz * (a_s * a_s * t / (1 + a_s * a_s * t)) ** 2 / (1 + t / d) ** 2
    expected = float(np.sum((t - t_min) / t**2 * g2 * np.diff(edges)))
    assert z.form_factor_flux(e, mass, zz, aa) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("mass", [16.7, 250.0])
def test_resonant_integral_is_the_breit_wigner_integrated_over_the_positron_energy(mass: float) -> None:
    """int sigma dE of sigma(s) = (12 pi/m^2) Gamma_ee Gamma m^2 / ((s - m^2)^2 + m^2 Gamma^2), s = 2 m_e E
    + 2 m_e^2, integrated numerically over +-10^4 widths (the tails beyond add 2/(pi 10^4)); for m >> m_e
    it is the dark-photon 2 pi^2 alpha' Q_e^2 / m_e."""
    g = 1e-4
    w = z.partial_widths("B-L", mass, g)
    gam, gee = sum(w.values()) / 1000, w["ee"] / 1000
    m, me = mass / 1000, z.M_E / 1000
    s = m * m + m * gam * np.linspace(-1e4, 1e4, 4_000_001)
    sigma = 12 * math.pi / m**2 * gee * gam * m * m / ((s - m * m) ** 2 + m * m * gam * gam)
    numeric = float(np.trapezoid(sigma, s / (2 * me))) * z.HBARC2_GEV2_CM2 / (1 - 2 / (math.pi * 1e4))
    got = z.resonant_integral_cm2_gev(mass, w["ee"])
    assert got == pytest.approx(numeric, rel=1e-4)
    assert got == pytest.approx(2 * math.pi**2 * z.alpha_prime(g) / me * z.HBARC2_GEV2_CM2, rel=1e-4)


def test_resonant_production_needs_a_positron_above_its_mass() -> None:
    """E_R = (m^2 - 2 m_e^2) / 2 m_e >= m_e exactly when m >= 2 m_e."""
    assert not z.resonant_allowed(0.5) and not z.resonant_allowed(2 * z.M_E * 0.999)
    assert z.resonant_allowed(2 * z.M_E * 1.001) and z.resonant_allowed(16.7)


def test_decay_length_and_modes() -> None:
    """gamma beta c tau = (p/m) hbar c / Gamma; the decay modes sum the partial widths of signal.md."""
    m, g, e = 16.7, 1e-5, 60.0
    w = z.partial_widths("B-L", m, g)
    gam = sum(w.values())
    p = math.sqrt((e * 1000) ** 2 - m * m)
    expected = p / m * 197.3269804e-12 / gam  # hbar c = 197.33 MeV fm, 1 fm = 1e-12 mm
    assert float(z.decay_length_mm(np.array([e]), m, gam)[0]) == pytest.approx(expected, rel=1e-9)
    assert 3000 < expected < 10000  # the issue's ~6 m at g = 1e-5
    modes = z.decay_mode_probabilities(z.partial_widths("B-L", 300.0, g))
    assert sum(modes.values()) == pytest.approx(1.0, rel=1e-12)
    assert modes["invisible"] == pytest.approx(z.invisible_branching_ratio("B-L", 300.0, g), rel=1e-12)
    assert modes["mumu"] > 0 and modes["hadrons"] == 0
    assert z.decay_mode_probabilities(z.partial_widths("B-L", 1000.0, g))["hadrons"] > 0
