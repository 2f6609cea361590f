"""Gains from single-particle amplitude spectra: MIP peaks (HCAL, VETO, counters) and the SRD electron spectrum.

A channel's gain is the position of a known peak in ADC counts divided by the same peak in MeV, which
comes from simulation (``reference_mev``): the most probable value of a Landau-like MIP deposit
(:func:`~calibration.fitting.fit_moyal`) or the median of the SRD synchrotron-radiation deposit of
electrons. The selections (which events are muons, which cell a muon crossed) are pure functions over
per-event energies computed with the starting constants; their windows are wide, so a 10-30% error of
the starting gains does not bias them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from calibration.fitting import fit_moyal, median_with_error
from daq import detector


@dataclass(frozen=True, eq=False)
class PeakGains:
    """Per-channel peak positions and gains (arrays over ``channels``)."""

    channels: np.ndarray  # channel ids
    peak: np.ndarray  # peak position, ADC counts
    peak_error: np.ndarray
    gain: np.ndarray  # ADC counts per MeV (NaN where not determined)
    gain_error: np.ndarray
    n_entries: np.ndarray
    determined: np.ndarray  # bool
    messages: tuple[str, ...]  # why a channel was not determined


def peak_gains(
    amp: np.ndarray,
    hit: np.ndarray,
    channels: np.ndarray,
    reference_mev: float | np.ndarray,
    method: Literal["moyal", "median"] = "moyal",
    min_entries: int = 100,
    max_rel_error: float = 0.03,
    noise: np.ndarray | None = None,
) -> PeakGains:
    """Peak of each channel's amplitude spectrum over the events where ``hit`` is true, and its gain.

    ``amp`` and ``hit`` are (E, C) over ``channels`` (C,); ``reference_mev`` the same peak in MeV.
    ``method``: ``moyal`` fits the most probable value of a Landau-like peak, ``median`` takes the median
    (for broad spectra such as the SRD's). A channel is determined when the fit converged with at least
    ``min_entries`` and a relative error below ``max_rel_error``. ``noise`` (C,): Gaussian noise of the
    amplitudes (ADC counts RMS), folded into the Moyal fit (:func:`calibration.fitting.fit_moyal`).
    """
    a = np.asarray(amp, dtype=np.float64)
    h = np.asarray(hit, dtype=bool)
    ids = np.asarray(channels, dtype=np.intp)
    if a.shape != h.shape or a.ndim != 2 or a.shape[1] != ids.size:
        raise ValueError(f"amp {a.shape} and hit {h.shape} must be (events, {ids.size})")
    ref = np.broadcast_to(np.asarray(reference_mev, dtype=np.float64), ids.shape)
    n_ch = ids.size
    peak = np.full(n_ch, math.nan)
    perr = np.full(n_ch, math.nan)
    n = h.sum(axis=0)
    determined = np.zeros(n_ch, bool)
    messages: list[str] = []
    for c in range(n_ch):
        name = detector.channel_name(int(ids[c]))
        if n[c] < min_entries:
            messages.append(f"{name}: {n[c]} entries < {min_entries}")
            continue
        x = a[h[:, c], c]
        if method == "moyal":
            fit = fit_moyal(x, min_entries=min_entries, noise=0.0 if noise is None else float(noise[c]))
            if not fit.ok:
                messages.append(f"{name}: Moyal fit failed ({fit.message})")
                continue
            peak[c], perr[c] = fit.mpv, fit.mpv_error
        else:
            m = median_with_error(x, min_entries=min_entries)
            peak[c], perr[c] = m.position, m.error
        if not peak[c] > 0:
            messages.append(f"{name}: peak at {peak[c]:.1f} counts is not positive")
            continue
        if perr[c] / peak[c] > max_rel_error:
            messages.append(f"{name}: peak error {perr[c] / peak[c]:.1%} > {max_rel_error:.0%}")
            continue
        determined[c] = True
    gain = np.where(determined, peak / ref, math.nan)
    return PeakGains(
        channels=ids,
        peak=peak,
        peak_error=perr,
        gain=gain,
        gain_error=np.where(determined, perr / ref, math.nan),
        n_entries=n,
        determined=determined,
        messages=tuple(messages),
    )


def with_systematic(res: PeakGains, rel: float) -> PeakGains:
    """``res`` with a relative systematic uncertainty ``rel`` added in quadrature to its gain errors."""
    return dataclasses.replace(res, gain_error=np.hypot(res.gain_error, rel * res.gain))


# ----------------------------------------------------------------------------- selections
@dataclass(frozen=True)
class MuonSelection:
    """Windows of :func:`muon_like` in GeV (energies computed with the starting constants)."""

    ecal_max_gev: float = 2.0  # a MIP leaves ~0.5 GeV in the whole ECAL; electrons and showers far more
    prs_max_gev: float = 0.3  # ~45 MeV per MIP; the physics-trigger threshold is 0.3 GeV
    hcal_module_min_gev: float = 0.8  # every HCAL module sees a MIP (~2.5 GeV most probable)
    hcal_module_max_gev: float = 8.0
    hcal_min_modules: int = 4

    def __post_init__(self) -> None:
        if not (
            0 < self.hcal_module_min_gev < self.hcal_module_max_gev
            and self.ecal_max_gev > 0
            and self.prs_max_gev > 0
            and 1 <= self.hcal_min_modules <= detector.HCAL_MODULES
        ):
            raise ValueError(
                "muon selection windows must be positive and ordered, 1 <= hcal_min_modules <= 4"
            )


def _module_sums(energy: np.ndarray) -> np.ndarray:
    """(E, 4) HCAL module energies from (E, 110) channel energies."""
    per_cell = energy[:, detector.HCAL_IDS]
    sums: np.ndarray = per_cell.reshape(per_cell.shape[0], detector.HCAL_MODULES, -1).sum(axis=2)
    return sums


def muon_like(energy_gev: np.ndarray, sel: MuonSelection | None = None) -> np.ndarray:
    """(E,) bool: little energy in ECAL and PRS, a MIP-like signal in (all) HCAL modules."""
    sel = sel or MuonSelection()
    e = np.asarray(energy_gev, dtype=np.float64)
    ecal = e[:, detector.ECAL_IDS].sum(axis=1)
    prs = e[:, detector.PRS_IDS].sum(axis=1)
    mod = _module_sums(e)
    mip_modules = ((mod > sel.hcal_module_min_gev) & (mod < sel.hcal_module_max_gev)).sum(axis=1)
    muon: np.ndarray = (
        (ecal < sel.ecal_max_gev) & (prs < sel.prs_max_gev) & (mip_modules >= sel.hcal_min_modules)
    )
    return muon


def hcal_cell_hits(energy_gev: np.ndarray, events: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """(E, 36) bool: the HCAL cell a selected muon crossed in each module (the module's most energetic cell,
    holding at least ``min_share`` of the module energy, so edge crossings shared by two cells are left out)."""
    e = np.asarray(energy_gev, dtype=np.float64)[:, detector.HCAL_IDS]
    n_ev = e.shape[0]
    cells = e.reshape(n_ev, detector.HCAL_MODULES, -1)
    total = cells.sum(axis=2, keepdims=True)
    best = cells == cells.max(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_ok = cells >= min_share * total
    hit: np.ndarray = best & share_ok & (total > 0) & np.asarray(events, dtype=bool)[:, None, None]
    return hit.reshape(n_ev, -1)


def prs_cell_hits(energy_gev: np.ndarray, events: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """(E, 30) bool over PRS cells: the PRS cell in front of the ECAL cell a selected muon crossed (the most
    energetic ECAL cell, holding at least ``min_share`` of the ECAL energy). The PRS cell is chosen by the
    ECAL, not by its own amplitude, so its MIP spectrum is not biased by the selection."""
    e = np.asarray(energy_gev, dtype=np.float64)[:, detector.ECAL_IDS]
    n_ev = e.shape[0]
    best = np.argmax(e, axis=1) if n_ev else np.zeros(0, np.intp)
    top = e[np.arange(n_ev), best]
    ok = np.asarray(events, dtype=bool) & (top > 0) & (top >= min_share * e.sum(axis=1))
    hit = np.zeros((n_ev, detector.PRS_IDS.size), bool)  # PRS_IDS[i] sits in front of ECAL_IDS[i]
    hit[np.flatnonzero(ok), best[ok]] = True
    return hit


def veto_slab_hits(energy_gev: np.ndarray, events: np.ndarray, min_gev: float = 0.003) -> np.ndarray:
    """(E, 6) bool over VETO channels: both PMTs of every slab a selected particle crossed (sqrt(E1 E2) above
    ``min_gev``, about 0.3 MIP)."""
    e = np.clip(np.asarray(energy_gev, dtype=np.float64)[:, detector.VETO_IDS], 0.0, None)
    n_ev = e.shape[0]
    pm = e.reshape(n_ev, detector.VETO_SLABS, detector.VETO_PMTS)
    crossed = (np.sqrt(pm.prod(axis=2)) > min_gev) & np.asarray(events, dtype=bool)[:, None]
    return np.repeat(crossed, detector.VETO_PMTS, axis=1)


def electron_like(energy_gev: np.ndarray, beam_energy_gev: float, window: float = 0.15) -> np.ndarray:
    """(E,) bool: ECAL + PRS energy within +-``window`` (relative) of the beam energy."""
    e = np.asarray(energy_gev, dtype=np.float64)
    calo = e[:, detector.ECAL_IDS].sum(axis=1) + e[:, detector.PRS_IDS].sum(axis=1)
    within: np.ndarray = np.abs(calo / beam_energy_gev - 1.0) < window
    return within


def above(amp: np.ndarray, noise: np.ndarray, n_sigma: float = 5.0) -> np.ndarray:
    """(E, C) bool: amplitude above ``n_sigma`` x noise (noise per channel, (C,))."""
    return np.asarray(amp) > n_sigma * np.asarray(noise)[None, :]
