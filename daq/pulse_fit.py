"""The multi-pulse fit of readout windows, compiled (numba): pure, arrays in and arrays out.

Every channel window (32 samples) is modelled as

    y_s = P_parity(s) + sum_k A_k T_c(s x period - p_k - delta)       (samples at the ADC ceiling left out)

with two free pedestals (even and odd samples: two interleaved ADCs), one pulse-shape template ``T_c`` per
shape class (unit height, peak at 0), and one pulse k per particle whose pulse reaches the window: the
in-time particle (k = 0) at ``p_0`` = the trigger's phase in the window + the channel's time offset, and
every other particle of the beam (known from the primitive stream: their arrival times relative to the
trigger, ``dt_k``) at ``p_0 + dt_k``. This is the CMS ECAL "multifit" idea (templates at every possible
arrival time, non-negative least squares), with the advantage that the arrival times are known, so only
the real pulses are fitted:

- amplitudes by linear least squares, out-of-time amplitudes constrained >= 0 (active set: the most
  negative is dropped and the fit redone, as in NNLS);
- a particle whose primitive amplitude in this channel is known (the trigger-block cells and the
  counters) gets it as a Gaussian prior on its out-of-time amplitude (width: the channel's noise and
  ``prior_frac`` of the amplitude), which separates pulses too close in time for the samples alone (two
  electrons within a few ns in the same cells); without a prior, a pulse closer than ``merge_ns`` to the
  in-time one cannot be told apart from it and is left out (the in-time amplitude then includes it);
- the channel's time offset within a window is a common shift ``delta`` of all its pulses, fitted by
  Gauss-Newton steps with a Gaussian prior of width ``t_sigma`` around the calibration's offset (tight for
  calibrated constants, a few ns for nominal ones), for windows with enough signal;
- pulses the primitive stream did not announce (a hot channel, a particle outside the stream) are found
  in the residuals: while the chi2 is too large, a pulse is added at the largest residual if that lowers
  the chi2 by more than ``extra_dchi2`` (at most ``extra_max``);
- a quiet window (no sample of either parity more than ``quiet_sigma`` x noise from its parity's minimum)
  skips all this: pedestals and the in-time amplitude only, at the channel's offset (most channels of an
  event), by linear filters computed once per call on a 1/4 ns grid of positions (rounding: < 1e-4).

Outputs per window: the in-time amplitude (ADC counts above pedestal), its peak time (ns from the window
start, minus the channel's calibration offset), chi2 per degree of freedom (with the noise and
``shape_tol`` x the fitted pulse as the sample's error), the number of pulses above the zero-suppression
threshold (in-time included), whether an out-of-time pulse above it was fitted and removed, the energy
(GeV, zero below threshold and for dead channels), and the two fitted pedestals.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numba
import numpy as np

#: pulses fitted per window at most (in-time + announced + unannounced); later announced ones are dropped
MAX_PULSES = 10
_NCOL = 3 + MAX_PULSES  # two pedestals, the pulses, the time-shift derivative


class FitSettings(NamedTuple):
    """Scalar settings of the fit, in the kernel's dtypes (see ``daq.waveform.RecoConfig``)."""

    period: float  # ns per sample
    adc_max: float  # samples at or above this are saturated and left out
    quiet_sigma: float  # a window within this many noise sigma of its minimum (per parity) is quiet
    merge_ns: float  # closer than this to the in-time pulse and without a prior: left out
    prior_frac: float  # relative width of the primitive-amplitude prior
    prim_margin: float  # primitives within this of the ADC range are saturated: no prior
    gn_snr: float  # fit the time shift when the pulses' total exceeds this many noise sigma
    gn_max: int  # Gauss-Newton steps at most
    gn_tol_ns: float  # ... until the shift moves less than this
    gn_off_ns: float  # a time-offset prior narrower than this is trusted: no shift fitted
    track_min: int  # a channel's offset is learned once this many isolated pulses have been fitted
    track_snr: float  # ... of at least this many noise sigma
    noise_min: int  # a channel's noise is learned once this many windows without a pulse have been fitted
    noise_floor: float  # ... and is at least this (ADC counts: the quantisation noise)
    noise_cap: float  # ... and at most this many times the given noise
    max_shift_ns: float  # |delta| at most
    extra_max: int  # unannounced pulses at most
    extra_sigma: float  # ... only at a residual above this many noise sigma
    extra_sep_ns: float  # ... at least this far from every other pulse
    extra_dchi2: float  # ... kept if the chi2 falls by more than this
    chi2_sigma: float  # the chi2 is "too large" beyond ndf + chi2_sigma x sqrt(2 ndf)
    shape_tol: float  # the template's relative accuracy (in the chi2's errors)
    min_overlap: float  # a pulse whose template stays below this inside the window is left out


