"""Robust peak estimators: Gaussian core and the Moyal (Landau-like) fit, checked on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.fitting import (
    fit_moyal,
    gaussian_core,
    masked_truncated_mean,
    median_with_error,
    moyal_cdf,
    moyal_pdf,
    sample_moyal,
)


def test_moyal_pdf_and_cdf_are_consistent() -> None:
    x = np.linspace(-5.0, 40.0, 20001)
    pdf = moyal_pdf(x, 3.0, 1.5)
    assert np.trapezoid(pdf, x) == pytest.approx(1.0, abs=2e-3)
    assert x[np.argmax(pdf)] == pytest.approx(3.0, abs=0.01)  # the mode is the MPV
    cdf = moyal_cdf(x, 3.0, 1.5)
    np.testing.assert_allclose(np.gradient(cdf, x)[100:-100], pdf[100:-100], atol=1e-3)


def test_moyal_sampler_follows_the_pdf() -> None:
    rng = np.random.default_rng(3)
    x = sample_moyal(rng, 10.0, 2.0, 200_000)
    counts, edges = np.histogram(x, bins=60, range=(4, 30))
    expected = 200_000 * np.diff(moyal_cdf(edges, 10.0, 2.0))
    assert np.max(np.abs(counts - expected) / np.sqrt(expected + 1)) < 5


@pytest.mark.parametrize("n", [300, 3000, 30000])
def test_moyal_fit_is_unbiased_and_its_error_is_right(n: int) -> None:
    """40 samples each: mean MPV within 3 standard errors of the truth, pull RMS within 0.6..1.5."""
    rng = np.random.default_rng(n)
    fits = [fit_moyal(sample_moyal(rng, 150.0, 20.0, n)) for _ in range(40)]
    assert all(f.ok for f in fits)
    mpv = np.array([f.mpv for f in fits])
    err = np.array([f.mpv_error for f in fits])
    assert abs(mpv.mean() - 150.0) < 3 * mpv.std() / math.sqrt(mpv.size) + 1e-3 * 150
    pulls = (mpv - 150.0) / err
    assert 0.6 < pulls.std() < 1.5
    assert np.mean([f.width for f in fits]) == pytest.approx(20.0, rel=0.05)
    assert np.median([f.chi2_ndf for f in fits]) < 1.5


def test_moyal_fit_of_a_landau_smeared_by_noise_finds_the_peak() -> None:
    """A MIP peak (MPV 150 counts, width 15% of it) plus Gaussian noise of 6 counts, as in the HCAL."""
    rng = np.random.default_rng(7)
    x = sample_moyal(rng, 150.0, 22.5, 5000) + rng.normal(0, 6.0, 5000)
    f = fit_moyal(x)
    assert f.ok and f.mpv == pytest.approx(150.0, rel=0.02)


def test_moyal_fit_refuses_too_few_or_degenerate_values() -> None:
    assert not fit_moyal(np.arange(10.0)).ok
    f = fit_moyal(np.full(500, 3.0))
    assert not f.ok and "equal" in f.message


def test_gaussian_core_ignores_tails() -> None:
    rng = np.random.default_rng(1)
    core = rng.normal(100.0, 4.0, 9000)
    tail = rng.uniform(10.0, 95.0, 1000)  # radiative electrons, hadrons: a one-sided tail of 10%
    p = gaussian_core(np.concatenate([core, tail]))
    assert p.position == pytest.approx(100.0, abs=0.3)
    assert p.sigma == pytest.approx(4.0, rel=0.07)
    assert p.error == pytest.approx(4.0 / math.sqrt(p.n), rel=0.1)
    assert not gaussian_core(np.ones(3)).ok


def test_median_and_masked_truncated_mean() -> None:
    rng = np.random.default_rng(2)
    m = median_with_error(rng.normal(5.0, 1.0, 10000))
    assert m.position == pytest.approx(5.0, abs=4 * m.error)
    x = rng.normal(0.0, 1.0, (5000, 3)) + np.array([1.0, 2.0, 3.0])
    x[:200, 1] = 50.0  # outliers
    use = np.ones_like(x, dtype=bool)
    use[:, 2] = False  # an empty column
    mu, err, n = masked_truncated_mean(x, use)
    assert mu[0] == pytest.approx(1.0, abs=0.06) and mu[1] == pytest.approx(2.0, abs=0.06)
    assert math.isnan(mu[2]) and n[2] == 0 and n[1] < 4900
    assert err[0] == pytest.approx(1 / math.sqrt(n[0]), rel=0.1)


def test_median_error_is_the_spread_of_medians_also_for_a_skewed_spectrum() -> None:
    """The SRD's deposit is Gamma-like: the quoted error of the median must be the spread of the median
    over repeated samples (the Gaussian formula 1.2533 sigma_MAD / sqrt(n) is not)."""
    rng = np.random.default_rng(3)
    for sample in (rng.gamma(3.0, 10.0, (400, 2000)), rng.normal(5.0, 1.0, (400, 2000))):
        spread = float(np.median(sample, axis=1).std())
        quoted = float(np.mean([median_with_error(s).error for s in sample[:40]]))
        assert quoted == pytest.approx(spread, rel=0.12)
