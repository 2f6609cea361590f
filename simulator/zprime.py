"""Z' of a U(1)_{B - n_i L_i} model: charges, widths, branching ratios, production cross-sections.

Pure functions (numpy only), formulas from ``shared/reference/signal.md``. Masses and widths in MeV,
energies in GeV where named ``*_gev``. The unbroken case: three light Dirac neutrinos, each flavour
decaying with the full width of a massless fermion of its lepton charge. Hadronic channels are neglected
below ``HADRON_THRESHOLD_MEV`` (500 MeV: the Z' is an isoscalar, so channels up to the omega are strongly
suppressed); above it a perturbative quark-level estimate (u, d, s with colour factor 3) is used.

Production (sources in docs/simulator.md, "Z' signal"): bremsstrahlung e Z -> e Z Z' in the improved
Weizsaecker-Williams approximation (:func:`brems_cross_section_cm2`: the DMG4 dsigma/dx with its
normalisation 2 alpha^2 alpha' Q_e^2 chi / E and Tsai's elastic form factor in chi), resonant
annihilation e+ e- -> Z' on atomic electrons (:func:`resonant_integral_cm2_gev`: the Breit-Wigner
integrated over the positron energy). A Z' couples to the electron with g Q_e, so a dark photon of mixing
epsilon is the same with alpha epsilon^2 -> alpha' Q_e^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

M_E = 0.51099895  # MeV
ALPHA = 1 / 137.035999084
#: (hbar c)^2 = 0.3893794 GeV^2 mb, in GeV^2 cm^2: natural-unit cross-sections to cm^2
HBARC2_GEV2_CM2 = 3.893793721e-28
#: hbar c in MeV mm: lengths from widths
HBARC_MEV_MM = 1.973269804e-10
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
#: decay modes of a Z' (truth codes of simulator.particles.Decay, 1..5) and the channels each one sums
DECAY_MODES: dict[str, tuple[str, ...]] = {
    "invisible": INVISIBLE_CHANNELS,
    "ee": ("ee",),
    "mumu": ("mumu",),
    "hadrons": ("hadrons",),
    "tautau": ("tautau",),
}


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


def decay_mode_probabilities(widths: Mapping[str, float]) -> dict[str, float]:
    """Branching ratio of each of :data:`DECAY_MODES` (sum 1)."""
    total = total_width(widths)
    return {mode: sum(widths.get(c, 0.0) for c in chans) / total for mode, chans in DECAY_MODES.items()}


def decay_length_mm(energy_gev: np.ndarray, mass_mev: float, total_width_mev: float) -> np.ndarray:
    """Mean decay length in the lab, gamma beta c tau = (p / m) hbar c / Gamma_tot (mm)."""
    e = np.asarray(energy_gev, dtype=np.float64) * 1000.0
    p = np.sqrt(np.maximum(e * e - mass_mev * mass_mev, 0.0))
    return p / mass_mev * HBARC_MEV_MM / total_width_mev


def resonant_energy_gev(mass_mev: float) -> float:
    """Positron energy of resonant annihilation on atomic electrons, E_R = (m^2 - 2 m_e^2) / (2 m_e)."""
    return (mass_mev * mass_mev - 2 * M_E * M_E) / (2 * M_E) / 1000.0


def resonant_allowed(mass_mev: float) -> bool:
    """Resonant e+ e- -> Z' needs a positron of at least its mass: E_R >= m_e, i.e. m >= 2 m_e."""
    return resonant_energy_gev(mass_mev) * 1000.0 >= M_E


def resonant_integral_cm2_gev(mass_mev: float, gamma_ee_mev: float) -> float:
    """Integral over the positron energy of sigma(e+ e- -> Z' -> anything) on an electron at rest (cm^2 GeV).

    Breit-Wigner sigma(s) = (12 pi / m^2) Gamma_ee Gamma_f m^2 / ((s - m^2)^2 + m^2 Gamma^2) (peak
    12 pi Gamma_ee Gamma_f / (m^2 Gamma^2), signal.md), s = 2 m_e E + 2 m_e^2, so ds = 2 m_e dE and,
    summed over f, the integral is 6 pi^2 Gamma_ee / (m m_e) (= 2 pi^2 alpha' Q_e^2 / m_e for m >> m_e,
    the dark-photon result with alpha epsilon^2 -> alpha' Q_e^2). Independent of the line shape."""
    m, me = mass_mev / 1000.0, M_E / 1000.0
    return 6.0 * math.pi**2 * (gamma_ee_mev / 1000.0) / (m * me) * HBARC2_GEV2_CM2


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


