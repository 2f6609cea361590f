"""Pure quality metrics computed from books and spill summaries (no I/O, no state).

Pedestal mean and noise per channel (pre-samples of the monitored waveforms), hit rates, the ECAL
electron peak (sum ECAL of beam triggers), histogram distances (two-sample chi2 and Kolmogorov-Smirnov)
and the early-spill intensity pattern. The calibration package may later provide better estimators; the
checks only see the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from daq.summary import ARRIVAL_TIME, SpillSummary
from dqm.book import Book


@dataclass(frozen=True, eq=False)
class Pedestals:
    """Per-channel pre-sample statistics in ADC counts; ``n`` samples per channel (NaN where none)."""

    mean: NDArray[np.float64]
    mean_even: NDArray[np.float64]
    mean_odd: NDArray[np.float64]
    noise: NDArray[np.float64]
    n: NDArray[np.float64]


def pedestals(book: Book) -> Pedestals:
    """Pedestal (even/odd samples separately) and noise (RMS around them) of every channel."""
    a = book.arrays
    n, s, s2 = a["ped_n"], a["ped_sum"], a["ped_sum2"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_eo = np.where(n > 0, s / n, np.nan)
        var_eo = np.where(n > 0, s2 / n - mean_eo**2, np.nan)
        ntot = n.sum(axis=0)
        var = np.where(ntot > 0, np.nansum(np.clip(var_eo, 0, None) * n, axis=0) / ntot, np.nan)
        mean = np.where(ntot > 0, s.sum(axis=0) / ntot, np.nan)
    return Pedestals(mean=mean, mean_even=mean_eo[0], mean_odd=mean_eo[1], noise=np.sqrt(var), n=ntot)


def random_noise_gev(book: Book) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and RMS of each channel's energy in random-trigger events (GeV; NaN without randoms)."""
    n = book.arrays["n_type"][2]
    if n <= 0:
        nan = np.full(book.arrays["rnd_sum"].shape, np.nan)
        return nan, nan.copy()
    mean = book.arrays["rnd_sum"] / n
    var = np.clip(book.arrays["rnd_sum2"] / n - mean**2, 0, None)
    return mean, np.sqrt(var)


def hit_rates(book: Book) -> NDArray[np.float64]:
    """Hits above threshold per event, (2, channels) for physics and beam triggers (0 without events)."""
    n = book.arrays["n_type"][:2, None]
    return np.divide(book.arrays["hits"], n, out=np.zeros_like(book.arrays["hits"]), where=n > 0)


def mean_energy(book: Book) -> NDArray[np.float64]:
    """Mean energy per channel (GeV) over physics and beam triggers."""
    n = book.arrays["n_type"][:2].sum()
    return book.arrays["esum"].sum(axis=0) / n if n > 0 else np.zeros(book.arrays["esum"].shape[1])


def occupancy(book: Book) -> NDArray[np.float64]:
    """Fraction of physics and beam triggers with a hit above threshold, per channel."""
    n = book.arrays["n_type"][:2].sum()
    return book.arrays["hits"].sum(axis=0) / n if n > 0 else np.zeros(book.arrays["hits"].shape[1])


@dataclass(frozen=True)
class Peak:
    mean: float
    sigma: float
    n: float


