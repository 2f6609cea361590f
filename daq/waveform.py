"""Waveform reconstruction, vectorized over (events, channels, samples): pure functions, no I/O.

For every channel of every event:

- pedestal: mean of the first ``n_pedestal`` samples, even and odd samples separately (the digitizer
  interleaves two ADCs, so their pedestals differ);
- amplitude: maximum of the pedestal-subtracted samples, in ADC counts;
- peak time: sample of the maximum refined by a parabola through it and its neighbours, in ns from the
  start of the window, minus the channel's time offset;
- pile-up flag: a second local maximum at least ``pileup_separation`` samples away from the main one and
  higher than ``pileup_fraction`` of it, or a main pulse more than ``peak_window_ns`` away from
  ``expected_peak_ns`` (only for pulses above the zero-suppression threshold);
- energy: amplitude / gain (ADC counts per MeV) in GeV, zero below ``zero_suppress_sigma`` x noise and for
  dead channels.

Event sums (GeV): E_PRS (30 PRS cells), E_ECAL (30 ECAL + 30 PRS cells: the whole calorimeter), E_HCAL
(36 cells), E_VETO (per slab sqrt(E1 x E2), summed), E_SRD (3 modules), E_miss = beam energy - E_ECAL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daq import detector

DEAD = 1  # calibration status code of a dead channel


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

    def __post_init__(self) -> None:
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
) -> Reco:
    """Reconstruct waveforms (E, C, S) of channels whose per-channel constants (C,) are given.

    ``gain`` in ADC counts per MeV; ``noise`` in ADC counts RMS (zero suppression; default none);
    ``time_offset_ns`` subtracted from the peak time; ``status`` 1 (dead) zeroes the energy.
    """
    cfg = config or RecoConfig()
    w = np.asarray(waveforms)
    if w.ndim != 3:
        raise ValueError(f"waveforms must be (events, channels, samples), got shape {w.shape}")
    n_ev, n_ch, n_s = w.shape
    if n_s < max(cfg.n_pedestal + 3, 3):
        raise ValueError(f"{n_s} samples are too few for a {cfg.n_pedestal}-sample pedestal")
    sig = w.astype(np.float32)
    flat = sig.reshape(-1, n_s)
    n_ped = cfg.n_pedestal - cfg.n_pedestal % 2  # whole (even, odd) pairs
    # pedestals from 1-D (strided) sample columns: fast, unlike 2-D ops with a tiny inner dimension
    p_even = flat[:, 0].copy()
    p_odd = flat[:, 1].copy()
    for k in range(2, n_ped, 2):
        p_even += flat[:, k]
        p_odd += flat[:, k + 1]
    p_even *= np.float32(2.0 / n_ped)
    p_odd *= np.float32(2.0 / n_ped)
    ped = np.empty((flat.shape[0], 2), np.float32)
    ped[:, 0], ped[:, 1] = p_even, p_odd
    # each sample minus the pedestal of its parity (tile is the fastest way to broadcast the pairs)
    flat[:, : n_s - n_s % 2] -= np.tile(ped, n_s // 2)
    if n_s % 2:
        flat[:, -1] -= p_even
    ped_e = p_even.reshape(n_ev, n_ch)
    ped_o = p_odd.reshape(n_ev, n_ch)
    rows = np.arange(flat.shape[0])
    imax = flat.argmax(axis=1)
    amp = flat[rows, imax]
    # parabolic interpolation around the maximum (not at the window edges)
    ic = np.minimum(np.maximum(imax, 1), n_s - 2)
    ym, y0, yp = flat[rows, ic - 1], flat[rows, ic], flat[rows, ic + 1]
    den = ym - 2.0 * y0 + yp
    curved = den < 0
    delta = np.where(curved, 0.5 * (ym - yp) / np.where(curved, den, np.float32(-1)), np.float32(0))
    delta = np.where(imax == ic, np.minimum(np.maximum(delta, -0.5), 0.5), np.float32(0)).astype(np.float32)
    t_raw = (imax + delta).astype(np.float32) * np.float32(sample_period_ns)
    t_peak = t_raw.reshape(n_ev, n_ch)
    if time_offset_ns is not None:
        t_peak = t_peak - np.asarray(time_offset_ns, dtype=np.float32)
    # zero suppression threshold per channel
    thr_ch = (
        np.zeros(n_ch, np.float32)
        if noise is None
        else np.float32(cfg.zero_suppress_sigma) * np.asarray(noise, dtype=np.float32)
    )
    thr = np.broadcast_to(thr_ch, (n_ev, n_ch)).ravel()
    above = amp > thr
    # pile-up, only for pulses above threshold: another local maximum far from the main one, or a main
    # pulse out of time
    pileup = np.zeros(flat.shape[0], bool)
    sel = np.flatnonzero(above)
    if sel.size:
        sub = flat[sel]
        core = sub[:, 1:-1]
        local = (core > sub[:, :-2]) & (core >= sub[:, 2:])
        local &= core > np.maximum(np.float32(cfg.pileup_fraction) * amp[sel], thr[sel])[:, None]
        # far[i, j]: sample j + 1 is at least pileup_separation samples from a maximum at sample i
        far = np.abs(np.arange(1, n_s - 1)[None, :] - np.arange(n_s)[:, None]) >= cfg.pileup_separation
        local &= far[imax[sel]]
        second = np.zeros(sel.size, bool)
        second[np.flatnonzero(local) // (n_s - 2)] = True  # rare: cheaper than any() along short rows
        pileup[sel] = second | (np.abs(t_raw[sel] - np.float32(cfg.expected_peak_ns)) > cfg.peak_window_ns)
    gev_per_count = (1.0 / (1000.0 * np.asarray(gain, dtype=np.float64))).astype(np.float32)
    amp2 = amp.reshape(n_ev, n_ch)
    energy = np.where(above.reshape(n_ev, n_ch), amp2 * gev_per_count, np.float32(0)).astype(np.float32)
    if status is not None:
        energy[:, np.asarray(status) == DEAD] = 0
    return Reco(
        ped_e,
        ped_o,
        amp2.astype(np.float32, copy=False),
        t_peak.astype(np.float32, copy=False),
        pileup.reshape(n_ev, n_ch),
        energy,
    )


def event_sums(energy: np.ndarray, beam_energy_gev: float = 100.0) -> np.ndarray:
    """Sums (6, E) float32 in GeV, rows ``daq.batch.SUM_NAMES``, from per-channel energies (E, 110)."""
    e = np.asarray(energy, dtype=np.float32)
    e_prs = e[:, detector.PRS_IDS].sum(axis=1)
    e_ecal = e[:, detector.ECAL_IDS].sum(axis=1) + e_prs
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