class Templates(NamedTuple):
    """Unit-height pulse shapes per shape class, pre-sampled at every sub-sample phase:
    ``value[k, i, j]`` = T_k(start[k] + (i / n_phase + j) x period) for i = 0..n_phase, j < length[k]
    (T_k > 1e-5 beyond), ``slope`` the same of dT_k/dt (per ns). A pulse's column is then one row,
    interpolated between two phases, copied to where the pulse starts."""

    value: np.ndarray  # (n_class, n_phase + 1, max length) float64
    slope: np.ndarray
    start: np.ndarray  # (n_class,) float64: ns from the peak where T starts
    length: np.ndarray  # (n_class,) int64: samples a pulse spans
    n_phase: int


def _compiled() -> Any:
    """numba.njit with this module's options: cached on disk, no GIL, no bounds checks, fastmath limited to
    reassociation and contraction (SIMD sums over the 32 samples; no finite-math assumptions). The helpers
    are not force-inlined (numba's inline="always"): that compiled in 90-130 s on a cold cache (the first
    start after an install), without it 23 s, for ~5% more CPU per event."""
    return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc", "contract"})


@_compiled()
def _column(tv, k, start, length, n_phase, p, period, ok, col):
    """col[s] = T_k(s x period - p) at the unsaturated samples, 0 elsewhere; returns the largest value."""
    n_s = col.shape[0]
    for s in range(n_s):
        col[s] = 0.0
    u = (p + start) / period  # where the pulse starts, in samples
    s0 = int(np.ceil(u))
    ph = (s0 - u) * n_phase
    i = min(int(ph), n_phase - 1)
    f = ph - i
    j0 = max(0, -s0)
    j1 = min(length, n_s - s0)
    top = 0.0
    for j in range(j0, j1):
        v = tv[k, i, j] + f * (tv[k, i + 1, j] - tv[k, i, j])
        top = max(top, v)
        col[s0 + j] = v * ok[s0 + j]
    return top


@_compiled()
def _cholesky_solve(A, rhs, n, out):
    """Solve A out = rhs for the dense symmetric positive-definite n x n matrix A (lower triangle used,
    overwritten by its Cholesky factor). Returns -1, or the first column that is (numerically) a
    combination of the earlier ones (out untouched)."""
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= A[j, k] * A[j, k]
        if s <= 1e-9 * A[j, j] or s <= 0.0:
            return j
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, n):
            t = A[i, j]
            for k in range(j):
                t -= A[i, k] * A[j, k]
            A[i, j] = t / d
    for i in range(n):
        t = rhs[i]
        for k in range(i):
            t -= A[i, k] * rhs[k]
        rhs[i] = t / A[i, i]
    for i in range(n - 1, -1, -1):
        t = rhs[i]
        for k in range(i + 1, n):
            t -= A[k, i] * out[k]
        out[i] = t / A[i, i]
    return -1


@_compiled()
def _normal(X, y, even, n_even, n_odd, m, from_col, G, b):
    """Normal equations of columns from_col..m-1 (columns 0, 1 are the even/odd pedestal indicators of the
    unsaturated samples: their products are parity sums); earlier columns are left as they are."""
    n_s = y.shape[0]
    if from_col == 0:
        G[0, 0] = n_even
        G[1, 1] = n_odd
        G[0, 1] = G[1, 0] = 0.0
        be = 0.0
        bt = 0.0
        for s in range(n_s):
            be += even[s] * y[s]
            bt += y[s]
        b[0] = be
        b[1] = bt - be
        from_col = 2
    for i in range(from_col, m):
        bi = 0.0
        ge = 0.0
        gt = 0.0
        for s in range(n_s):
            v = X[i, s]
            bi += v * y[s]
            ge += v * even[s]
            gt += v
        b[i] = bi
        G[0, i] = G[i, 0] = ge
        G[1, i] = G[i, 1] = gt - ge
        for j in range(2, i + 1):
            acc = 0.0
            for s in range(n_s):
                acc += X[i, s] * X[j, s]
            G[i, j] = acc
            G[j, i] = acc


