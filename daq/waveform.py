"""Waveform reconstruction, vectorized over (events, channels, samples): pure functions, no I/O.

For every channel of every event:

- pedestal: mean of the first ``n_pedestal`` samples, even and odd samples separately (the digitizer
  interleaves two ADCs, so their pedestals differ);
- amplitude (ADC counts above pedestal): the pulse height, not the maximum sample. A parabola through the
  maximum sample and its two neighbours gives the vertex position delta (-0.5..0.5 samples) and height;
  the height is then multiplied by the exact ratio (true peak / parabola vertex) that the channel's
  pulse-shape template (CR-RC^n with the shape class's FWHM, :class:`RecoConfig`) has at that delta
  (:func:`template_correction`). For the template shape this is unbiased at every sub-sample phase
  (the maximum sample alone reads 2.3% / 0.8% / 4.0% low on average for the EM / hadronic / fast
  shapes, with as much event-to-event spread; the bare parabola 0.3% / 0.0% / 1.1%); a shape 10% wider
  or narrower than the template gives +-0.3%. ``amplitude_method`` = "max" or "parabola" selects the
  simpler estimators;
- peak time: sample of the maximum refined by the parabola's vertex, in ns from the start of the window,
  minus the channel's time offset;
- pile-up flag: a second local maximum at least ``pileup_separation`` samples away from the main one and
  higher than ``pileup_fraction`` of the maximum sample, or a main pulse more than ``peak_window_ns`` away from
  ``expected_peak_ns`` (only for pulses above the zero-suppression threshold);
- energy: amplitude / gain (ADC counts per MeV) in GeV, zero below ``zero_suppress_sigma`` x noise and for
  dead channels.

Event sums (GeV): E_PRS (30 PRS cells), E_ECAL (30 ECAL + 30 PRS cells: the whole calorimeter, times the
calibration's shower energy scale), E_HCAL
(36 cells), E_VETO (per slab sqrt(E1 x E2), summed), E_SRD (3 modules), E_miss = beam energy - E_ECAL.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daq import detector

if TYPE_CHECKING:
    from daq.reco_kernel import RowParams

DEAD = 1  # calibration status code of a dead channel
AMPLITUDE_METHODS = ("template", "parabola", "max")


@dataclass(frozen=True)
class RecoConfig:
    """Waveform reconstruction settings (``[reco]`` in the DAQ config)."""

    n_pedestal: int = 6
    zero_suppress_sigma: float = 5.0
    expected_peak_ns: float = 125.0
    peak_window_ns: float = 75.0
    pileup_fraction: float = 0.3
    pileup_separation: int = 4
    beam_energy_gev: float = 100.0
    #: amplitude estimator: "template" (parabola vertex x template correction), "parabola", "max" (sample)
    amplitude_method: str = "template"
    #: pulse-shape templates, CR-RC^pulse_order with these FWHM per shape class (daq.detector.PulseShape)
    pulse_order: int = 3
    em_fwhm_ns: float = 40.0
    hadronic_fwhm_ns: float = 70.0
    fast_fwhm_ns: float = 30.0

    def __post_init__(self) -> None:
        if self.amplitude_method not in AMPLITUDE_METHODS:
            raise ValueError(
                f"amplitude_method must be one of {', '.join(AMPLITUDE_METHODS)} (got {self.amplitude_method!r})"
            )
        if not 1 <= self.pulse_order <= 8:
            raise ValueError(f"pulse_order must be in 1..8 (got {self.pulse_order})")
        for name in ("em_fwhm_ns", "hadronic_fwhm_ns", "fast_fwhm_ns"):
            value = getattr(self, name)
            if not 5.0 <= value <= 500.0:
                raise ValueError(f"{name} must be in 5..500 ns (got {value})")
        if not 2 <= self.n_pedestal <= 16:
            raise ValueError(f"n_pedestal must be in 2..16 (got {self.n_pedestal})")
        if self.zero_suppress_sigma < 0:
            raise ValueError(f"zero_suppress_sigma must be >= 0 (got {self.zero_suppress_sigma})")
        if self.peak_window_ns <= 0:
            raise ValueError(f"peak_window_ns must be > 0 (got {self.peak_window_ns})")
        if not 0 < self.pileup_fraction <= 1:
            raise ValueError(f"pileup_fraction must be in (0, 1] (got {self.pileup_fraction})")
        if self.pileup_separation < 1:
            raise ValueError(f"pileup_separation must be >= 1 (got {self.pileup_separation})")
        if self.beam_energy_gev <= 0:
            raise ValueError(f"beam_energy_gev must be > 0 (got {self.beam_energy_gev})")


@dataclass(frozen=True, eq=False)
class Reco:
    """Per-channel reconstruction of E events, each array (E, C)."""

    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    amplitude: np.ndarray  # ADC counts above pedestal
    peak_time: np.ndarray  # ns
    pileup: np.ndarray  # bool
    energy: np.ndarray  # GeV


def reconstruct(
    waveforms: np.ndarray,
    gain: np.ndarray,
    noise: np.ndarray | None = None,
    time_offset_ns: np.ndarray | None = None,
    status: np.ndarray | None = None,
    config: RecoConfig | None = None,
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS,
    shape: np.ndarray | None = None,
) -> Reco:
    """Reconstruct waveforms (E, C, S) of channels whose per-channel constants (C,) are given.

    ``gain`` in ADC counts per MeV; ``noise`` in ADC counts RMS (zero suppression; default none);
    ``time_offset_ns`` subtracted from the peak time; ``status`` 1 (dead) zeroes the energy; ``shape``
    the pulse-shape class (daq.detector.PulseShape) of each channel, for the amplitude's template
    correction (default: ``daq.detector.CHANNELS["shape"]`` when C is the 110 channels, else EM).
    """
    w = np.asarray(waveforms)
    if w.ndim != 3:
        raise ValueError(f"waveforms must be (events, channels, samples), got shape {w.shape}")
    n_ev, n_ch, n_s = w.shape
    p = _row_params(
        config or RecoConfig(), n_ch, n_s, gain, noise, time_offset_ns, status, float(sample_period_ns), shape
    )
    # one compiled pass over the channel windows (imported here: numba costs ~0.5 s to import, which
    # processes that never reconstruct do not pay); reconstruct_numpy is its numpy formulation
    from daq.reco_kernel import reconstruct_rows

    return _as_reco(reconstruct_rows(w.reshape(-1, n_s), p), n_ev, n_ch)


def reconstruct_numpy(
    waveforms: np.ndarray,
    gain: np.ndarray,
    noise: np.ndarray | None = None,
    time_offset_ns: np.ndarray | None = None,
    status: np.ndarray | None = None,
    config: RecoConfig | None = None,
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS,
    shape: np.ndarray | None = None,
) -> Reco:
    """:func:`reconstruct` in plain numpy (the reference the compiled pass is tested against, bit for bit)."""
    from daq.reco_kernel import reconstruct_rows_numpy

    w = np.asarray(waveforms)
    if w.ndim != 3:
        raise ValueError(f"waveforms must be (events, channels, samples), got shape {w.shape}")
    n_ev, n_ch, n_s = w.shape
    p = _row_params(
        config or RecoConfig(), n_ch, n_s, gain, noise, time_offset_ns, status, float(sample_period_ns), shape
    )
    return _as_reco(reconstruct_rows_numpy(w.reshape(-1, n_s), p), n_ev, n_ch)


def _as_reco(rows: tuple[np.ndarray, ...], n_ev: int, n_ch: int) -> Reco:
    p_even, p_odd, amp, t_peak, energy, pileup = (x.reshape(n_ev, n_ch) for x in rows)
    return Reco(p_even, p_odd, amp, t_peak, pileup, energy)


def _row_params(
    cfg: RecoConfig,
    n_ch: int,
    n_s: int,
    gain: np.ndarray,
    noise: np.ndarray | None,
    time_offset_ns: np.ndarray | None,
    status: np.ndarray | None,
    sample_period_ns: float,
    shape: np.ndarray | None,
) -> RowParams:
    """The compiled pass's settings and per-channel constants (validated), cached by the constants' content
    (the DAQ reconstructs ~100 events per call with the same constants)."""
    key = (cfg, n_ch, n_s, sample_period_ns, *map(_content, (gain, noise, time_offset_ns, status, shape)))
    p = _PARAMS.get(key)
    if p is None:
        p = _make_row_params(cfg, n_ch, n_s, gain, noise, time_offset_ns, status, sample_period_ns, shape)
        if len(_PARAMS) >= 16:
            _PARAMS.clear()
        _PARAMS[key] = p
    return p


_PARAMS: dict[tuple[object, ...], RowParams] = {}


def _content(a: np.ndarray | None) -> tuple[str, tuple[int, ...], bytes] | None:
    if a is None:
        return None
    x = np.asarray(a)
    return x.dtype.str, x.shape, x.tobytes()


def _make_row_params(
    cfg: RecoConfig,
    n_ch: int,
    n_s: int,
    gain: np.ndarray,
    noise: np.ndarray | None,
    time_offset_ns: np.ndarray | None,
    status: np.ndarray | None,
    sample_period_ns: float,
    shape: np.ndarray | None,
) -> RowParams:
    if n_s < max(cfg.n_pedestal + 3, 3):
        raise ValueError(f"{n_s} samples are too few for a {cfg.n_pedestal}-sample pedestal")
    if shape is not None and np.shape(shape) != (n_ch,):
        raise ValueError(f"shape must be {n_ch} pulse-shape classes (daq.detector.PulseShape)")
    fixed = _fixed_params(
        cfg, sample_period_ns, n_ch, None if shape is None else tuple(np.asarray(shape).tolist())
    )
    thr = (
        np.zeros(n_ch, np.float32)
        if noise is None
        else np.float32(cfg.zero_suppress_sigma) * np.asarray(noise, dtype=np.float32)
    )
    gev_per_count = (1.0 / (1000.0 * np.asarray(gain, dtype=np.float64))).astype(np.float32)
    dead = np.zeros(n_ch, np.bool_) if status is None else np.asarray(status) == DEAD
    t_off = (
        fixed.t_off if time_offset_ns is None else np.asarray(time_offset_ns, dtype=np.float32).reshape(n_ch)
    )
    for name, a in (("gain", gev_per_count), ("noise", thr), ("status", dead)):
        if a.shape != (n_ch,):
            raise ValueError(f"{name} must have one value per channel ({n_ch}), got shape {a.shape}")
    return fixed._replace(
        thr=np.ascontiguousarray(thr),
        gev_per_count=np.ascontiguousarray(gev_per_count),
        dead=np.ascontiguousarray(dead),
        t_off=np.ascontiguousarray(t_off),
        subtract_offset=time_offset_ns is not None,
    )


@functools.lru_cache(maxsize=16)
def _fixed_params(
    cfg: RecoConfig, sample_period_ns: float, n_ch: int, shape: tuple[int, ...] | None
) -> RowParams:
    """The parts of the pass's settings that depend only on the configuration and the channels' shapes."""
    from daq.reco_kernel import row_params

    table = _correction_tables(cfg, sample_period_ns)
    cls_offset = (
        _shape_classes(None if shape is None else np.array(shape), n_ch).astype(np.int64) * table.shape[1]
    )
    zeros = np.zeros(n_ch, np.float32)
    return row_params(
        cfg.n_pedestal - cfg.n_pedestal % 2,  # whole (even, odd) pairs
        cfg.pileup_fraction,
        cfg.pileup_separation,
        {"max": 0, "parabola": 1, "template": 2}[cfg.amplitude_method],
        cls_offset,
        table,
        sample_period_ns,
        zeros,
        zeros,
        None,
        None,
        cfg.expected_peak_ns,
        cfg.peak_window_ns,
    )


def _shape_classes(shape: np.ndarray | None, n_ch: int) -> np.ndarray:
    """Pulse-shape class per channel (C,) as int32 (see :func:`reconstruct`)."""
    if shape is None:
        if n_ch == detector.N_CHANNELS:
            return detector.CHANNELS["shape"].astype(np.int32)
        return np.full(n_ch, int(detector.PulseShape.EM), np.int32)
    cls = np.asarray(shape)
    if cls.shape != (n_ch,) or not np.isin(cls, [int(s) for s in detector.PulseShape]).all():
        raise ValueError(f"shape must be {n_ch} pulse-shape classes (daq.detector.PulseShape)")
    return cls.astype(np.int32)


def shape_fwhm(config: RecoConfig) -> dict[detector.PulseShape, float]:
    """Template FWHM (ns) of each pulse-shape class."""
    return {
        detector.PulseShape.EM: config.em_fwhm_ns,
        detector.PulseShape.HADRONIC: config.hadronic_fwhm_ns,
        detector.PulseShape.FAST: config.fast_fwhm_ns,
    }


def template(dt_ns: np.ndarray, order: int, fwhm_ns: float) -> np.ndarray:
    """Unit-height CR-RC^order pulse (t/tau)^n exp(n (1 - t/tau)) with the given FWHM, ``dt_ns`` relative
    to its peak (float64): the amplitude estimator's pulse-shape template."""
    tau = _template_tau(order, fwhm_ns)
    t = np.asarray(dt_ns, dtype=np.float64) / tau + 1.0
    tp = np.clip(t, 0.0, None)
    return np.where(t > 0, tp**order * np.exp(order * (1.0 - tp)), 0.0)


