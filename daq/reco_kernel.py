"""The per-sample part of the waveform reconstruction as one compiled pass over each channel's window.

:func:`daq.waveform.reconstruct` needs, per channel window (a row of 32 samples): the even/odd
pedestals, the position and height of the largest pedestal-subtracted sample, its two neighbours (for
the parabola) and whether another local maximum stands far from it (pile-up). Each of these is a
reduction along a 32-sample row, which numpy does one short row at a time (~30-40 ns per row and
operation, 5-10 such operations); a compiled loop does all of them in one pass over the row. It is
what makes the reconstruction ~5x faster, measured by ``benchmarks/bench_reco.py``. That is why numba is
a dependency (see the README); everything per event or per channel around it stays numpy.

The arithmetic is float32 and in the same order as the numpy formulation it replaced, so results are
bit for bit those of :func:`window_features_numpy` (the reference, tested against this).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _features(
    w: np.ndarray,  # (R, S) uint16
    n_ped: int,
    limit: np.ndarray,  # (R,) float32: pile-up candidates must exceed max(frac x top, limit)
    frac: np.float32,
    sep: int,
    p_even: np.ndarray,
    p_odd: np.ndarray,
    imax: np.ndarray,
    top: np.ndarray,
    ym: np.ndarray,
    y0: np.ndarray,
    yp: np.ndarray,
    second: np.ndarray,
) -> None:
    n_rows, n_s = w.shape
    scale = np.float32(2.0 / n_ped)
    v = np.empty(n_s, np.float32)
    for r in range(n_rows):
        pe = np.float32(w[r, 0])
        po = np.float32(w[r, 1])
        for k in range(2, n_ped, 2):
            pe += np.float32(w[r, k])
            po += np.float32(w[r, k + 1])
        pe *= scale
        po *= scale
        p_even[r] = pe
        p_odd[r] = po
        best = np.float32(-np.inf)
        ib = 0
        for s in range(n_s):
            x = np.float32(w[r, s]) - (po if s & 1 else pe)
            v[s] = x
            if x > best:
                best = x
                ib = s
        imax[r] = ib
        top[r] = best
        ic = min(max(ib, 1), n_s - 2)
        ym[r] = v[ic - 1]
        y0[r] = v[ic]
        yp[r] = v[ic + 1]
        low = max(frac * best, limit[r])
        found = False
        # a second maximum must exceed ``low`` >= ``limit``, so a window whose largest sample does not
        # (noise only: most channels of an event) has none
        for s in range(1, n_s - 1 if best > limit[r] else 1):
            x = v[s]
            if x > low and x > v[s - 1] and x >= v[s + 1] and abs(s - ib) >= sep:
                found = True
                break
        second[r] = found


def window_features(
    w: np.ndarray, n_ped: int, limit: np.ndarray, frac: float, sep: int
) -> tuple[np.ndarray, ...]:
    """Per row of ``w`` (R, S) uint16: p_even, p_odd, imax (int64), top, ym, y0, yp (float32), second (bool).

    ``n_ped`` (even) leading samples give the pedestals; samples are pedestal-subtracted by parity;
    ``imax``/``top`` the first largest sample; ``ym, y0, yp`` the samples around ``imax`` clipped to
    1..S-2; ``second``: another local maximum above ``max(frac x top, limit)`` at least ``sep`` samples
    from ``imax``.
    """
    w = np.ascontiguousarray(w, dtype=np.uint16)
    n = w.shape[0]
    out = (
        np.empty(n, np.float32),
        np.empty(n, np.float32),
        np.empty(n, np.int64),
        np.empty(n, np.float32),
        np.empty(n, np.float32),
        np.empty(n, np.float32),
        np.empty(n, np.float32),
        np.empty(n, np.bool_),
    )
    if n:
        lim = np.ascontiguousarray(limit, dtype=np.float32)
        _features(w, n_ped, lim, np.float32(frac), sep, *out)
    return out


def window_features_numpy(
    w: np.ndarray, n_ped: int, limit: np.ndarray, frac: float, sep: int
) -> tuple[np.ndarray, ...]:
    """The same as :func:`window_features` in plain numpy (the reference for the tests)."""
    flat = np.asarray(w).astype(np.float32)
    n, n_s = flat.shape
    p_even = flat[:, 0].copy()
    p_odd = flat[:, 1].copy()
    for k in range(2, n_ped, 2):
        p_even += flat[:, k]
        p_odd += flat[:, k + 1]
    p_even *= np.float32(2.0 / n_ped)
    p_odd *= np.float32(2.0 / n_ped)
    flat[:, 0::2] -= p_even[:, None]
    flat[:, 1::2] -= p_odd[:, None]
    rows = np.arange(n)
    imax = flat.argmax(axis=1) if n else np.zeros(0, np.int64)
    top = flat[rows, imax]
    ic = np.clip(imax, 1, n_s - 2)
    ym, y0, yp = flat[rows, ic - 1], flat[rows, ic], flat[rows, ic + 1]
    core = flat[:, 1:-1]
    local = (core > flat[:, :-2]) & (core >= flat[:, 2:])
    local &= core > np.maximum(np.float32(frac) * top, np.asarray(limit, np.float32))[:, None]
    far = np.abs(np.arange(1, n_s - 1)[None, :] - imax[:, None]) >= sep
    second = (local & far).any(axis=1)
    return p_even, p_odd, imax.astype(np.int64), top, ym, y0, yp, second


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _estimate(
    imax: np.ndarray,
    top: np.ndarray,
    ym: np.ndarray,
    y0: np.ndarray,
    yp: np.ndarray,
    second: np.ndarray,
    n_s: int,
    method: int,  # 0 max sample, 1 parabola vertex, 2 vertex x template correction
    cls_offset: np.ndarray,  # (C,) int64: the channel's row offset in ``table``
    table: np.ndarray,  # flat float32 correction tables, ``width`` entries per class
    step: int,
    period: np.float32,
    thr: np.ndarray,  # (C,) float32
    gev_per_count: np.ndarray,  # (C,) float32
    expected_peak: np.float32,
    peak_window: np.float32,
    amp: np.ndarray,
    t_raw: np.ndarray,
    pileup: np.ndarray,
    energy: np.ndarray,
) -> None:
    n_ch = thr.shape[0]
    zero = np.float32(0.0)
    half = np.float32(0.5)
    for r in range(imax.shape[0]):
        ch = r % n_ch
        ib = imax[r]
        ic = min(max(ib, 1), n_s - 2)
        a, b, c = ym[r], y0[r], yp[r]
        den = a - np.float32(2.0) * b + c
        curved = den < zero
        delta = half * (a - c) / den if curved else zero
        delta = min(max(delta, -half), half) if ib == ic else zero
        t = np.float32(np.float64(ib) + np.float64(delta)) * period
        t_raw[r] = t
        value = top[r]
        if method > 0 and curved and ib == ic:
            vertex = b - np.float32(0.25) * (a - c) * delta
            if method == 2:
                u = (delta + half) * np.float32(step)
                i = np.int64(np.int32(u))  # u >= 0: truncation is the floor
                if i > step - 1:
                    i = np.int64(step - 1)
                frac = np.float64(u) - np.float64(i)
                k = cls_offset[ch] + i
                lo = table[k]
                vertex = np.float32(
                    np.float64(vertex) * (np.float64(lo) + frac * np.float64(table[k + 1] - lo))
                )
            value = vertex
        amp[r] = value
        above = value > thr[ch]
        pileup[r] = above and (second[r] or abs(t - expected_peak) > peak_window)
        energy[r] = value * gev_per_count[ch] if above else zero


def estimate(
    features: tuple[np.ndarray, ...],
    n_s: int,
    method: int,
    cls_offset: np.ndarray,
    table: np.ndarray,
    period_ns: float,
    thr: np.ndarray,
    gev_per_count: np.ndarray,
    expected_peak_ns: float,
    peak_window_ns: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, from :func:`window_features`: amplitude, raw peak time (ns from the window start), pile-up
    flag and energy (GeV, 0 below threshold); the per-channel arrays (C,) repeat over the rows. The
    arithmetic is that of :func:`estimate_numpy` (the reference)."""
    _p_even, _p_odd, imax, top, ym, y0, yp, second = features
    n = imax.shape[0]
    amp = np.empty(n, np.float32)
    t_raw = np.empty(n, np.float32)
    pileup = np.empty(n, np.bool_)
    energy = np.empty(n, np.float32)
    if n:
        _estimate(
            imax,
            top,
            ym,
            y0,
            yp,
            second,
            n_s,
            method,
            np.ascontiguousarray(cls_offset, dtype=np.int64),
            np.ascontiguousarray(table, dtype=np.float32).ravel(),
            int(table.shape[-1] - 2) if table.ndim == 2 else 1,
            np.float32(period_ns),
            np.ascontiguousarray(thr, dtype=np.float32),
            np.ascontiguousarray(gev_per_count, dtype=np.float32),
            np.float32(expected_peak_ns),
            np.float32(peak_window_ns),
            amp,
            t_raw,
            pileup,
            energy,
        )
    return amp, t_raw, pileup, energy


