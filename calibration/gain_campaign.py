"""The gains step of a calibration campaign (``na64 calibrate gains``), over arrays read from spill files.

From the beam-trigger events of a calibration scan (electrons centred on every ECAL cell, muons):

1. **PRS** gains from the MIP peak of the muons crossing each cell (:func:`calibration.spectra.peak_gains`),
   then held fixed;
2. **ECAL** gains by least squares (:func:`calibration.gains.shower_gains`): the calibrated ECAL+PRS sum
   of every electron equals the beam energy x the *containment* of its shower-centre cell, taken from the
   shipped reference (:mod:`calibration.containment`; edge cells keep ~93%, corners ~88% of a shower);
3. a **cross-check** that shares none of the fit's assumptions (:func:`cross_check`): per shower-centre
   cell, the peak of the calibrated sum against the beam energy x the containment *measured from the data*
   (the lateral profile of the inner showers); an outer ring biased by a wrong containment fails it;
4. the **energy scale** the DAQ applies to E_ECAL (containment of the beam cell x the zero-suppression share);
5. **SRD** (median electron deposit) and **counters** (MIP peak).

Pure: numpy over arrays; the caller (``calibration.calibrate_cli``) reads the files, logs the messages and
writes the constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration import containment as cont
from calibration import gains as gain_fit
from calibration import spectra
from calibration.config import CalibrationConfig, GainConfig
from calibration.constants import CalibrationError, Constants
from calibration.fitting import gaussian_core, robust_center
from daq import detector

CALO_IDS = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])
N_ECAL = detector.ECAL_IDS.size
BEAM_COUNTER_IDS = np.array([detector.counter_id(n) for n in detector.BEAM_COUNTERS], np.intp)
HOLE_VETO_IDS = np.array([detector.counter_id(n) for n in detector.VETO_COUNTERS], np.intp)
#: an electron-like event: calibrated ECAL+PRS sum above this share of its target (muons ~0.5%, hadron
#: showers mostly below; the per-cell peaks would otherwise see them)
ELECTRON_MIN_RATIO = 0.6
#: the cross-check's mean is taken over this window around each cell's own peak (relative)
CROSSCHECK_WINDOW = (0.7, 1.3)


@dataclass(frozen=True, eq=False)
class ScanData:
    """What the gains step reads from the spill files (arrays over the selected beam-trigger events)."""

    amp: np.ndarray  # (E, 110) the DAQ's amplitudes, ADC counts
    fixed: np.ndarray  # (E, 60) fixed-time amplitudes of the ECAL + PRS cells
    saturated: np.ndarray  # (E,) bool: a calorimeter sample at full scale
    zero_suppress_sigma: float  # the DAQ's zero suppression the files were recorded with
    pileup: np.ndarray | None = None  # (E,) bool: pile-up flag of the shower-centre cell (optional)


@dataclass(frozen=True)
class Message:
    level: str  # "info" | "warning" | "error"
    text: str


@dataclass(frozen=True, eq=False)
class CrossCheck:
    """:func:`cross_check`: per shower-centre cell (arrays over the 30 ECAL cells)."""

    performed: bool
    reason: str  # why it was not performed, or the one-line verdict
    peak: np.ndarray  # peak of calibrated sum / beam energy, events centred on the cell
    peak_error: np.ndarray
    measured: np.ndarray  # containment measured from the data (:func:`calibration.containment.from_scan`)
    measured_error: np.ndarray
    ratio: np.ndarray  # peak / measured, relative to the inner cells' mean (1 if consistent)
    ratio_error: np.ndarray
    ring_deviation: float  # mean of ratio - 1 over the outer ring
    failed: bool
    bad_cells: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        names = [detector.channel_name(int(c)) for c in detector.ECAL_IDS]

        def per_cell(a: np.ndarray, digits: int = 5) -> dict[str, float | None]:
            return {
                n: (round(float(v), digits) if math.isfinite(v) else None)
                for n, v in zip(names, a, strict=True)
            }

        return {
            "performed": self.performed,
            "verdict": self.reason,
            "failed": self.failed,
            "ring_deviation": round(self.ring_deviation, 5) if math.isfinite(self.ring_deviation) else None,
            "bad_cells": list(self.bad_cells),
            "ratio": per_cell(self.ratio),
            "ratio_error": per_cell(self.ratio_error),
            "measured_containment": per_cell(self.measured),
            "peak_over_beam": per_cell(self.peak),
        }


@dataclass(frozen=True, eq=False)
class GainCampaign:
    """Result of :func:`derive`: the new constants (``base`` with what was determined) and the record."""

    constants: Constants
    results: dict[str, Any]
    messages: list[Message] = field(default_factory=list)
    crosscheck: CrossCheck | None = None


def _names(ids: np.ndarray) -> list[str]:
    return [detector.channel_name(int(i)) for i in ids]


def _rounded(a: np.ndarray, digits: int = 5) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else round(float(v), digits) for v in a]


def derive(
    data: ScanData, base: Constants, cfg: CalibrationConfig, reference: cont.ContainmentReference
) -> GainCampaign:
    """ECAL, PRS, SRD and counter gains and the E_ECAL scale from a calibration scan; see the module doc."""
    gc, ref = cfg.gains, cfg.reference
    msgs: list[Message] = []
    amp = np.array(data.amp, dtype=np.float64)
    thr = data.zero_suppress_sigma * base.noise
    calo_raw = amp[:, CALO_IDS]
    # what the DAQ sums (cells above its zero suppression), and every cell's share of the shower (the
    # cells under the threshold with their fixed-time amplitude): the gains are fitted on the latter
    calo_daq = np.where(calo_raw > thr[CALO_IDS], calo_raw, 0.0)
    calo = gain_fit.complete_amplitudes(calo_raw, data.fixed, thr[CALO_IDS])
    amp[amp <= thr[None, :]] = 0.0  # zero-suppressed as in the DAQ's energies (selections, SRD, counters)
    msgs.append(
        Message(
            "info",
            f"cells below {data.zero_suppress_sigma:.1f} x noise (the DAQ's zero suppression) enter with "
            "their fixed-time amplitude",
        )
    )
    keep = ~data.saturated if gc.exclude_saturated else np.ones(amp.shape[0], bool)
    n_sat = int(data.saturated.sum())
    if data.pileup is not None:
        keep &= ~data.pileup

    # PRS: MIP peak of the muons crossing each cell, then held fixed in the least squares
    prior_gain = base.gain[CALO_IDS].copy()
    prior_rel = np.full(CALO_IDS.size, gc.prior_rel)
    held = np.zeros(CALO_IDS.size, bool)
    prs: spectra.PeakGains | None = None
    n_muons = 0
    if gc.prs_from_muons:
        prs, n_muons = _prs_from_muons(amp, data.fixed[:, N_ECAL:], base, cfg)
        d = prs.determined
        prior_gain[N_ECAL:][d] = prs.gain[d]
        prior_rel[N_ECAL:][d] = prs.gain_error[d] / prs.gain[d]
        held[N_ECAL:] = d
        msgs += [Message("info", f"PRS MIP not determined: {line}") for line in prs.messages]
        msgs.append(
            Message("info", f"{n_muons} muon-like events; {int(d.sum())} PRS cells from their MIP peak")
        )

    # per-event target: beam energy x containment of the shower-centre cell (most energetic ECAL cell)
    centre = np.argmax(calo[:, :N_ECAL] / base.gain[detector.ECAL_IDS], axis=1)
    beam_mev = ref.beam_energy_gev * 1000.0
    target = beam_mev * reference.containment[centre]
    msgs.append(
        Message(
            "info",
            f"{amp.shape[0]} beam-trigger events, {n_sat} with a saturated sample"
            f"{' (excluded)' if gc.exclude_saturated else ''}, fitting {int(keep.sum())}; containment "
            f"{reference.version}",
        )
    )
    try:
        fit = gain_fit.shower_gains(
            calo[keep],
            target[keep],
            prior_gain,
            prior_rel=prior_rel,
            window=gc.window,
            max_rel_error=gc.max_rel_error,
            min_events=gc.min_events,
            fixed=held,
        )
    except ValueError as e:
        raise CalibrationError(f"calibrate gains: {e}") from None
    det_ids = CALO_IDS[fit.determined]
    msgs.append(
        Message(
            "info",
            f"{fit.n_events} events in the fit, peak {fit.peak:.4f}, resolution {100 * fit.resolution:.2f}%; "
            f"{int(fit.determined[:N_ECAL].sum())} ECAL and {int(fit.determined[N_ECAL:].sum())} PRS cells "
            f"determined (+{int(held.sum())} PRS from muons)",
        )
    )
    energy = calo / fit.gain  # MeV per cell, every cell's share of the shower
    full_sum = energy.sum(axis=1)
    electrons = keep & (full_sum / target > ELECTRON_MIN_RATIO)
    checks = gain_fit.cell_peaks(
        calo[electrons], fit.gain, target[electrons], np.arange(N_ECAL), gc.cell_min_events
    )
    for c in np.flatnonzero(np.abs(checks.peak - 1.0) > gc.cell_tolerance):
        msgs.append(
            Message(
                "warning",
                f"electrons centred on {detector.channel_name(int(CALO_IDS[c]))} peak at {checks.peak[c]:.3f} "
                f"of the target ({checks.n_events[c]} events)",
            )
        )
    core = electrons & (np.abs(full_sum / target - fit.peak) < 2.0 * fit.resolution)
    check = cross_check(energy, centre, electrons, core, beam_mev, gc)
    if check.performed:
        msgs.append(Message("error" if check.failed else "info", f"cross-check: {check.reason}"))
    else:
        msgs.append(Message("warning", f"cross-check not performed: {check.reason}"))

    # quoted errors: statistical (+ the fixed PRS cells' propagated) and the method's systematic
    gain_error = np.hypot(fit.gain_error, ref.shower_systematic * fit.gain)
    new = base.updated("gain", det_ids, fit.gain[fit.determined], gain_error[fit.determined])
    if prs is not None and prs.determined.any():
        d = prs.determined
        prs_q = spectra.with_systematic(prs, ref.mip_systematic)
        new = new.updated("gain", prs.channels[d], prs.gain[d], prs_q.gain_error[d])

    # energy scale of the DAQ's sum: containment (beam cell) x share of the shower above the zero
    # suppression (measured on the electrons with the new gains)
    daq_sum = (calo_daq / fit.gain).sum(axis=1)
    share = daq_sum[core] / full_sum[core]
    zs_share = float(np.median(share))
    zs_share_err = float(1.2533 * np.std(share) / math.sqrt(max(share.size, 1)))
    beam_cell = detector.BEAM_CELL[1] * detector.ECAL_NX + detector.BEAM_CELL[0]
    beam_containment = float(reference.containment[beam_cell])
    ecal_scale = 1.0 / (beam_containment * zs_share)
    new = new.replace(ecal_scale=ecal_scale, ecal_scale_error=ecal_scale * zs_share_err / zs_share)
    msgs.append(
        Message(
            "info",
            f"{100 * zs_share:.2f}% of the shower above the zero suppression, containment {beam_containment:.4f} "
            f"(beam cell): E_ECAL scale {ecal_scale:.4f}",
        )
    )

    # SRD: median of the electrons' synchrotron-radiation deposit
    srd = spectra.peak_gains(
        amp[:, detector.SRD_IDS],
        np.repeat(core[:, None], detector.SRD_IDS.size, 1),
        detector.SRD_IDS,
        ref.srd_median_mev,
        "median",
        gc.srd_min_entries,
    )
    # beam counters and hole vetoes: MIP peak of every beam-trigger particle that hit them
    cnt_ids = np.concatenate([BEAM_COUNTER_IDS, HOLE_VETO_IDS])
    cnt_ref = np.array(
        [ref.counter_mip_mev] * BEAM_COUNTER_IDS.size + [ref.hole_veto_mip_mev] * HOLE_VETO_IDS.size
    )
    cnt_amp = amp[:, cnt_ids]
    cnt = spectra.peak_gains(
        cnt_amp,
        spectra.above(cnt_amp, 5.0 * base.noise[cnt_ids]),
        cnt_ids,
        cnt_ref,
        "moyal",
        gc.counter_min_entries,
    )
    for res in (srd, spectra.with_systematic(cnt, ref.mip_systematic)):
        for line in res.messages:
            name, why = line.split(": ", 1)
            msgs.append(Message("warning", f"{name} not determined: {why}"))
        d = res.determined
        new = new.updated("gain", res.channels[d], res.gain[d], res.gain_error[d])
    results = {
        "n_events": fit.n_events,
        "n_beam_events": int(amp.shape[0]),
        "n_muons": n_muons,
        "prs_from_muons": [] if prs is None else _names(prs.channels[prs.determined]),
        "containment_reference": reference.version,
        "containment_source": reference.source,
        "containment": dict(zip(_names(detector.ECAL_IDS), _rounded(reference.containment), strict=True)),
        "zero_suppression_share": round(zs_share, 5),
        "ecal_scale": round(ecal_scale, 5),
        "n_saturated": n_sat,
        "peak": round(fit.peak, 5),
        "resolution": round(fit.resolution, 5),
        "determined": _names(det_ids)
        + _names(srd.channels[srd.determined])
        + _names(cnt.channels[cnt.determined]),
        "not_determined": _names(CALO_IDS[~fit.determined])
        + _names(srd.channels[~srd.determined])
        + _names(cnt.channels[~cnt.determined]),
        "cell_peaks": {
            n: v
            for n, v in zip(_names(detector.ECAL_IDS), _rounded(checks.peak[:N_ECAL]), strict=True)
            if v is not None
        },
        "cross_check": check.as_dict(),
    }
    return GainCampaign(new, results, msgs, check)


def _prs_from_muons(
    amp: np.ndarray, prs_fixed: np.ndarray, base: Constants, cfg: CalibrationConfig
) -> tuple[spectra.PeakGains, int]:
    """PRS gains from the MIP peak (fixed-time amplitude) of the muons crossing each cell."""
    mc = cfg.mip
    energy0 = amp / base.gain / 1000.0
    muons = spectra.muon_like(
        energy0,
        spectra.MuonSelection(
            mc.ecal_max_gev,
            mc.prs_max_gev,
            mc.hcal_module_min_gev,
            mc.hcal_module_max_gev,
            mc.hcal_min_modules,
        ),
    )
    hits = spectra.prs_cell_hits(energy0, muons)
    prs = spectra.peak_gains(
        prs_fixed,
        hits,
        detector.PRS_IDS,
        cfg.reference.prs_mip_mev,
        "moyal",
        mc.min_entries,
        mc.max_rel_error,
        noise=fixed_time_noise(prs_fixed, muons, hits),
    )
    return prs, int(muons.sum())


def fixed_time_noise(fixed: np.ndarray, events: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Per cell (C,), the noise (robust RMS) of its fixed-time amplitude in ``events`` where it was not hit
    and neither were its neighbours (:func:`calibration.containment.towers` layout: C = 30 cells of a grid):
    about 9% of a PRS cell's MIP peak, folded into its Moyal fit."""
    f = np.asarray(fixed, dtype=np.float64)
    near = hits.copy()
    grid = hits.reshape(hits.shape[0], detector.ECAL_NY, detector.ECAL_NX)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        shifted = np.zeros_like(grid)
        ys = slice(max(dy, 0), detector.ECAL_NY + min(dy, 0))
        yd = slice(max(-dy, 0), detector.ECAL_NY + min(-dy, 0))
        xs = slice(max(dx, 0), detector.ECAL_NX + min(dx, 0))
        xd = slice(max(-dx, 0), detector.ECAL_NX + min(-dx, 0))
        shifted[:, yd, xd] = grid[:, ys, xs]
        near |= shifted.reshape(hits.shape)
    out = np.zeros(f.shape[1])
    for c in range(f.shape[1]):
        quiet = np.asarray(events, dtype=bool) & ~near[:, c]
        if quiet.sum() >= 50:
            out[c] = robust_center(f[quiet, c])[1]
    return out