@_compiled()
def _nnls(G, b, pw, pv, npul, m, last_free, extra_w, extra_v, H, g, idx, active, x, A, rhs, sol):
    """Solve the normal equations G, b of m columns: columns 0, 1 are the pedestals (eliminated first,
    Schur complement), then the pulse columns 2.. with priors pw/pv, and extra_w/extra_v on column m - 1
    (if extra_w > 0). The out-of-time pulse columns 3..last_free - 1 are constrained >= 0: the most
    negative is dropped and the rest solved again (as NNLS does); a column degenerate with the others is
    dropped too. Solution into x (0 for dropped columns), ``active`` says which columns are in."""
    n = m - 2
    ie = 1.0 / G[0, 0] if G[0, 0] > 0.0 else 0.0
    io = 1.0 / G[1, 1] if G[1, 1] > 0.0 else 0.0
    for i in range(n):
        gi0 = G[2 + i, 0]
        gi1 = G[2 + i, 1]
        g[i] = b[2 + i] - gi0 * b[0] * ie - gi1 * b[1] * io
        for j in range(i + 1):
            h = G[2 + i, 2 + j] - gi0 * G[0, 2 + j] * ie - gi1 * G[1, 2 + j] * io
            H[i, j] = h
            H[j, i] = h
    for q in range(min(npul, n)):
        if pw[q] > 0.0:
            H[q, q] += pw[q]
            g[q] += pw[q] * pv[q]
    if extra_w > 0.0:
        H[n - 1, n - 1] += extra_w
        g[n - 1] += extra_w * extra_v
    active[0] = G[0, 0] > 0.0
    active[1] = G[1, 1] > 0.0
    for i in range(n):
        active[2 + i] = H[i, i] > 1e-12
    for _ in range(n + 1):
        k = 0
        for i in range(n):
            if active[2 + i]:
                idx[k] = i
                k += 1
        for a in range(k):
            rhs[a] = g[idx[a]]
            for c in range(a + 1):
                A[a, c] = H[idx[a], idx[c]]
        bad = _cholesky_solve(A, rhs, k, sol)
        if bad >= 0:  # a column degenerate with earlier ones (e.g. two pulses at the same time): dropped
            active[2 + idx[bad]] = False
            continue
        for i in range(n):
            x[2 + i] = 0.0
        for a in range(k):
            x[2 + idx[a]] = sol[a]
        worst = -1
        most = 0.0
        for i in range(3, last_free):
            if active[i] and x[i] < most:
                most = x[i]
                worst = i
        if worst < 0:
            break
        active[worst] = False
    # pedestals back from the pulses
    pe = b[0]
    po = b[1]
    for i in range(n):
        pe -= G[0, 2 + i] * x[2 + i]
        po -= G[1, 2 + i] * x[2 + i]
    x[0] = pe * ie
    x[1] = po * io


@_compiled()
def _residuals(X, y, ok, x, m, r):
    """r = y - model at the unsaturated samples, 0 at the saturated ones."""
    n_s = y.shape[0]
    for s in range(n_s):
        r[s] = y[s] - x[0] * X[0, s] - x[1] * X[1, s]
    for i in range(2, m):
        xi = x[i]
        if xi != 0.0:
            for s in range(n_s):
                r[s] -= xi * X[i, s]
    for s in range(n_s):
        r[s] *= ok[s]


@_compiled()
def _chi2(X, y, ok, x, m, sig2, shape_tol, r):
    """chi2 of the fit, residuals into r. The errors are the noise and shape_tol x the fitted pulse; the
    plain sum (noise only) is an upper bound, so the exact one is computed only if it could matter
    (above the number of samples)."""
    n_s = y.shape[0]
    _residuals(X, y, ok, x, m, r)
    chi = 0.0
    for s in range(n_s):
        chi += r[s] * r[s]
    chi /= sig2
    if chi <= n_s or shape_tol <= 0.0:
        return chi
    chi = 0.0
    for s in range(n_s):
        tol = shape_tol * (y[s] - x[0] * X[0, s] - x[1] * X[1, s] - r[s])
        chi += r[s] * r[s] / (sig2 + tol * tol)
    return chi


@_compiled()
def _chi2_fast(G, b, x, m, yy):
    """sum of squared residuals from the normal equations: yy - 2 x.b + x.G.x (yy = y.y)."""
    acc = yy
    for i in range(m):
        xi = x[i]
        if xi != 0.0:
            acc -= 2.0 * xi * b[i]
            t = 0.0
            for j in range(m):
                t += G[i, j] * x[j]
            acc += xi * t
    return max(acc, 0.0)


