"""Pedestals (even and odd samples), noise and channel status from pulse-free waveform samples.

The digitizer interleaves two ADCs, so even and odd samples have their own pedestal. Random-trigger
windows are mostly pulse-free, but at 2 MHz a 400 ns window holds ~0.8 other beam particles, so pulses
(pile-up) must be cut out before averaging:

1. :func:`initial_pedestals`: per channel and parity, the median of all samples and the MAD noise
   (robust while pulses cover well under half of the samples).
2. :class:`PedestalAccumulator`: every sum of 3 consecutive samples (minus the initial pedestal) beyond
   +-``threshold`` x noise x sqrt(3) marks a pulse; the samples from ``guard[0]`` before to ``guard[1]``
   after it are excluded (rise and tail), and the rest are summed per parity in float64. The cut is
   symmetric, so noise fluctuations it removes do not bias the mean. Chunks of any size can be added.

The result also gives the fraction of windows holding a pulse (the channel's occupancy), used by
:func:`classify_channels` to find hot channels (a channel cannot fire more often than the beam counters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.constants import DEAD, GOOD, HOT, NOISY
from calibration.fitting import masked_truncated_mean
from daq import detector


def _as_windows(waveforms: np.ndarray) -> np.ndarray:
    w = np.asarray(waveforms)
    if w.ndim != 3 or w.shape[2] < 4:
        raise ValueError(f"waveforms must have shape (events, channels, samples>=4), got {w.shape}")
    return w


#: windows used for the first (median-based) estimate in :func:`pedestals`
INITIAL_WINDOWS = 1000
#: a "large" pulse (hot-channel search): above this many noise sigma
BIG_PULSE_SIGMA = 10.0


def _parity_rows(ped_even: np.ndarray, ped_odd: np.ndarray, n_samples: int) -> np.ndarray:
    """(C, S) pedestal of every sample: even samples from ped_even, odd from ped_odd."""
    rows = np.empty((ped_even.size, n_samples), dtype=np.float64)
    rows[:, 0::2] = ped_even[:, None]
    rows[:, 1::2] = ped_odd[:, None]
    return rows


def initial_pedestals(waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First pedestal of even and odd samples and noise per channel: (ped_even, ped_odd, noise).

    Per channel and parity: the mean of the samples within +-3 sigma of the median (sigma from the MAD;
    pulses, on one side only, fall outside), iterated twice. The median alone is quantized to whole ADC
    counts, which would bias the pulse finder by up to half a count.
    """
    w = _as_windows(waveforms)
    if w.shape[0] == 0:
        raise ValueError("no waveforms to estimate pedestals from")
    c = w.shape[1]
    even = np.moveaxis(w[:, :, 0::2], 1, 0).reshape(c, -1).astype(np.float64)
    odd = np.moveaxis(w[:, :, 1::2], 1, 0).reshape(c, -1).astype(np.float64)
    peds, spreads = [], []
    for x in (even, odd):
        mu = np.median(x, axis=1)
        s = np.maximum(1.4826 * np.median(np.abs(x - mu[:, None]), axis=1), 0.5)
        for _ in range(3):
            sel = np.abs(x - mu[:, None]) <= 3.0 * s[:, None]
            n = np.maximum(sel.sum(axis=1), 1)
            mu = np.where(sel, x, 0.0).sum(axis=1) / n
            s = np.maximum(np.sqrt(np.where(sel, (x - mu[:, None]) ** 2, 0.0).sum(axis=1) / n) / 0.9866, 0.3)
        peds.append(mu)
        spreads.append(s)
    # 0.9866 = sigma of a Gaussian truncated at +-3 sigma, relative to sigma
    return peds[0], peds[1], np.sqrt(0.5 * (spreads[0] ** 2 + spreads[1] ** 2))


@dataclass(frozen=True, eq=False)
class PedestalResult:
    """Per-channel pedestals, noise and occupancy from pulse-free samples (arrays over channels)."""

    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    noise: np.ndarray
    pedestal_even_error: np.ndarray
    pedestal_odd_error: np.ndarray
    noise_error: np.ndarray
    n_windows: int
    n_samples_used: np.ndarray  # per channel, both parities
    pulse_fraction: np.ndarray  # fraction of windows in which a pulse was found
    stray_fraction: np.ndarray  # fraction of windows with a large pulse not coincident with a beam counter