@functools.lru_cache(maxsize=32)
def _template_tau(order: int, fwhm_ns: float) -> float:
    t = np.linspace(1e-6, 20.0, 200001)
    above = t[t**order * np.exp(order * (1.0 - t)) >= 0.5]
    return fwhm_ns / float(above[-1] - above[0])


@functools.lru_cache(maxsize=32)
def template_correction(
    order: int, fwhm_ns: float, sample_period_ns: float = detector.SAMPLE_PERIOD_NS, n_grid: int = 129
) -> tuple[np.ndarray, np.ndarray]:
    """(delta, ratio): true pulse height / height of the 3-point parabola vertex, as a function of the
    vertex position delta (-0.5..0.5 samples from the maximum sample), for the template pulse sampled at
    every sub-sample phase. Monotonic in delta; ratio >= 1 for the usual (sharper than parabolic) peaks."""
    phase = np.linspace(-0.5, 0.5, 4001) * sample_period_ns  # pulse peak relative to sample 0
    k = np.arange(-8, 9)
    w = template(k[None, :] * sample_period_ns - phase[:, None], order, fwhm_ns)
    i = w.argmax(axis=1)
    r = np.arange(w.shape[0])
    ym, y0, yp = w[r, i - 1], w[r, i], w[r, i + 1]
    d = np.clip(0.5 * (ym - yp) / (ym - 2.0 * y0 + yp), -0.5, 0.5)
    ratio = 1.0 / (y0 - 0.25 * (ym - yp) * d)
    order_ = np.argsort(d, kind="stable")
    grid = np.linspace(-0.5, 0.5, n_grid)
    return grid, np.interp(grid, d[order_], ratio[order_])