@_compiled()
def _columns(tv, k, start, length, n_phase, pos, pw, pv, npul, delta, period, ok, min_overlap, X):
    """The pulse columns X[2..] at the current shift; pulses that barely reach the window (template
    below min_overlap everywhere in it) are dropped. Returns (pulses, columns)."""
    _column(tv, k, start, length, n_phase, pos[0] + delta, period, ok, X[2])
    q = 1
    while q < npul:
        top = _column(tv, k, start, length, n_phase, pos[q] + delta, period, ok, X[2 + q])
        if top < min_overlap:
            npul -= 1
            pos[q] = pos[npul]
            pw[q] = pw[npul]
            pv[q] = pv[npul]
            continue
        q += 1
    return npul, 2 + npul


@_compiled()
def _n_active(active, m):
    n = 0
    for i in range(m):
        n += active[i]
    return n


@_compiled()
def _shift(
    which,
    n_steps,
    prior,
    period,
    tv,
    tslope,
    k,
    start,
    length,
    n_phase,
    pos,
    pw,
    pv,
    npul,
    delta,
    ok,
    st,
    X,
    y,
    even,
    n_even,
    n_odd,
    G,
    b,
    H,
    g,
    idx,
    active,
    x,
    A,
    rhs,
    sol,
    dtmp,
):
    """Gauss-Newton steps on pulse positions, jointly with the amplitudes (a derivative column
    -A_q T'_q): ``which`` = -1 moves every pulse by the common shift ``delta`` (prior N(0, 1/prior) in
    units of the samples' weight, if prior > 0), else pulse ``which`` alone. Leaves the columns, the
    normal equations and the solution at the final positions. Returns (npul, m, delta)."""
    n_s = y.shape[0]
    m = 2 + npul
    for _ in range(n_steps):
        dcol = X[m]
        for s in range(n_s):
            dcol[s] = 0.0
        for q in range(npul):
            if active[2 + q] and (which < 0 or q == which):
                _column(tslope, k, start, length, n_phase, pos[q] + delta, period, ok, dtmp)
                xq = x[2 + q]
                for s in range(n_s):
                    dcol[s] -= xq * dtmp[s]
        _normal(X, y, even, n_even, n_odd, m + 1, m, G, b)
        if which < 0:
            _nnls(G, b, pw, pv, npul, m + 1, m, prior, -delta, H, g, idx, active, x, A, rhs, sol)
        else:
            _nnls(G, b, pw, pv, npul, m + 1, m, 0.0, 0.0, H, g, idx, active, x, A, rhs, sol)
        step = min(max(x[m], -period), period)
        if which < 0:
            new = min(max(delta + step, -st.max_shift_ns), st.max_shift_ns)
            step = new - delta
            delta = new
        else:
            pos[which] += step
        npul, m = _columns(
            tv, k, start, length, n_phase, pos, pw, pv, npul, delta, period, ok, st.min_overlap, X
        )
        _normal(X, y, even, n_even, n_odd, m, 0, G, b)
        if abs(step) <= st.gn_tol_ns:
            break
    _nnls(G, b, pw, pv, npul, m, m, 0.0, 0.0, H, g, idx, active, x, A, rhs, sol)
    return npul, m, delta


@_compiled()
def _vertex(r, ok, s0):
    """Where (samples from s0, -0.5..0.5) a parabola through the residuals at s0 - 1, s0, s0 + 1 peaks."""
    n_s = r.shape[0]
    if s0 <= 0 or s0 >= n_s - 1 or ok[s0 - 1] == 0.0 or ok[s0 + 1] == 0.0:
        return 0.0
    den = r[s0 - 1] - 2.0 * r[s0] + r[s0 + 1]
    if den >= 0.0:
        return 0.0
    return min(max(0.5 * (r[s0 - 1] - r[s0 + 1]) / den, -0.5), 0.5)


@_compiled()
def _quiet_filters(tv, k, start, length, n_phase, p, period, ok, even, col, F):
    """F (3, S): the rows of the least-squares solution (pedestal even, odd, in-time amplitude) of a
    window with no saturated sample and only the in-time pulse, peaking at p: x = F @ y."""
    n_s = col.shape[0]
    _column(tv, k, start, length, n_phase, p, period, ok, col)
    se = 0.0
    so = 0.0
    tt = 0.0
    ne = 0.0
    for s in range(n_s):
        se += even[s] * col[s]
        so += (1.0 - even[s]) * col[s]
        tt += col[s] * col[s]
        ne += even[s]
    no = n_s - ne
    # inverse of [[ne, 0, se], [0, no, so], [se, so, tt]] (symmetric), by cofactors
    det = ne * (no * tt - so * so) - se * (se * no)
    if det <= 1e-12:
        for i in range(3):
            for s in range(n_s):
                F[i, s] = 0.0
        return
    i00 = (no * tt - so * so) / det
    i01 = (se * so) / det
    i02 = -(se * no) / det
    i11 = (ne * tt - se * se) / det
    i12 = -(ne * so) / det
    i22 = (ne * no) / det
    for s in range(n_s):
        ev = even[s]
        od = 1.0 - ev
        t = col[s]
        F[0, s] = i00 * ev + i01 * od + i02 * t
        F[1, s] = i01 * ev + i11 * od + i12 * t
        F[2, s] = i02 * ev + i12 * od + i22 * t


