"""Compiled (numba) inner loops of the simulator: readout windows, primitives, bulk particles, arrivals.

**Waveforms.**

:func:`simulator.electronics.waveforms_numpy` builds a request's windows (K x 110 x 32 samples) in
~6 full-array numpy passes (noise x rms, + pedestal, a nonzero scan of the pulse heights, a gather of
pulse rows, an unbuffered ``np.add.at`` of the pile-up, clip, cast), ~3.5 ns per sample. This kernel
does the same arithmetic in one loop per window: noise x rms + pedestal, the tabulated pulse of every
(particle, channel) with a deposit above ``MIN_PULSE`` at its own time, the clip to [0, ADC max] and
the truncation to uint16. It is float32 in the same order as the numpy code (pulses added in the same
order), so the samples are bit for bit those of the reference (tested).

**Primitives.** :func:`digitise_noisy` adds a chunk of the per-channel noise pool, clips to the ADC
range above pedestal and truncates to uint16 in one pass instead of three numpy passes over the
(29, N) heights (the same float32 operations: bit for bit
:func:`simulator.electronics.digitise_primitives_numpy`). :func:`primitives_fused` goes further for
a batch from the spot pool: each row from its factors (counters x gain, pool share x energy x gain
ratio, hadrons and muons from their templates) to uint16 without a float heights buffer, bit for bit
the reference path ``FrontEnd._primitives_reference``.

**Particles.** :func:`bulk_electrons` (energies and counter deposits of the bulk electrons) and
:func:`arrival_chunk` (running sum of the arrival gaps, scaled to ns) replace ~10 and ~4 numpy passes
by one, with the same float32/int64 results.

Imported lazily (inside the functions that use it), so processes that never simulate a front-end do
not pay numba's import; :func:`warm_up` compiles (or loads from numba's cache) before a run.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _windows(
    out: np.ndarray,  # (W, C, S) uint16
    noise: np.ndarray,  # (W * C * S,) float32 standard normal
    rms: np.ndarray,  # (C,) float32
    base: np.ndarray,  # (C, S) float32 pedestals (+0.5 rounding offset)
    phase: np.ndarray,  # (W,) float64: ns after sample 0 where a pulse at the trigger time peaks
    p_win: np.ndarray,  # (P,) intp window of each pulse
    p_dt: np.ndarray,  # (P,) float64 ns after the trigger time
    p_h: np.ndarray,  # (P, C) float32 heights (ADC counts)
    t_off: np.ndarray,  # (C,) float64 channel time offsets (ns)
    table: np.ndarray,  # (n_classes * n_pos, S) float32 unit pulses, row = class * n_pos + position
    row_offset: np.ndarray,  # (C,) intp first table row of each channel's class
    p_min: float,
    res: float,
    n_pos: int,
    min_pulse: np.float32,
    adc_max: np.float32,
    order: np.ndarray,  # (P,) intp pulses sorted (stably) by window
    first: np.ndarray,  # (W + 1,) intp: pulses order[first[w]:first[w + 1]] belong to window w
) -> None:
    n_win, n_ch, n_s = out.shape
    buf = np.empty((n_ch, n_s), np.float32)
    shift = p_min - 0.5 * res
    inv = 1.0 / res
    zero = np.float32(0.0)
    for w in range(n_win):
        o = w * n_ch * n_s
        for c in range(n_ch):
            r = rms[c]
            for s in range(n_s):
                buf[c, s] = noise[o + c * n_s + s] * r + base[c, s]
        for q in range(first[w], first[w + 1]):
            j = order[q]
            t0 = phase[w] + p_dt[j]
            for c in range(n_ch):
                h = p_h[j, c]
                if h > min_pulse:
                    x = (t0 + t_off[c] - shift) * inv
                    if x < 0.0:
                        x = 0.0
                    elif x > n_pos - 1:
                        x = n_pos - 1
                    row = int(x) + row_offset[c]
                    for s in range(n_s):
                        buf[c, s] += table[row, s] * h
        for c in range(n_ch):
            for s in range(n_s):
                v = buf[c, s]
                if v < zero:
                    v = zero
                elif v > adc_max:
                    v = adc_max
                out[w, c, s] = np.uint16(v)


def fill_windows(
    out: np.ndarray,
    noise: np.ndarray,
    rms: np.ndarray,
    base: np.ndarray,
    phase: np.ndarray,
    p_win: np.ndarray,
    p_dt: np.ndarray,
    p_h: np.ndarray,
    t_off: np.ndarray,
    table: np.ndarray,
    row_offset: np.ndarray,
    p_min: float,
    res: float,
    n_pos: int,
    min_pulse: float,
    adc_max: float,
) -> None:
    """Write the digitised windows into ``out`` (W, C, S) uint16; see :func:`electronics.waveforms`."""
    n_win = out.shape[0]
    win = np.ascontiguousarray(p_win, dtype=np.intp)
    order = np.argsort(win, kind="stable")
    first = np.searchsorted(win[order], np.arange(n_win + 1)).astype(np.intp)
    _windows(
        out,
        np.ascontiguousarray(noise, dtype=np.float32).reshape(-1),
        np.ascontiguousarray(rms, dtype=np.float32),
        np.ascontiguousarray(base, dtype=np.float32),
        np.ascontiguousarray(phase, dtype=np.float64),
        win,
        np.ascontiguousarray(p_dt, dtype=np.float64),
        np.ascontiguousarray(p_h, dtype=np.float32),
        np.ascontiguousarray(t_off, dtype=np.float64),
        table,
        np.ascontiguousarray(row_offset, dtype=np.intp),
        float(p_min),
        float(res),
        int(n_pos),
        np.float32(min_pulse),
        np.float32(adc_max),
        order.astype(np.intp, copy=False),
        first,
    )


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _digitise(
    heights: np.ndarray,  # flat float32: row r starts at r * h_stride
    h_stride: int,
    n: int,
    pool: np.ndarray,  # (R, M) float32 noise + 0.5
    offset: int,
    max_counts: np.ndarray,  # (R,) float32
    out: np.ndarray,  # flat uint16: row r starts at r * o_stride
    o_stride: int,
) -> None:
    zero = np.float32(0.0)
    for r in range(pool.shape[0]):
        top = max_counts[r]
        h = heights[r * h_stride : r * h_stride + n]  # 1-d unit-stride slices: the loop vectorizes
        p = pool[r, offset : offset + n]
        o = out[r * o_stride : r * o_stride + n]
        for i in range(n):
            v = h[i] + p[i]
            v = max(v, zero)
            v = min(v, top)
            o[i] = np.uint16(v)


def _flat(a: np.ndarray) -> tuple[np.ndarray, int]:
    """A 2-d array with contiguous rows as a contiguous 1-d view of its buffer and its row stride (in
    elements): numba then compiles the inner loop for unit stride (SIMD)."""
    rows, n = a.shape
    item = a.itemsize
    if a.strides[1] != item or a.strides[0] % item:
        raise ValueError("rows must be contiguous")
    stride = a.strides[0] // item if rows > 1 else n
    flat = np.lib.stride_tricks.as_strided(a, shape=((rows - 1) * stride + n,), strides=(item,))
    return flat, stride


def digitise_noisy(
    heights: np.ndarray, pool: np.ndarray, offset: int, max_counts: np.ndarray, out: np.ndarray
) -> None:
    """``out`` = uint16(clip(heights + pool[:, offset : offset + N], 0, max_counts)), all (R, N) with
    contiguous rows (row strides may exceed N); ``pool`` C-contiguous (R, M >= offset + N)."""
    rows, n = heights.shape
    if rows == 0 or n == 0:
        return
    if out.shape != heights.shape or pool.shape[0] != rows or offset + n > pool.shape[1]:
        raise ValueError("digitise_noisy: shape mismatch")
    h, hs = _flat(heights)
    o, os_ = _flat(out)
    _digitise(
        h,
        hs,
        n,
        np.ascontiguousarray(pool),
        int(offset),
        np.ascontiguousarray(max_counts, np.float32),
        o,
        os_,
    )


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _fused(
    counters: np.ndarray,  # flat float32 (5 rows): row r starts at r * c_stride, particle 0 at c0
    c_stride: int,
    c0: int,
    c_scale: np.ndarray,  # (5,) float32 counts per MeV
    ecal: np.ndarray,  # flat float32 pool shares (12 rows), row stride s_stride, particle 0 at so
    prs: np.ndarray,  # the same for the PRS
    s_stride: int,
    so: int,
    e_ecal: np.ndarray,  # (n,) float32 GeV
    e_prs: np.ndarray,
    ratio: np.ndarray,  # (R,) float32 gain ratio of the block rows (ones: unchanged gains)
    sat: np.ndarray,  # (R,) float32 PMT saturation (inf: none)
    pool: np.ndarray,  # (R, M) float32 noise + 0.5
    offset: int,
    max_counts: np.ndarray,  # (R,) float32
    out: np.ndarray,  # flat uint16: row r starts at r * o_stride
    o_stride: int,
    n: int,
    cols: np.ndarray,  # (S,) intp columns of the hadrons and muons (their block rows are redone)
    e_row: np.ndarray,  # (S,) intp ECAL template profile of each
    p_row: np.ndarray,  # (S,) intp PRS template profile of each
    bins: np.ndarray,  # (S,) intp template bin of each
    ecal_t: np.ndarray,  # (profiles, bins, 12) float32 scaled templates, particle-major
    prs_t: np.ndarray,
) -> None:
    zero = np.float32(0.0)
    n_c = c_scale.shape[0]
    nb = (pool.shape[0] - n_c) // 2
    for r in range(pool.shape[0]):
        top = max_counts[r]
        cap = sat[r]
        p = pool[r, offset : offset + n]
        o = out[r * o_stride : r * o_stride + n]
        if r < n_c:
            k = c_scale[r]
            src = counters[r * c_stride + c0 : r * c_stride + c0 + n]
            for i in range(n):
                v = src[i] * k
                v = min(v, cap)
                v = v + p[i]
                v = max(v, zero)
                v = min(v, top)
                o[i] = np.uint16(v)
        else:
            g = ratio[r]
            if r < n_c + nb:
                b0 = (r - n_c) * s_stride + so
                src = ecal[b0 : b0 + n]
                e = e_ecal
            else:
                b0 = (r - n_c - nb) * s_stride + so
                src = prs[b0 : b0 + n]
                e = e_prs
            for i in range(n):
                v = src[i] * e[i]
                v = v * g
                v = min(v, cap)
                v = v + p[i]
                v = max(v, zero)
                v = min(v, top)
                o[i] = np.uint16(v)
            # hadrons and muons: their own templates, redone while this row is in the cache
            q = (r - n_c) % nb
            tab = ecal_t if r < n_c + nb else prs_t
            prof = e_row if r < n_c + nb else p_row
            for j in range(cols.shape[0]):
                i = cols[j]
                v = tab[prof[j], bins[j], q] * e[i]
                v = v * g
                v = min(v, cap)
                v = v + p[i]
                v = max(v, zero)
                v = min(v, top)
                o[i] = np.uint16(v)


def primitives_fused(
    counters: np.ndarray,
    c0: int,
    c_scale: np.ndarray,
    ecal: np.ndarray,
    prs: np.ndarray,
    so: int,
    e_ecal: np.ndarray,
    e_prs: np.ndarray,
    ratio: np.ndarray,
    sat: np.ndarray,
    pool: np.ndarray,
    offset: int,
    max_counts: np.ndarray,
    out: np.ndarray,
    special: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Primitives of a pooled batch straight from their factors, without a float heights buffer:
    ``out`` (R = 5 + 2 x 12, n) = uint16(clip(min(h, sat) + pool[:, offset : offset + n], 0, max_counts))
    with h = ``counters[:, c0 : c0 + n]`` x ``c_scale`` (counter rows) and shares[:, so : so + n] x
    energy x ``ratio`` (ECAL then PRS block rows) -- the float32 operations of
    :meth:`simulator.response.DetectorResponse.primitives` followed by
    :func:`simulator.electronics.digitise_primitives`, in the same order (bit for bit; the ratio is
    ones when the gains are unchanged, ``sat`` inf when nothing saturates: both exact no-ops).

    ``special`` = (columns, ECAL profiles, PRS profiles, bins, ECAL templates, PRS templates
    (profile, bin, 12)): the hadrons and muons, whose block rows are template[profile, bin] x energy
    instead of the pool shares (the same operations otherwise, the same noise values)."""
    rows, n = out.shape
    n_c = c_scale.size
    nb = (rows - n_c) // 2
    if n == 0:
        return
    if (
        counters.shape[0] != n_c
        or c0 + n > counters.shape[1]
        or ecal.shape != prs.shape
        or ecal.shape[0] != nb
        or so + n > ecal.shape[1]
        or e_ecal.shape != (n,)
        or e_prs.shape != (n,)
        or ratio.shape != (rows,)
        or sat.shape != (rows,)
        or pool.shape[0] != rows
        or offset + n > pool.shape[1]
    ):
        raise ValueError("primitives_fused: shape mismatch")
    ip = np.intp
    if special is None or special[0].size == 0:
        none = np.zeros(0, ip)
        tab = np.zeros((1, 1, max(nb, 1)), np.float32)
        cols, e_row, p_row, bins, ecal_t, prs_t = none, none, none, none, tab, tab
    else:
        cols, e_row, p_row, bins, ecal_t, prs_t = special
        s = cols.size
        if (
            ecal_t.shape != prs_t.shape
            or ecal_t.shape[2] != nb
            or not (e_row.shape == p_row.shape == bins.shape == (s,))
            or int(cols.min()) < 0
            or int(cols.max()) >= n
            or int(max(e_row.max(), p_row.max())) >= ecal_t.shape[0]
            or int(bins.max()) >= ecal_t.shape[1]
        ):
            raise ValueError("primitives_fused: special particles out of range")
    c, cs = _flat(np.asarray(counters, np.float32))
    e, es = _flat(np.asarray(ecal, np.float32))
    p, ps = _flat(np.asarray(prs, np.float32))
    if es != ps:
        raise ValueError("primitives_fused: ECAL and PRS shares need the same row stride")
    o, os_ = _flat(out)
    _fused(
        c,
        cs,
        int(c0),
        np.ascontiguousarray(c_scale, np.float32),
        e,
        p,
        es,
        int(so),
        np.ascontiguousarray(e_ecal, np.float32),
        np.ascontiguousarray(e_prs, np.float32),
        np.ascontiguousarray(ratio, np.float32),
        np.ascontiguousarray(sat, np.float32),
        np.ascontiguousarray(pool),
        int(offset),
        np.ascontiguousarray(max_counts, np.float32),
        o,
        os_,
        n,
        np.ascontiguousarray(cols, ip),
        np.ascontiguousarray(e_row, ip),
        np.ascontiguousarray(p_row, ip),
        np.ascontiguousarray(bins, ip),
        np.ascontiguousarray(ecal_t, np.float32),
        np.ascontiguousarray(prs_t, np.float32),
    )


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _bulk(
    eb: np.ndarray,  # (n,) float32 beam energies (pool view)
    sh: np.ndarray,  # (n,) float32 shower factors
    pr: np.ndarray,  # (n,) float32 PRS shares
    clamp: bool,
    s_mask: np.ndarray,  # (n,) float32
    v_mask: np.ndarray,
    unit: np.ndarray,  # (5 * n,) float32 counter units, counter-major
    e_beam: np.ndarray,  # outputs (n,) float32
    e_prs: np.ndarray,
    e_ecal: np.ndarray,
    counters: np.ndarray,  # (5 * n,) float32, counter-major
) -> None:
    n = eb.shape[0]
    zero = np.float32(0.0)
    for i in range(n):
        b = eb[i]
        t = sh[i] * b
        p = pr[i] * t
        if clamp:
            t = max(t, zero)
            p = max(p, zero)
        e_beam[i] = b
        e_prs[i] = p
        e_ecal[i] = t - p
    for r in range(3):
        u = unit[r * n : (r + 1) * n]
        c = counters[r * n : (r + 1) * n]
        for i in range(n):
            c[i] = u[i] * s_mask[i]
    for r in range(3, 5):
        u = unit[r * n : (r + 1) * n]
        c = counters[r * n : (r + 1) * n]
        for i in range(n):
            c[i] = u[i] * v_mask[i]


