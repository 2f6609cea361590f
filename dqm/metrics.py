"""Pure quality metrics computed from books and spill summaries (no I/O, no state).

Pedestal mean and noise per channel (pre-samples of the monitored waveforms), hit rates, the ECAL
electron peak (sum ECAL of beam triggers), histogram distances (two-sample chi2 and Kolmogorov-Smirnov)
and the early-spill intensity pattern. The calibration package may later provide better estimators; the
checks only see the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daq.summary import ARRIVAL_TIME, SpillSummary
from dqm import stats
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


def merge_bins(reference: NDArray[np.float64], total: float, min_expected: float) -> NDArray[np.intp]:
    """Group consecutive bins so that each group expects at least ``min_expected`` of ``total`` entries
    with the shape of ``reference``; returns each bin's group number. The grouping depends only on the
    reference (not on the data tested), so it does not bias the test."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    big_m = ref.sum()
    expected = ref * (total / big_m) if big_m > 0 else np.zeros_like(ref)
    group = np.zeros(ref.size, np.intp)
    g, acc = 0, 0.0
    for i, e in enumerate(expected):
        group[i] = g
        acc += e
        if acc >= min_expected:
            g, acc = g + 1, 0.0
    if acc < min_expected and g > 0:  # a short last group joins the one before
        group[group == g] = g - 1
    return group


def chi2_ndf(
    observed: NDArray[np.float64], reference: NDArray[np.float64], min_expected: float = 0.0
) -> tuple[float, int]:
    """Two-sample chi2 per degree of freedom for unweighted histograms of different totals.

    chi2 = sum((sqrt(M/N) n_i - sqrt(N/M) m_i)^2 / (n_i + m_i)) over bins with entries, ndf = bins - 1.
    With ``min_expected`` > 0 the bins are first grouped so that each expects that many observed entries
    (:func:`merge_bins`): with a reference of many spills, a bin expecting 0.01 entries that gets one
    adds ~M/N to chi2, far from the chi2 distribution. Returns (nan, 0) when either histogram is empty.
    """
    n_i = np.asarray(observed, dtype=np.float64).ravel()
    m_i = np.asarray(reference, dtype=np.float64).ravel()
    big_n, big_m = n_i.sum(), m_i.sum()
    if big_n <= 0 or big_m <= 0:
        return math.nan, 0
    if min_expected > 0:
        group = merge_bins(m_i, big_n, min_expected)
        n_i = np.bincount(group, weights=n_i).astype(np.float64)
        m_i = np.bincount(group, weights=m_i).astype(np.float64)
    sel = (n_i + m_i) > 0
    ndf = int(np.count_nonzero(sel)) - 1
    if ndf < 1:
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
    """Events of one kind in the first part of the spill vs the rest of the spill.

    ``observed``/``later``: events of the kind early / later in the spill; ``exposure_early``/
    ``exposure_later``: what they are compared by: beam particles there (the DAQ's arrival histogram: the
    intensity need not be flat), or else the time. Not the monitored events: a saturation fault makes
    extra physics triggers, which would hide itself.
    """

    observed: float
    later: float
    exposure_early: float
    exposure_later: float
    #: monitored events early in the spill (enough to judge?)
    n_early: float

    @property
    def expected(self) -> float:
        """Events of the kind expected early if they were as frequent (per exposure) as later."""
        return self.later * self.exposure_early / self.exposure_later if self.exposure_later > 0 else math.nan

    def p_value(self) -> float:
        """P(this many or more early) if the kind is as frequent early as later: the conditional binomial
        test of the two counts (1.0 when there is nothing to compare)."""
        if self.exposure_early <= 0 or self.exposure_later <= 0:
            return 1.0
        share = self.exposure_early / (self.exposure_early + self.exposure_later)
        return stats.binom_sf(self.observed, self.observed + self.later, share)

    def significant(self, factor: float, alpha: float, min_count: float = 5) -> bool:
        """At least ``min_count`` events, more than ``factor`` x expected, and p < ``alpha``."""
        expected = self.expected
        return (
            self.observed >= min_count
            and math.isfinite(expected)
            and self.observed > factor * expected
            and self.p_value() < alpha
        )


