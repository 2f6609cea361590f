"""Tail probabilities for the checks' thresholds (pure, standard library + numpy; no scipy).

The checks turn counts into p-values and compare them with a stated false-alarm probability
(docs/dqm.md, "False alarms"). What they need:

- :func:`binom_sf` / :func:`binom_cdf`: the exact conditional test of two Poisson counts (k hits in n
  events of this spill against K in N of the reference: given k + K, k is binomial with p = n / (n + N)),
  so the reference's own statistical error is part of the test;
- :func:`poisson_sf` / :func:`poisson_cdf`: a count against a known expectation;
- :func:`chi2_sf`: a chi2 with its degrees of freedom (histogram shapes);
- :func:`z_of_p` / :func:`p_of_z`: one-sided Gaussian significance, for messages and for Gaussian
  estimators (a peak position, a mean);
- :func:`per_test_alpha`: the look-elsewhere (Bonferroni) correction of a family of tests.

The regularized incomplete beta and gamma functions follow the classic continued-fraction and series
forms (Lentz's method); they agree with scipy to ~1e-12 relative over the range the checks use
(tests/dqm/test_stats.py checks them against exact sums and known values).
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 100_000


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0 (got {a}, {b})")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def gammainc(a: float, x: float) -> float:
    """Regularized lower incomplete gamma function P(a, x), a > 0, x >= 0."""
    if a <= 0:
        raise ValueError(f"gammainc needs a > 0 (got {a})")
    if x <= 0.0:
        return 0.0
    if x < a + 1.0:
        return _gamma_series(a, x)
    return 1.0 - _gamma_cf(a, x)


def gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma function Q(a, x) = 1 - P(a, x)."""
    if a <= 0:
        raise ValueError(f"gammaincc needs a > 0 (got {a})")
    if x <= 0.0:
        return 1.0
    if x < a + 1.0:
        return 1.0 - _gamma_series(a, x)
    return _gamma_cf(a, x)


def _gamma_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            return total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    raise ArithmeticError(f"incomplete gamma series did not converge (a={a}, x={x})")


def _gamma_cf(a: float, x: float) -> float:
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h
    raise ArithmeticError(f"incomplete gamma fraction did not converge (a={a}, x={x})")


# ---------------------------------------------------------------- distributions
def binom_sf(k: float, n: float, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) (k, n integers; note: >=, not >)."""
    k, n = math.ceil(k), round(n)
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return betainc(k, n - k + 1, p)


def binom_cdf(k: float, n: float, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    k, n = math.floor(k), round(n)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return betainc(n - k, k + 1, 1.0 - p)


def poisson_sf(k: float, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu)."""
    k = math.ceil(k)
    if k <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    return gammainc(k, mu)


def poisson_cdf(k: float, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu)."""
    k = math.floor(k)
    if k < 0:
        return 0.0
    if mu <= 0:
        return 1.0
    return gammaincc(k + 1, mu)


def chi2_sf(x: float, ndf: float) -> float:
    """P(X >= x) for X ~ chi2(ndf)."""
    if ndf <= 0 or not math.isfinite(x):
        return math.nan
    return gammaincc(ndf / 2.0, max(x, 0.0) / 2.0)


def p_of_z(z: float) -> float:
    """One-sided Gaussian tail probability P(Z >= z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def z_of_p(p: float) -> float:
    """One-sided significance: the z with P(Z >= z) = p (inf for p = 0; by bisection on erfc)."""
    if not p > 0:
        return math.inf
    if p >= 1:
        return -math.inf
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if p_of_z(mid) > p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


def per_test_alpha(alpha_family: float, n_tests: int) -> float:
    """Per-test probability keeping the family-wise false-alarm probability at ``alpha_family``
    (Bonferroni: exact as an upper bound whatever the correlations)."""
    return alpha_family / max(int(n_tests), 1)