def _correction_tables(config: RecoConfig, sample_period_ns: float) -> np.ndarray:
    """(3, n_grid + 1) float32: each class's ratio table on the delta grid, plus a copy of its last entry
    (so that a lookup at delta = 0.5 stays in the class's row)."""
    return _joined_tables(config.pulse_order, tuple(shape_fwhm(config).values()), sample_period_ns)


@functools.lru_cache(maxsize=8)
def _joined_tables(order: int, fwhms: tuple[float, ...], sample_period_ns: float) -> np.ndarray:
    rows = []
    for fwhm in fwhms:
        _, ratio = template_correction(order, fwhm, sample_period_ns)
        rows.append(np.append(ratio, ratio[-1]))
    out = np.array(rows, dtype=np.float32)
    out.flags.writeable = False
    return out


def event_sums(energy: np.ndarray, beam_energy_gev: float = 100.0, ecal_scale: float = 1.0) -> np.ndarray:
    """Sums (6, E) float32 in GeV, rows ``daq.batch.SUM_NAMES``, from per-channel energies (E, 110).

    ``ecal_scale`` (the calibration's ``Constants.ecal_scale``) multiplies E_ECAL (so also E_miss): the
    shower energy no cell sees (leakage off the face, cells under the zero suppression)."""
    e = np.asarray(energy, dtype=np.float32)
    e_prs = e[:, detector.PRS_IDS].sum(axis=1)
    e_ecal = e[:, detector.ECAL_IDS].sum(axis=1) + e_prs
    if ecal_scale != 1.0:
        e_ecal *= np.float32(ecal_scale)
    e_hcal = e[:, detector.HCAL_IDS].sum(axis=1)
    veto = e[:, detector.VETO_IDS].reshape(-1, detector.VETO_SLABS, detector.VETO_PMTS)
    e_veto = np.sqrt(np.clip(veto[:, :, 0] * veto[:, :, 1], 0, None)).sum(axis=1)
    e_srd = e[:, detector.SRD_IDS].sum(axis=1)
    e_miss = np.float32(beam_energy_gev) - e_ecal
    return np.stack([e_prs, e_ecal, e_hcal, e_veto, e_srd, e_miss]).astype(np.float32)


