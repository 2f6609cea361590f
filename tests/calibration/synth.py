"""Synthetic detector data with known truth for the calibration unit tests.

Mimics the simulator's electronics and physics (daq.detector nominal values as means, per-channel truth
drawn from a seeded generator) closely enough to test every derivation, without needing it running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.fitting import sample_moyal
from daq import detector

CALO_IDS = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])  # the 60 channels of shower_gains


@dataclass(frozen=True, eq=False)
class Truth:
    gain: np.ndarray  # ADC counts per MeV
    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    noise: np.ndarray
    time_offset_ns: np.ndarray


def make_truth(seed: int = 1, gain_spread: float = 0.10) -> Truth:
    rng = np.random.default_rng(seed)
    n = detector.N_CHANNELS
    ped = rng.normal(detector.NOMINAL_PEDESTAL, 25.0, n)
    return Truth(
        gain=detector.nominal_gains() * rng.normal(1.0, gain_spread, n),
        pedestal_even=ped,
        pedestal_odd=ped + rng.normal(0.0, 3.0, n),
        noise=rng.uniform(1.0, 3.0, n),
        time_offset_ns=rng.normal(0.0, 2.0, n),
    )


# ------------------------------------------------------------------------------- showers
def _exp_cdf(x: np.ndarray, b: float) -> np.ndarray:
    """CDF of the Laplace density exp(-|x|/b)/(2b)."""
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1.0 - 0.5 * np.exp(-np.maximum(x, 0) / b))


def _axis_fractions(pos: np.ndarray, n_cells: int, w: float, b1: float, b2: float) -> np.ndarray:
    """(E, n_cells) fraction of a double-exponential projection centred at pos (mm) in each cell."""
    pitch = detector.ECAL_PITCH_MM
    edges = (np.arange(n_cells + 1) - 0.5) * pitch
    x = edges[None, :] - pos[:, None]
    cdf = w * _exp_cdf(x, b1) + (1 - w) * _exp_cdf(x, b2)
    return np.diff(cdf, axis=1)


def shower_fractions(x_mm: np.ndarray, y_mm: np.ndarray, w: float, b1: float, b2: float) -> np.ndarray:
    """(E, 30) fraction of a shower at (x, y) in each ECAL-grid cell (id order y*5+x)."""
    fx = _axis_fractions(x_mm, detector.ECAL_NX, w, b1, b2)
    fy = _axis_fractions(y_mm, detector.ECAL_NY, w, b1, b2)
    return (fy[:, :, None] * fx[:, None, :]).reshape(x_mm.size, -1)


def electron_showers(
    rng: np.random.Generator,
    truth: Truth,
    n: int,
    beam_cell: tuple[int, int] = detector.BEAM_CELL,
    energy_gev: float = 100.0,
    spot_mm: float = 5.0,
    stochastic: float = 0.10,
    constant: float = 0.04,
    prs_fraction: float = 0.045,
    prs_rms: float = 0.015,
    radiative_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes (n, 60) of ECAL then PRS cells for electrons, and the true deposit (n, 60) in MeV."""
    e = energy_gev * 1e3 * (1 + 0.01 * rng.standard_normal(n))
    rad = rng.random(n) < radiative_fraction
    e[rad] *= rng.uniform(0.2, 0.9, rad.sum())
    res = math.hypot(stochastic / math.sqrt(energy_gev), constant)
    e *= 1 + res * rng.standard_normal(n)
    f_prs = rng.gamma((prs_fraction / prs_rms) ** 2, prs_rms**2 / prs_fraction, n)
    cx, cy = detector.cell_center_mm(*beam_cell)
    x = cx + spot_mm * rng.standard_normal(n)
    y = cy + spot_mm * rng.standard_normal(n)
    ecal = shower_fractions(x, y, 0.80, 4.5, 22.0) * ((1 - f_prs) * e)[:, None]
    prs = shower_fractions(x, y, 0.90, 3.0, 15.0) * (f_prs * e)[:, None]
    dep = np.concatenate([ecal, prs], axis=1)
    amp = dep * truth.gain[CALO_IDS] + truth.noise[CALO_IDS] * rng.standard_normal(dep.shape)
    return amp, dep


