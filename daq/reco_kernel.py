"""The per-sample part of the waveform reconstruction as one compiled pass over each channel's window.

:func:`daq.waveform.reconstruct` needs, per channel window (a row of 32 samples): the even/odd
pedestals, the position and height of the largest pedestal-subtracted sample, its two neighbours (for
the parabola), whether another local maximum stands far from it (pile-up), and from these the amplitude
(parabola vertex x template correction), peak time, pile-up flag and energy. numpy does each reduction
one short row at a time (~30-40 ns per row and operation, 5-10 such operations); :func:`reconstruct_rows`
does all of it in one compiled pass over the rows, writing the final per-channel outputs (no intermediate
per-window arrays). It is what makes the reconstruction ~25x faster than numpy, measured by
``benchmarks/bench_reco.py``. That is why numba is a dependency (see the README).

The pass works on the integer samples where that is exact (pedestal sums; the largest sample of each
parity, since subtracting a float32 pedestal is strictly increasing on integers below 2**16) and otherwise
does the float32 arithmetic of the numpy formulation in the same order, so its results are bit for bit
those of :func:`reconstruct_rows_numpy` = :func:`window_features_numpy` + :func:`estimate_numpy` (the
reference, tested against it).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np


class RowParams(NamedTuple):
    """Settings and per-channel constants of :func:`reconstruct_rows`, in the kernel's dtypes (make them
    with :func:`row_params`)."""

    n_ped: int  # leading samples (even count) that give the pedestals
    frac: np.float32  # pile-up: fraction of the largest sample a second maximum must exceed
    sep: int  # pile-up: samples between the two maxima
    method: int  # amplitude: 0 max sample, 1 parabola vertex, 2 vertex x template correction
    cls_offset: np.ndarray  # (C,) int64: the channel's row offset in ``table``
    table: np.ndarray  # flat float32 correction tables, ``step + 2`` entries per class
    step: int
    period: np.float32  # ns per sample
    thr: np.ndarray  # (C,) float32: zero suppression threshold (ADC counts), also the pile-up floor
    gev_per_count: np.ndarray  # (C,) float32
    dead: np.ndarray  # (C,) bool: energy zero
    t_off: np.ndarray  # (C,) float32 ns, subtracted from the peak time if ``subtract_offset``
    subtract_offset: bool
    expected_peak: np.float32  # ns from the window start
    peak_window: np.float32  # ns


def row_params(
    n_ped: int,
    frac: float,
    sep: int,
    method: int,
    cls_offset: np.ndarray,
    table: np.ndarray,
    period_ns: float,
    thr: np.ndarray,
    gev_per_count: np.ndarray,
    dead: np.ndarray | None = None,
    time_offset_ns: np.ndarray | None = None,
    expected_peak_ns: float = 125.0,
    peak_window_ns: float = 75.0,
) -> RowParams:
    """:class:`RowParams` from arrays of any dtype; ``table`` (n_class, step + 2) or flat with ``step`` 1."""
    n_ch = np.shape(thr)[0]
    tab = np.array(table, dtype=np.float32)  # a writable copy: one compiled signature for every table
    return RowParams(
        int(n_ped),
        np.float32(frac),
        int(sep),
        int(method),
        np.array(cls_offset, dtype=np.int64),
        tab.ravel(),
        int(tab.shape[-1] - 2) if tab.ndim == 2 else 1,
        np.float32(period_ns),
        np.array(thr, dtype=np.float32),
        np.array(gev_per_count, dtype=np.float32),
        np.zeros(n_ch, np.bool_) if dead is None else np.array(dead, dtype=np.bool_),
        np.zeros(n_ch, np.float32) if time_offset_ns is None else np.array(time_offset_ns, dtype=np.float32),
        time_offset_ns is not None,
        np.float32(expected_peak_ns),
        np.float32(peak_window_ns),
    )


_U32 = np.uint32
_I32 = np.int32


@numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _reco(
    w: np.ndarray,  # (R, S') uint16, R = events x channels, S' = n_s rounded up to even
    w32: np.ndarray,  # (R, S'/2) uint32: the same memory, sample 2k in the low and 2k+1 in the high half
    n_s: int,  # samples per window
    n_ped: int,
    frac: np.float32,
    sep: int,
    method: int,  # 0 max sample, 1 parabola vertex, 2 vertex x template correction
    cls_offset: np.ndarray,  # (C,) int64: the channel's row offset in ``table``
    table: np.ndarray,  # flat float32 correction tables, ``step + 2`` entries per class
    step: int,
    period: np.float32,
    thr: np.ndarray,  # (C,) float32: zero suppression threshold and pile-up floor
    gev_per_count: np.ndarray,  # (C,) float32
    dead: np.ndarray,  # (C,) bool: energy zero
    t_off: np.ndarray,  # (C,) float32: subtracted from the peak time
    subtract_offset: bool,
    expected_peak: np.float32,
    peak_window: np.float32,
    p_even: np.ndarray,  # outputs (R,)
    p_odd: np.ndarray,
    amp: np.ndarray,
    t_peak: np.ndarray,
    pileup: np.ndarray,
    energy: np.ndarray,
) -> None:
    # One event (C windows) at a time, in steps: the per-window reductions (2) and the gathers of data-
    # dependent samples (4, 7) are loops per window; everything else is a loop over the event's C windows
    # that LLVM vectorizes (no data-dependent branches: their mispredictions cost more than the arithmetic).
    n_rows = w.shape[0]
    n_h = w32.shape[1]
    n_ch = thr.shape[0]
    n_ph = n_ped // 2
    scale = np.float32(2.0 / n_ped)
    zero = np.float32(0.0)
    half = np.float32(0.5)
    quarter = np.float32(0.25)
    two = np.float32(2.0)
    inf = np.float32(np.inf)
    fstep = np.float32(step)
    stepm1 = _I32(step - 1)
    last = _I32(n_s - 2)
    cls32 = cls_offset.astype(np.int32)
    # 1. per channel: the energy threshold, +inf for dead channels (energy zero without a branch)
    lim_e = np.empty(n_ch, np.float32)
    for j in range(n_ch):
        lim_e[j] = inf if dead[j] else thr[j]
    ke = np.empty(n_ch, np.uint32)
    ko = np.empty(n_ch, np.uint32)
    ib = np.empty(n_ch, np.int32)
    ic = np.empty(n_ch, np.int32)
    best = np.empty(n_ch, np.float32)
    peds = np.empty(2 * n_ch, np.float32)
    a = np.empty(n_ch, np.float32)
    b = np.empty(n_ch, np.float32)
    c = np.empty(n_ch, np.float32)
    pen = np.empty(n_ch, np.float32)
    den = np.empty(n_ch, np.float32)
    delta = np.empty(n_ch, np.float32)
    t = np.empty(n_ch, np.float32)
    vtx = np.empty(n_ch, np.float32)
    fr = np.empty(n_ch, np.float64)
    kk = np.empty(n_ch, np.int32)
    lo = np.empty(n_ch, np.float32)
    dh = np.empty(n_ch, np.float32)
    value = np.empty(n_ch, np.float32)
    scan = np.empty(n_ch, np.bool_)
    sidx = np.empty(n_ch, np.int32)
    # farmask[m, s]: 0 where s may hold a second maximum of a window whose largest sample is m (1 <= s <=
    # n_s - 2, |s - m| >= sep), else -inf
    farmask = np.full((n_s, n_s), -inf, np.float32)
    for row in range(n_s):
        for s in range(1, n_s - 1):
            if abs(s - row) >= sep:
                farmask[row, s] = zero
    for r0 in range(0, n_rows, n_ch):
        pe_out = p_even[r0 : r0 + n_ch]
        po_out = p_odd[r0 : r0 + n_ch]
        # 2. per window: pedestal sums (integers: exact, as the reference's float32 running sums are) and,
        # per parity, the largest sample with its first index as one key (sample << 16 | 0xFFFF - index)
        # whose maximum LLVM vectorizes. Subtracting a float32 pedestal is strictly increasing on integers
        # below 2**16, so a parity's largest sample is its largest pedestal-subtracted one.
        for j in range(n_ch):
            r = r0 + j
            se = _U32(0)
            so = _U32(0)
            for k in range(n_ph):
                x = w32[r, k]
                se += x & _U32(0xFFFF)
                so += x >> _U32(16)
            pe_out[j] = np.float32(_I32(se)) * scale
            po_out[j] = np.float32(_I32(so)) * scale
            me = _U32(0)
            mo = _U32(0)
            for k in range(n_h):
                x = w32[r, k]
                me = max(me, _U32(_U32(x << _U32(16)) | _U32(0xFFFF - 2 * k)))
                mo = max(mo, _U32(_U32(x & _U32(0xFFFF0000)) | _U32(0xFFFE - 2 * k)))
            ke[j] = me
            ko[j] = mo
        # 3. the largest pedestal-subtracted sample: the larger parity's, the first one on a tie
        for j in range(n_ch):
            ie = _I32(0xFFFF) - _I32(ke[j] & _U32(0xFFFF))
            io = _I32(0xFFFF) - _I32(ko[j] & _U32(0xFFFF))
            xe = np.float32(_I32(ke[j] >> _U32(16))) - pe_out[j]
            xo = np.float32(_I32(ko[j] >> _U32(16))) - po_out[j]
            odd = (xo > xe) | ((xo == xe) & (io < ie))
            m = io if odd else ie
            ib[j] = m
            m1 = m if m > 1 else _I32(1)
            ic[j] = m1 if m1 < last else last
            best[j] = max(xe, xo)
        for j in range(n_ch):
            peds[2 * j] = pe_out[j]
            peds[2 * j + 1] = po_out[j]
        # 4. per window: the samples around the largest one (clipped to 1..n_s-2)
        for j in range(n_ch):
            r = r0 + j
            s = ic[j]
            q = 2 * j + (s & 1)
            qn = 2 * j + ((s & 1) ^ 1)
            a[j] = np.float32(w[r, s - 1]) - peds[qn]
            b[j] = np.float32(w[r, s]) - peds[q]
            c[j] = np.float32(w[r, s + 1]) - peds[qn]
            pen[j] = zero if ib[j] == s else inf
        # 5. parabola vertex, peak time, amplitude, energy: the arithmetic of estimate_numpy, in its order
        for j in range(n_ch):
            dn = (a[j] - two * b[j] + c[j]) + pen[j]  # +inf: largest sample at the edge, no parabola
            d = half * (a[j] - c[j]) / dn
            dl = min(max(d, -half), half) if dn < zero else zero
            den[j] = dn
            delta[j] = dl
            vtx[j] = b[j] - quarter * (a[j] - c[j]) * dl
        for j in range(n_ch):
            t[j] = np.float32(np.float64(ib[j]) + np.float64(delta[j])) * period
        if method == 2:
            for j in range(n_ch):
                u = (delta[j] + half) * fstep
                i = min(_I32(u), stepm1)  # u >= 0: truncation is the floor
                fr[j] = np.float64(u) - np.float64(i)
                kk[j] = cls32[j] + i
            for j in range(n_ch):
                x = table[kk[j]]
                lo[j] = x
                dh[j] = table[kk[j] + 1] - x
            for j in range(n_ch):
                vtx[j] = np.float32(np.float64(vtx[j]) * (np.float64(lo[j]) + fr[j] * np.float64(dh[j])))
        if method > 0:
            for j in range(n_ch):
                value[j] = vtx[j] if den[j] < zero else best[j]
        else:
            for j in range(n_ch):
                value[j] = best[j]
        amp_out = amp[r0 : r0 + n_ch]
        e_out = energy[r0 : r0 + n_ch]
        tp_out = t_peak[r0 : r0 + n_ch]
        pu_out = pileup[r0 : r0 + n_ch]
        for j in range(n_ch):
            v = value[j]
            amp_out[j] = v
            e_out[j] = v * gev_per_count[j] if v > lim_e[j] else zero
        if subtract_offset:
            for j in range(n_ch):
                tp_out[j] = t[j] - t_off[j]
        else:
            for j in range(n_ch):
                tp_out[j] = t[j]
        for j in range(n_ch):
            above = value[j] > thr[j]
            late = abs(t[j] - expected_peak) > peak_window
            pu_out[j] = above & late
            scan[j] = above & (not late) & (best[j] > thr[j])
        # 6. the windows whose pile-up flag depends on a second local maximum (an in-time pulse above
        # threshold), listed without branches
        n_sc = 0
        for j in range(n_ch):
            sidx[n_sc] = j
            n_sc += int(scan[j])
        # 7. per such window: a second local maximum above low = max(frac x best, thr) at least sep samples
        # from the largest one; first whether any sample that far is above low at all (rarely)
        for q in range(n_sc):
            j = sidx[q]
            r = r0 + j
            m = ib[j]
            pe = pe_out[j]
            po = po_out[j]
            low = max(frac * best[j], thr[j])
            far = farmask[m]
            hit = False
            for s in range(n_s):
                x = np.float32(w[r, s]) - (po if s & 1 else pe)
                hit |= x + far[s] > low
            if not hit:
                continue
            for s in range(1, n_s - 1):
                if abs(s - m) >= sep:
                    x = np.float32(w[r, s]) - (po if s & 1 else pe)
                    if (
                        x > low
                        and x > np.float32(w[r, s - 1]) - (pe if s & 1 else po)
                        and x >= np.float32(w[r, s + 1]) - (pe if s & 1 else po)
                    ):
                        pu_out[j] = True
                        break


def reconstruct_rows(w: np.ndarray, p: RowParams) -> tuple[np.ndarray, ...]:
    """Windows ``w`` (R, S) uint16, R = events x C channels (channel-major within an event): per row
    p_even, p_odd, amplitude, peak time (ns from the window start minus the time offset), energy (GeV, 0
    below threshold and for dead channels), each (R,) float32 (rows of a (2, R) and a (3, R) array), and
    pile-up (R,) bool."""
    w = np.ascontiguousarray(w, dtype=np.uint16)
    n_rows, n_s = w.shape
    n_ch = p.thr.shape[0]
    if (n_rows % n_ch if n_ch else n_rows) != 0:
        raise ValueError(f"{n_rows} windows are not whole events of {n_ch} channels")
    if n_s < p.n_ped + 3 or p.n_ped < 2 or p.n_ped % 2:
        raise ValueError(f"{n_s} samples do not fit a {p.n_ped}-sample pedestal (even, >= 2) and a peak")
    if n_s & 1:  # whole (even, odd) pairs for the uint32 view; the zero sample is never a maximum
        w = np.concatenate([w, np.zeros((n_rows, 1), np.uint16)], axis=1)
    peds = np.empty((2, n_rows), np.float32)  # apart: the DAQ keeps amplitude, time and energy, not these
    out = np.empty((3, n_rows), np.float32)
    pileup = np.empty(n_rows, np.bool_)
    if n_rows:
        _reco(w, w.view(np.uint32), n_s, *p, peds[0], peds[1], out[0], out[1], pileup, out[2])
    return peds[0], peds[1], out[0], out[1], out[2], pileup


def window_features_numpy(
    w: np.ndarray, n_ped: int, limit: np.ndarray, frac: float, sep: int
) -> tuple[np.ndarray, ...]:
    """Per row of ``w`` (R, S) uint16: p_even, p_odd, imax (int64), top, ym, y0, yp (float32), second (bool): the
    per-window part of :func:`reconstruct_rows` in plain numpy (with :func:`estimate_numpy`, the reference).

    ``n_ped`` (even) leading samples give the pedestals; samples are pedestal-subtracted by parity;
    ``imax``/``top`` the first largest sample; ``ym, y0, yp`` the samples around ``imax`` clipped to
    1..S-2; ``second``: another local maximum above ``max(frac x top, limit)`` at least ``sep`` samples
    from ``imax``."""
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
    """Per row, from :func:`window_features_numpy`: amplitude, raw peak time (ns from the window start), pile-up
    flag and energy (GeV, 0 below threshold); the per-channel arrays (C,) repeat over the rows. The second
    half of the reference of :func:`reconstruct_rows`."""
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


def reconstruct_rows_numpy(w: np.ndarray, p: RowParams) -> tuple[np.ndarray, ...]:
    """The same as :func:`reconstruct_rows` in plain numpy (the reference for the tests)."""
    n_rows, n_s = np.shape(w)
    n_ch = p.thr.shape[0]
    reps = n_rows // n_ch
    f = window_features_numpy(w, p.n_ped, np.tile(p.thr, reps), float(p.frac), p.sep)
    table = p.table.reshape(-1, p.step + 2)
    amp, t_raw, pileup, energy = estimate_numpy(
        f,
        n_s,
        p.method,
        p.cls_offset,
        table,
        float(p.period),
        p.thr,
        p.gev_per_count,
        float(p.expected_peak),
        float(p.peak_window),
    )
    t_peak = t_raw - np.tile(p.t_off, reps) if p.subtract_offset else t_raw
    energy = energy.reshape(reps, n_ch)
    energy[:, p.dead] = 0
    return f[0], f[1], amp, t_peak, energy.ravel(), pileup


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now rather than on the first event: every signature
    used at run time (waveforms writable or read-only; the rest is made by :func:`row_params`)."""
    p = row_params(2, 0.3, 4, 2, np.zeros(1, np.int64), np.ones((1, 4)), 12.5, np.ones(1), np.ones(1))
    w = np.zeros((1, 8), np.uint16)
    reconstruct_rows(w, p)
    w.flags.writeable = False
    reconstruct_rows(w, p)
