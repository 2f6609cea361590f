"""Compiled (numba) inner loops of the simulator: readout-window digitisation and primitive digitisation.

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
:func:`simulator.electronics.digitise_primitives_numpy`).

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


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now rather than in the first slice or request."""
    work = np.zeros((2, 6), np.float32)
    digitise_noisy(
        work[:, :4], np.zeros((2, 8), np.float32), 1, np.ones(2, np.float32), np.empty((2, 4), np.uint16)
    )
    digitise_noisy(work, np.zeros((2, 8), np.float32), 1, np.ones(2, np.float32), np.empty((2, 6), np.uint16))
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