def _dilate(mask: np.ndarray, before: int, after: int) -> np.ndarray:
    """``mask`` (..., S) widened along the last axis by ``before`` samples to the left, ``after`` to the right."""
    out = mask.copy()
    for off in range(1, after + 1):
        out[..., off:] |= mask[..., :-off]
    for off in range(1, before + 1):
        out[..., :-off] |= mask[..., off:]
    return out


class PedestalAccumulator:
    """Sums of pulse-free samples per channel and parity, over chunks of waveforms.

    ``ped_even``, ``ped_odd`` and ``noise`` are the starting estimates (e.g. from
    :func:`initial_pedestals` on a first chunk, or the current constants for monitoring).
    ``veto_channels``: channels whose pulses mark a particle (the counters, :data:`MARKER_IDS`): the
    samples around such a pulse are cut in every channel, which removes pile-up too small to see in a
    channel itself.
    """

    def __init__(
        self,
        ped_even: np.ndarray,
        ped_odd: np.ndarray,
        noise: np.ndarray,
        threshold: float = 3.0,
        guard: tuple[int, int] = (3, 8),
        min_noise: float = 0.5,
        veto_channels: np.ndarray | None = None,
    ) -> None:
        self.ped_even = np.asarray(ped_even, dtype=np.float64).copy()
        self.ped_odd = np.asarray(ped_odd, dtype=np.float64).copy()
        if not (self.ped_even.shape == self.ped_odd.shape == np.shape(noise)) or self.ped_even.ndim != 1:
            raise ValueError("ped_even, ped_odd and noise must be 1-D arrays of the same length")
        if threshold <= 0 or guard[0] < 0 or guard[1] < 0:
            raise ValueError("threshold must be > 0 and guard sample counts >= 0")
        c = self.ped_even.size
        self.threshold = float(threshold)
        self.guard = guard
        self.veto_channels = None if veto_channels is None else np.asarray(veto_channels, dtype=np.intp)
        self._cut = self.threshold * math.sqrt(3.0) * np.maximum(np.asarray(noise, np.float64), min_noise)
        self.n_windows = 0
        self._n = np.zeros((c, 2), np.int64)
        self._sum = np.zeros((c, 2), np.float64)
        self._sum2 = np.zeros((c, 2), np.float64)
        self._pulses = np.zeros(c, np.int64)
        self._big = np.zeros(c, np.int64)
        self._stray = np.zeros(c, np.int64)
        self._big_cut = (BIG_PULSE_SIGMA * np.maximum(np.asarray(noise, np.float64), min_noise)).astype(
            np.float32
        )

    @property
    def n_channels(self) -> int:
        return int(self.ped_even.size)

    def pulse_free(self, waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Deviations from the starting pedestal, the mask of pulse-free samples and the pulse flags.

        Returns ``(d, use, pulse, stray)``: d float32 (E, C, S); use bool (E, C, S); pulse bool (E, C), a
        pulse was found; stray bool (E, C), a large pulse (> 10 noise) with no beam-counter pulse within
        +-3 samples (not made by a beam particle: what a hot channel does).
        """
        w = _as_windows(waveforms)
        if w.shape[1] != self.n_channels:
            raise ValueError(f"waveforms have {w.shape[1]} channels, expected {self.n_channels}")
        s = w.shape[2]
        d = w.astype(np.float32)
        d -= _parity_rows(self.ped_even, self.ped_odd, s).astype(np.float32)
        s3 = d[:, :, :-2] + d[:, :, 1:-1] + d[:, :, 2:]  # centred on samples 1..S-2
        hit = np.abs(s3) > self._cut[None, :, None].astype(np.float32)
        centre = np.zeros(d.shape, dtype=bool)
        centre[:, :, 1:-1] = hit
        imax = d.argmax(axis=2)
        big = np.take_along_axis(d, imax[..., None], axis=2)[..., 0] > self._big_cut[None, :]
        if self.veto_channels is not None and self.veto_channels.size:
            # a pulse in a beam counter means a particle crossed the detector then: cut that time everywhere
            beam: np.ndarray = np.any(centre[:, self.veto_channels, :], axis=1)
            centre |= beam[:, None, :]
            near = _dilate(beam, 3, 3)
            inside = (imax >= 3) & (imax < s - 2)  # a maximum at the edge is the tail of an earlier pulse
            stray = big & inside & ~np.take_along_axis(near, imax, axis=1)
        else:
            stray = np.zeros_like(big)
        excl = _dilate(centre, *self.guard)
        return d, ~excl, hit.any(axis=2), stray

    def add(self, waveforms: np.ndarray) -> None:
        """Add a chunk of waveforms (E, C, S), integer ADC samples."""
        d, use, pulse, stray = self.pulse_free(waveforms)
        self.n_windows += d.shape[0]
        self._pulses += pulse.sum(axis=0)
        self._stray += stray.sum(axis=0)
        dm = np.where(use, d, np.float32(0.0)).astype(np.float64)
        for parity in (0, 1):
            self._n[:, parity] += use[:, :, parity::2].sum(axis=(0, 2))
            x = dm[:, :, parity::2]
            self._sum[:, parity] += x.sum(axis=(0, 2))
            self._sum2[:, parity] += (x * x).sum(axis=(0, 2))

    def result(self) -> PedestalResult:
        """Pedestals, noise and errors; channels without any pulse-free sample get NaN."""
        n = self._n.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self._sum / n
            var = np.maximum(self._sum2 / n - mean * mean, 0.0)
            ntot = n.sum(axis=1)
            noise = np.sqrt((n * var).sum(axis=1) / ntot)
            err = noise[:, None] / np.sqrt(n)
            noise_err = noise / np.sqrt(2.0 * ntot)
            occupancy = self._pulses / self.n_windows if self.n_windows else np.full(self.n_channels, np.nan)
            stray = self._stray / self.n_windows if self.n_windows else np.full(self.n_channels, np.nan)
        return PedestalResult(
            pedestal_even=self.ped_even + mean[:, 0],
            pedestal_odd=self.ped_odd + mean[:, 1],
            noise=noise,
            pedestal_even_error=err[:, 0],
            pedestal_odd_error=err[:, 1],
            noise_error=noise_err,
            n_windows=self.n_windows,
            n_samples_used=self._n.sum(axis=1),
            pulse_fraction=np.asarray(occupancy, dtype=np.float64),
            stray_fraction=np.asarray(stray, dtype=np.float64),
        )


#: the counters S0, S2, S3 (every beam particle crosses them) and V1, V2 (halo particles): a pulse in any
#: of them marks a particle crossing the detector at that time
MARKER_IDS = np.asarray(detector.COUNTER_IDS, dtype=np.intp)


def pedestals(
    waveforms: np.ndarray,
    threshold: float = 3.0,
    guard: tuple[int, int] = (3, 8),
    veto_channels: np.ndarray | None = MARKER_IDS,
) -> PedestalResult:
    """Two-pass pedestal and noise estimate from one array of (mostly random-trigger) waveforms.

    ``veto_channels`` default to the five counters (pass None for arrays that are not all 110 channels).
    """
    acc = PedestalAccumulator(
        *initial_pedestals(np.asarray(waveforms)[:INITIAL_WINDOWS]),
        threshold=threshold,
        guard=guard,
        veto_channels=veto_channels,
    )
    acc.add(waveforms)
    return acc.result()


def prepulse_pedestals(waveforms: np.ndarray, n_pre: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Cross-check: pedestal of even and odd samples from the first ``n_pre`` samples of any events.

    Per event the pre-pulse samples of each parity are averaged; over events a truncated mean (3 sigma)
    removes windows spoiled by an earlier pulse's tail.
    """
    w = _as_windows(waveforms)
    if not 2 <= n_pre <= w.shape[2]:
        raise ValueError(f"n_pre must be in 2..{w.shape[2]}, got {n_pre}")
    if w.shape[0] == 0:
        raise ValueError("no waveforms for the pre-pulse pedestal")
    pre = w[:, :, :n_pre].astype(np.float64)
    even, _, _ = masked_truncated_mean(pre[:, :, 0::2].mean(axis=2))
    odd, _, _ = masked_truncated_mean(pre[:, :, 1::2].mean(axis=2))
    return even, odd


@dataclass(frozen=True)
class StatusRules:
    """Thresholds of :func:`classify_channels`."""

    dead_noise: float = 0.2  # noise below this (ADC counts): the channel is flat -> dead
    noisy_factor: float = 3.0  # noise above this x the median of its detector -> noisy
    hot_stray: float = 0.005  # large pulses without a beam particle in more than this fraction of windows
    hot_factor: float = 5.0  # ... and more than this x the median of its detector -> hot

    def __post_init__(self) -> None:
        if self.dead_noise < 0 or self.noisy_factor <= 1 or self.hot_stray <= 0 or self.hot_factor <= 1:
            raise ValueError("need dead_noise >= 0, noisy_factor > 1, hot_stray > 0, hot_factor > 1")


def classify_channels(
    result: PedestalResult, rules: StatusRules | None = None
) -> tuple[np.ndarray, list[str]]:
    """Status of every channel (GOOD, DEAD, HOT, NOISY) from a full 110-channel pedestal result.

    dead: flat (noise below ``dead_noise``) or stuck at 0 / full scale; hot: large pulses not coincident
    with any beam counter (so not made by a beam particle) in more than ``hot_stray`` of the random
    windows and ``hot_factor`` x its detector's median; noisy: noise above ``noisy_factor`` x its
    detector's median. Returns the status array and one line per non-good channel saying why.
    """
    rules = rules or StatusRules()
    if result.noise.size != detector.N_CHANNELS:
        raise ValueError(f"expected {detector.N_CHANNELS} channels, got {result.noise.size}")
    status = np.full(detector.N_CHANNELS, GOOD, np.uint8)
    reasons: list[str] = []
    dets = detector.CHANNELS["detector"]
    for ch in range(detector.N_CHANNELS):
        name = detector.channel_name(ch)
        noise = result.noise[ch]
        peds = (result.pedestal_even[ch], result.pedestal_odd[ch])
        same = dets == dets[ch]
        group_noise = float(np.nanmedian(result.noise[same]))
        group_stray = float(np.nanmedian(result.stray_fraction[same]))
        stray = result.stray_fraction[ch]
        if (
            not np.isfinite(noise)
            or noise < rules.dead_noise
            or min(peds) < 1
            or max(peds) > detector.ADC_MAX - 1
        ):
            status[ch] = DEAD
            reasons.append(f"{name}: dead (noise {noise:.2f}, pedestals {peds[0]:.1f}/{peds[1]:.1f})")
        elif stray > rules.hot_stray and stray > rules.hot_factor * group_stray:
            status[ch] = HOT
            reasons.append(
                f"{name}: hot (pulses without a beam particle in {stray:.1%} of random windows, "
                f"detector median {group_stray:.1%})"
            )
        elif noise > rules.noisy_factor * group_noise:
            status[ch] = NOISY
            reasons.append(f"{name}: noisy (noise {noise:.2f} counts, detector median {group_noise:.2f})")
    return status, reasons


def neighbours(ch: int) -> np.ndarray:
    """Channels expected to see the same particles as ``ch``: the 4 adjacent cells of its ECAL/PRS grid or
    HCAL module, the other PMT and slabs of the VETO, the other SRD modules, the other beam counters
    (S0 S2 S3) or hole vetoes (V1 V2)."""
    c = detector.CHANNELS
    det = c["detector"]
    same = np.flatnonzero((det == det[ch]) & (np.arange(detector.N_CHANNELS) != ch))
    kind = detector.Detector(int(det[ch]))
    if kind in (detector.Detector.ECAL, detector.Detector.PRS, detector.Detector.HCAL):
        adjacent = (np.abs(c["x"][same] - c["x"][ch]) + np.abs(c["y"][same] - c["y"][ch])) == 1
        neighbours: np.ndarray = same[adjacent & (c["module"][same] == c["module"][ch])]
        return neighbours
    if kind is detector.Detector.COUNTER:
        name = detector.channel_name(ch)
        group = detector.BEAM_COUNTERS if name in detector.BEAM_COUNTERS else detector.VETO_COUNTERS
        return np.array([detector.counter_id(n) for n in group if n != name], np.intp)
    return same


def expected_signal(mean: np.ndarray, error: np.ndarray, min_significance: float = 5.0) -> np.ndarray:
    """Per channel (110,): the mean signal its neighbourhood predicts (NaN where it cannot tell).

    ECAL and PRS grids: showers spread nearly as a product of an x and a y profile, so cell (x, y) is predicted from each diagonal square as S(x, y') S(x', y) / S(x', y')
    (x' = x +- 1, y' = y +- 1, all three significant); the median of the available squares. This follows
    the steep fall-off of a shower (20x from one cell to the next far from its centre). HCAL cells: only in
    a uniformly lit module (:func:`_uniform_module_prediction`). Other channels (counters, SRD, VETO): the
    median of the channels seeing the same particles (:func:`neighbours`)."""
    m = np.asarray(mean, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    sig = m > min_significance * e
    c = detector.CHANNELS
    grid = {
        (int(c["detector"][i]), int(c["module"][i]), int(c["x"][i]), int(c["y"][i])): i for i in range(m.size)
    }
    out = np.full(m.size, np.nan)
    for ch in range(m.size):
        kind = detector.Detector(int(c["detector"][ch]))
        if kind is detector.Detector.HCAL:
            out[ch] = _uniform_module_prediction(ch, m, sig)
        elif kind in (detector.Detector.ECAL, detector.Detector.PRS):
            d, mod, x, y = int(c["detector"][ch]), int(c["module"][ch]), int(c["x"][ch]), int(c["y"][ch])
            preds = []
            for dx in (-1, 1):
                for dy in (-1, 1):
                    a, b, k = (
                        grid.get((d, mod, x, y + dy)),
                        grid.get((d, mod, x + dx, y)),
                        grid.get((d, mod, x + dx, y + dy)),
                    )
                    if a is not None and b is not None and k is not None and sig[a] and sig[b] and sig[k]:
                        preds.append(m[a] * m[b] / m[k])
            if preds:
                out[ch] = float(np.median(preds))
        else:
            nb = neighbours(ch)
            if nb.size:
                out[ch] = float(np.median(m[nb]))
    return out


def _uniform_module_prediction(ch: int, mean: np.ndarray, sig: np.ndarray, max_spread: float = 3.0) -> float:
    """An HCAL cell's expected signal: the median of the other cells of its module, but only when the module
    is lit nearly uniformly (all of them significant, largest/smallest <= ``max_spread``), as by a muon
    calibration beam spread over the face. Muons and hadron-shower cores cross one cell of each module, so
    the product rule of the calorimeter grids does not hold there: with the beam on the central cell it
    predicted large signals for live edge cells (NaN: not judged)."""
    c = detector.CHANNELS
    same = np.flatnonzero(
        (c["detector"] == c["detector"][ch]) & (c["module"] == c["module"][ch]) & (np.arange(mean.size) != ch)
    )
    if same.size == 0 or not sig[same].all():
        return float("nan")
    others = mean[same]
    if others.max() > max_spread * others.min():
        return float("nan")
    return float(np.median(others))


def dead_by_signal(
    mean: np.ndarray,
    error: np.ndarray,
    n_events: int,
    max_significance: float = 5.0,
    min_expected_significance: float = 20.0,
) -> tuple[np.ndarray, list[str]]:
    """Channels with live noise but no signal (a dead PMT or amplifier, gain 0).

    ``mean`` and ``error`` (110,): each channel's mean fixed-time signal (ADC counts; unbiased, so 0 for
    noise alone) over ``n_events`` triggered events, and its error. Dead: the mean is within
    ``max_significance`` errors of zero (or negative) while its neighbourhood predicts a signal
    (:func:`expected_signal`) of more than ``min_expected_significance`` errors. A cell that the particles
    hardly reach is not judged. Returns the mask and one line per dead channel."""
    m = np.asarray(mean, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if m.shape != (detector.N_CHANNELS,) or e.shape != m.shape:
        raise ValueError(f"mean and error must have {detector.N_CHANNELS} entries")
    expected = expected_signal(m, e)
    dead = np.zeros(detector.N_CHANNELS, bool)
    reasons: list[str] = []
    for ch in np.flatnonzero(np.isfinite(expected)):
        if expected[ch] > min_expected_significance * e[ch] and m[ch] < max_significance * e[ch]:
            dead[ch] = True
            reasons.append(
                f"{detector.channel_name(int(ch))}: dead (mean signal {m[ch]:.2f} +- {e[ch]:.2f} counts in "
                f"{n_events} triggered events, its neighbourhood predicts {expected[ch]:.1f})"
            )
    return dead, reasons
