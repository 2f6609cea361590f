"""The electron-photon cascade in the active target, for Z' production (pure, numpy only).

:func:`track_lengths` gives the track length (in radiation lengths X0) of the beam electron, the shower
electrons, the shower positrons and the photons per energy bin and depth step, for one beam electron of
energy E0, above an energy threshold E_min. It solves the one-dimensional cascade equations in Rossi's
Approximation A (bremsstrahlung and pair production only, complete screening; no ionisation loss, which
is negligible above a GeV) with the cross-sections of Tsai (Rev. Mod. Phys. 46 (1974) 815; PDG review
"Passage of particles through matter", Eqs. 34.29 and 34.31), per X0:

- bremsstrahlung of an e+- of energy E into a photon of energy yE: phi(y) = (4/3 - 4/3 y + y^2) / y;
- pair production by a photon of energy k, the positron (or electron) taking uk: psi(u) = 1 - 4/3 u (1-u)
  (total 7/9).

On a logarithmic energy grid (bins of width ``h`` in ln E) both cross-sections depend only on energy
ratios, so every transition is a shift by a whole number of bins: the generator of the depth evolution is
a 4x4 block matrix of lower-triangular Toeplitz blocks, i.e. of power series in the one-bin shift. Its
exponential over a depth step (a Taylor series in that algebra) advances the particle numbers exactly for
the discretised equations; brems losses smaller than half a bin are a continuous drift of the energy.
Particles falling below E_min leave the grid (transitions only go down in energy, so they never matter
for the bins above). Checks (tests): the track lengths far below E0 follow Approximation A's E0/E^2 law
with the constant from energy conservation (:func:`asymptotic_constant`, Rossi's 0.437 for electrons),
positrons are half of the shower e+- there, and the beam electron loses ln E at the mean rate of phi.

:func:`prs_fraction` is the share of a shower of energy E starting at depth t0 that falls in the first
``prs_x0`` radiation lengths, from the gamma-function longitudinal profile of the PDG review (Eq. 34.36,
Longo and Sestili): dE/dt ~ (bt)^(a-1) e^(-bt), t_max = (a-1)/b = ln(E/E_c) + C (C = -0.5 for an
electron, +0.5 for a photon).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: species rows of :attr:`TrackLengths.tracks`
BEAM_ELECTRON, SHOWER_ELECTRON, POSITRON, PHOTON = 0, 1, 2, 3
N_SPECIES = 4
_CHARGED = (BEAM_ELECTRON, SHOWER_ELECTRON, POSITRON)
PAIR_TOTAL = 7.0 / 9.0


def brems_primitive(y: np.ndarray | float) -> np.ndarray:
    """Antiderivative of phi(y) = (4/3 - 4/3 y + y^2) / y: (4/3) ln y - (4/3) y + y^2 / 2."""
    y = np.asarray(y, dtype=np.float64)
    return 4.0 / 3.0 * np.log(y) - 4.0 / 3.0 * y + 0.5 * y * y


def pair_primitive(u: np.ndarray | float) -> np.ndarray:
    """Antiderivative of psi(u) = 1 - 4/3 u (1 - u): u - (2/3) u^2 + (4/9) u^3."""
    u = np.asarray(u, dtype=np.float64)
    return u - 2.0 / 3.0 * u * u + 4.0 / 9.0 * u**3


def mean_log_loss_rate(n: int = 200_000) -> float:
    """Mean loss of ln E per X0 of an e+- by bremsstrahlung: int_0^1 ln(1/(1-y)) phi(y) dy (midpoints in
    w = -ln(1-y), where the integrand is smooth)."""
    w = (np.arange(n) + 0.5) * (40.0 / n)
    y = -np.expm1(-w)
    return float(np.sum(w * (4.0 / 3.0 - 4.0 / 3.0 * y + y * y) / y * (1.0 - y)) * (40.0 / n))


def asymptotic_constant() -> tuple[float, float]:
    """(a_e, a_gamma) of Approximation A far below E0: track length per unit energy a E0 / E^2.

    Photon balance: photons are made at the rate a_e E0 / k^2 int y phi = a_e E0 / k^2 and absorbed at 7/9,
    so a_gamma = (9/7) a_e. Energy conservation (all of E0 eventually passes below any E):
    1 = a_e int phi(y) [y ln(1/y) + (1-y) ln(1/(1-y))] dy + a_gamma int psi(u) [u ln(1/u) + (1-u) ln(1/(1-u))] du.
    Rossi's Approximation A quotes 0.437 and 0.572 (slightly different cross-sections)."""
    n = 400_000
    y = (np.arange(n) + 0.5) / n

    def ent(v: np.ndarray) -> np.ndarray:
        return -v * np.log(v) - (1 - v) * np.log1p(-v)

    i_b = float(np.mean((4.0 / 3.0 - 4.0 / 3.0 * y + y * y) / y * ent(y)))
    i_p = float(np.mean((1.0 - 4.0 / 3.0 * y * (1.0 - y)) * ent(y)))
    a_e = 1.0 / (i_b + 9.0 / 7.0 * i_p)
    return a_e, 9.0 / 7.0 * a_e


