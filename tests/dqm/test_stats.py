"""The tail probabilities behind every threshold, against exact sums and known values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqm import stats


def exact_binom_sf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1))


def exact_poisson_cdf(k: int, mu: float) -> float:
    return sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k + 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.integers(-2, 62), st.floats(0.001, 0.999))
def test_binomial_tails_match_exact_sums(n: int, k: int, p: float) -> None:
    sf = stats.binom_sf(k, n, p)
    assert sf == pytest.approx(exact_binom_sf(k, n, p), rel=1e-9, abs=1e-300)
    assert stats.binom_cdf(k, n, p) == pytest.approx(1 - exact_binom_sf(k + 1, n, p), rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.floats(0.01, 60.0))
def test_poisson_tails_match_exact_sums(k: int, mu: float) -> None:
    assert stats.poisson_cdf(k, mu) == pytest.approx(exact_poisson_cdf(k, mu), rel=1e-9, abs=1e-300)
    assert stats.poisson_sf(k, mu) == pytest.approx(1 - exact_poisson_cdf(k - 1, mu), rel=1e-8, abs=1e-12)


def test_known_values_and_large_counts() -> None:
    # chi2: P(chi2(1) >= 3.841459) = 0.05; P(chi2(100) >= 124.342) = 0.05; P(chi2(2) >= x) = exp(-x/2)
    assert stats.chi2_sf(3.841459, 1) == pytest.approx(0.05, rel=1e-5)
    assert stats.chi2_sf(124.342, 100) == pytest.approx(0.05, rel=1e-4)
    assert stats.chi2_sf(7.0, 2) == pytest.approx(math.exp(-3.5), rel=1e-12)
    # a spill's worth of hits: symmetric binomial at its median, and a 5 sigma excess
    n = 20_000
    pmf_median = math.exp(math.lgamma(n + 1) - 2 * math.lgamma(n // 2 + 1) - n * math.log(2))
    assert stats.binom_sf(n // 2 + 1, n, 0.5) == pytest.approx(0.5 - 0.5 * pmf_median, rel=1e-6)
    assert stats.binom_sf(n / 2 + 5 * math.sqrt(n / 4), n, 0.5) == pytest.approx(2.9e-7, rel=0.2)
    assert stats.p_of_z(5.0) == pytest.approx(2.8665e-7, rel=1e-4)
    for p in (0.3, 1e-3, 1e-9, 1e-30):
        assert stats.p_of_z(stats.z_of_p(p)) == pytest.approx(p, rel=1e-6)
    assert stats.per_test_alpha(1e-4, 110) == pytest.approx(1e-4 / 110)
