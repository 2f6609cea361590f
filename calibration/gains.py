"""ECAL and PRS gains from electron showers: linear least squares so the summed shower energy is the beam's.

For event e with cell amplitudes a_ei (ADC counts above pedestal) the calibrated shower energy is
sum_i k_i a_ei with k_i = 1 / gain_i (MeV per count). :func:`shower_gains` finds the k that make it equal
the target T_e = E_beam x containment (the mean fraction of an electron's energy deposited in the ECAL and
PRS cells, from simulation) over many electrons:

    minimise  sum_e (sum_i k_i a_ei - T_e)^2 / sigma^2  +  sum_i ((k_i - k0_i) / (p k0_i))^2

The second term is a weak prior (relative width ``p``, default 15%: the spread of real gains around nominal is ~10%) on the starting constants k0: it only
matters for cells the showers hardly reach, which keep their starting gain and are reported as not
determined. sigma is the measured width of the calibrated sum. The sample is iteratively restricted to
the Gaussian core of sum/T (+-``window`` sigma), which removes radiative electrons, hadrons, muons and
pile-up outliers. Cells whose error is below ``max_rel_error`` are determined; the fit is repeated with the
others fixed at their starting gains (so the calibrated sum stays consistent), and the prior uncertainty
of those fixed cells is propagated into the errors (inverse normal matrix). Least squares with
fluctuating amplitudes puts the sum low by ~resolution^2 (0.2% at 100 GeV), so the determined gains are
finally scaled together to put the peak (Gaussian core, +-2 sigma) of sum/T at 1: least squares fixes the
cells relative to each other, the peak fixes the absolute scale.

:func:`cell_peaks` then checks the calibration per cell: the peak of the calibrated sum for the events
whose most energetic ECAL cell is that cell should sit at the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from calibration.fitting import Peak, gaussian_core
from daq import detector


@dataclass(frozen=True, eq=False)
class ShowerGainResult:
    """Result of :func:`shower_gains` for the channels given (arrays over those channels)."""

    gain: np.ndarray  # ADC counts per MeV
    gain_error: np.ndarray  # NaN where not determined
    determined: np.ndarray  # bool: the data fix the gain to better than max_rel_error
    n_events: int  # events in the final fit
    n_input: int  # events offered
    peak: float  # mean of the +-window sigma core of calibrated sum / target (the +-2 sigma core is 1)
    resolution: float  # sigma of calibrated sum / target (relative energy resolution)
    iterations: int


def shower_gains(
    amp: np.ndarray,
    target_mev: float | np.ndarray,
    prior_gain: np.ndarray,
    prior_rel: float | np.ndarray = 0.15,
    window: float = 3.0,
    iterations: int = 5,
    max_rel_error: float = 0.02,
    min_events: int = 50,
    max_start_offset: float = 0.3,
    fixed: np.ndarray | None = None,
    min_start_ratio: float = 0.2,
) -> ShowerGainResult:
    """Per-cell gains (ADC counts / MeV) from electron showers; see the module docstring.

    ``amp`` (E, C): amplitudes in ADC counts of the C calorimeter cells (ECAL and PRS) per event;
    ``target_mev``: expected deposit in those cells (scalar or (E,)), i.e. beam energy x containment;
    ``prior_gain`` (C,): starting gains (nominal or the previous constants). If the electron peak with
    the starting gains is more than ``max_start_offset`` (relative) away from the target, the beam energy,
    containment or starting gains are wrong and ValueError is raised instead of fitting it away.
    Events whose sum with the starting gains is below ``min_start_ratio`` x target (muons) are left out.
    ``fixed`` (C,) bool: cells held at their starting gain (determined otherwise, e.g. PRS cells from
    their MIP peak); ``prior_rel`` may be per cell (C,), the fixed cells' relative uncertainty, which is
    propagated into the errors of the fitted cells.
    """
    a = np.asarray(amp, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"amp must be (events, cells), got shape {a.shape}")
    n_ev, n_cells = a.shape
    g0 = np.asarray(prior_gain, dtype=np.float64)
    k0 = 1.0 / g0
    if k0.shape != (n_cells,) or not np.all(np.isfinite(k0) & (k0 > 0)):
        raise ValueError(f"prior_gain must be {n_cells} positive numbers")
    t = np.broadcast_to(np.asarray(target_mev, dtype=np.float64), (n_ev,))
    if not np.all(t > 0):
        raise ValueError("target_mev must be > 0")
    ok = np.all(np.isfinite(a), axis=1)
    rel0 = np.broadcast_to(np.asarray(prior_rel, dtype=np.float64), (n_cells,))
    if not np.all(rel0 > 0):
        raise ValueError("prior_rel must be > 0")
    prior_w = 1.0 / (rel0 * k0) ** 2
    held = np.zeros(n_cells, bool) if fixed is None else np.asarray(fixed, dtype=bool)
    if held.shape != (n_cells,):
        raise ValueError(f"fixed must be {n_cells} booleans")
    # pass 1: every cell free (with the prior) -> which cells the data determine;
    # pass 2: only those free, the others fixed at their starting gain, so the sum stays consistent
    # muons and other MIP-like particles (~1% of the beam energy; up to half of a mixed calibration beam)
    # would pull the first Gaussian-core estimate off the electron peak: they never enter the fit
    with np.errstate(invalid="ignore"):
        ok &= (np.where(ok[:, None], a, 0.0) @ k0) / t >= min_start_ratio
    start = gaussian_core((a[ok] @ k0) / t[ok], k=window)
    if start.ok and abs(start.position - 1.0) > max_start_offset:
        raise ValueError(
            f"with the starting gains the electron peak is at {start.position:.2f} x the expected energy "
            f"(more than {max_start_offset:.0%} off): check the beam energy, containment and starting gains"
        )
    free = ~held
    k, cov, n_used, peak, it = _iterate(a, t, ok, k0, prior_w, free, window, iterations, min_events)
    rel = np.sqrt(np.maximum(np.diag(cov), 0.0)) / k
    determined = free & (rel < max_rel_error)
    if not np.array_equal(determined, free):
        k, cov, n_used, peak, it2 = _iterate(
            a, t, ok, k0, prior_w, determined, window, iterations, min_events
        )
        it += it2
        rel = np.sqrt(np.maximum(np.diag(cov), 0.0)) / k
    # absolute scale: least squares with fluctuations in the amplitudes puts the sum low by ~resolution^2;
    # scale the determined cells so the peak (Gaussian core, +-2 sigma) of sum/target is exactly 1
    if determined.any():
        for _ in range(10):
            core = gaussian_core((a[ok] @ k) / t[ok], k=2.0)
            if not core.ok or abs(core.position - 1.0) < 1e-6:
                break
            k = np.where(determined, k / core.position, k)
        peak = gaussian_core((a[ok] @ k) / t[ok], k=window)
    gain = np.where(determined, 1.0 / k, g0)
    gain_error = np.where(determined, rel * gain, math.nan)
    return ShowerGainResult(
        gain=gain,
        gain_error=gain_error,
        determined=determined,
        n_events=n_used,
        n_input=n_ev,
        peak=peak.position,
        resolution=peak.sigma,
        iterations=it,
    )


def _iterate(
    a: np.ndarray,
    t: np.ndarray,
    ok: np.ndarray,
    k0: np.ndarray,
    prior_w: np.ndarray,
    free: np.ndarray,
    window: float,
    iterations: int,
    min_events: int,
) -> tuple[np.ndarray, np.ndarray, int, Peak, int]:
    """Alternate event selection (Gaussian core of sum/target) and the least-squares solve for the ``free``
    cells (the others stay at k0). Returns k, its covariance (zero for fixed cells), events used, the
    final peak of sum/target and the number of iterations."""
    n_cells = k0.size
    k = k0.copy()
    cov = np.zeros((n_cells, n_cells))
    fi = np.flatnonzero(free)
    n_used = 0
    peak = gaussian_core((a[ok] @ k) / t[ok], k=window)
    it = 0
    for it in range(1, iterations + 1):  # noqa: B007 (it is returned)
        if not peak.ok or peak.n < min_events or not peak.sigma > 0:
            raise ValueError(
                f"only {peak.n} electron-like events near the expected peak (need {min_events}); "
                "check the beam energy, containment and starting gains"
            )
        ratio = (a @ k) / t
        sel = ok & (np.abs(ratio - peak.position) < window * peak.sigma)
        n_used = int(sel.sum())
        if n_used < min_events:
            raise ValueError(f"only {n_used} events in the fit window (need {min_events})")
        aa = a[sel][:, fi]
        # the fixed cells' energy is known: subtract it from the target
        tt = t[sel] - a[sel][:, ~free] @ k0[~free]
        # residual variance per event: sigma of the calibrated sum, in MeV (relative width x target)
        w = 1.0 / (peak.sigma * t[sel]) ** 2
        normal = (aa * w[:, None]).T @ aa + np.diag(prior_w[fi])
        rhs = (aa * w[:, None]).T @ tt + prior_w[fi] * k0[fi]
        try:
            k_free = np.linalg.solve(normal, rhs)
            cov_free = np.linalg.inv(normal)
        except np.linalg.LinAlgError as e:
            raise ValueError(f"singular normal equations: {e}") from None
        k_new = k0.copy()
        k_new[fi] = np.where(k_free > 0, k_free, k0[fi])  # an unphysical solution keeps its prior
        if fi.size < n_cells:
            # the fixed cells are only known to prior_rel: propagate that into the free cells' errors
            fixed = np.flatnonzero(~free)
            jac = -cov_free @ ((aa * w[:, None]).T @ a[sel][:, fixed])
            cov_free = cov_free + (jac / prior_w[fixed]) @ jac.T
        cov = np.zeros((n_cells, n_cells))
        cov[np.ix_(fi, fi)] = cov_free
        change = float(np.max(np.abs(k_new / k - 1.0)))
        k = k_new
        peak = gaussian_core((a[ok] @ k) / t[ok], k=window)
        if change < 1e-5:
            break
    return k, cov, n_used, peak, it


def fixed_time_amplitudes(
    waveforms: np.ndarray,
    reference_ns: np.ndarray,
    shape: np.ndarray,
    template: Callable[[np.ndarray, int], np.ndarray],
    fwhm_ns: Mapping[int, float],
    n_pedestal: int = 6,
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS,
    offset_ns: np.ndarray | None = None,
) -> np.ndarray:
    """Pulse heights (E, C) in ADC counts fitted with the peak time fixed, unbiased by noise.

    For each cell the least-squares fit of its unit-height pulse ``template(dt_ns, shape_class)`` (class
    ``shape`` (C,), e.g. ``daq.waveform.template``) with its peak fixed at the event's time
    ``reference_ns`` (E,; ns from the window start, e.g. the shower's peak time), over the samples within
    ``fwhm_ns[class]`` of it (plus the cell's ``offset_ns`` (C,): its peak-time delay relative to the
    reference, see :func:`relative_delays`), after subtracting the event's own even/odd pedestal (mean of the first
    ``n_pedestal`` samples, as the DAQ). The fit is linear in the samples, so noise averages to zero,
    whereas the maximum sample of a noise-only cell reads ~+2 sigma. Used for the cells under the DAQ's
    zero suppression (they hold ~1% of a shower's energy: see :func:`complete_amplitudes`) and for small
    MIP pulses (PRS).
    """
    w = np.asarray(waveforms, dtype=np.float32)
    if w.ndim != 3:
        raise ValueError(f"waveforms must be (events, cells, samples), got {w.shape}")
    n_ev, n_ch, n_s = w.shape
    n_ped = max(2, n_pedestal - n_pedestal % 2)
    ped = np.empty((n_ev, n_ch, 2), np.float32)
    ped[..., 0] = w[:, :, 0:n_ped:2].mean(axis=2)
    ped[..., 1] = w[:, :, 1:n_ped:2].mean(axis=2)
    y = w - np.tile(ped, (1, 1, (n_s + 1) // 2))[:, :, :n_s]
    t = np.arange(n_s) * sample_period_ns
    off = np.zeros(n_ch) if offset_ns is None else np.asarray(offset_ns, dtype=np.float64)
    # (E, C, S): time of each sample relative to the cell's expected peak
    dt = t[None, None, :] - np.asarray(reference_ns, dtype=np.float64)[:, None, None] - off[None, :, None]
    out = np.zeros((n_ev, n_ch))
    cls = np.asarray(shape)
    for c in np.unique(cls):
        cols = np.flatnonzero(cls == c)
        d = dt[:, cols, :]
        tmpl = template(d, int(c)) * (np.abs(d) <= fwhm_ns[int(c)])
        norm = np.einsum("ecs,ecs->ec", tmpl, tmpl)
        fit = np.einsum("ecs,ecs->ec", y[:, cols, :], tmpl.astype(np.float32))
        out[:, cols] = fit / np.where(norm > 0, norm, 1.0)
    return out


def relative_delays(
    peak_time: np.ndarray,
    amplitude: np.ndarray,
    reference_ns: np.ndarray,
    min_amplitude: float | np.ndarray,
    min_pulses: int = 10,
) -> np.ndarray:
    """Per cell (C,): median of (its peak time - the event's reference time) over its pulses above
    ``min_amplitude`` (0 with fewer than ``min_pulses``): where a small pulse of the cell sits relative to
    the shower time (cable and shape delays), for :func:`fixed_time_amplitudes`."""
    t = np.asarray(peak_time, dtype=np.float64) - np.asarray(reference_ns, dtype=np.float64)[:, None]
    big = np.asarray(amplitude) > np.broadcast_to(np.asarray(min_amplitude, dtype=np.float64), t.shape[1:])
    out = np.zeros(t.shape[1])
    n = big.sum(axis=0)
    for c in np.flatnonzero(n >= min_pulses):
        out[c] = float(np.median(t[big[:, c], c]))
    return out


def complete_amplitudes(amplitude: np.ndarray, fixed_time: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """The DAQ's amplitudes (E, C) where they pass its zero suppression (> ``threshold`` (C,)), the
    fixed-time fit elsewhere: every cell's share of a shower, none lost and no noise bias, so the fitted
    gains are pulse height per MeV (the detector's own gains) rather than "zero-suppressed sum per MeV"."""
    a = np.asarray(amplitude, dtype=np.float64)
    return np.where(a > np.asarray(threshold, dtype=np.float64)[None, :], a, fixed_time)


@dataclass(frozen=True, eq=False)
class CellPeaks:
    """Per-cell check of :func:`cell_peaks` (arrays over the cells given)."""

    peak: np.ndarray  # peak of calibrated sum / target for events centred on the cell (NaN if too few)
    error: np.ndarray
    n_events: np.ndarray


def cell_peaks(
    amp: np.ndarray,
    gain: np.ndarray,
    target_mev: float | np.ndarray,
    centre_cells: np.ndarray,
    min_events: int = 30,
) -> CellPeaks:
    """Peak of (calibrated sum / target) for the events whose most energetic cell is each centre cell.

    ``amp`` (E, C) and ``gain`` (C,) as in :func:`shower_gains`; ``centre_cells``: indices (into C) of the
    cells that can be a shower centre (the ECAL cells; PRS cells only share). Cells that are the centre
    of fewer than ``min_events`` events get NaN.
    """
    a = np.asarray(amp, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    t = np.broadcast_to(np.asarray(target_mev, dtype=np.float64), (a.shape[0],))
    centres = np.asarray(centre_cells, dtype=np.intp)
    energy = a / g
    ratio = energy.sum(axis=1) / t
    which = centres[np.argmax(energy[:, centres], axis=1)] if a.shape[0] else np.zeros(0, np.intp)
    n_cells = a.shape[1]
    peak = np.full(n_cells, math.nan)
    err = np.full(n_cells, math.nan)
    n = np.bincount(which, minlength=n_cells)
    for c in np.flatnonzero(n >= min_events):
        p = gaussian_core(ratio[which == c], k=2.5)
        peak[c], err[c] = p.position, p.error
    return CellPeaks(peak=peak, error=err, n_events=n)