@dataclass(frozen=True, eq=False)
class TrackLengths:
    """Track lengths of one beam electron of ``e0_gev`` (X0), per species, energy bin and depth step."""

    e0_gev: float
    h: float  # bin width in ln E; bin i covers E0 [e^-(i+1)h, e^-ih]
    dt: float  # depth step (X0)
    tracks: np.ndarray  # float64 (4 species, N energy bins, K depth steps)

    @property
    def n_bins(self) -> int:
        return int(self.tracks.shape[1])

    @property
    def energies(self) -> np.ndarray:
        """Bin centres (GeV), descending."""
        return self.e0_gev * np.exp(-(np.arange(self.n_bins) + 0.5) * self.h)

    @property
    def widths(self) -> np.ndarray:
        """Bin widths (GeV)."""
        return self.energies * 2.0 * math.sinh(self.h / 2)

    @property
    def depths(self) -> np.ndarray:
        """Start of each depth step (X0)."""
        return np.arange(self.tracks.shape[2]) * self.dt

    def per_gev(self, species: int) -> np.ndarray:
        """Depth-integrated track length per unit energy (X0 / GeV) at the bin centres."""
        return self.tracks[species].sum(axis=1) / self.widths

    def scaled(self, e0_gev: float) -> TrackLengths:
        """The same shower for a beam energy ``e0_gev`` (the cross-sections are scale free)."""
        return TrackLengths(e0_gev, self.h, self.dt, self.tracks)


def _series_kernels(n: int, h: float) -> dict[tuple[int, int], np.ndarray]:
    """Generator blocks (to, from) as power series in the one-bin shift, rates per X0."""
    edges = np.exp(-(np.arange(n + 1) - 0.5) * h)  # e^-(j-1/2)h, j = 0..n
    # photon of energy yE lands j bins down: y in [e^-(j+1/2)h, e^-(j-1/2)h) (j = 0: up to y = 1)
    y_hi = np.minimum(edges[:-1], 1.0)
    y_lo = edges[1:]
    emit = brems_primitive(y_hi) - brems_primitive(y_lo)
    pair = pair_primitive(y_hi) - pair_primitive(y_lo)
    # the e+- drops d >= 1 bins when 1 - y in [e^-(d+1/2)h, e^-(d-1/2)h); less than half a bin is a drift
    y_soft = -math.expm1(-h / 2)
    drop = np.zeros(n)
    ys = -np.expm1(-(np.arange(n + 1) + 0.5) * h)  # y at 1 - y = e^-(d+1/2)h, d = 0..n
    drop[1:] = brems_primitive(ys[1:n]) - brems_primitive(ys[: n - 1])
    hard = float(brems_primitive(1.0) - brems_primitive(y_soft))  # every hard emission leaves its bin
    w = np.linspace(0.0, h / 2, 2001)[1:]
    yy = -np.expm1(-w)
    drift = float(np.trapezoid(w * (4.0 / 3.0 - 4.0 / 3.0 * yy + yy * yy) / yy * (1 - yy), w)) / h
    blocks: dict[tuple[int, int], np.ndarray] = {}
    for c in _CHARGED:
        a = drop.copy()
        a[0] -= hard + drift
        if n > 1:
            a[1] += drift
        blocks[(c, c)] = a
        blocks[(PHOTON, c)] = emit.copy()
    g = np.zeros(n)
    g[0] = -PAIR_TOTAL
    blocks[(PHOTON, PHOTON)] = g
    blocks[(SHOWER_ELECTRON, PHOTON)] = pair.copy()
    blocks[(POSITRON, PHOTON)] = pair.copy()
    return blocks


def _product(
    x: dict[tuple[int, int], np.ndarray], y: dict[tuple[int, int], np.ndarray], n: int
) -> dict[tuple[int, int], np.ndarray]:
    out: dict[tuple[int, int], np.ndarray] = {}
    for (i, k), a in x.items():
        for (k2, j), b in y.items():
            if k2 != k:
                continue
            c = np.convolve(a, b)[:n]
            if (i, j) in out:
                out[(i, j)] += c
            else:
                out[(i, j)] = c
    return out


