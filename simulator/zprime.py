"""Z' of a U(1)_{B - n_i L_i} model: charges, partial widths, invisible branching ratio, production shapes.

Pure functions (numpy only), formulas from ``shared/reference/signal.md``. Masses and widths in MeV,
energies in GeV where named ``*_gev``. The unbroken case: three light Dirac neutrinos, each flavour
decaying with the full width of a massless fermion of its lepton charge. Hadronic channels are neglected
below ``HADRON_THRESHOLD_MEV`` (500 MeV: the Z' is an isoscalar, so channels up to the omega are strongly
suppressed); above it a perturbative quark-level estimate (u, d, s with colour factor 3) is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

M_E = 0.51099895  # MeV
M_MU = 105.6583755
M_TAU = 1776.86
M_U, M_D, M_S = 2.2, 4.7, 95.0  # current masses; only used above HADRON_THRESHOLD_MEV
HADRON_THRESHOLD_MEV = 500.0

#: charges (Q_u, Q_d, Q_e, Q_mu, Q_tau) of the anomaly-free models [signal.md]
CHARGES: dict[str, dict[str, float]] = {
    "B-L": {"u": 1 / 3, "d": 1 / 3, "e": -1.0, "mu": -1.0, "tau": -1.0},
    "B-3L_e": {"u": 1 / 3, "d": 1 / 3, "e": -3.0, "mu": 0.0, "tau": 0.0},
    "B-2L_e-L_mu": {"u": 1 / 3, "d": 1 / 3, "e": -2.0, "mu": -1.0, "tau": 0.0},
    "B-L_e-2L_mu": {"u": 1 / 3, "d": 1 / 3, "e": -1.0, "mu": -2.0, "tau": 0.0},
}

INVISIBLE_CHANNELS = ("nu_e", "nu_mu", "nu_tau", "chi")


def charges(model: str) -> dict[str, float]:
    """Charges of ``model``; raises ValueError naming the known models."""
    try:
        return dict(CHARGES[model])
    except KeyError:
        raise ValueError(f"unknown Z' model {model!r} (known: {', '.join(CHARGES)})") from None


def alpha_prime(coupling: float) -> float:
    """alpha' = g^2 / (4 pi)."""
    return coupling * coupling / (4.0 * math.pi)


def width_fermion(mass_mev: float, charge: float, coupling: float, fermion_mass_mev: float = 0.0) -> float:
    """Gamma(Z' -> f fbar) = (1/3) m Q^2 alpha' (1 + 2 mf^2/m^2) sqrt(1 - 4 mf^2/m^2); 0 below threshold."""
    r = (fermion_mass_mev / mass_mev) ** 2
    if 4 * r >= 1:
        return 0.0
    return mass_mev * charge * charge * alpha_prime(coupling) / 3.0 * (1 + 2 * r) * math.sqrt(1 - 4 * r)


def width_scalar(mass_mev: float, charge: float, coupling: float, scalar_mass_mev: float) -> float:
    """Gamma(Z' -> chi chi*) = (1/12) m Q^2 alpha' (1 - 4 m_chi^2/m^2)^(3/2); 0 below threshold."""
    r = (scalar_mass_mev / mass_mev) ** 2
    if 4 * r >= 1:
        return 0.0
    return mass_mev * charge * charge * alpha_prime(coupling) / 12.0 * (1 - 4 * r) ** 1.5


def partial_widths(
    model: str, mass_mev: float, coupling: float, dm_mass_mev: float | None = None, dm_charge: float = 1.0
) -> dict[str, float]:
    """Partial widths (MeV) by channel: ee, mumu, tautau, nu_e, nu_mu, nu_tau, hadrons, [chi].

    Neutrinos: Dirac, unbroken case, each flavour with the width of a massless fermion of charge Q_l.
    ``dm_mass_mev`` adds a scalar dark-matter pair channel ``chi`` of charge ``dm_charge``.
    """
    if mass_mev <= 0:
        raise ValueError(f"Z' mass must be > 0 MeV (got {mass_mev})")
    q = charges(model)
    w = {
        "ee": width_fermion(mass_mev, q["e"], coupling, M_E),
        "mumu": width_fermion(mass_mev, q["mu"], coupling, M_MU),
        "tautau": width_fermion(mass_mev, q["tau"], coupling, M_TAU),
        "nu_e": width_fermion(mass_mev, q["e"], coupling),
        "nu_mu": width_fermion(mass_mev, q["mu"], coupling),
        "nu_tau": width_fermion(mass_mev, q["tau"], coupling),
        "hadrons": hadronic_width(model, mass_mev, coupling),
    }
    if dm_mass_mev is not None and dm_mass_mev > 0:
        w["chi"] = width_scalar(mass_mev, dm_charge, coupling, dm_mass_mev)
    return w


def hadronic_width(model: str, mass_mev: float, coupling: float) -> float:
    """Hadronic width: 0 below HADRON_THRESHOLD_MEV, else the quark-level estimate 3 x sum over u, d, s."""
    if mass_mev < HADRON_THRESHOLD_MEV:
        return 0.0
    q = charges(model)
    return 3.0 * sum(
        width_fermion(mass_mev, q[f], coupling, mf) for f, mf in (("u", M_U), ("d", M_D), ("d", M_S))
    )


