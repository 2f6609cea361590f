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
        for s in range(1, n_s - 1):
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


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now rather than on the first event."""
    window_features(np.zeros((1, 8), np.uint16), 2, np.zeros(1, np.float32), 0.3, 4)