def cross_check(
    energy: np.ndarray,
    centre: np.ndarray,
    electrons: np.ndarray,
    core: np.ndarray,
    beam_mev: float,
    gc: GainConfig,
) -> CrossCheck:
    """Per shower-centre cell, the mean calibrated ECAL+PRS sum of its electrons / the beam energy, against the containment measured from the data (:func:`calibration.containment.from_scan`
    on the ``core`` electrons: the lateral profile of the inner showers), relative to the inner cells' mean.

    It shares none of the fit's assumptions (the containment reference, i.e. the shower model and the beam
    spot): with a wrong reference the fit puts an edge shower's calibrated sum at the wrong share of the
    beam energy, while the profile says how much of it leaks. Fails when a cell is off by more than
    ``gc.crosscheck_cell_tolerance`` (and 3 errors) or the outer ring on average by more than
    ``gc.crosscheck_ring_tolerance``.
    """
    n = N_ECAL
    nan = np.full(n, math.nan)
    measured = cont.from_scan(cont.towers(energy[core]), centre[core], gc.cell_min_events)
    peak, perr = nan.copy(), nan.copy()
    ratio_sum = energy.sum(axis=1) / beam_mev
    # the mean, not a Gaussian core: the measured containment is a mean over the beam spot (halo included),
    # and an edge cell's leakage tail is part of it. The window is relative to the cell's own peak, so the
    # tails common to all cells (radiative electrons below, a second shower piled up above) are cut alike
    # and cancel in the normalisation to the inner cells.
    lo, hi = CROSSCHECK_WINDOW
    for c in range(n):
        x = ratio_sum[electrons & (centre == c)]
        if x.size < gc.cell_min_events:
            continue
        own = gaussian_core(x, k=2.0).position
        x = x[(x > lo * own) & (x < hi * own)]
        peak[c], perr[c] = float(x.mean()), float(x.std() / math.sqrt(x.size))
    inner = cont.inner_cells()
    raw = peak / measured.containment
    raw_err = raw * np.hypot(perr / peak, measured.error / measured.containment)
    ok_inner = inner[np.isfinite(raw[inner])]
    if not np.all(np.isfinite(measured.containment)) or ok_inner.size < 2:
        why = (
            f"too few showers centred on the inner cells ({measured.n_inner_events}) to measure the lateral "
            "profile"
            if not np.all(np.isfinite(measured.containment))
            else "fewer than 2 inner cells with enough electrons"
        )
        return CrossCheck(
            False, why, peak, perr, measured.containment, measured.error, nan, nan, math.nan, False
        )
    norm = float(np.mean(raw[ok_inner]))
    ratio, ratio_err = raw / norm, raw_err / norm
    outer = np.setdiff1d(np.arange(n), inner)
    outer_ok = outer[np.isfinite(ratio[outer])]
    ring = float(np.mean(ratio[outer_ok]) - 1.0) if outer_ok.size else math.nan
    dev = np.abs(ratio - 1.0)
    bad_mask = np.isfinite(dev) & (dev > gc.crosscheck_cell_tolerance) & (dev > 3.0 * ratio_err)
    bad = tuple(_names(detector.ECAL_IDS[bad_mask]))
    failed = bool(bad) or (math.isfinite(ring) and abs(ring) > gc.crosscheck_ring_tolerance)
    unmeasured = int((~np.isfinite(ratio)).sum())
    worst = int(np.nanargmax(dev))
    verdict = (
        f"showers centred on the outer ring read {100 * ring:+.2f}% against the containment measured in the data "
        f"(tolerance {100 * gc.crosscheck_ring_tolerance:.1f}%); worst cell "
        f"{detector.channel_name(int(detector.ECAL_IDS[worst]))} {100 * (ratio[worst] - 1):+.2f}% "
        f"+- {100 * ratio_err[worst]:.2f}% (tolerance {100 * gc.crosscheck_cell_tolerance:.1f}%)"
        + (f"; {len(bad)} cells off: {', '.join(bad)}" if bad else "")
        + (f"; {unmeasured} cells with too few electrons" if unmeasured else "")
    )
    return CrossCheck(
        True, verdict, peak, perr, measured.containment, measured.error, ratio, ratio_err, ring, failed, bad
    )