# ---------------------------------------------------------------- synthetic pulses (tests, benchmarks)
#: pulse-shape time constant (ns) of each detector.PulseShape: FWHM ~ 3 x tau for the shape below
SHAPE_TAU_NS = {
    detector.PulseShape.EM: 13.0,
    detector.PulseShape.HADRONIC: 23.0,
    detector.PulseShape.FAST: 10.0,
}


def pulse(t_ns: np.ndarray, peak_ns: np.ndarray | float, tau_ns: np.ndarray | float) -> np.ndarray:
    """Unit-height pulse (x/2)^2 exp(2 - x), x = (t - peak)/tau + 2, zero before its start."""
    x = (np.asarray(t_ns, dtype=np.float64) - peak_ns) / tau_ns + 2.0
    return np.where(x > 0, (np.clip(x, 0, None) / 2.0) ** 2 * np.exp(2.0 - x), 0.0)


def synthesize(
    amplitude: np.ndarray,
    peak_ns: np.ndarray | float = 125.0,
    pedestal_even: float | np.ndarray = detector.NOMINAL_PEDESTAL,
    pedestal_odd: float | np.ndarray = detector.NOMINAL_PEDESTAL,
    noise: float = 0.0,
    n_samples: int = detector.N_SAMPLES,
    tau_ns: float | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Waveforms (E, C, S) uint16 with one pulse of ``amplitude`` (E, C) ADC counts per channel.

    ``tau_ns`` defaults to each channel's pulse-shape class (C must then be 110). For tests and
    benchmarks; the simulator has its own electronics model.
    """
    amp = np.asarray(amplitude, dtype=np.float64)
    if tau_ns is None:
        tau_ns = np.array([SHAPE_TAU_NS[detector.PulseShape(s)] for s in detector.CHANNELS["shape"]])
    t = np.arange(n_samples) * detector.SAMPLE_PERIOD_NS
    peak = np.broadcast_to(np.asarray(peak_ns, dtype=np.float64), amp.shape)
    tau = np.broadcast_to(np.asarray(tau_ns, dtype=np.float64), amp.shape)
    w = amp[..., None] * pulse(t, peak[..., None], tau[..., None])
    w[..., 0::2] += (
        np.asarray(pedestal_even, dtype=np.float64)[..., None] if np.ndim(pedestal_even) else pedestal_even
    )
    w[..., 1::2] += (
        np.asarray(pedestal_odd, dtype=np.float64)[..., None] if np.ndim(pedestal_odd) else pedestal_odd
    )
    if noise > 0:
        w += (rng or np.random.default_rng()).normal(0.0, noise, w.shape)
    return np.clip(np.rint(w), 0, detector.ADC_MAX).astype(np.uint16)
