"""The per-particle part of the trigger (uniform gains) as one compiled pass over the primitive rows.

With equal gains in each block, :meth:`daq.trigger.Trigger._conditions` needs per particle: five counter
comparisons, two integer block sums compared with integer thresholds, and the AND of it all; then
:meth:`~daq.trigger.Trigger.evaluate` wants the positions of the PHYSICS particles and of the prescaled
S_TRIG ordinals. In numpy each of these is a separate pass over the (C, N) uint16 amplitudes or an (N,)
temporary (plus a max() pre-pass to pick a narrow accumulator): ~10 passes. Here one loop over chunks of
particles does all of it while the chunk is in L1; the block sums accumulate in uint32 (exact for any
uint16 amplitudes and any block size up to 65537 rows). Measured by ``benchmarks/bench_trigger.py``.

The reference is the numpy formulation in :mod:`daq.trigger` (``Trigger(..., compiled=False)``); the
tests check that both give identical decisions.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_PRS, S_TRIG
from daq.protocol import NO_PARTICLE

#: particles per inner chunk (the chunk's accumulators stay in L1)
_CHUNK = 2048


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _block_sum(amp: np.ndarray, rows: np.ndarray, s: int, e: int, acc: np.ndarray) -> None:
    """acc[:e - s] = sum of amp[rows, s:e] (uint32), four rows per pass over the accumulator."""
    m = e - s
    acc[:m] = 0
    n_r = rows.size
    g = 0
    while g + 4 <= n_r:
        ra = amp[rows[g], s:e]
        rb = amp[rows[g + 1], s:e]
        rc = amp[rows[g + 2], s:e]
        rd = amp[rows[g + 3], s:e]
        for j in range(m):
            acc[j] += (np.uint32(ra[j]) + np.uint32(rb[j])) + (np.uint32(rc[j]) + np.uint32(rd[j]))
        g += 4
    while g < n_r:
        ra = amp[rows[g], s:e]
        for j in range(m):
            acc[j] += np.uint32(ra[j])
        g += 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _positions(flag: np.ndarray, s: int, out: np.ndarray, k: int) -> int:
    """Append ``s + j`` to ``out`` (from ``out[k]`` on) for each set ``flag[j]`` (uint8, contiguous; 8
    at a time: set flags are rare); the new length."""
    m = flag.size
    nw = m // 8
    words = flag[: nw * 8].view(np.uint64)
    for w in range(nw):
        if words[w]:
            for j in range(8 * w, 8 * w + 8):
                if flag[j]:
                    out[k] = s + j
                    k += 1
    for j in range(8 * nw, m):
        if flag[j]:
            out[k] = s + j
            k += 1
    return k


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _ordinals(
    flag: np.ndarray, s: int, k: int, nxt: int, prescale: int, out: np.ndarray, n_out: int
) -> tuple[int, int]:
    """Append ``s + j`` to ``out`` for the set ``flag[j]`` whose ordinal (``k`` for the first set flag)
    is ``nxt``, ``nxt + prescale``, ...; the new length of ``out`` and the next ordinal (-1: none).
    ``flag``: uint8 0/1, contiguous; counted 8 at a time up to the word holding ``nxt``."""
    m = flag.size
    words = flag[: (m // 8) * 8].view(np.uint64)
    ones = np.uint64(0x0101010101010101)
    j = 0
    while j < m and nxt >= 0:
        if j & 7 == 0 and j + 8 <= m:
            c = int((words[j >> 3] * ones) >> np.uint64(56))  # number of set flags in the word
            if k + c <= nxt:
                k += c
                j += 8
                continue
        if flag[j]:
            if k == nxt:
                out[n_out] = s + j
                n_out += 1
                nxt = nxt + prescale if prescale > 0 else -1
            k += 1
        j += 1
    return n_out, nxt


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _fused(
    amp: np.ndarray,  # (C, N) uint16
    rows: np.ndarray,  # intp: S0 S2 S3 V1 V2, then the ECAL block rows, then the PRS block rows
    par: np.ndarray,  # int64: 5 counter thresholds, n_ecal, n_prs, k_ec, k_prs, first, prescale
) -> tuple[Any, ...]:
    n = amp.shape[1]
    t0, t1, t2, t3, t4 = (
        np.uint16(par[0]),
        np.uint16(par[1]),
        np.uint16(par[2]),
        np.uint16(par[3]),
        np.uint16(par[4]),
    )
    n_e, n_p, first, prescale = par[5], par[6], par[9], par[10]
    k_ec, k_prs = np.uint32(par[7]), np.uint32(par[8])
    erows = rows[5 : 5 + n_e]
    prows = rows[5 + n_e : 5 + n_e + n_p]
    flags = np.empty((4, n), np.uint8)  # S_TRIG, S_PRS, S_EC, PHYSICS (0/1: branch-free arithmetic)
    sums = np.empty((2, n), np.uint16)  # ECAL, PRS block sums (when they fit)
    n_beam_max = 0
    if first >= 0:
        n_beam_max = (n - first + prescale - 1) // prescale if prescale > 0 else 1
    beam_pos = np.empty(max(n_beam_max, 0), np.intp)
    phys_pos = np.empty(n, np.intp)  # only the first few pages are ever touched
    acc_e = np.empty(_CHUNK, np.uint32)
    acc_p = np.empty(_CHUNK, np.uint32)
    n_strig = 0
    n_beam = 0
    n_phys = 0
    top = np.uint32(0)  # OR of all sums: > 65535 iff some sum is
    nxt = first if n_beam_max > 0 else -1  # next prescaled S_TRIG ordinal (-1: none)
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        m = e - s
        # block sums in uint32, one row at a time (contiguous, vectorised loops)
        _block_sum(amp, erows, s, e, acc_e)
        _block_sum(amp, prows, s, e, acc_p)
        a0 = amp[rows[0], s:e]
        a1 = amp[rows[1], s:e]
        a2 = amp[rows[2], s:e]
        a3 = amp[rows[3], s:e]
        a4 = amp[rows[4], s:e]
        o_t = flags[0, s:e]
        o_p = flags[1, s:e]
        o_e = flags[2, s:e]
        o_f = flags[3, s:e]
        w_e = sums[0, s:e]
        w_p = sums[1, s:e]
        for j in range(m):
            o_t[j] = (
                np.uint8(a0[j] > t0)
                & np.uint8(a1[j] > t1)
                & np.uint8(a2[j] > t2)
                & np.uint8(a3[j] <= t3)
                & np.uint8(a4[j] <= t4)
            )
        for j in range(m):
            ve = acc_e[j]
            vp = acc_p[j]
            bp = np.uint8(vp > k_prs)
            be = np.uint8(ve < k_ec)
            o_p[j] = bp
            o_e[j] = be
            o_f[j] = o_t[j] & bp & be
            w_e[j] = np.uint16(ve)
            w_p[j] = np.uint16(vp)
            top |= ve | vp
        c_t = 0
        c_f = 0
        for j in range(m):
            c_t += int(o_t[j])
            c_f += int(o_f[j])
        # the rare ones: positions of PHYSICS particles and of the prescaled S_TRIG ordinals
        if c_f:
            n_phys = _positions(o_f, s, phys_pos, n_phys)
        if 0 <= nxt < n_strig + c_t:
            n_beam, nxt = _ordinals(o_t, s, n_strig, nxt, prescale, beam_pos, n_beam)
        n_strig += c_t
    return flags.view(np.bool_), sums, beam_pos[:n_beam], phys_pos[:n_phys].copy(), n_strig, top > 65535


def fused(
    amp: np.ndarray, rows: np.ndarray, par: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """Conditions of every particle of ``amp`` (C, N) uint16 in one pass (see :func:`params`).

    Returns ``flags`` (4, N) bool: S_TRIG, S_PRS, S_EC, PHYSICS; ``sums`` (2, N) uint16: the ECAL and PRS
    block sums in ADC counts, valid only when ``overflow`` is False (the conditions always use exact
    uint32 sums); ``beam_pos``: the S_TRIG particles whose ordinal in the batch is ``first + m x
    prescale`` (m >= 0), i.e. ``np.flatnonzero(strig)[first::prescale]``; ``phys_pos``: the PHYSICS
    particles; ``n_strig``; ``overflow``: some block sum exceeds 65535.
    """
    return _fused(amp, rows, par)


def params(
    counter_rows: np.ndarray,
    counter_thr: np.ndarray,
    ecal_rows: np.ndarray,
    prs_rows: np.ndarray,
    k_ec: int,
    k_prs: int,
    first: int = -1,
    prescale: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``rows``, ``par`` for :func:`fused`: counters (S0 S2 S3 V1 V2) fire when ``amp > counter_thr``;
    S_EC: ECAL sum < ``k_ec``; S_PRS: PRS sum > ``k_prs``; prescaled S_TRIG ordinals from ``first``
    (< 0: none) every ``prescale`` (0: ``first`` only)."""
    rows = np.concatenate([counter_rows, ecal_rows, prs_rows]).astype(np.intp)
    # block sums of fewer than 65537 rows stay below 2**32 - 1: with the thresholds clipped to
    # 0..2**32 - 1 the uint32 comparisons give the outcome of the exact ones
    if ecal_rows.size + prs_rows.size > 65536:
        raise ValueError("trigger_kernel: blocks of more than 65536 rows")
    par = np.array(
        [*(int(t) for t in counter_thr), ecal_rows.size, prs_rows.size]
        + [min(max(int(k), 0), (1 << 32) - 1) for k in (k_ec, k_prs)]
        + [int(first), int(prescale)],
        dtype=np.int64,
    )
    return rows, par


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now rather than on the first slice."""
    r = np.arange(5, dtype=np.intp)
    flags = fused(np.zeros((5, 1), np.uint16), *params(r, np.zeros(5, np.uint16), r, r, 1, 0, 0, 1))[0]
    pos = np.zeros(1, np.intp)
    readout(np.zeros(1, np.int64), flags, pos, pos, np.zeros(1, np.int64), 0, 1)


# numba freezes these globals into the compiled (and disk-cached) kernel; the bits are a fixed contract,
# and the property test against the numpy reference would catch a kernel compiled with other values
_S_TRIG, _S_PRS, _S_EC, _PHYSICS, _BEAM, _RANDOM = S_TRIG, S_PRS, S_EC, PHYSICS, BEAM, RANDOM
_NO_PARTICLE = NO_PARTICLE


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _readout(
    t_ns: np.ndarray,  # (N,) int64
    flags: np.ndarray,  # (4, N) bool: S_TRIG, S_PRS, S_EC, PHYSICS
    phys_pos: np.ndarray,  # sorted
    beam_pos: np.ndarray,  # sorted
    rand_t: np.ndarray,  # sorted int64
    dead_until: int,
    dead_ns: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int, int]:
    n_p, n_b, n_r = phys_pos.size, beam_pos.size, rand_t.size
    cap = n_p + n_b
    idx = np.empty(cap, np.uint32)
    msk = np.empty(cap, np.uint32)
    tt = np.empty(cap, np.int64)
    full = _S_TRIG | _S_PRS | _S_EC | _PHYSICS
    i = 0
    j = 0
    c = 0
    while i < n_p or j < n_b:  # the particle candidates in index order, BEAM added to PHYSICS ones
        if j >= n_b or (i < n_p and phys_pos[i] < beam_pos[j]):
            p = phys_pos[i]
            m = full
            i += 1
        elif i >= n_p or beam_pos[j] < phys_pos[i]:
            p = beam_pos[j]
            m = _S_TRIG | _BEAM | (_S_PRS if flags[1, p] else 0) | (_S_EC if flags[2, p] else 0)
            j += 1
        else:
            p = phys_pos[i]
            m = full | _BEAM
            i += 1
            j += 1
        idx[c] = p
        msk[c] = m
        tt[c] = t_ns[p]
        c += 1
    for k in range(1, c):
        if tt[k] < tt[k - 1]:  # not in time order: stable sort by time (ties stay in index order)
            order = np.argsort(tt[:c], kind="mergesort")
            idx, msk, tt = idx[order], msk[order], tt[order]
            break
    # merge with the random triggers (after particles at equal times) through the dead time
    o_idx = np.empty(c + n_r, np.uint32)
    o_msk = np.empty(c + n_r, np.uint32)
    o_t = np.empty(c + n_r, np.int64)
    a = 0
    r = 0
    k = 0
    n_phys = 0
    n_beam = 0
    n_rand = 0
    while a < c or r < n_r:
        if r >= n_r or (a < c and tt[a] <= rand_t[r]):
            tq, iq, mq = tt[a], idx[a], msk[a]
            a += 1
        else:
            tq, iq, mq = rand_t[r], np.uint32(_NO_PARTICLE), np.uint32(_RANDOM)
            r += 1
        if tq >= dead_until:
            o_idx[k] = iq
            o_msk[k] = mq
            o_t[k] = tq
            k += 1
            dead_until = tq + dead_ns
            n_phys += (mq & _PHYSICS) != 0
            n_beam += (mq & _BEAM) != 0
            n_rand += (mq & _RANDOM) != 0
    return o_idx[:k], o_t[:k], o_msk[:k], n_phys, n_beam, n_rand, c + n_r, dead_until


def readout(
    t_ns: np.ndarray,
    flags: np.ndarray,
    phys_pos: np.ndarray,
    beam_pos: np.ndarray,
    rand_t: np.ndarray,
    dead_until: int,
    dead_ns: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int, int]:
    """The readout list of a batch: candidates (PHYSICS particles ``phys_pos``, prescaled BEAM particles
    ``beam_pos``, RANDOM times ``rand_t``) in time order (particles by index, random triggers last at
    equal times) through a non-paralysable dead time from ``dead_until``. Returns index (uint32,
    NO_PARTICLE for random), t_ns (int64), trigger mask (uint32) of the accepted ones, the numbers of
    accepted PHYSICS, BEAM and RANDOM triggers, the number of candidates and the new end of the dead
    time (unchanged when nothing is accepted)."""
    return _readout(t_ns, flags, phys_pos, beam_pos, rand_t, dead_until, dead_ns)