def find_peak(counts: NDArray[np.float64], edges: NDArray[np.float64], min_entries: float = 1) -> Peak | None:
    """Position of the main peak: iterated mean and RMS in a +-2 sigma window around the fullest bin.

    Robust against tails (radiative electrons, pile-up) without a fit; None with too few entries.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() < max(min_entries, 1):
        return None
    centers = 0.5 * (edges[1:] + edges[:-1])
    width = float(edges[1] - edges[0])
    mu = float(centers[int(np.argmax(counts))])
    sigma = max(0.05 * abs(mu), 2 * width)
    n = 0.0
    for _ in range(8):
        sel = np.abs(centers - mu) <= 2 * sigma
        w = counts[sel]
        n = float(w.sum())
        if n <= 0:
            return None
        new_mu = float((w * centers[sel]).sum() / n)
        new_sigma = max(math.sqrt(max(float((w * (centers[sel] - new_mu) ** 2).sum() / n), 0.0)), width / 2)
        # the +-2 sigma window cuts a Gaussian's RMS to 0.88 sigma: undo it so the window does not shrink
        new_sigma /= 0.88
        if abs(new_mu - mu) < 1e-3 * width and abs(new_sigma - sigma) < 1e-3 * width:
            mu, sigma = new_mu, new_sigma
            break
        mu, sigma = new_mu, new_sigma
    if n < min_entries:
        return None
    return Peak(mean=mu, sigma=sigma, n=n)


def chi2_ndf(observed: NDArray[np.float64], reference: NDArray[np.float64]) -> tuple[float, int]:
    """Two-sample chi2 per degree of freedom for unweighted histograms of different totals.

    chi2 = sum((sqrt(M/N) n_i - sqrt(N/M) m_i)^2 / (n_i + m_i)) over bins with entries, ndf = bins - 1.
    Returns (nan, 0) when either histogram is empty.
    """
    n_i = np.asarray(observed, dtype=np.float64).ravel()
    m_i = np.asarray(reference, dtype=np.float64).ravel()
    big_n, big_m = n_i.sum(), m_i.sum()
    sel = (n_i + m_i) > 0
    ndf = int(np.count_nonzero(sel)) - 1
    if big_n <= 0 or big_m <= 0 or ndf < 1:
        return math.nan, 0
    num = (math.sqrt(big_m / big_n) * n_i[sel] - math.sqrt(big_n / big_m) * m_i[sel]) ** 2
    return float((num / (n_i[sel] + m_i[sel])).sum() / ndf), ndf


def ks_distance(observed: NDArray[np.float64], reference: NDArray[np.float64]) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance of two binned distributions: (D * sqrt(nm/(n+m)), p-value)."""
    a = np.asarray(observed, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    n, m = a.sum(), b.sum()
    if n <= 0 or m <= 0:
        return math.nan, math.nan
    d = float(np.max(np.abs(np.cumsum(a) / n - np.cumsum(b) / m)))
    lam = d * math.sqrt(n * m / (n + m))
    return lam, kolmogorov_p(lam)


def kolmogorov_p(lam: float) -> float:
    """Asymptotic P(K > lam) of the Kolmogorov distribution."""
    if lam < 0.2:
        return 1.0
    total: float = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(total, 0.0), 1.0)


def early_spike(
    counts: NDArray[np.float64], edges: NDArray[np.float64], spill_length_ns: float, early_fraction: float
) -> float:
    """Intensity in the first ``early_fraction`` of the spill over the median intensity of the rest.

    ``counts``/``edges`` are particles vs time in spill (ns). Returns nan when the rest is empty.
    """
    counts = np.asarray(counts, dtype=np.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    inside = centers < spill_length_ns
    early = inside & (centers < early_fraction * spill_length_ns)
    rest = inside & ~early
    if not early.any() or not rest.any():
        return math.nan
    base = float(np.median(counts[rest]))
    if base <= 0:
        return math.nan
    return float(counts[early].mean() / base)


@dataclass(frozen=True)
class EarlyExcess:
    """Events of one kind in the first part of the spill vs what the rest of the spill predicts."""

    observed: float
    expected: float
    n_early: float

    def significant(self, factor: float, min_count: float = 5) -> bool:
        """More than ``factor`` x expected and 3 sigma (Poisson) above it, with at least ``min_count``."""
        return self.observed >= min_count and self.observed > factor * self.expected + 3 * math.sqrt(
            max(self.expected, 1.0)
        )


def early_excess(book: Book, row: int, spill_length_ns: float, early_fraction: float) -> EarlyExcess:
    """Row ``row`` of the time-in-spill histogram early in the spill vs its rate in the rest of the spill."""
    v = book.times.values()
    centers = book.times.axes[1].centers
    early = centers < early_fraction * spill_length_ns
    late = ~early & (centers < spill_length_ns)
    events = v[0] + v[1] + v[2]
    n_early = float(events[early].sum())
    observed = float(v[row][early].sum())
    rate_late = float(v[row][late].sum()) / max((1 - early_fraction) * spill_length_ns, 1.0)
    return EarlyExcess(observed, rate_late * early_fraction * spill_length_ns, n_early)


def arrival_histogram(summary: SpillSummary | None) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Particles vs time in spill from a spill summary: (counts, edges in ns), or None if absent/bad.

    Edges may be given in seconds or in ns (a spill is shorter than 1000 s; ns edges are larger).
    """
    hist = None if summary is None else summary.histograms.get(ARRIVAL_TIME)  # a histogram may be absent
    if hist is None:
        return None
    counts = np.asarray(hist.counts, np.float64)
    edges = np.asarray(hist.edges, np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,) or counts.size == 0 or counts.size > 100_000:
        return None
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        return None
    if edges[-1] < 1e3:
        edges = edges * 1e9
    return counts, edges
