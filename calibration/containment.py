"""Shower containment per ECAL cell: the shipped reference, and the same quantity measured from a scan.

An electron's shower is not all in the 30 ECAL + 30 PRS cells: near the edges of the 5x6 face part of it
leaks off (a centred shower keeps ~99.4%, an edge cell ~93%, a corner ~88%). The gains fit
(:mod:`calibration.gain_campaign`) needs, per *shower-centre cell* (the most energetic ECAL cell), the
share the cells see, so that the calibrated sum of an edge shower is compared with the energy that edge
shower leaves, not with the beam energy.

* The **reference** (:func:`load_reference`) is a versioned JSON file shipped with the detector model
  (``calibration/reference/ecal_containment_v1.json``), made by ``tools/make_containment_reference.py``
  from the simulator's nominal geometry, shower model and calibration-scan beam spot; it records what it
  depends on and how it was made, and is refused when its geometry is not ``daq.detector``'s.
* :func:`from_scan` measures the containment from the data alone, for the cross-check of ``calibrate
  gains``: the mean lateral profile of showers centred on the inner cells (energy of the cell at each
  offset over the centre cell's, ECAL and PRS together) tells how much of an edge or corner shower falls
  where there are no cells. It shares none of the reference's assumptions (shower model, beam spot).

Pure: numpy over arrays; the only file read is the reference itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.constants import CalibrationError
from daq import detector

FORMAT = "na64-ecal-containment"
FORMAT_VERSION = 1
DEFAULT_REFERENCE = Path(__file__).resolve().parent / "reference" / "ecal_containment_v1.json"
N_ECAL = detector.ECAL_NX * detector.ECAL_NY


def geometry() -> dict[str, Any]:
    """The detector-model facts a containment reference depends on (checked when one is loaded)."""
    return {
        "ecal_nx": detector.ECAL_NX,
        "ecal_ny": detector.ECAL_NY,
        "pitch_mm": detector.ECAL_PITCH_MM,
        "cells": "ECAL + PRS (tower in front of each ECAL cell)",
    }


@dataclass(frozen=True, eq=False)
class ContainmentReference:
    """Containment per shower-centre cell (arrays over the 30 ECAL cells in channel-id order)."""

    version: str
    containment: np.ndarray
    error: np.ndarray
    source: str  # the file, or a description of where the numbers came from
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("containment", "error"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != (N_ECAL,):
                raise CalibrationError(f"containment {self.version}: {name} must have {N_ECAL} values")
            object.__setattr__(self, name, a)
        bad = ~((self.containment >= 0.5) & (self.containment <= 1.0))
        if bad.any():
            cell = detector.channel_name(int(detector.ECAL_IDS[np.flatnonzero(bad)[0]]))
            raise CalibrationError(f"containment {self.version}: {cell} is not in [0.5, 1]")

    def with_overrides(self, uniform: float | None, per_cell: dict[str, float]) -> ContainmentReference:
        """The reference with a uniform value (``reference.containment``) and/or single cells replaced."""
        if uniform is None and not per_cell:
            return self
        values = np.full(N_ECAL, uniform) if uniform is not None else self.containment.copy()
        errors = np.zeros(N_ECAL) if uniform is not None else self.error.copy()
        for name, v in per_cell.items():
            i = detector.channel_id(name) - detector.ECAL_BASE
            values[i], errors[i] = v, 0.0
        parts = [] if uniform is None else [f"uniform {uniform:g}"]
        parts += [f"{len(per_cell)} cells from reference.containment_map"] if per_cell else []
        base = "" if uniform is not None else f"{self.version} with "
        return ContainmentReference(
            version=base + ", ".join(parts),
            containment=values,
            error=errors,
            source=self.source if uniform is None else "configuration",
            provenance=self.provenance if uniform is None else {},
        )


def load_reference(path: str | Path | None = None) -> ContainmentReference:
    """The containment reference in ``path`` (default: the one shipped, :data:`DEFAULT_REFERENCE`).

    Every problem (missing, not JSON, wrong format, a geometry other than ``daq.detector``'s, a missing
    cell or a value outside [0.5, 1]) is one CalibrationError naming the file.
    """
    p = Path(path) if path is not None else DEFAULT_REFERENCE
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"containment reference {p} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CalibrationError(f"containment reference {p} cannot be read: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CalibrationError(f"{p}: not a containment reference (format {FORMAT!r} expected)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(f"{p}: format_version {doc.get('format_version')!r} is not {FORMAT_VERSION}")
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise CalibrationError(f"{p}: missing 'version'")
    geo = doc.get("geometry")
    want = geometry()
    if not isinstance(geo, dict) or any(geo.get(k) != v for k, v in want.items()):
        raise CalibrationError(
            f"{p}: made for another detector geometry ({geo!r}; this detector model is {want}): regenerate "
            "it with tools/make_containment_reference.py"
        )
    cells = doc.get("cells")
    if not isinstance(cells, dict):
        raise CalibrationError(f"{p}: missing 'cells'")
    values, errors = np.empty(N_ECAL), np.empty(N_ECAL)
    for i, ch in enumerate(detector.ECAL_IDS):
        name = detector.channel_name(int(ch))
        entry = cells.get(name)
        if not isinstance(entry, dict):
            raise CalibrationError(f"{p}: cell {name} is missing")
        value, error = entry.get("containment"), entry.get("error", 0.0)
        if not _number(value) or not _number(error) or error < 0:
            raise CalibrationError(f"{p}: cell {name}: containment and error must be numbers (got {entry!r})")
        values[i], errors[i] = value, error
    try:
        return ContainmentReference(
            version, values, errors, str(p), {"provenance": doc.get("provenance"), "file": str(p)}
        )
    except CalibrationError as e:
        raise CalibrationError(f"{p}: {e}") from None


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------ measured from a scan
@dataclass(frozen=True, eq=False)
class ScanContainment:
    """:func:`from_scan`: containment per shower-centre cell measured from the data (NaN: not measured)."""

    containment: np.ndarray  # (30,)
    error: np.ndarray  # (30,) statistical (the inner-cell profile's spread)
    profile: np.ndarray  # (2 NY - 1, 2 NX - 1) energy at offset (dy, dx) / the centre cell's
    n_inner_events: int


def towers(calo_mev: np.ndarray) -> np.ndarray:
    """(E, 30) energy per ECAL position: the ECAL cell plus the PRS cell in front of it (MeV)."""
    a = np.asarray(calo_mev, dtype=np.float64)
    return a[:, :N_ECAL] + a[:, N_ECAL : 2 * N_ECAL]


def inner_cells() -> np.ndarray:
    """Indices (0..29) of the ECAL cells with a neighbour on every side."""
    x, y = np.arange(N_ECAL) % detector.ECAL_NX, np.arange(N_ECAL) // detector.ECAL_NX
    return np.flatnonzero((x > 0) & (x < detector.ECAL_NX - 1) & (y > 0) & (y < detector.ECAL_NY - 1))


def from_scan(tower_mev: np.ndarray, centre: np.ndarray, min_events: int = 200) -> ScanContainment:
    """Containment of showers centred on each cell, from the lateral profile measured in the data.

    ``tower_mev`` (E, 30): calibrated energy per ECAL position (:func:`towers`) of electron showers;
    ``centre`` (E,): their shower-centre cell (0..29). For showers centred on the inner cells the mean
    energy at each offset (dx, dy) relative to the centre cell's, R(dx, dy) = sum E(c + d) / sum E(c),
    is measured wherever c + d is on the face; offsets no inner cell reaches are extrapolated as a
    product of the x and y profiles, the tail beyond the last measured offset as a geometric series. The
    containment of centre cell c is then sum of R over the offsets on the face from c / sum over all.
    Inner showers (the same beam spot relative to the cell as every other cell's in a scan) give the
    profile; gain errors of edge cells enter only through the small shares they hold of inner showers.
    """
    e = np.asarray(tower_mev, dtype=np.float64)
    c = np.asarray(centre, dtype=np.intp)
    nx, ny = detector.ECAL_NX, detector.ECAL_NY
    inner = inner_cells()
    use = np.isin(c, inner)
    n_inner = int(use.sum())
    nan = np.full(N_ECAL, math.nan)
    if n_inner < min_events:
        return ScanContainment(nan, nan, np.full((2 * ny - 1, 2 * nx - 1), math.nan), n_inner)
    ei, ci = e[use], c[use]
    cx, cy = ci % nx, ci // nx
    rows = np.arange(ei.shape[0])
    e_centre = ei[rows, ci]
    # R(d) for offsets reached from the inner cells; NaN elsewhere
    prof = np.full((2 * ny - 1, 2 * nx - 1), math.nan)
    # jackknife over 10 event groups for the statistical error of the containments
    groups = rows % 10
    prof_g = np.full((10, 2 * ny - 1, 2 * nx - 1), math.nan)
    for dy in range(-(ny - 1), ny):
        for dx in range(-(nx - 1), nx):
            tx, ty = cx + dx, cy + dy
            on = (tx >= 0) & (tx < nx) & (ty >= 0) & (ty < ny)
            if on.sum() < min_events:
                continue
            num = np.where(on, ei[rows, np.clip(ty * nx + tx, 0, N_ECAL - 1)], 0.0)
            prof[dy + ny - 1, dx + nx - 1] = num[on].sum() / e_centre[on].sum()
            for g in range(10):
                sel = on & (groups != g)
                prof_g[g, dy + ny - 1, dx + nx - 1] = num[sel].sum() / e_centre[sel].sum()
    full = _complete_profile(prof)
    cont = _containments(full)
    jack = np.array([_containments(_complete_profile(p)) for p in prof_g])
    err = np.sqrt(9.0 / 10.0 * ((jack - jack.mean(axis=0)) ** 2).sum(axis=0))
    return ScanContainment(cont, err, prof, n_inner)


#: offsets summed on each side beyond the measured profile (the tail is geometric: its sum converges fast)
_PAD = 12


def _complete_profile(prof: np.ndarray) -> np.ndarray:
    """The measured profile on a padded plane: unmeasured offsets as Rx(dx) Ry(dy), the tails beyond the
    last measured offset on each axis continued geometrically."""
    ny2, nx2 = prof.shape
    cy, cx = ny2 // 2, nx2 // 2
    rx = _axis(prof[cy, :], cx)
    ry = _axis(prof[:, cx], cy)
    full = np.outer(ry, rx)  # (ny2 + 2 PAD, nx2 + 2 PAD), centre at (cy + PAD, cx + PAD)
    measured = np.isfinite(prof)
    full[_PAD : _PAD + ny2, _PAD : _PAD + nx2][measured] = prof[measured]
    return full


def _axis(line: np.ndarray, centre: int) -> np.ndarray:
    """A 1D profile (R(0) = 1) padded by _PAD on each side, NaNs and the tails continued geometrically."""
    out = np.concatenate(
        [np.full(_PAD, math.nan), np.asarray(line, dtype=np.float64), np.full(_PAD, math.nan)]
    )
    c = centre + _PAD
    for step in (1, -1):
        i = c + step
        while 0 <= i < out.size and math.isfinite(out[i]):
            i += step
        last, prev = out[i - step], out[i - 2 * step]
        ratio = min(last / prev, 0.9) if prev > 0 and last > 0 else 0.0
        while 0 <= i < out.size:
            last *= ratio
            out[i] = last
            i += step
    return out


def _containments(full: np.ndarray) -> np.ndarray:
    """Containment of each centre cell: profile summed over the offsets that land on the face / all."""
    nx, ny = detector.ECAL_NX, detector.ECAL_NY
    total = float(np.nansum(full))
    cy, cx = full.shape[0] // 2, full.shape[1] // 2
    out = np.empty(N_ECAL)
    for i in range(N_ECAL):
        x, y = i % nx, i // nx
        # offsets d with 0 <= x + dx < nx, 0 <= y + dy < ny
        out[i] = float(np.nansum(full[cy - y : cy - y + ny, cx - x : cx - x + nx])) / total
    return out