def estimate_numpy(
    features: tuple[np.ndarray, ...],
    n_s: int,
    method: int,
    cls_offset: np.ndarray,
    table: np.ndarray,
    period_ns: float,
    thr: np.ndarray,
    gev_per_count: np.ndarray,
    expected_peak_ns: float,
    peak_window_ns: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same as :func:`estimate` in numpy (the reference for the tests)."""
    _p_even, _p_odd, imax, top, ym, y0, yp, second = features
    n = imax.shape[0]
    n_ch = thr.shape[0]
    reps = n // n_ch if n_ch else 0
    ic = np.minimum(np.maximum(imax, 1), n_s - 2)
    den = ym - 2.0 * y0 + yp
    curved = den < 0
    delta = np.where(curved, 0.5 * (ym - yp) / np.where(curved, den, np.float32(-1)), np.float32(0))
    delta = np.where(imax == ic, np.minimum(np.maximum(delta, -0.5), 0.5), np.float32(0)).astype(np.float32)
    t_raw = (imax + delta).astype(np.float32) * np.float32(period_ns)
    amp = top
    if method > 0:
        inner = curved & (imax == ic)
        vertex = y0 - np.float32(0.25) * (ym - yp) * delta
        if method == 2:
            step = table.shape[-1] - 2
            u = (delta + np.float32(0.5)) * np.float32(step)
            i = np.minimum(u.astype(np.int32), step - 1)
            frac = u - i
            i = i + np.tile(np.asarray(cls_offset, np.int64), reps)
            flat_table = np.asarray(table, np.float32).ravel()
            lo = flat_table[i]
            vertex *= lo + frac * (flat_table[i + 1] - lo)
        amp = np.where(inner, vertex, top)
    thr_rows = np.tile(np.asarray(thr, np.float32), reps)
    above = amp > thr_rows
    out_of_time = np.abs(t_raw - np.float32(expected_peak_ns)) > np.float32(peak_window_ns)
    pileup = above & (second | out_of_time)
    energy = np.where(above, amp * np.tile(np.asarray(gev_per_count, np.float32), reps), np.float32(0))
    return amp.astype(np.float32), t_raw, pileup, energy.astype(np.float32)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now rather than on the first event."""
    f = window_features(np.zeros((1, 8), np.uint16), 2, np.zeros(1, np.float32), 0.3, 4)
    one = np.ones(1, np.float32)
    estimate(f, 8, 2, np.zeros(1, np.int64), np.ones((1, 4), np.float32), 12.5, one, one, 100.0, 50.0)