#: a count no tracker reaches: the time offsets are not learned (FitSettings.track_min)
NEVER = 1 << 62

#: the learned noise: a histogram of the residual RMS of windows without a pulse, per channel, whose
#: median (robust to the windows a pile-up pulse below threshold spoils) is the estimate
NOISE_BINS = 256
NOISE_BIN = 0.05  # ADC counts
NOISE_EVERY = 16


@_compiled()
def _learn_noise(noise_n, noise_hist, noise_est, c, variance, n_min):
    """Add one window's residual variance to channel c's histogram; refresh the median now and then."""
    b = min(int(np.sqrt(max(variance, 0.0)) / NOISE_BIN), NOISE_BINS - 1)
    noise_hist[c, b] += 1
    noise_n[c] += 1
    n = noise_n[c]
    if n >= n_min and (n - n_min) % NOISE_EVERY == 0:
        half = (n + 1) // 2
        acc = 0
        for i in range(NOISE_BINS):
            acc += noise_hist[c, i]
            if acc >= half:
                noise_est[c] = (i + 0.5) * NOISE_BIN
                break


@_compiled()
def fit_windows(
    w,  # (E, C, S) uint16
    phase,  # (E,) float64: in-time peak, ns after sample 0, before the channel offset
    nb_ptr,  # (E + 1,) int64: event e's other particles are nb_ptr[e]:nb_ptr[e + 1]
    nb_dt,  # (N,) float64: their arrival times relative to the trigger, ns
    nb_amp,  # (P, N) float32: their primitive amplitudes (rows: prim_row)
    cls_of,  # (C,) int64 shape class
    t_off,  # (C,) float64 calibration time offset, ns
    t_sigma,  # (C,) float64 prior width of the window's time shift, ns
    noise,  # (C,) float64 noise RMS per sample, ADC counts
    thr,  # (C,) float64 zero-suppression threshold, ADC counts
    gev_per_count,  # (C,) float64
    dead,  # (C,) bool
    prim_row,  # (C,) int64: the channel's row in nb_amp, -1 if none
    prim_full,  # (C,) float64: a primitive this large is saturated (no prior)
    tv,  # Templates.value
    tslope,  # Templates.slope
    start,  # Templates.start
    length,  # Templates.length
    n_phase,  # Templates.n_phase
    st,  # FitSettings
    track_n,  # (C,) int64, in/out: isolated pulses whose time shift was fitted (the offset tracker)
    track_sum,  # (C,) float64, in/out: the sum of their shifts, ns
    learn_noise,  # (C,) bool: the noise is not calibrated: learn it from the windows without a pulse
    noise_n,  # (C,) int64, in/out: such windows so far
    noise_hist,  # (C, NOISE_BINS) int64, in/out: their residual RMS, bins of NOISE_BIN counts
    noise_est,  # (C,) float64, in/out: the median of noise_hist (updated every NOISE_EVERY windows)
    amp,  # outputs (E, C)
    t_peak,
    chi2,
    n_pulses,
    pileup,
    energy,
    ped_even,
    ped_odd,
):
    n_ev, n_ch, n_s = w.shape
    n_cls = tv.shape[0]
    period = st.period
    X = np.zeros((_NCOL, n_s))
    y = np.zeros(n_s)
    ok = np.ones(n_s)
    ones = np.ones(n_s)
    even = np.zeros(n_s)
    r = np.zeros(n_s)
    dtmp = np.zeros(n_s)
    # the quiet windows' linear filters per shape class at in-time positions on a 1/4 ns grid, computed
    # when first needed (the positions: the trigger phases plus the channels' offsets, calibrated or learned)
    q_step = 0.25
    q_lo = (
        np.floor((np.min(phase) + np.min(t_off) - st.max_shift_ns - 1.0) / q_step) * q_step if n_ev else 0.0
    )
    q_hi = np.max(phase) + np.max(t_off) + st.max_shift_ns + 1.0 if n_ev else 0.0
    n_grid = int((q_hi - q_lo) / q_step) + 2 if n_ev else 1
    qcol = np.empty((n_cls, n_grid, n_s))
    F = np.empty((n_cls, n_grid, 3, n_s))
    q_done = np.zeros((n_cls, n_grid), np.bool_)
    G = np.zeros((_NCOL, _NCOL))
    b = np.zeros(_NCOL)
    H = np.zeros((_NCOL, _NCOL))
    g = np.zeros(_NCOL)
    A = np.zeros((_NCOL, _NCOL))
    rhs = np.zeros(_NCOL)
    sol = np.zeros(_NCOL)
    idx = np.zeros(_NCOL, np.int64)
    x = np.zeros(_NCOL)
    active = np.zeros(_NCOL, np.bool_)
    pos = np.zeros(MAX_PULSES)  # pulse peak positions before the shift delta, ns after sample 0
    pw = np.zeros(MAX_PULSES)  # prior weights (in units of one sample's weight)
    pv = np.zeros(MAX_PULSES)  # prior values
    for s in range(n_s):
        even[s] = 1.0 if s % 2 == 0 else 0.0
    for e in range(n_ev):
        for c in range(n_ch):
            k = cls_of[c]
            sig = noise[c]
            th = thr[c]
            if learn_noise[c] and noise_n[c] >= st.noise_min:
                sig = min(max(noise_est[c], st.noise_floor), st.noise_cap * noise[c])
                th = thr[c] / noise[c] * sig
            sig2 = sig * sig
            lo_e = 65535
            hi_e = 0
            lo_o = 65535
            hi_o = 0
            for s in range(0, n_s - 1, 2):
                ve = w[e, c, s]
                vo = w[e, c, s + 1]
                lo_e = min(lo_e, ve)
                hi_e = max(hi_e, ve)
                lo_o = min(lo_o, vo)
                hi_o = max(hi_o, vo)
            if n_s % 2:
                ve = w[e, c, n_s - 1]
                lo_e = min(lo_e, ve)
                hi_e = max(hi_e, ve)
            if max(hi_e, hi_o) == 0:
                # no data (an absent readout group is zeros; a real ADC reads its pedestal): nothing to fit
                amp[e, c] = 0.0
                t_peak[e, c] = 0.0
                chi2[e, c] = 0.0
                n_pulses[e, c] = 0
                pileup[e, c] = False
                energy[e, c] = 0.0
                ped_even[e, c] = 0.0
                ped_odd[e, c] = 0.0
                continue
            yy = 0.0
            for s in range(n_s):
                v = float(w[e, c, s])
                y[s] = v
                yy += v * v
            n_used = n_s
            if max(hi_e, hi_o) >= st.adc_max:
                for s in range(n_s):
                    if y[s] >= st.adc_max:
                        ok[s] = 0.0
                        yy -= y[s] * y[s]
                        y[s] = 0.0
                        n_used -= 1
                    else:
                        ok[s] = 1.0
            else:
                for s in range(n_s):
                    ok[s] = 1.0
            # where the channel's pulses sit: the calibration's offset, or the one learned in this run
            off = t_off[c]
            ts = t_sigma[c]
            tracked = ts >= st.gn_off_ns and track_n[c] >= st.track_min
            if tracked:
                off += track_sum[c] / track_n[c]
                ts = 0.0
            p0 = phase[e] + off
            if n_used == n_s and max(hi_e - lo_e, hi_o - lo_o) < st.quiet_sigma * sig:
                # quiet: pedestals and the in-time amplitude, a fixed linear filter
                gi = min(max(int(np.rint((p0 - q_lo) / q_step)), 0), n_grid - 1)
                if not q_done[k, gi]:
                    _quiet_filters(
                        tv,
                        k,
                        start[k],
                        length[k],
                        n_phase,
                        q_lo + gi * q_step,
                        period,
                        ones,
                        even,
                        qcol[k, gi],
                        F[k, gi],
                    )
                    q_done[k, gi] = True
                pe = 0.0
                po = 0.0
                a0 = 0.0
                for s in range(n_s):
                    pe += F[k, gi, 0, s] * y[s]
                    po += F[k, gi, 1, s] * y[s]
                    a0 += F[k, gi, 2, s] * y[s]
                chi = 0.0
                for s in range(n_s):
                    d = y[s] - pe * even[s] - po * (1.0 - even[s]) - a0 * qcol[k, gi, s]
                    chi += d * d
                amp[e, c] = a0
                t_peak[e, c] = p0 - t_off[c]
                chi2[e, c] = chi / sig2 / (n_s - 3)
                n_pulses[e, c] = 1 if a0 > th else 0
                if learn_noise[c] and a0 <= th:
                    _learn_noise(noise_n, noise_hist, noise_est, c, chi / (n_s - 3), st.noise_min)
                pileup[e, c] = False
                energy[e, c] = a0 * gev_per_count[c] if a0 > th and not dead[c] else 0.0
                ped_even[e, c] = pe
                ped_odd[e, c] = po
                continue
            n_even = 0.0
            for s in range(0, n_s, 2):
                n_even += ok[s]
            n_odd = n_used - n_even
            for s in range(n_s):  # pedestal columns: zero at saturated samples
                X[0, s] = even[s] * ok[s]
                X[1, s] = (1.0 - even[s]) * ok[s]
            # the pulses: in-time first, then the other particles whose pulse reaches the window
            pos[0] = p0
            pw[0] = 0.0
            npul = 1
            row = prim_row[c]
            first = -(start[k] + (length[k] - 1) * period)
            last = (n_s - 1) * period - start[k]
            for j in range(nb_ptr[e], nb_ptr[e + 1]):
                p = p0 + nb_dt[j]
                if p < first or p > last:
                    continue
                weight = 0.0
                value = 0.0
                if row >= 0:
                    a = float(nb_amp[row, j])
                    if a < prim_full[c]:
                        tol = st.prior_frac * a
                        weight = sig2 / (sig2 + tol * tol)
                        value = a
                if weight == 0.0 and abs(p - p0) < st.merge_ns:
                    continue
                if npul < MAX_PULSES:
                    pos[npul] = p
                    pw[npul] = weight
                    pv[npul] = value
                    npul += 1
            delta = 0.0
            prior = sig2 / (ts * ts) if ts >= st.gn_off_ns else 0.0
            npul, m = _columns(
                tv, k, start[k], length[k], n_phase, pos, pw, pv, npul, delta, period, ok, st.min_overlap, X
            )
            _normal(X, y, even, n_even, n_odd, m, 0, G, b)
            _nnls(G, b, pw, pv, npul, m, m, 0.0, 0.0, H, g, idx, active, x, A, rhs, sol)
            n_extra = 0
            chi = 0.0
            for _round in range(2):
                # pulses the stream did not announce, far from the known ones (first: a big one would pull
                # the time shift), each at the largest residual, its position refined, kept if the chi2
                # falls enough
                added = False
                while True:
                    chi = _chi2_fast(G, b, x, m, yy) / sig2
                    ndf = max(n_used - _n_active(active, m), 1)
                    limit = ndf + st.chi2_sigma * np.sqrt(2.0 * ndf)
                    if chi <= limit:
                        break
                    chi = _chi2(X, y, ok, x, m, sig2, st.shape_tol, r)  # with the template's tolerance
                    if chi <= limit or n_extra >= st.extra_max or npul >= MAX_PULSES:
                        break
                    smax = 0
                    for s in range(n_s):
                        if r[s] > r[smax]:
                            smax = s
                    if r[smax] <= st.extra_sigma * sig:
                        break
                    p_new = (smax + _vertex(r, ok, smax)) * period - delta
                    far = True
                    for q in range(npul):
                        if abs(pos[q] - p_new) < st.extra_sep_ns:
                            far = False
                    if not far:
                        break
                    n_extra += 1
                    pos[npul] = p_new
                    pw[npul] = 0.0
                    _column(tv, k, start[k], length[k], n_phase, p_new + delta, period, ok, X[m])
                    _normal(X, y, even, n_even, n_odd, m + 1, m, G, b)
                    _nnls(G, b, pw, pv, npul + 1, m + 1, m + 1, 0.0, 0.0, H, g, idx, active, x, A, rhs, sol)
                    if chi - _chi2(X, y, ok, x, m + 1, sig2, st.shape_tol, r) <= st.extra_dchi2:
                        _normal(X, y, even, n_even, n_odd, m, 0, G, b)
                        _nnls(G, b, pw, pv, npul, m, m, 0.0, 0.0, H, g, idx, active, x, A, rhs, sol)
                        break
                    npul += 1
                    npul, m, delta = _shift(
                        npul - 1,
                        3,
                        0.0,
                        period,
                        tv,
                        tslope,
                        k,
                        start[k],
                        length[k],
                        n_phase,
                        pos,
                        pw,
                        pv,
                        npul,
                        delta,
                        ok,
                        st,
                        X,
                        y,
                        even,
                        n_even,
                        n_odd,
                        G,
                        b,
                        H,
                        g,
                        idx,
                        active,
                        x,
                        A,
                        rhs,
                        sol,
                        dtmp,
                    )
                    added = True
                # the channel's time shift, common to its pulses (when there is signal to fit it on)
                moved = False
                if prior > 0.0 and (_round == 0 or added):
                    total = 0.0
                    for q in range(npul):
                        total += abs(x[2 + q])
                    if total > st.gn_snr * sig:
                        before = delta
                        npul, m, delta = _shift(
                            -1,
                            st.gn_max,
                            prior,
                            period,
                            tv,
                            tslope,
                            k,
                            start[k],
                            length[k],
                            n_phase,
                            pos,
                            pw,
                            pv,
                            npul,
                            delta,
                            ok,
                            st,
                            X,
                            y,
                            even,
                            n_even,
                            n_odd,
                            G,
                            b,
                            H,
                            g,
                            idx,
                            active,
                            x,
                            A,
                            rhs,
                            sol,
                            dtmp,
                        )
                        moved = abs(delta - before) > st.gn_tol_ns
                if not (added or moved):
                    break
            chi = _chi2_fast(G, b, x, m, yy) / sig2
            if chi > n_used:
                chi = _chi2(X, y, ok, x, m, sig2, st.shape_tol, r)
            n_act = 0
            for i in range(m):
                n_act += active[i]
            ndf = max(n_used - n_act, 1)
            a0 = x[2]
            amp[e, c] = a0
            t_peak[e, c] = p0 + delta - t_off[c]
            chi2[e, c] = chi / ndf
            cnt = 0
            late = False
            for q in range(npul):
                if active[2 + q] and x[2 + q] > th:
                    cnt += 1
                    if q > 0:
                        late = True
            n_pulses[e, c] = min(cnt, 255)
            pileup[e, c] = late
            if learn_noise[c] and cnt == 0 and n_used == n_s:  # noise alone (and pulses below threshold)
                _learn_noise(noise_n, noise_hist, noise_est, c, chi * sig2 / ndf, st.noise_min)
            # an alone (no other pulse above threshold), unsaturated, well-fitted pulse whose shift was fitted teaches the tracker
            if (
                prior > 0.0
                and st.track_min < NEVER
                and not tracked
                and n_used == n_s
                and not late
                and a0 > st.track_snr * sig
                and chi <= ndf + st.chi2_sigma * np.sqrt(2.0 * ndf)
                and abs(delta) < st.max_shift_ns
            ):
                track_n[c] += 1
                track_sum[c] += delta
            energy[e, c] = a0 * gev_per_count[c] if a0 > th and not dead[c] else 0.0
            ped_even[e, c] = x[0]
            ped_odd[e, c] = x[1]


