"""Waveform reconstruction: the in-time amplitude of every channel, with pile-up fitted away. Pure: no I/O.

For every channel window (E events x C channels x S samples) the multi-pulse fit of
:mod:`daq.pulse_fit` (compiled) models the samples as two pedestals (even and odd samples: the digitizer
interleaves two ADCs) plus one pulse-shape template per particle whose pulse reaches the window: the
in-time particle, at the trigger's phase in the window plus the channel's time offset, and every other
particle of the beam near the trigger (:class:`Neighbours`, from the primitive stream), at its known
arrival time. Out-of-time amplitudes are fitted >= 0 and removed (not kept and flagged); a neighbour's
primitive amplitude in the channel (trigger-block cells and counters) is a prior on its amplitude; the
channel's time offset is fitted per window (Gauss-Newton, prior from the calibration); pulses the stream
does not explain are found in the residuals. Templates: CR-RC^n with the shape class's FWHM
(:class:`RecoConfig`).

Per channel: amplitude (ADC counts above pedestal, of the in-time particle), peak time (ns from the
window start, minus the channel's time offset), chi2 per degree of freedom, number of pulses above the
zero-suppression threshold (in-time included), pile-up (an out-of-time pulse above it was fitted and
removed), pedestals, and energy: amplitude / gain in GeV, zero below ``zero_suppress_sigma`` x noise and
for dead channels.

Where the samples sit (the readout window, docs/protocol.md): for a trigger at ``t_ns`` the window's
sample 0 is at ``ceil(t / period) x period - expected_peak_ns``, so the in-time pulse peaks
``expected_peak_ns`` minus the trigger's phase into the window (plus the channel's time offset).

Event sums (GeV): E_PRS (30 PRS cells), E_ECAL (30 ECAL + 30 PRS cells: the whole calorimeter, times the
calibration's shower energy scale), E_HCAL (36 cells), E_VETO (per slab sqrt(E1 x E2), summed), E_SRD
(3 modules), E_miss = beam energy - E_ECAL.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daq import detector

if TYPE_CHECKING:  # the compiled module loads numba: imported where a fit runs
    from daq.pulse_fit import FitSettings, Templates

DEAD = 1  # calibration status code of a dead channel
#: neighbours kept per event at most (the closest in time first): far beyond what 4 MHz gives (~3)
MAX_NEIGHBOURS = 12


@dataclass(frozen=True)
class RecoConfig:
    """Waveform reconstruction settings (``[reco]`` in the DAQ config)."""

    zero_suppress_sigma: float = 5.0
    #: where the in-time pulse of a trigger at a clock edge peaks in its window (ns from sample 0)
    expected_peak_ns: float = 125.0
    beam_energy_gev: float = 100.0
    #: pulse-shape templates, CR-RC^pulse_order with these FWHM per shape class (daq.detector.PulseShape)
    pulse_order: int = 3
    em_fwhm_ns: float = 40.0
    hadronic_fwhm_ns: float = 70.0
    fast_fwhm_ns: float = 30.0
    #: a window within this many noise sigma of its minimum (per parity) is fitted with the in-time pulse only
    quiet_sigma: float = 6.0
    #: a neighbour closer than this to the in-time particle, without a primitive prior, is not separated
    merge_ns: float = 4.0
    #: relative width of the prior that a neighbour's primitive amplitude puts on its pulse
    prior_fraction: float = 0.02
    #: prior width of a window's time shift for channels whose calibration gives no time-offset error
    time_prior_ns: float = 3.0
    #: the time shift is fitted when the window's pulses add up to this many noise sigma
    time_fit_sigma: float = 30.0
    time_fit_steps: int = 5
    max_shift_ns: float = 8.0
    #: a channel without a calibrated offset has it learned in the run from this many isolated pulses
    #: (then used as calibrated: no shift fitted, the fit costs half); 0: fit every window's shift
    time_track_pulses: int = 20
    #: a channel without a calibrated noise has it learned in the run from this many windows without a
    #: pulse (0: never; the given noise is used)
    noise_track_windows: int = 200
    #: pulses the primitive stream did not announce: at most this many, above this many sigma, kept if the
    #: chi2 falls by more than extra_dchi2
    extra_pulses: int = 2
    extra_sigma: float = 6.0
    extra_dchi2: float = 25.0
    #: the chi2 is too large beyond ndf + chi2_sigma x sqrt(2 ndf); errors: noise (+) shape_tolerance x pulse
    chi2_sigma: float = 5.0
    shape_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.pulse_order <= 8:
            raise ValueError(f"pulse_order must be in 1..8 (got {self.pulse_order})")
        for name in ("em_fwhm_ns", "hadronic_fwhm_ns", "fast_fwhm_ns"):
            value = getattr(self, name)
            if not 5.0 <= value <= 500.0:
                raise ValueError(f"{name} must be in 5..500 ns (got {value})")
        if self.zero_suppress_sigma < 0:
            raise ValueError(f"zero_suppress_sigma must be >= 0 (got {self.zero_suppress_sigma})")
        if not 0 < self.expected_peak_ns < 10_000:
            raise ValueError(f"expected_peak_ns must be in (0, 10000) (got {self.expected_peak_ns})")
        if self.beam_energy_gev <= 0:
            raise ValueError(f"beam_energy_gev must be > 0 (got {self.beam_energy_gev})")
        for name in (
            "quiet_sigma",
            "extra_sigma",
            "chi2_sigma",
            "time_prior_ns",
            "max_shift_ns",
            "time_fit_sigma",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        for name in ("merge_ns", "prior_fraction", "extra_dchi2", "shape_tolerance"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.time_fit_steps <= 20:
            raise ValueError(f"time_fit_steps must be in 0..20 (got {self.time_fit_steps})")
        if not 0 <= self.noise_track_windows <= 1_000_000:
            raise ValueError(f"noise_track_windows must be in 0..1000000 (got {self.noise_track_windows})")
        if not 0 <= self.time_track_pulses <= 1_000_000:
            raise ValueError(f"time_track_pulses must be in 0..1000000 (got {self.time_track_pulses})")
        if not 0 <= self.extra_pulses <= 4:
            raise ValueError(f"extra_pulses must be in 0..4 (got {self.extra_pulses})")


@dataclass(frozen=True, eq=False)
class Neighbours:
    """The other particles of the beam near each event's trigger (for the pile-up fit), padded to
    ``MAX_NEIGHBOURS`` per event: event e has ``count[e]`` of them, closest in time first, at ``dt_ns``
    (arrival minus trigger time) with primitive amplitudes ``amp`` (rows: ``channels``)."""

    count: np.ndarray  # (E,) uint8
    dt_ns: np.ndarray  # (E, K) int32, 0 past count
    amp: np.ndarray  # (E, K, P) uint16, 0 past count
    channels: np.ndarray  # (P,) channel ids of the primitive rows

    @staticmethod
    def none(n_events: int, channels: np.ndarray) -> Neighbours:
        p = np.asarray(channels).size
        return Neighbours(
            np.zeros(n_events, np.uint8),
            np.zeros((n_events, MAX_NEIGHBOURS), np.int32),
            np.zeros((n_events, MAX_NEIGHBOURS, p), np.uint16),
            np.asarray(channels, dtype=np.uint16),
        )


def find_neighbours(
    trigger_ns: np.ndarray,
    own: np.ndarray,
    stream_t_ns: np.ndarray,
    stream_amp: np.ndarray,
    channels: np.ndarray,
    before_ns: float,
    after_ns: float,
) -> tuple[Neighbours, np.ndarray]:
    """Neighbours of triggers at ``trigger_ns`` (E,) among the particles of a stream (``stream_t_ns`` (N,)
    in time order, primitives ``stream_amp`` (P, N)): those arriving within [t - before_ns, t + after_ns],
    except the event's own particle (``own`` (E,): its index in the stream, -1 for random triggers).
    Also returns how many events had more than MAX_NEIGHBOURS (the farthest left out)."""
    t = np.asarray(trigger_ns, dtype=np.int64)
    st = np.asarray(stream_t_ns, dtype=np.int64)
    n_ev = t.size
    out = Neighbours.none(n_ev, channels)
    if n_ev == 0 or st.size == 0:
        return out, np.zeros(0, np.int64)
    lo = np.searchsorted(st, t - int(np.ceil(before_ns)), "left")
    hi = np.searchsorted(st, t + int(np.ceil(after_ns)), "right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return out, np.zeros(0, np.int64)
    ev = np.repeat(np.arange(n_ev), counts)
    j = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    keep = j != np.asarray(own, dtype=np.int64)[ev]
    ev, j = ev[keep], j[keep]
    dt = st[j] - t[ev]
    amp = np.asarray(stream_amp)[:, j]
    # per event: closest first, earlier first, then by amplitudes: an order that does not depend on how
    # particles arriving at the same time were ordered in the stream
    order = np.lexsort((*amp[::-1], dt, np.abs(dt), ev))
    ev, j, dt, amp = ev[order], j[order], dt[order], amp[:, order]
    n_per = np.bincount(ev, minlength=n_ev)
    rank = np.arange(ev.size) - np.repeat(np.cumsum(n_per) - n_per, n_per)
    fits = rank < MAX_NEIGHBOURS
    over = np.flatnonzero(n_per > MAX_NEIGHBOURS)
    ev, dt, amp, rank = ev[fits], dt[fits], amp[:, fits], rank[fits]
    out.count[:] = np.minimum(n_per, MAX_NEIGHBOURS)
    out.dt_ns[ev, rank] = dt
    out.amp[ev, rank, :] = amp.T
    return out, over


@dataclass(frozen=True, eq=False)
class ChannelTracker:
    """What the reconstruction learns about the channels during a run, where the calibration says
    nothing (updated event by event in the order events are reconstructed, so any split of the same
    events into batches learns the same):

    - time offsets (channels without a time-offset error): every alone, unsaturated, well-fitted pulse
      above ``RecoConfig.time_fit_sigma`` x noise whose time shift the fit determined adds its shift;
      after ``time_track_pulses`` of them the channel's offset is their mean and its windows are fitted at
      it, like a calibrated channel;
    - noise (channels without a noise error, e.g. the nominal constants): every unsaturated window with
      no pulse above threshold adds its residual RMS to a histogram; after ``noise_track_windows`` of them
      the channel's noise (the fit's errors, the quiet-window test, the zero-suppression threshold) is
      their median (robust to windows a pulse below threshold spoils: a mean ran away under a 4x
      intensity spike), between 0.3 counts and 4x the given noise."""

    n: np.ndarray  # (C,) int64: pulses so far
    sum_ns: np.ndarray  # (C,) float64: the sum of their shifts
    noise_n: np.ndarray  # (C,) int64: windows without a pulse so far
    noise_hist: np.ndarray  # (C, pulse_fit.NOISE_BINS) int64: their residual RMS in bins of NOISE_BIN
    noise_est: np.ndarray  # (C,) float64: the median of noise_hist, refreshed as windows come

    @staticmethod
    def new(n_channels: int = detector.N_CHANNELS) -> ChannelTracker:
        return ChannelTracker(
            np.zeros(n_channels, np.int64),
            np.zeros(n_channels, np.float64),
            np.zeros(n_channels, np.int64),
            np.zeros((n_channels, 256), np.int64),  # pulse_fit.NOISE_BINS
            np.zeros(n_channels, np.float64),
        )

    def offsets_ns(self, min_pulses: int) -> np.ndarray:
        """The learned shift per channel (ns, added to the calibration's offset); NaN where not learned."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((self.n >= max(min_pulses, 1)), self.sum_ns / np.maximum(self.n, 1), np.nan)

    def noise(self, min_windows: int) -> np.ndarray:
        """The learned noise per channel (ADC counts RMS per sample); NaN where not learned."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.noise_n >= max(min_windows, 1),
                self.noise_est,
                np.nan,
            )


@dataclass(frozen=True, eq=False)
class Reco:
    """Per-channel reconstruction of E events, each array (E, C)."""

    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    amplitude: np.ndarray  # ADC counts above pedestal, in-time particle
    peak_time: np.ndarray  # ns
    pileup: np.ndarray  # bool: an out-of-time pulse above threshold was fitted and removed
    energy: np.ndarray  # GeV
    chi2: np.ndarray  # float32, per degree of freedom
    n_pulses: np.ndarray  # uint8: pulses above threshold, in-time included


def window_phase(trigger_ns: np.ndarray, expected_peak_ns: float, sample_period_ns: float) -> np.ndarray:
    """Where the in-time pulse of a trigger at ``trigger_ns`` peaks in its window, ns after sample 0
    (before the channel's time offset): sample 0 is at ceil(t / period) x period - expected_peak_ns."""
    t = np.asarray(trigger_ns, dtype=np.int64)
    period = float(sample_period_ns)
    return expected_peak_ns - (np.ceil(t / period) * period - t)


def reconstruct(
    waveforms: np.ndarray,
    gain: np.ndarray,
    noise: np.ndarray | None = None,
    time_offset_ns: np.ndarray | None = None,
    status: np.ndarray | None = None,
    config: RecoConfig | None = None,
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS,
    shape: np.ndarray | None = None,
    *,
    trigger_ns: np.ndarray | None = None,
    neighbours: Neighbours | None = None,
    time_offset_error_ns: np.ndarray | None = None,
    channel_ids: np.ndarray | None = None,
    tracker: ChannelTracker | None = None,
    noise_error: np.ndarray | None = None,
) -> Reco:
    """Reconstruct waveforms (E, C, S) of channels whose per-channel constants (C,) are given.

    ``gain`` in ADC counts per MeV; ``noise`` in ADC counts RMS per sample (zero suppression and the
    fit's errors; default 1.5); ``time_offset_ns`` where each channel's pulses peak relative to the
    nominal time, subtracted from the peak time; ``time_offset_error_ns`` its uncertainty, the width of the
    prior on each window's time shift (NaN or missing: ``config.time_prior_ns``); ``status`` 1 (dead)
    zeroes the energy; ``shape`` the pulse-shape class (daq.detector.PulseShape) of each channel (default:
    ``daq.detector.CHANNELS["shape"]`` when C is the 110 channels, else EM). ``trigger_ns`` (E,) the
    trigger times (default unknown: the in-time pulse expected at ``expected_peak_ns``, every window's time
    shift fitted, no time offsets learned); ``neighbours``
    the other particles near each trigger (default none: every window has the in-time pulse and whatever
    the residuals reveal); ``channel_ids`` the detector channel id of each of the C channels (default
    0..C-1), to match the neighbours' primitive rows; ``tracker`` the run's :class:`ChannelTracker` (updated;
    default: a fresh one, forgotten after the call); ``noise_error`` the calibration's noise uncertainty:
    where it is NaN the noise is learned in the run (default: learned if ``noise`` is not given).
    """
    cfg = config or RecoConfig()
    w = np.asarray(waveforms)
    if w.ndim != 3:
        raise ValueError(f"waveforms must be (events, channels, samples), got shape {w.shape}")
    n_ev, n_ch, n_s = w.shape
    if n_s < 4:
        raise ValueError(f"{n_s} samples are too few for a pulse and two pedestals")
    period = float(sample_period_ns)
    if trigger_ns is None:
        phase = np.full(n_ev, float(cfg.expected_peak_ns))
    else:
        if np.shape(trigger_ns) != (n_ev,):
            raise ValueError(f"trigger_ns must be ({n_ev},), got {np.shape(trigger_ns)}")
        phase = window_phase(trigger_ns, cfg.expected_peak_ns, period)
    ids = np.arange(n_ch) if channel_ids is None else np.asarray(channel_ids, dtype=np.int64)
    if ids.shape != (n_ch,):
        raise ValueError(f"channel_ids must be ({n_ch},), got {ids.shape}")
    chan = _channel_arrays(
        cfg, n_ch, gain, noise, time_offset_ns, time_offset_error_ns, status, shape, ids, neighbours
    )
    nb = neighbours if neighbours is not None else Neighbours.none(n_ev, np.zeros(0, np.uint16))
    if nb.count.shape != (n_ev,):
        raise ValueError(f"neighbours are for {nb.count.shape[0]} events, not {n_ev}")
    ptr, dt, amp = _flat_neighbours(nb)
    out = Reco(
        pedestal_even=np.empty((n_ev, n_ch), np.float32),
        pedestal_odd=np.empty((n_ev, n_ch), np.float32),
        amplitude=np.empty((n_ev, n_ch), np.float32),
        peak_time=np.empty((n_ev, n_ch), np.float32),
        pileup=np.empty((n_ev, n_ch), np.bool_),
        energy=np.empty((n_ev, n_ch), np.float32),
        chi2=np.empty((n_ev, n_ch), np.float32),
        n_pulses=np.empty((n_ev, n_ch), np.uint8),
    )
    if n_ev == 0 or n_ch == 0:
        return out
    from daq import pulse_fit  # numba's import costs ~0.5 s: only processes that reconstruct pay it

    tpl = templates(cfg, period)
    settings = fit_settings(cfg, period)
    if trigger_ns is None:
        # the trigger phase is unknown: each window's time shift is fitted (a learned offset would pin the
        # pulses to the nominal phase, whatever the event's real one)
        settings = settings._replace(track_min=pulse_fit.NEVER)
    tr = tracker if tracker is not None else ChannelTracker.new(n_ch)
    if tr.n.shape != (n_ch,):
        raise ValueError(f"the channel tracker is for {tr.n.shape[0]} channels, not {n_ch}")
    if noise_error is not None:
        learn = ~np.isfinite(np.asarray(noise_error, dtype=np.float64).reshape(-1))
        if learn.shape != (n_ch,):
            raise ValueError(f"noise_error must have one value per channel ({n_ch}), got shape {learn.shape}")
    else:
        learn = np.full(n_ch, noise is None)
    pulse_fit.fit_windows(
        np.ascontiguousarray(w, dtype=np.uint16),
        phase.astype(np.float64),
        ptr,
        dt,
        amp,
        *chan,
        tpl.value,
        tpl.slope,
        tpl.start,
        tpl.length,
        tpl.n_phase,
        settings,
        tr.n,
        tr.sum_ns,
        learn,
        tr.noise_n,
        tr.noise_hist,
        tr.noise_est,
        out.amplitude,
        out.peak_time,
        out.chi2,
        out.n_pulses,
        out.pileup,
        out.energy,
        out.pedestal_even,
        out.pedestal_odd,
    )
    return out


def _flat_neighbours(nb: Neighbours) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The padded neighbours as the kernel's flat arrays: ptr (E + 1,), dt (N,) float64, amp (P, N) float32."""
    count = nb.count.astype(np.int64)
    ptr = np.zeros(count.size + 1, np.int64)
    np.cumsum(count, out=ptr[1:])
    valid = np.arange(nb.dt_ns.shape[1])[None, :] < count[:, None]
    dt = nb.dt_ns[valid].astype(np.float64)
    amp = np.ascontiguousarray(nb.amp[valid].T, dtype=np.float32)
    if amp.shape[0] == 0:
        amp = np.zeros((1, dt.size), np.float32)
    return ptr, dt, amp


def _channel_arrays(
    cfg: RecoConfig,
    n_ch: int,
    gain: np.ndarray,
    noise: np.ndarray | None,
    time_offset_ns: np.ndarray | None,
    time_offset_error_ns: np.ndarray | None,
    status: np.ndarray | None,
    shape: np.ndarray | None,
    ids: np.ndarray,
    neighbours: Neighbours | None,
) -> tuple[np.ndarray, ...]:
    """The kernel's per-channel arrays (validated): class, offset, offset prior, noise, threshold, GeV per
    count, dead, primitive row, primitive saturation level."""

    def per_channel(name: str, a: np.ndarray | None, default: float) -> np.ndarray:
        x = np.full(n_ch, default, np.float64) if a is None else np.asarray(a, dtype=np.float64)
        if x.shape != (n_ch,):
            raise ValueError(f"{name} must have one value per channel ({n_ch}), got shape {x.shape}")
        return np.ascontiguousarray(x)

    g = per_channel("gain", gain, 1.0)
    if not np.all(g > 0):
        raise ValueError("gains must be > 0")
    sig = per_channel("noise", noise, 1.5)
    sig = np.where(sig > 0, sig, 1.5)
    t_off = per_channel("time_offset_ns", time_offset_ns, 0.0)
    t_err = per_channel("time_offset_error_ns", time_offset_error_ns, np.nan)
    t_sigma = np.where(np.isfinite(t_err), np.maximum(t_err, 0.0), cfg.time_prior_ns)
    dead = np.zeros(n_ch, np.bool_) if status is None else np.asarray(status).reshape(-1) == DEAD
    if dead.shape != (n_ch,):
        raise ValueError(f"status must have one value per channel ({n_ch}), got shape {dead.shape}")
    row = np.full(n_ch, -1, np.int64)
    if neighbours is not None and neighbours.channels.size:
        where = {int(c): r for r, c in enumerate(np.asarray(neighbours.channels).tolist())}
        row = np.array([where.get(int(c), -1) for c in ids], np.int64)
    # a primitive is the pulse height above pedestal, clipped at the ADC range: near it, no prior
    full = np.full(n_ch, detector.ADC_MAX - detector.NOMINAL_PEDESTAL - 100.0)
    return (
        _shape_classes(shape, n_ch).astype(np.int64),
        t_off,
        t_sigma,
        sig,
        cfg.zero_suppress_sigma * sig,
        1.0 / (1000.0 * g),
        np.ascontiguousarray(dead),
        row,
        full,
    )


@functools.lru_cache(maxsize=8)
def templates(config: RecoConfig, sample_period_ns: float) -> Templates:
    """The fit's pre-sampled templates, one per shape class (daq.detector.PulseShape order)."""
    from daq import pulse_fit

    fwhm = shape_fwhm(config)
    return pulse_fit.make_templates(
        [functools.partial(template, order=config.pulse_order, fwhm_ns=fwhm[c]) for c in detector.PulseShape],
        sample_period_ns,
    )


@functools.lru_cache(maxsize=8)
def fit_settings(cfg: RecoConfig, sample_period_ns: float) -> FitSettings:
    from daq import pulse_fit

    return pulse_fit.FitSettings(
        period=float(sample_period_ns),
        adc_max=float(detector.ADC_MAX),
        quiet_sigma=cfg.quiet_sigma,
        merge_ns=cfg.merge_ns,
        prior_frac=cfg.prior_fraction,
        prim_margin=0.0,
        gn_snr=cfg.time_fit_sigma,
        gn_max=cfg.time_fit_steps,
        gn_tol_ns=0.02,
        gn_off_ns=0.25,
        track_min=cfg.time_track_pulses if cfg.time_track_pulses > 0 else pulse_fit.NEVER,
        track_snr=cfg.time_fit_sigma,
        noise_min=cfg.noise_track_windows if cfg.noise_track_windows > 0 else pulse_fit.NEVER,
        noise_floor=0.3,
        noise_cap=4.0,
        max_shift_ns=cfg.max_shift_ns,
        extra_max=cfg.extra_pulses,
        extra_sigma=cfg.extra_sigma,
        extra_sep_ns=2.0 * sample_period_ns,
        extra_dchi2=cfg.extra_dchi2,
        chi2_sigma=cfg.chi2_sigma,
        shape_tol=cfg.shape_tolerance,
        min_overlap=1e-3,
    )


def neighbour_range_ns(config: RecoConfig, sample_period_ns: float, n_samples: int) -> tuple[float, float]:
    """(before, after): a particle arriving this long before or after a trigger can still put a pulse
    into the trigger's window (the longest template, with the largest time shift)."""
    tpl = templates(config, float(sample_period_ns))
    span = float(np.max(-tpl.start + (tpl.length - 1) * sample_period_ns))
    margin = config.max_shift_ns + 2 * sample_period_ns
    before = config.expected_peak_ns + span + margin
    after = n_samples * sample_period_ns - config.expected_peak_ns + float(np.max(-tpl.start)) + margin
    return before, after


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
    to its peak (float64): the fit's pulse-shape template."""
    tau = _template_tau(order, fwhm_ns)
    t = np.asarray(dt_ns, dtype=np.float64) / tau + 1.0
    tp = np.clip(t, 0.0, None)
    return np.where(t > 0, tp**order * np.exp(order * (1.0 - tp)), 0.0)


@functools.lru_cache(maxsize=32)
def _template_tau(order: int, fwhm_ns: float) -> float:
    t = np.linspace(1e-6, 20.0, 200001)
    above = t[t**order * np.exp(order * (1.0 - t)) >= 0.5]
    return fwhm_ns / float(above[-1] - above[0])


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
def synthesize(
    amplitude: np.ndarray,
    peak_ns: np.ndarray | float = 125.0,
    pedestal_even: float | np.ndarray = detector.NOMINAL_PEDESTAL,
    pedestal_odd: float | np.ndarray = detector.NOMINAL_PEDESTAL,
    noise: float = 0.0,
    n_samples: int = detector.N_SAMPLES,
    fwhm_ns: float | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    order: int = 3,
) -> np.ndarray:
    """Waveforms (E, C, S) uint16 with one pulse of ``amplitude`` (E, C) ADC counts per channel peaking at
    ``peak_ns`` after sample 0: the reconstruction's own template shape (CR-RC^order), ``fwhm_ns`` by
    default each channel's shape class (C must then be 110). For tests and benchmarks; the simulator has
    its own electronics model."""
    amp = np.asarray(amplitude, dtype=np.float64)
    if fwhm_ns is None:
        width = shape_fwhm(RecoConfig())
        fwhm_ns = np.array([width[detector.PulseShape(s)] for s in detector.CHANNELS["shape"]])
    t = np.arange(n_samples) * detector.SAMPLE_PERIOD_NS
    peak = np.broadcast_to(np.asarray(peak_ns, dtype=np.float64), amp.shape)
    fwhm = np.broadcast_to(np.asarray(fwhm_ns, dtype=np.float64), amp.shape)
    w = np.zeros((*amp.shape, n_samples))
    for f in np.unique(fwhm):
        sel = fwhm == f
        w[sel] = amp[sel][:, None] * template(t[None, :] - peak[sel][:, None], order, float(f))
    w[..., 0::2] += (
        np.asarray(pedestal_even, dtype=np.float64)[..., None] if np.ndim(pedestal_even) else pedestal_even
    )
    w[..., 1::2] += (
        np.asarray(pedestal_odd, dtype=np.float64)[..., None] if np.ndim(pedestal_odd) else pedestal_odd
    )
    if noise > 0:
        w += (rng or np.random.default_rng()).normal(0.0, noise, w.shape)
    return np.clip(np.rint(w), 0, detector.ADC_MAX).astype(np.uint16)