def early_excess(
    book: Book,
    row: int,
    spill_length_ns: float,
    early_fraction: float,
    arrival: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> EarlyExcess:
    """Row ``row`` of the time-in-spill histogram early in the spill vs in the rest, with the beam
    particles of ``arrival`` (counts, edges in ns) as exposure, or the time without it."""
    v = book.times.values()
    centers = book.times.axes[1].centers
    cut = early_fraction * spill_length_ns
    early = centers < cut
    late = ~early & (centers < spill_length_ns)
    events = v[0] + v[1] + v[2]
    if arrival is not None:
        counts, edges = arrival
        mid = 0.5 * (edges[1:] + edges[:-1])
        exp_early = float(counts[mid < cut].sum())
        exp_later = float(counts[(mid >= cut) & (mid < spill_length_ns)].sum())
    else:
        exp_early, exp_later = cut, spill_length_ns - cut
    return EarlyExcess(
        observed=float(v[row][early].sum()),
        later=float(v[row][late].sum()),
        exposure_early=exp_early,
        exposure_later=exp_later,
        n_early=float(events[early].sum()),
    )


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


# ---------------------------------------------------------------- per-waveform distributions
@dataclass(frozen=True, eq=False)
class WaveformDist:
    """Per-channel distribution of one per-waveform quantity (pre-sample mean or RMS), binned.

    ``counts`` is (channels, bins + 2) with the under- and overflow bins at both ends; ``edges`` are
    the bin edges (bins + 1). Counts above or below a threshold use whole bins (a bin counts when it
    lies entirely beyond the threshold), the same rule for a spill and for its baseline, so the two
    can be compared exactly.
    """

    counts: NDArray[np.float64]
    edges: NDArray[np.float64]

    @property
    def n(self) -> NDArray[np.float64]:
        out: NDArray[np.float64] = self.counts.sum(axis=1)
        return out

    def median(self) -> NDArray[np.float64]:
        """Interpolated median per channel (NaN without entries; the range's edge when in a flow bin)."""
        counts = self.counts
        n = counts.sum(axis=1)
        cum = np.cumsum(counts, axis=1)
        half = 0.5 * n
        j = np.argmax(cum >= half[:, None], axis=1)  # first bin (with flow) reaching half
        rows = np.arange(counts.shape[0])
        below = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0.0)
        in_bin = counts[rows, j]
        frac = np.divide(half - below, in_bin, out=np.full(n.shape, 0.5), where=in_bin > 0)
        k = np.clip(j - 1, 0, self.edges.size - 2)  # regular bin index
        out = self.edges[k] + frac * (self.edges[k + 1] - self.edges[k])
        out = np.where(j == 0, self.edges[0], out)
        out = np.where(j >= counts.shape[1] - 1, self.edges[-1], out)
        return np.where(n > 0, out, np.nan)

    def at_least(self, threshold: NDArray[np.float64]) -> NDArray[np.float64]:
        """Entries per channel in bins entirely at or above ``threshold`` (incl. the overflow)."""
        # flow layout: [underflow, bin 0 .. bin B-1, overflow]; bin k starts at edges[k]
        first = np.searchsorted(self.edges[:-1], np.nan_to_num(threshold, nan=np.inf), side="left") + 1
        cum = np.concatenate([np.zeros((self.counts.shape[0], 1)), np.cumsum(self.counts, axis=1)], axis=1)
        total = cum[:, -1]
        out: NDArray[np.float64] = (
            total - cum[np.arange(self.counts.shape[0]), np.minimum(first, self.counts.shape[1])]
        )
        return out

    def at_most(self, threshold: NDArray[np.float64]) -> NDArray[np.float64]:
        """Entries per channel in bins entirely at or below ``threshold`` (incl. the underflow)."""
        # bin k ends at edges[k + 1]: bins with edges[k + 1] <= threshold, plus the underflow
        last = np.searchsorted(self.edges[1:], np.nan_to_num(threshold, nan=-np.inf), side="right")
        cum = np.concatenate([np.zeros((self.counts.shape[0], 1)), np.cumsum(self.counts, axis=1)], axis=1)
        out: NDArray[np.float64] = cum[
            np.arange(self.counts.shape[0]), np.minimum(last + 1, self.counts.shape[1])
        ]
        return out


