"""Per-channel time offsets relative to the beam counters, from peak-time distributions.

For every event the reference time is the mean peak time of the beam counters (S0, S2, S3) that fired.
A channel's offset is the truncated mean (3 sigma, iterated from the median) of its peak time minus the
reference, over the events where it has a clear pulse (amplitude above a threshold, no pile-up flag).
After subtracting the offsets, an in-time particle appears at the counters' time in every channel; the
offsets therefore include the pulse-shape class's own peak delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.fitting import masked_truncated_mean
from daq import detector


@dataclass(frozen=True, eq=False)
class TimingResult:
    """Time offsets (ns) of all channels (arrays over the 110 channel ids)."""

    offset_ns: np.ndarray  # NaN where not determined
    error_ns: np.ndarray
    n_entries: np.ndarray
    determined: np.ndarray
    n_reference: int  # events with a reference time


def reference_time(peak_time: np.ndarray, fired: np.ndarray, ref_ids: np.ndarray | None = None) -> np.ndarray:
    """(E,) mean peak time of the reference channels that fired (NaN if none did)."""
    ids = np.asarray(
        ref_ids if ref_ids is not None else [detector.counter_id(n) for n in detector.BEAM_COUNTERS], np.intp
    )
    t = np.asarray(peak_time, dtype=np.float64)[:, ids]
    f = np.asarray(fired, dtype=bool)[:, ids] & np.isfinite(t)
    n = f.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(f, t, 0.0).sum(axis=1) / n, math.nan)


def time_offsets(
    peak_time: np.ndarray,
    amp: np.ndarray,
    threshold: np.ndarray | float,
    pileup: np.ndarray | None = None,
    ref_ids: np.ndarray | None = None,
    min_entries: int = 100,
) -> TimingResult:
    """Per-channel offsets from (E, 110) peak times (ns) and amplitudes (ADC counts).

    ``threshold``: amplitude a pulse needs for its time to count (per channel (110,) or scalar; e.g. 10 x
    noise); ``pileup``: (E, 110) flags of pulses to ignore.
    """
    t = np.asarray(peak_time, dtype=np.float64)
    a = np.asarray(amp, dtype=np.float64)
    if t.shape != a.shape or t.ndim != 2:
        raise ValueError(f"peak_time {t.shape} and amp {a.shape} must be the same (events, channels)")
    fired = a > np.broadcast_to(np.asarray(threshold, dtype=np.float64), (a.shape[1],))[None, :]
    if pileup is not None:
        fired &= ~np.asarray(pileup, dtype=bool)
    t_ref = reference_time(t, fired, ref_ids)
    use = fired & np.isfinite(t_ref)[:, None]
    offset, err, n = masked_truncated_mean(t - t_ref[:, None], use)
    determined = n >= min_entries
    return TimingResult(
        offset_ns=np.where(determined, offset, math.nan),
        error_ns=np.where(determined, err, math.nan),
        n_entries=n,
        determined=determined,
        n_reference=int(np.isfinite(t_ref).sum()),
    )