def bulk_electrons(
    eb: np.ndarray,
    sh: np.ndarray,
    pr: np.ndarray,
    clamp: bool,
    s_mask: np.ndarray,
    v_mask: np.ndarray,
    unit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(e_beam, e_prs, e_ecal, counters (5, n)) of bulk electrons from their pooled factors in one pass:
    e_tot = shower x e_beam, e_prs = share x e_tot (both clamped at 0 if ``clamp``), e_ecal = e_tot -
    e_prs, counters = unit x mask (S0 S2 S3: ``s_mask``, V1 V2: ``v_mask``) -- the float32 operations of
    :meth:`simulator.beam.BulkBeam.electrons`' numpy path in the same order (bit for bit)."""
    n = eb.shape[0]
    if (
        sh.shape != (n,)
        or pr.shape != (n,)
        or s_mask.shape != (n,)
        or v_mask.shape != (n,)
        or unit.size != 5 * n
    ):
        raise ValueError("bulk_electrons: shape mismatch")
    f32 = np.float32
    e_beam, e_prs, e_ecal = np.empty(n, f32), np.empty(n, f32), np.empty(n, f32)
    counters = np.empty((5, n), f32)
    _bulk(
        np.ascontiguousarray(eb, f32),
        np.ascontiguousarray(sh, f32),
        np.ascontiguousarray(pr, f32),
        bool(clamp),
        np.ascontiguousarray(s_mask, f32),
        np.ascontiguousarray(v_mask, f32),
        np.ascontiguousarray(unit, f32).reshape(-1),
        e_beam,
        e_prs,
        e_ecal,
        counters.reshape(-1),
    )
    return e_beam, e_prs, e_ecal, counters


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _arrivals(
    gaps: np.ndarray, last: int, end: float, k: int, t0: int, out: np.ndarray
) -> tuple[int, int, bool]:
    s = last
    for i in range(gaps.shape[0]):
        s += gaps[i]
        if s >= end:
            return i, s, True
        out[i] = ((s * k) >> 24) + t0
    return gaps.shape[0], s, False


def arrival_chunk(gaps: np.ndarray, last: int, end: float, k: int, t0: int) -> tuple[np.ndarray, int, bool]:
    """One chunk of :func:`simulator.beam.arrival_times` in one pass: the running sum of the int32
    ``gaps`` after ``last`` up to (not including) the first value >= ``end``, each scaled to ns as
    ((sum x k) >> 24) + t0 (int64, as the numpy code). Returns (times, running sum, reached end)."""
    out = np.empty(gaps.shape[0], np.int64)
    n, s, done = _arrivals(np.ascontiguousarray(gaps, np.int32), int(last), float(end), int(k), int(t0), out)
    return out[:n], int(s), bool(done)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now rather than in the first slice or request."""
    work = np.zeros((2, 6), np.float32)
    digitise_noisy(
        work[:, :4], np.zeros((2, 8), np.float32), 1, np.ones(2, np.float32), np.empty((2, 4), np.uint16)
    )
    digitise_noisy(work, np.zeros((2, 8), np.float32), 1, np.ones(2, np.float32), np.empty((2, 6), np.uint16))
    one = np.ones(3, np.float32)
    i1 = np.zeros(1, np.intp)
    arrival_chunk(np.ones(4, np.int32), 0, 2.5, 3, 1)
    for clamp in (False, True):
        bulk_electrons(one, one, one, clamp, one, one, np.ones(15, np.float32))
    primitives_fused(
        np.ones((1, 6), np.float32),
        1,
        one[:1],
        np.ones((1, 8), np.float32),
        np.ones((1, 8), np.float32),
        2,
        np.ones(4, np.float32),
        np.ones(4, np.float32),
        one,
        np.full(3, np.inf, np.float32),
        np.zeros((3, 8), np.float32),
        1,
        np.full(3, 4095, np.float32),
        np.empty((3, 4), np.uint16),
        (i1, i1, i1, i1, np.ones((2, 3, 1), np.float32), np.ones((2, 3, 1), np.float32)),
    )
    c, s = 2, 4
    fill_windows(
        np.empty((1, c, s), np.uint16),
        np.zeros(c * s, np.float32),
        np.ones(c, np.float32),
        np.zeros((c, s), np.float32),
        np.zeros(1),
        np.zeros(1, np.intp),
        np.zeros(1),
        np.ones((1, c), np.float32),
        np.zeros(c),
        np.zeros((4, s), np.float32),
        np.zeros(c, np.intp),
        0.0,
        1.0,
        4,
        0.25,
        4095.0,
    )