def _step_operators(
    n: int, h: float, dt: float
) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """(M, Q) for one depth step: M = exp(A dt) advances the numbers, Q = int_0^dt exp(As) ds gives the
    track length made during the step (Taylor series; ||A dt|| < 2 for dt <= 0.1 X0)."""
    a = {k: v * dt for k, v in _series_kernels(n, h).items()}
    eye = {(s, s): np.eye(1, n, 0).ravel() for s in range(N_SPECIES)}
    m = {k: v.copy() for k, v in eye.items()}
    q = {k: v * dt for k, v in eye.items()}
    term = eye
    for j in range(1, 60):
        term = _product(term, a, n)
        inv = 1.0 / math.factorial(j)
        biggest = 0.0
        for k, v in term.items():
            m[k] = m[k] + v * inv if k in m else v * inv
            q[k] = q[k] + v * (dt / (j + 1)) * inv if k in q else v * (dt / (j + 1)) * inv
            biggest = max(biggest, float(np.abs(v).max()) * inv)
        if biggest < 1e-15:
            break
    return m, q


def _apply(op: dict[tuple[int, int], np.ndarray], state: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros_like(state)
    for (i, j), series in op.items():
        if state[j].any():
            out[i] += np.convolve(series, state[j])[:n]
    return out


@functools.lru_cache(maxsize=4)
def _solve(n: int, h: float, dt: float, t_max: float) -> np.ndarray:
    m_op, q_op = _step_operators(n, h, dt)
    state = np.zeros((N_SPECIES, n))
    state[BEAM_ELECTRON, 0] = 1.0
    steps: list[np.ndarray] = []
    for _ in range(round(t_max / dt)):
        steps.append(_apply(q_op, state, n))
        state = _apply(m_op, state, n)
        if state.sum() < 1e-9:
            break
    return np.stack(steps, axis=2)


def track_lengths(
    e_min_gev: float, e0_gev: float = 100.0, h: float = 0.01, dt: float = 0.1, t_max: float = 40.0
) -> TrackLengths:
    """Track lengths of one beam electron of ``e0_gev`` above ``e_min_gev`` (grid of ``h`` in ln E, depth
    steps ``dt`` up to ``t_max`` X0 or until nothing is left above ``e_min_gev``). Cached per shape."""
    if not 0 < e_min_gev < e0_gev:
        raise ValueError(f"need 0 < e_min ({e_min_gev}) < E0 ({e0_gev})")
    n = max(1, math.ceil(math.log(e0_gev / e_min_gev) / h))
    return TrackLengths(e0_gev, h, dt, _solve(n, h, dt, t_max))


# ---------------------------------------------------------------- longitudinal profile
def gamma_p(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Regularised lower incomplete gamma function P(a, x), elementwise (series, for a >= 1, x <= ~10)."""
    a, x = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(x, np.float64))
    xs = np.maximum(x, 1e-300)
    term = 1.0 / a
    total = term.copy()
    for k in range(1, 200):
        term = term * xs / (a + k)
        total += term
        if float(np.max(term / total)) < 1e-16:
            break
    lg = np.vectorize(math.lgamma, otypes=[np.float64])(a)
    return np.where(x > 0, np.minimum(1.0, total * np.exp(-xs + a * np.log(xs) - lg)), 0.0)


@dataclass(frozen=True, eq=False)
class PrsFraction:
    """Share of a shower's energy in the first ``prs_x0`` X0, tabulated in (ln E, start depth)."""

    critical_energy_gev: float
    b: float = 0.5
    prs_x0: float = 4.0
    c: float = -0.5  # -0.5 electron-initiated, +0.5 photon-initiated

    @functools.cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ln_e = np.linspace(math.log(1e-3), math.log(1e3), 241)
        t0 = np.linspace(0.0, self.prs_x0, 81)
        a = np.maximum(1.0 + self.b * (ln_e - math.log(self.critical_energy_gev) + self.c), 1.0)
        tab = gamma_p(a[:, None], self.b * (self.prs_x0 - t0)[None, :])
        return ln_e, t0, tab

    def __call__(self, e_gev: np.ndarray, t0: np.ndarray) -> np.ndarray:
        """Share (0..1) for showers of ``e_gev`` starting at depth ``t0`` (X0); 0 from ``prs_x0`` on."""
        ln_e, t_grid, tab = self._table
        le = np.clip(np.log(np.maximum(np.asarray(e_gev, np.float64), 1e-300)), ln_e[0], ln_e[-1])
        t = np.clip(np.asarray(t0, np.float64), 0.0, self.prs_x0)
        fi = (le - ln_e[0]) / (ln_e[1] - ln_e[0])
        fj = t / (t_grid[1] - t_grid[0])
        i = np.minimum(fi.astype(np.intp), ln_e.size - 2)
        j = np.minimum(fj.astype(np.intp), t_grid.size - 2)
        u, v = fi - i, fj - j
        val = (
            tab[i, j] * (1 - u) * (1 - v)
            + tab[i + 1, j] * u * (1 - v)
            + tab[i, j + 1] * (1 - u) * v
            + tab[i + 1, j + 1] * u * v
        )
        return np.where(np.asarray(t0) >= self.prs_x0, 0.0, val)
