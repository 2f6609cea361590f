"""Front-end electronics: per-channel truth (gains, pedestals, noise, timing), pulse shapes, and the
digitisation of primitives and waveforms. numpy, except the per-sample loop of the readout windows
(:mod:`simulator.kernels`, numba); randomness comes from explicit generators.

Units: deposits in MeV, gains in ADC counts per MeV, pulse heights and samples in ADC counts, times in ns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from daq import detector
from daq.detector import PulseShape
from simulator.config import ElectronicsConfig

#: channel status flags (same codes as calibration constants)
GOOD, DEAD, HOT, NOISY = 0, 1, 2, 3

#: the readout latency: a particle's pulse peaks this long after its arrival time (before offsets)
SHAPE_RES_NS = 0.125  # pulse-shape table resolution
SHAPE_PRE_NS = 200.0  # table covers [-SHAPE_PRE_NS, SHAPE_POST_NS] around the peak
SHAPE_POST_NS = 800.0
#: pulses smaller than this (ADC counts) are not drawn into waveforms (far below the 1-3 count noise)
MIN_PULSE = 0.25


@dataclass
class Electronics:
    """Per-channel electronics truth (arrays indexed by channel id). This is what calibration recovers."""

    gain: np.ndarray  # float64 ADC counts per MeV
    pedestal_even: np.ndarray  # float64 ADC counts
    pedestal_odd: np.ndarray
    noise: np.ndarray  # float64 ADC counts RMS per sample
    time_offset_ns: np.ndarray  # float64
    status: np.ndarray = field(default_factory=lambda: np.zeros(detector.N_CHANNELS, np.uint8))

    def copy(self) -> Electronics:
        return Electronics(
            self.gain.copy(),
            self.pedestal_even.copy(),
            self.pedestal_odd.copy(),
            self.noise.copy(),
            self.time_offset_ns.copy(),
            self.status.copy(),
        )


def make_electronics(
    config: ElectronicsConfig, rng: np.random.Generator, beam_cell: tuple[int, int] = detector.BEAM_CELL
) -> Electronics:
    """Draw the per-channel truth: gains around daq.detector.NOMINAL_GAIN, pedestals, noise, offsets.

    Gain factors are Gaussian (``gain_spread``) truncated to [gain_min_factor, gain_max_factor]; the ECAL
    and PRS cells of the trigger block around ``beam_cell`` use ``block_gain_spread`` instead.
    """
    n = detector.N_CHANNELS
    spread = np.full(n, config.gain_spread)
    cells = detector.block_cells(beam_cell)
    spread[[detector.ecal_id(x, y) for x, y in cells] + [detector.prs_id(x, y) for x, y in cells]] = (
        config.block_gain_spread
    )
    factor = 1 + spread * rng.standard_normal(n)
    for _ in range(100):  # truncated Gaussian: redraw the factors outside [min, max]
        out = (factor < config.gain_min_factor) | (factor > config.gain_max_factor)
        if not out.any():
            break
        factor[out] = 1 + spread[out] * rng.standard_normal(int(out.sum()))
    factor = np.clip(factor, config.gain_min_factor, config.gain_max_factor)
    gain = detector.nominal_gains() * factor
    ped_even = np.clip(config.pedestal_mean + config.pedestal_spread * rng.standard_normal(n), 50, 600)
    ped_odd = np.clip(ped_even + config.even_odd_spread * rng.standard_normal(n), 40, 700)
    noise = rng.uniform(config.noise_min, config.noise_max, n)
    t_off = config.time_offset_spread_ns * rng.standard_normal(n)
    return Electronics(gain, ped_even, ped_odd, noise, t_off)


# ---------------------------------------------------------------- pulse shapes
def shape_tau(order: int, fwhm_ns: float) -> float:
    """Time constant of a CR-RC^order pulse (t/tau)^n exp(n (1 - t/tau)) with the given FWHM."""
    t = np.linspace(1e-6, 20, 200001)
    h = t**order * np.exp(order * (1 - t))
    above = t[h >= 0.5]
    return fwhm_ns / float(above[-1] - above[0])


def pulse(dt_ns: np.ndarray, order: int, tau_ns: float) -> np.ndarray:
    """Unit-height pulse, ``dt_ns`` relative to its peak (float64)."""
    t = np.asarray(dt_ns, dtype=np.float64) / tau_ns + 1.0
    tp = np.clip(t, 0.0, None)
    return np.where(t > 0, tp**order * np.exp(order * (1 - tp)), 0.0)


class PulseShapes:
    """Tabulated unit-height pulses per shape class, sampled every ``SHAPE_RES_NS``.

    ``windows[class][i]`` holds the ``n_samples`` samples of a pulse whose peak lies at
    ``i * SHAPE_RES_NS - SHAPE_PRE_NS`` ns relative to sample 0 ... (a sliding window over the table),
    so a waveform needs one row gather per (particle, channel).
    """

    def __init__(self, config: ElectronicsConfig) -> None:
        self.n_samples = config.n_samples
        fwhm = {
            PulseShape.EM: config.em_fwhm_ns,
            PulseShape.HADRONIC: config.hadronic_fwhm_ns,
            PulseShape.FAST: config.fast_fwhm_ns,
        }
        self.tau = {cls: shape_tau(config.shape_order, f) for cls, f in fwhm.items()}
        self.step = round(detector.SAMPLE_PERIOD_NS / SHAPE_RES_NS)
        span = (self.n_samples - 1) * self.step
        # peak position p (ns, relative to sample 0) ranges over [-SHAPE_POST_NS, window + SHAPE_PRE_NS]
        self.p_min = -SHAPE_POST_NS
        n_pos = int((self.n_samples * detector.SAMPLE_PERIOD_NS + SHAPE_PRE_NS - self.p_min) / SHAPE_RES_NS)
        self.n_pos = n_pos
        self.windows = np.zeros((len(PulseShape), n_pos, self.n_samples), np.float32)
        k = np.arange(self.n_samples) * detector.SAMPLE_PERIOD_NS
        for cls in PulseShape:
            for s in range(0, n_pos, 4096):
                p = self.p_min + np.arange(s, min(s + 4096, n_pos)) * SHAPE_RES_NS
                self.windows[cls, s : s + p.size] = pulse(
                    k[None, :] - p[:, None], config.shape_order, self.tau[cls]
                )
        del span
        self.shape_of_channel = detector.CHANNELS["shape"].astype(np.intp)
        self.flat_windows = self.windows.reshape(-1, self.n_samples)  # row = class * n_pos + position
        self.row_offset = self.shape_of_channel * self.n_pos  # first row of each channel's class

    def rows(self, peak_ns: np.ndarray) -> np.ndarray:
        """Row index in ``windows`` of pulses peaking at ``peak_ns`` after sample 0 (clipped to the table)."""
        i = (peak_ns - (self.p_min - 0.5 * SHAPE_RES_NS)) * (1.0 / SHAPE_RES_NS)  # floor(x + 0.5) = round
        np.clip(i, 0, self.n_pos - 1, out=i)
        return i.astype(np.intp)


# ---------------------------------------------------------------- primitive noise
class PrimitiveNoise:
    """Per-row Gaussian noise pools (float32, + 0.5 for rounding) read at random offsets."""

    def __init__(self, noise_rms: np.ndarray, rng: np.random.Generator, size: int = 1 << 17) -> None:
        self.rng = rng
        self.size = size
        self.rms = np.asarray(noise_rms, np.float32)
        self.pool = rng.standard_normal((self.rms.size, size), dtype=np.float32)
        self.pool *= self.rms[:, None]
        self.pool += np.float32(0.5)
        self._cursor = 0
        self._row = 0

    def add_to(self, amp: np.ndarray) -> None:
        """``amp`` (rows, n) += noise (+0.5 rounding offset), in place; n/8 values of one row renewed."""
        rows, n = amp.shape
        if n == 0:
            return
        if n >= self.size // 2:
            noise = self.rng.standard_normal((rows, n), dtype=np.float32)
            noise *= self.rms[:, None]
            amp += noise
            amp += np.float32(0.5)
            return
        o = self.offset(n)
        amp += self.pool[:, o : o + n]
        self.renew(n)

    def offset(self, n: int) -> int:
        """A random offset into the pool for ``n`` (< size / 2) values of every row."""
        return int(self.rng.integers(0, self.size - n))

    def renew(self, n: int) -> None:
        """Redraw n/8 values of one row (round robin; each row is fully redrawn every ~15 s of 2 MHz)."""
        row = self._row
        c = self._cursor
        k = min(max(n // 8, 1), self.size - c)
        fresh = self.rng.standard_normal(k, dtype=np.float32)
        fresh *= self.rms[row]
        fresh += np.float32(0.5)
        self.pool[row, c : c + k] = fresh
        self._row = (row + 1) % self.rms.size
        if self._row == 0:
            self._cursor = (c + k) % self.size


def digitise_primitives(
    heights: np.ndarray,
    noise: PrimitiveNoise | None,
    max_counts: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Pulse heights (float32 (C, N), modified in place) -> uint16 primitives with noise, clipped to
    [0, max_counts] (the ADC range above pedestal), written to ``out`` if given.

    With a noise pool the add, clip and conversion run as one compiled pass
    (:func:`simulator.kernels.digitise_noisy`), bit for bit :func:`digitise_primitives_numpy`.
    """
    n = heights.shape[1]
    if out is None:
        out = np.empty(heights.shape, np.uint16)
    if noise is not None and 0 < n < noise.size // 2:
        from simulator import kernels  # lazy: numba only where a front-end is simulated

        o = noise.offset(n)
        kernels.digitise_noisy(heights, noise.pool, o, max_counts, out)
        noise.renew(n)
        return out
    return digitise_primitives_numpy(heights, noise, max_counts, out)