def make_templates(shapes, period: float, n_phase: int = 128, floor: float = 1e-5) -> Templates:
    """:class:`Templates` from unit-height pulse functions ``shapes[k](t_ns)`` (peak at 0, zero before
    their start), e.g. ``daq.waveform.template``: the support starts at the first t (0.01 ns steps from
    -500 ns) where T > 0 and ends where T stays below ``floor``."""
    t = np.arange(-500.0, 2000.0, 0.01)
    starts, lengths = [], []
    for fn in shapes:
        v = np.asarray(fn(t), dtype=np.float64)
        nz = np.flatnonzero(v > 0)
        above = np.flatnonzero(v > floor)
        starts.append(float(t[nz[0]]) - 0.01)
        lengths.append(int(np.ceil((t[above[-1]] - starts[-1]) / period)) + 2)
    n_max = max(lengths)
    value = np.zeros((len(shapes), n_phase + 1, n_max))
    slope = np.zeros_like(value)
    h = 1e-3
    for k, fn in enumerate(shapes):
        tk = starts[k] + (np.arange(n_phase + 1)[:, None] / n_phase + np.arange(lengths[k])[None, :]) * period
        value[k, :, : lengths[k]] = fn(tk)
        slope[k, :, : lengths[k]] = (fn(tk + h) - fn(tk - h)) / (2 * h)
    return Templates(value, slope, np.array(starts), np.array(lengths, np.int64), int(n_phase))


def warm_up() -> None:
    """Compile (or load from numba's cache) the fit now rather than on the first event: every signature
    used at run time (waveforms writable or read-only)."""
    from daq import detector
    from daq.waveform import RecoConfig, reconstruct, synthesize

    a = np.zeros((1, detector.N_CHANNELS))
    a[0, 17] = 1000.0
    w = synthesize(a)
    reconstruct(w, detector.nominal_gains())
    w.flags.writeable = False
    reconstruct(w, detector.nominal_gains(), config=RecoConfig())
