"""Per-spill calibration monitoring quantities (pure functions over arrays; used by the DQM).

* :func:`electron_peak` - position of the electron peak in the calorimeter energy of beam-trigger events
  (ECAL + PRS, GeV), relative to the beam energy: a gain drift moves it.
* :func:`cell_response` - per-channel mean energy of beam-trigger electrons, to locate a drifting cell.
* :class:`PedestalMonitor` / :func:`pedestal_monitor` - pedestal mean (even, odd) and RMS per channel from
  random-trigger windows, pulses cut out; feed it any number of windows per call (the DQM may only see a
  few per batch); compare with the constants in use to see a pedestal jump.
* :func:`spill_monitor` - all of the above for one spill, as a JSON-ready dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.constants import Constants
from calibration.fitting import Peak, gaussian_core
from calibration.pedestals import MARKER_IDS, PedestalAccumulator, PedestalResult, initial_pedestals
from daq import detector
from daq.contract import BEAM


@dataclass(frozen=True)
class ElectronPeak:
    """Electron peak of one spill: position and width in GeV, position / beam energy."""

    position_gev: float
    sigma_gev: float
    error_gev: float
    ratio: float  # position / beam energy
    ratio_error: float
    n: int  # events in the Gaussian core

    @property
    def ok(self) -> bool:
        return self.n > 0 and math.isfinite(self.position_gev)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }


def electron_peak(
    calo_gev: np.ndarray,
    beam_energy_gev: float = 100.0,
    low: float = 0.5,
    high: float = 1.5,
    min_entries: int = 20,
) -> ElectronPeak:
    """Gaussian-core peak (2 sigma) of the calorimeter energy of beam-trigger events.

    ``calo_gev`` (E,): ECAL + PRS energy of beam-trigger events (e.g. the file's ``e_ecal`` column).
    Only values within [low, high] x beam energy enter (muons, hadrons and empty events are far below).
    """
    e = np.asarray(calo_gev, dtype=np.float64)
    e = e[(e > low * beam_energy_gev) & (e < high * beam_energy_gev)]
    p: Peak = gaussian_core(e, k=2.0, min_entries=min_entries)
    return ElectronPeak(
        position_gev=p.position,
        sigma_gev=p.sigma,
        error_gev=p.error,
        ratio=p.position / beam_energy_gev,
        ratio_error=p.error / beam_energy_gev,
        n=p.n,
    )


def cell_response(energy_gev: np.ndarray, electrons: np.ndarray) -> np.ndarray:
    """(110,) mean energy (GeV) per channel over the selected electron events (NaN if none)."""
    e = np.asarray(energy_gev, dtype=np.float64)
    sel = np.asarray(electrons, dtype=bool)
    if not sel.any():
        return np.full(e.shape[1], math.nan)
    mean: np.ndarray = e[sel].mean(axis=0)
    return mean


class PedestalMonitor:
    """Pedestal mean (even, odd), RMS and occupancy per channel from random-trigger windows of one spill.

    Feed it any number of windows per :meth:`add`. The starting estimate comes from the spill's own first
    ``min_initial`` windows (not from the constants, so a pedestal jump is measured, not cut away as a
    pulse); compare the result with the constants in use to see a shift.
    """

    def __init__(self, threshold: float = 3.0, min_initial: int = 20) -> None:
        self.threshold = threshold
        self.min_initial = min_initial
        self._buffer: list[np.ndarray] = []
        self._acc: PedestalAccumulator | None = None

    def add(self, waveforms: np.ndarray) -> None:
        if self._acc is not None:
            self._acc.add(waveforms)
            return
        self._buffer.append(np.asarray(waveforms))
        if sum(b.shape[0] for b in self._buffer) >= self.min_initial:
            self._start()

    def _start(self) -> None:
        first = np.concatenate(self._buffer)
        self._buffer = []
        self._acc = PedestalAccumulator(
            *initial_pedestals(first), threshold=self.threshold, veto_channels=MARKER_IDS
        )
        self._acc.add(first)

    @property
    def n_windows(self) -> int:
        return self._acc.n_windows if self._acc is not None else sum(b.shape[0] for b in self._buffer)

    def result(self) -> PedestalResult | None:
        """The pedestals so far, or None before the first window."""
        if self._acc is None:
            if not self._buffer:
                return None
            self._start()
        assert self._acc is not None
        return self._acc.result()


def pedestal_monitor(waveforms: np.ndarray, constants: Constants | None = None) -> PedestalResult:
    """Pedestal mean (even, odd), noise and occupancy per channel from (E, 110, S) random-trigger windows.

    ``constants`` is not needed for the estimate (kept for symmetry with :func:`spill_monitor`).
    """
    del constants
    mon = PedestalMonitor()
    mon.add(waveforms)
    r = mon.result()
    if r is None:
        raise ValueError("no random-trigger windows")
    return r


def _clean(a: np.ndarray, digits: int = 4) -> list[float | None]:
    return [
        None if not math.isfinite(v) else round(float(v), digits) for v in np.asarray(a, dtype=np.float64)
    ]


def spill_monitor(
    trigger_mask: np.ndarray,
    calo_gev: np.ndarray,
    energy_gev: np.ndarray | None,
    random_waveforms: np.ndarray | None,
    constants: Constants,
    beam_energy_gev: float = 100.0,
) -> dict[str, Any]:
    """Monitoring quantities of one spill as a JSON-ready dict.

    ``trigger_mask``, ``calo_gev`` (ECAL + PRS energy) are (E,) over the spill's events; ``energy_gev``
    (E, 110) optional per-channel energies; ``random_waveforms`` (R, 110, S) the random-trigger windows
    (optional). Keys: ``electron_peak`` {position_gev, sigma_gev, error_gev, ratio, ratio_error, n},
    ``cell_response_gev`` (110 or null), ``pedestal_even``, ``pedestal_odd``, ``pedestal_rms``,
    ``pedestal_shift`` (mean of even/odd minus the constants'), ``pulse_fraction`` (110 each, or null),
    ``n_random``, ``calibration_id``.
    """
    mask = np.asarray(trigger_mask).astype(np.int64)
    beam = (mask & BEAM) != 0
    calo = np.asarray(calo_gev, dtype=np.float64)
    peak = electron_peak(calo[beam], beam_energy_gev)
    out: dict[str, Any] = {"calibration_id": constants.version, "electron_peak": peak.as_dict()}
    if energy_gev is not None and peak.ok:
        electrons = beam & (np.abs(calo - peak.position_gev) < 2.0 * peak.sigma_gev)
        out["cell_response_gev"] = _clean(cell_response(energy_gev, electrons))
    else:
        out["cell_response_gev"] = None
    n_random = 0 if random_waveforms is None else int(np.shape(random_waveforms)[0])
    out["n_random"] = n_random
    if n_random:
        assert random_waveforms is not None
        r = pedestal_monitor(random_waveforms, constants)
        shift = 0.5 * (r.pedestal_even + r.pedestal_odd) - 0.5 * (
            constants.pedestal_even + constants.pedestal_odd
        )
        out |= {
            "pedestal_even": _clean(r.pedestal_even, 3),
            "pedestal_odd": _clean(r.pedestal_odd, 3),
            "pedestal_rms": _clean(r.noise, 3),
            "pedestal_shift": _clean(shift, 3),
            "pulse_fraction": _clean(r.pulse_fraction, 4),
        }
    else:
        out |= dict.fromkeys(
            ("pedestal_even", "pedestal_odd", "pedestal_rms", "pedestal_shift", "pulse_fraction")
        )
    out["channels"] = detector.N_CHANNELS
    return out
