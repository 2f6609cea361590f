"""Pure metrics: peak finding, histogram distances, early-spill pattern."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq.summary import DocumentError, SpillSummary
from dqm import metrics


@settings(max_examples=30, deadline=None)
@given(st.floats(20, 110), st.floats(0.01, 0.05), st.integers(0, 2**31))
def test_find_peak_recovers_gaussian_mean_with_a_tail(mu: float, rel_sigma: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sigma = mu * rel_sigma
    values = np.concatenate([rng.normal(mu, sigma, 4000), rng.uniform(0, mu, 800)])  # radiative tail
    edges = np.linspace(0, 132, 241)
    counts, _ = np.histogram(values, edges)
    peak = metrics.find_peak(counts.astype(float), edges, 30)
    assert peak is not None
    assert abs(peak.mean - mu) < max(0.15 * sigma, 0.3), (peak, mu)  # tolerance: a fraction of the bin width


def test_find_peak_needs_entries() -> None:
    edges = np.linspace(0, 10, 11)
    assert metrics.find_peak(np.zeros(10), edges, 1) is None
    assert metrics.find_peak(np.eye(10)[3] * 5, edges, 10) is None


def test_chi2_of_same_shape_is_about_one_and_of_shifted_shape_is_large() -> None:
    rng = np.random.default_rng(2)
    edges = np.linspace(0, 120, 121)
    a = np.histogram(rng.normal(100, 4, 20000), edges)[0].astype(float)
    b = np.histogram(rng.normal(100, 4, 5000), edges)[0].astype(float)
    c = np.histogram(rng.normal(95, 4, 5000), edges)[0].astype(float)
    same, ndf = metrics.chi2_ndf(b, a)
    assert ndf > 10 and 0.5 < same < 1.6
    shifted, _ = metrics.chi2_ndf(c, a)
    assert shifted > 20
    assert math.isnan(metrics.chi2_ndf(np.zeros(10), np.ones(10))[0])


def test_ks_distance_and_p_value() -> None:
    rng = np.random.default_rng(3)
    edges = np.linspace(0, 120, 241)
    a = np.histogram(rng.normal(100, 4, 20000), edges)[0].astype(float)
    b = np.histogram(rng.normal(100, 4, 3000), edges)[0].astype(float)
    c = np.histogram(rng.normal(98, 4, 3000), edges)[0].astype(float)
    lam_same, p_same = metrics.ks_distance(b, a)
    lam_diff, p_diff = metrics.ks_distance(c, a)
    assert p_same > 0.01 and lam_same < 1.63
    assert p_diff < 1e-6 and lam_diff > 3


@pytest.mark.parametrize(("lam", "p"), [(0.5, 0.9639), (1.0, 0.2700), (1.36, 0.0494), (1.63, 0.0098)])
def test_kolmogorov_p_matches_tables(lam: float, p: float) -> None:
    assert metrics.kolmogorov_p(lam) == pytest.approx(p, abs=2e-3)


def test_early_spike() -> None:
    edges = np.linspace(0, 5e9, 101)
    flat = np.full(100, 100.0)
    assert metrics.early_spike(flat, edges, 4.8e9, 0.2) == pytest.approx(1.0)
    spiky = flat.copy()
    spiky[:10] = 400
    assert metrics.early_spike(spiky, edges, 4.8e9, 0.2) > 2


def test_arrival_histogram_accepts_seconds_or_ns_and_rejects_garbage() -> None:
    def summary(hists: dict[str, Any]) -> SpillSummary:
        return SpillSummary.from_dict({"run": 1, "spill": 1, "histograms": hists})

    counts, edges = metrics.arrival_histogram(
        summary({"arrival_time": {"edges": [0, 0.1, 0.2], "counts": [5, 6]}})
    )  # type: ignore[misc]
    assert list(edges) == [0, 1e8, 2e8] and list(counts) == [5, 6]
    ns = summary({"arrival_time": {"edges": [0, 1e8, 2e8], "counts": [5, 6]}})
    assert list(metrics.arrival_histogram(ns)[1]) == [0, 1e8, 2e8]  # type: ignore[index]
    for bad in (
        {},
        {"arrival_time": {"edges": [0, 1], "counts": [1, 2]}},
        {"arrival_time": {"edges": [1, 0, 2], "counts": [1, 2]}},
    ):
        assert metrics.arrival_histogram(summary(bad)) is None
    assert metrics.arrival_histogram(None) is None
    with pytest.raises(DocumentError, match=r"histograms\.arrival_time: expected an object"):
        summary({"arrival_time": "x"})  # not even a histogram: the summary is refused


def test_chi2_against_a_large_reference_keeps_its_false_alarm_rate() -> None:
    """A spill against a reference of 100 spills: rare bins (expecting 0.01 entries) used to add ~M/N
    each to chi2 when hit; grouped to expect >= 5 entries, the p-values are uniform again."""
    from dqm import stats

    rng = np.random.default_rng(5)
    edges = np.linspace(0, 120, 121)
    shape = np.exp(-0.5 * ((0.5 * (edges[1:] + edges[:-1]) - 100) / 5) ** 2) + 2e-4  # a peak and a flat tail
    shape /= shape.sum()
    reference = rng.multinomial(250_000, shape).astype(float)
    pvalues = {0.0: [], 5.0: []}
    for _ in range(400):
        spill = rng.multinomial(2500, shape).astype(float)
        for min_expected in pvalues:
            ratio, ndf = metrics.chi2_ndf(spill, reference, min_expected)
            pvalues[min_expected].append(stats.chi2_sf(ratio * ndf, ndf))
    merged, raw = np.asarray(pvalues[5.0]), np.asarray(pvalues[0.0])
    assert np.mean(merged < 0.01) <= 0.025 and np.mean(merged < 0.1) <= 0.15  # ~1% and ~10%
    assert np.mean(raw < 0.01) > 0.03  # the ungrouped test was far off (tail bins)
    groups = metrics.merge_bins(reference, 2500, 5.0)
    expected = np.bincount(groups, weights=reference) * 2500 / reference.sum()
    assert expected.min() >= 5.0 and np.all(np.diff(groups) >= 0)