def containment(beam_cell: tuple[int, int], spot_mm: float = 5.0, prs_fraction: float = 0.045) -> float:
    """Mean fraction of the shower inside the 5x6 ECAL and PRS grids for a beam on ``beam_cell``."""
    rng = np.random.default_rng(0)
    cx, cy = detector.cell_center_mm(*beam_cell)
    x = cx + spot_mm * rng.standard_normal(20000)
    y = cy + spot_mm * rng.standard_normal(20000)
    ecal = shower_fractions(x, y, 0.80, 4.5, 22.0).sum(axis=1).mean()
    prs = shower_fractions(x, y, 0.90, 3.0, 15.0).sum(axis=1).mean()
    return float((1 - prs_fraction) * ecal + prs_fraction * prs)


# ------------------------------------------------------------------------------- waveforms
def pulse(t_ns: np.ndarray, fwhm_ns: float, order: int = 3) -> np.ndarray:
    """CR-RC^n pulse with unit peak at t = 0 (t relative to the peak), scaled to the given FWHM."""
    tau = fwhm_ns / (2.45 * math.sqrt(order))  # rough FWHM of (t/tau)^n exp(-t/tau)
    tp = order * tau
    u = np.maximum(t_ns + tp, 0.0) / tau
    return np.where(u > 0, (u / order) ** order * np.exp(order - u), 0.0)


FWHM = {detector.PulseShape.EM: 40.0, detector.PulseShape.HADRONIC: 70.0, detector.PulseShape.FAST: 30.0}


def random_windows(
    rng: np.random.Generator,
    truth: Truth,
    n: int,
    rate_hz: float = 2e6,
    pileup_mev: np.ndarray | None = None,
    n_samples: int = detector.N_SAMPLES,
) -> np.ndarray:
    """Random-trigger windows (n, 110, S) uint16: pedestals + noise + pile-up pulses.

    Beam particles arrive Poisson at ``rate_hz`` from 300 ns before to the end of the window; each adds
    ``pileup_mev`` (110,) x gain at its own time (default: a centred 100 GeV shower in ECAL/PRS plus the
    beam counters).
    """
    if pileup_mev is None:
        pileup_mev = np.zeros(detector.N_CHANNELS)
        frac = shower_fractions(
            np.array([detector.cell_center_mm(*detector.BEAM_CELL)[0]]),
            np.array([detector.cell_center_mm(*detector.BEAM_CELL)[1]]),
            0.8,
            4.5,
            22.0,
        )[0]
        pileup_mev[detector.ECAL_IDS] = 95500 * frac
        pileup_mev[detector.PRS_IDS] = 4500 * frac
        for name in detector.BEAM_COUNTERS:
            pileup_mev[detector.counter_id(name)] = 0.3
    period = detector.SAMPLE_PERIOD_NS
    t = np.arange(n_samples) * period
    ped = np.empty((detector.N_CHANNELS, n_samples))
    ped[:, 0::2] = truth.pedestal_even[:, None]
    ped[:, 1::2] = truth.pedestal_odd[:, None]
    w = ped[None] + truth.noise[None, :, None] * rng.standard_normal((n, detector.N_CHANNELS, n_samples))
    span_ns = n_samples * period + 300.0
    k = rng.poisson(rate_hz * span_ns * 1e-9, n)
    shapes = detector.CHANNELS["shape"]
    amp = pileup_mev * truth.gain
    for ev in np.flatnonzero(k):
        for t0 in rng.uniform(-300.0, n_samples * period, k[ev]):
            for shape, fwhm in FWHM.items():
                ch = np.flatnonzero((shapes == shape) & (amp > 0))
                if ch.size:
                    w[ev, ch] += amp[ch, None] * pulse(t[None, :] - t0 - truth.time_offset_ns[ch, None], fwhm)
    return np.clip(np.rint(w), 0, detector.ADC_MAX).astype(np.uint16)


# ------------------------------------------------------------------------------- MIPs
def mip_amplitudes(
    rng: np.random.Generator, truth: Truth, ids: np.ndarray, mpv_mev: float, n: int, width: float = 0.15
) -> np.ndarray:
    """(n, len(ids)) amplitudes of Moyal deposits (most probable value mpv_mev, width relative)."""
    dep = sample_moyal(rng, mpv_mev, width * mpv_mev, (n, len(ids)))
    return dep * truth.gain[ids] + truth.noise[ids] * rng.standard_normal((n, len(ids)))