def digitise_primitives_numpy(
    heights: np.ndarray,
    noise: PrimitiveNoise | None,
    max_counts: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The same as :func:`digitise_primitives` in plain numpy (the reference for the tests)."""
    if noise is not None:
        noise.add_to(heights)
    else:
        heights += np.float32(0.5)
    np.clip(heights, np.float32(0), max_counts[:, None], out=heights)
    if out is None:
        out = np.empty(heights.shape, np.uint16)
    np.copyto(out, heights, casting="unsafe")
    return out


# ---------------------------------------------------------------- waveforms
@dataclass
class WindowPulses:
    """Pulses to put into readout windows: for pulse j, window ``win[j]`` gets ``heights[j]`` (110,)
    counts peaking ``dt_ns[j]`` after the window's trigger time."""

    win: np.ndarray  # intp (P,)
    dt_ns: np.ndarray  # float64 (P,)
    heights: np.ndarray  # float32 (P, 110)


def _noise_and_phase(
    n_windows: int,
    trigger_ns: np.ndarray,
    rng: np.random.Generator,
    peak_sample: float,
    normal_pool: np.ndarray | None,
    n_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal noise (W, 110, n_samples) float32 -- a contiguous chunk of a pre-drawn pool at a
    random offset, or fresh draws -- and the phase (W,) float64: where a pulse arriving at the trigger
    time peaks, in ns after sample 0 (sample 0 is the clock edge ``peak_sample`` samples before the
    edge at or after the trigger)."""
    nch = detector.N_CHANNELS
    period = detector.SAMPLE_PERIOD_NS
    m = n_windows * nch * n_samples
    if normal_pool is not None and m <= normal_pool.size // 2:
        o = int(rng.integers(0, normal_pool.size - m))
        noise = normal_pool[o : o + m].reshape(n_windows, nch, n_samples)
    else:
        noise = rng.standard_normal((n_windows, nch, n_samples), dtype=np.float32)
    t = np.asarray(trigger_ns, dtype=np.float64)
    start = np.ceil(t / period) * period - peak_sample * period  # ns, absolute (same frame as t)
    return noise, t - start


def waveforms(
    n_windows: int,
    trigger_ns: np.ndarray,
    pulses: WindowPulses,
    shapes: PulseShapes,
    pedestal: np.ndarray,
    noise_rms: np.ndarray,
    rng: np.random.Generator,
    peak_sample: float,
    time_offset_ns: np.ndarray,
    normal_pool: np.ndarray | None = None,
) -> np.ndarray:
    """Digitised windows (uint16, (W, 110, n_samples)).

    Window w starts on the ADC clock edge such that a pulse arriving at ``trigger_ns[w]`` peaks
    ~``peak_sample`` samples in; the sub-sample phase follows the trigger time. ``pedestal`` is
    (110, n_samples) (even/odd pattern), ``noise_rms`` (110,). Each pulse is placed in its window at
    ``dt_ns`` + the channel's time offset, all pulses add (pile-up), and samples saturate at ADC_MAX.
    ``pedestal`` includes the +0.5 rounding offset (the result is truncated to integers).

    The per-sample work runs in a compiled kernel (:mod:`simulator.kernels`); the result is bit
    for bit that of :func:`waveforms_numpy` given the same generator state.
    """
    from simulator import kernels  # lazy: numba is imported only by processes that read out

    ns = shapes.n_samples
    out = np.empty((n_windows, detector.N_CHANNELS, ns), np.uint16)
    if n_windows == 0:
        return out
    noise, phase = _noise_and_phase(n_windows, trigger_ns, rng, peak_sample, normal_pool, ns)
    kernels.fill_windows(
        out,
        noise,
        noise_rms,
        pedestal,
        phase,
        pulses.win,
        pulses.dt_ns,
        pulses.heights,
        time_offset_ns,
        shapes.flat_windows,
        shapes.row_offset,
        shapes.p_min,
        SHAPE_RES_NS,
        shapes.n_pos,
        MIN_PULSE,
        detector.ADC_MAX,
    )
    return out


def waveforms_numpy(
    n_windows: int,
    trigger_ns: np.ndarray,
    pulses: WindowPulses,
    shapes: PulseShapes,
    pedestal: np.ndarray,
    noise_rms: np.ndarray,
    rng: np.random.Generator,
    peak_sample: float,
    time_offset_ns: np.ndarray,
    normal_pool: np.ndarray | None = None,
) -> np.ndarray:
    """The same as :func:`waveforms` in plain numpy (the reference for the tests)."""
    ns = shapes.n_samples
    nch = detector.N_CHANNELS
    w = np.empty((n_windows, nch, ns), np.float32)
    if n_windows == 0:
        return w.astype(np.uint16)
    noise, phase = _noise_and_phase(n_windows, trigger_ns, rng, peak_sample, normal_pool, ns)
    rms = np.repeat(noise_rms.astype(np.float32, copy=False), ns)  # (110 * ns,): contiguous broadcast
    np.multiply(noise.reshape(n_windows, -1), rms, out=w.reshape(n_windows, -1))
    w += pedestal.astype(np.float32, copy=False)[None]
    if pulses.win.size:
        h = pulses.heights
        nz_p, nz_c = np.nonzero(h > MIN_PULSE)  # only channels with a deposit
        if nz_p.size:
            win = pulses.win[nz_p]
            peak = phase[win] + pulses.dt_ns[nz_p] + time_offset_ns[nz_c]
            rows = shapes.rows(peak)
            rows += shapes.row_offset[nz_c]
            contrib = np.take(shapes.flat_windows, rows, axis=0)  # (M, ns)
            contrib *= h[nz_p, nz_c][:, None]
            # pulses of several particles in one channel of one window (pile-up) add up: unbuffered add
            target = (win * nch + nz_c) * ns
            np.add.at(w.reshape(-1), (target[:, None] + np.arange(ns)).reshape(-1), contrib.reshape(-1))
    np.clip(w, 0, detector.ADC_MAX, out=w)
    out = np.empty(w.shape, np.uint16)
    np.copyto(out, w, casting="unsafe")
    return out


def fwhm_of(order: int, tau: float) -> float:
    """FWHM (ns) of a CR-RC^order pulse with time constant tau (for docs and tests)."""
    t = np.linspace(-5 * tau, 20 * tau, 400001)
    h = pulse(t, order, tau)
    above = t[h >= 0.5]
    return float(above[-1] - above[0])


def isolated_waveforms(
    deposits_mev: np.ndarray,
    electronics: Electronics,
    shapes: PulseShapes,
    rng: np.random.Generator,
    peak_sample: float = 10.0,
    phase_ns: np.ndarray | None = None,
) -> np.ndarray:
    """Waveforms (uint16 (K, 110, n_samples)) of K particles alone in their windows (no pile-up), from
    their deposits (K, 110) in MeV and the electronics truth; ``phase_ns`` (K,) moves each pulse within
    its sample (default 0: the peak falls on ``peak_sample``). For tests of waveform reconstruction."""
    dep = np.asarray(deposits_mev, dtype=np.float32)
    k = dep.shape[0]
    trig = np.zeros(k) if phase_ns is None else -np.asarray(phase_ns, dtype=np.float64)
    pulses = WindowPulses(np.arange(k), np.zeros(k), dep * electronics.gain.astype(np.float32))
    base = np.empty((detector.N_CHANNELS, shapes.n_samples), np.float32)
    base[:, 0::2] = electronics.pedestal_even[:, None]
    base[:, 1::2] = electronics.pedestal_odd[:, None]
    base += np.float32(0.5)
    return waveforms(
        k,
        trig,
        pulses,
        shapes,
        base,
        electronics.noise.astype(np.float32),
        rng,
        peak_sample,
        electronics.time_offset_ns,
    )