def _dist(hist: Any) -> WaveformDist:
    return WaveformDist(np.asarray(hist.values(flow=True), np.float64), hist.axes[1].edges)


def waveform_means(book: Book) -> WaveformDist:
    """Per-waveform pre-sample means per channel, relative to daq.detector.NOMINAL_PEDESTAL (ADC)."""
    return _dist(book.wf_mean)


def waveform_rms(book: Book) -> WaveformDist:
    """Per-waveform pre-sample RMS per channel (around the even and odd means; ADC)."""
    return _dist(book.wf_rms)


def peak_error(
    counts: NDArray[np.float64], edges: NDArray[np.float64], min_entries: float = 1, n_boot: int = 32
) -> float:
    """Statistical error of :func:`find_peak`'s position, from Poisson resamplings of the histogram.

    The iterated window moves with the data, so sigma / sqrt(n) underestimates the scatter of the
    position from spill to spill (by ~1.5x on simulated 2 MHz data); the resampling includes it. The
    random numbers are seeded by the histogram itself: the same counts give the same error.
    """
    counts = np.asarray(counts, np.float64)
    seed = int(counts.sum()) * 1_000_003 + int((counts * np.arange(counts.size)).sum()) % 1_000_003
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        p = find_peak(rng.poisson(counts).astype(np.float64), edges, min_entries)
        if p is not None:
            means.append(p.mean)
    if len(means) < n_boot // 2:
        return math.nan
    return float(np.std(means, ddof=1))


def signal_box(book: Book, ecal_max_gev: float, hcal_max_gev: float) -> float:
    """Physics triggers in the signal box E_ECAL < ecal_max, E_HCAL < hcal_max (zoomed histogram; bins
    that lie entirely inside the box; events beyond the zoom's E_HCAL range are outside anyway)."""
    h = book.h2["ecal_hcal_zoom"]
    ex, ey = h.axes[0].edges, h.axes[1].edges
    nx = int(np.searchsorted(ex[1:], ecal_max_gev + 1e-9, side="right"))
    ny = int(np.searchsorted(ey[1:], hcal_max_gev + 1e-9, side="right"))
    v = h.values(flow=True)  # underflow (E < 0 after pedestal noise) counts as inside
    return float(v[: nx + 1, : ny + 1].sum())


@dataclass(frozen=True)
class SignalRegion:
    """Signal-box count of a range and what the baseline predicts for it (its background)."""

    observed: float
    expected: float  # NaN without a baseline with the zoomed histogram
    expected_error: float  # statistical error of the prediction (baseline counts)
    physics: float  # physics triggers of the range (the normalisation)


def signal_region(
    book: Book, baseline: Book | None, ecal_max_gev: float, hcal_max_gev: float
) -> SignalRegion:
    """The range's signal-box count, and the baseline's box count scaled by the physics triggers."""
    observed = signal_box(book, ecal_max_gev, hcal_max_gev)
    physics = float(book.arrays["n_type"][0])
    expected = error = math.nan
    if baseline is not None and "h2.ecal_hcal_zoom" not in baseline.missing:
        base_box = signal_box(baseline, ecal_max_gev, hcal_max_gev)
        base_phys = float(baseline.arrays["n_type"][0])
        if base_phys > 0:
            scale = physics / base_phys
            expected = base_box * scale
            error = math.sqrt(max(base_box, 1.0)) * scale
    return SignalRegion(observed, expected, error, physics)