# ---------------------------------------------------------------- bremsstrahlung cross-section (IWW)
def form_factor_flux(e_gev: float, mass_mev: float, z: float, a: float, n: int = 4000) -> float:
    """Effective photon flux chi of a nucleus (Z, A) for emitting a Z' of mass m off an electron of E.

    chi = int_{t_min}^{t_max} dt (t - t_min) / t^2 G2(t), t_min = (m^2 / 2E)^2, t_max = m^2 + m_e^2, with
    Tsai's elastic form factor (atomic screening and nuclear size) G2 = Z^2 [a^2 t / (1 + a^2 t)]^2
    [1 / (1 + t/d)]^2, a = 111 Z^(-1/3) / m_e, d = 0.164 A^(-2/3) GeV^2 [Tsai 1974; Bjorken et al. 2009,
    Eq. A18]. Integrated numerically in ln t (``n`` points)."""
    m, me = mass_mev / 1000.0, M_E / 1000.0
    t_min = (m * m / (2.0 * e_gev)) ** 2
    t_max = m * m + me * me
    if t_max <= t_min:
        return 0.0
    t = np.exp(np.linspace(math.log(t_min), math.log(t_max), n))
    a_scr = 111.0 * z ** (-1.0 / 3.0) / me
    d = 0.164 * a ** (-2.0 / 3.0)
    g2 = z * z * (a_scr * a_scr * t / (1.0 + a_scr * a_scr * t)) ** 2 / (1.0 + t / d) ** 2
    f = (t - t_min) / (t * t) * g2 * t  # dt = t d(ln t)
    return float(np.trapezoid(f, np.log(t)))


def brems_sigma_shape(x: np.ndarray, mass_mev: float, e_gev: float) -> np.ndarray:
    """The DMG4 dsigma/dx of :func:`brems_dsigma_dx` in GeV^-1 (``x`` any shape): the cross-section is
    2 alpha^2 alpha' Q_e^2 chi / E times this (:func:`brems_cross_section_cm2`)."""
    return brems_dsigma_dx(x, mass_mev, e_gev) * 1000.0  # MeV^-1 -> GeV^-1


def brems_x_grid(mass_mev: float, e_gev: float, x_min: float, n: int = 2048) -> np.ndarray:
    """x from max(x_min, m/E) to 1 - m_e/E, uniform in w = -ln(1 - x) (the spectrum of a heavy Z' rises
    steeply towards x -> 1, where 1 - x ~ m_e^2 / m^2); empty if no Z' can be made above x_min."""
    lo = max(x_min, mass_mev / (e_gev * 1000.0))
    hi = 1.0 - M_E / (e_gev * 1000.0)
    if lo >= hi:
        return np.zeros(0)
    w = np.linspace(-math.log1p(-lo), -math.log1p(-hi), n)
    return -np.expm1(-w)


def brems_cross_section_cm2(
    e_gev: float, mass_mev: float, coupling: float, charge_e: float, z: float, a: float, x_min: float = 0.0
) -> float:
    """sigma(e Z -> e Z Z') per nucleus (cm^2) for Z' energy fractions x > ``x_min``, in the improved
    Weizsaecker-Williams approximation:

    dsigma/dx = 2 alpha^2 alpha' Q_e^2 chi / E x sqrt(x^2 E^2 - m^2) [m_e^2 x (-2 + 2x + x^2)
    - 2u (3 - 3x + x^2)] / (3 x u^2), u = -m^2 (1-x)/x - m_e^2 x [DMG4; Bjorken et al. 2009 for the
    normalisation]; chi from :func:`form_factor_flux`. Integrated numerically over :func:`brems_x_grid`.
    """
    x = brems_x_grid(mass_mev, e_gev, x_min)
    if x.size == 0:
        return 0.0
    chi = form_factor_flux(e_gev, mass_mev, z, a)
    alpha_z = alpha_prime(coupling) * charge_e * charge_e
    shape = brems_sigma_shape(x, mass_mev, e_gev)
    integral = float(np.trapezoid(shape * (1.0 - x), -np.log1p(-x)))  # dx = (1 - x) dw
    return 2.0 * ALPHA * ALPHA * alpha_z * chi / e_gev * integral * HBARC2_GEV2_CM2