def total_width(widths: Mapping[str, float]) -> float:
    return float(sum(widths.values()))


def invisible_branching_ratio(
    model: str, mass_mev: float, coupling: float, dm_mass_mev: float | None = None, dm_charge: float = 1.0
) -> float:
    """(neutrino widths [+ dark-matter width]) / total width. Independent of the coupling."""
    w = partial_widths(model, mass_mev, coupling, dm_mass_mev, dm_charge)
    total = total_width(w)
    return sum(w.get(c, 0.0) for c in INVISIBLE_CHANNELS) / total if total > 0 else 0.0


def resonant_energy_gev(mass_mev: float) -> float:
    """Positron energy of resonant annihilation on atomic electrons, E_R = (m^2 - 2 m_e^2) / (2 m_e)."""
    return (mass_mev * mass_mev - 2 * M_E * M_E) / (2 * M_E) / 1000.0


def peak_cross_section_factor(
    model: str, mass_mev: float, coupling: float, dm_mass_mev: float | None = None, dm_charge: float = 1.0
) -> float:
    """sigma_max x m^2 / (12 pi) = Gamma_ee Gamma_inv / Gamma_tot^2 (dimensionless), for invisible decays."""
    w = partial_widths(model, mass_mev, coupling, dm_mass_mev, dm_charge)
    total = total_width(w)
    inv = sum(w.get(c, 0.0) for c in INVISIBLE_CHANNELS)
    return w["ee"] * inv / total**2 if total > 0 else 0.0


# ---------------------------------------------------------------- bremsstrahlung production
def brems_dsigma_dx(x: np.ndarray, mass_mev: float, e0_gev: float) -> np.ndarray:
    """Shape (arbitrary normalisation) of dsigma/dx for e Z -> e Z Z' with Z' energy fraction x [DMG4]:

    u = -m^2 (1-x)/x - m_e^2 x;
    dsigma/dx ~ sqrt(x^2 E0^2 - m^2) [m_e^2 x (-2 + 2x + x^2) - 2u (3 - 3x + x^2)] / (3 x u^2).
    Zero where x E0 < m or x >= 1.
    """
    x = np.asarray(x, dtype=np.float64)
    e0 = e0_gev * 1000.0
    m2, me2 = mass_mev * mass_mev, M_E * M_E
    out = np.zeros_like(x)
    ok = (x > 0) & (x < 1) & (x * e0 > mass_mev)
    xs = x[ok]
    u = -m2 * (1 - xs) / xs - me2 * xs
    num = me2 * xs * (-2 + 2 * xs + xs * xs) - 2 * u * (3 - 3 * xs + xs * xs)
    out[ok] = np.sqrt(xs * xs * e0 * e0 - m2) * num / (3 * xs * u * u)
    return np.clip(out, 0.0, None)


class BremsSampler:
    """Inverse-CDF sampler of the Z' energy fraction x for bremsstrahlung production."""

    def __init__(self, mass_mev: float, e0_gev: float, n_grid: int = 20000) -> None:
        x_min = mass_mev / (e0_gev * 1000.0)
        if x_min >= 1:
            raise ValueError(f"a {mass_mev} MeV Z' cannot be made by a {e0_gev} GeV electron")
        # a grid dense near both ends: the spectrum rises steeply towards x -> 1 for m >> m_e
        t = np.linspace(0.0, 1.0, n_grid)
        grid = x_min + (1 - x_min) * (1 - (1 - t) ** 2)
        grid = np.unique(np.concatenate([grid, x_min + (1 - x_min) * t**2]))
        pdf = brems_dsigma_dx(grid, mass_mev, e0_gev)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
        if cdf[-1] <= 0:
            raise ValueError(f"empty brems spectrum for m={mass_mev} MeV, E0={e0_gev} GeV")
        self.grid, self.cdf = grid, cdf / cdf[-1]
        self.mass_mev, self.e0_gev = mass_mev, e0_gev

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` values of x (float64)."""
        return np.interp(rng.random(n), self.cdf, self.grid)

    def mean(self) -> float:
        pdf = np.gradient(self.cdf, self.grid)
        return float(np.trapezoid(self.grid * pdf, self.grid))


def sample_resonant_missing_energy(
    n: int,
    rng: np.random.Generator,
    mass_mev: float,
    total_width_mev: float,
    smear: float = 0.02,
) -> np.ndarray:
    """Missing energy (GeV) of resonant e+ e- -> Z' on atomic electrons.

    Breit-Wigner in s = 2 m_e E + 2 m_e^2 (width ``total_width_mev``), broadened by the motion of atomic
    electrons (Gaussian, relative sigma ``smear``). Centred at :func:`resonant_energy_gev`.
    """
    m2 = mass_mev * mass_mev
    s = m2 + mass_mev * total_width_mev * np.tan(np.pi * (rng.random(n) - 0.5))  # Cauchy in s
    s = np.clip(s, 4 * M_E * M_E, 4 * m2)
    e = (s - 2 * M_E * M_E) / (2 * M_E) / 1000.0
    return e * (1.0 + smear * rng.standard_normal(n))
