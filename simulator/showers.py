"""Lateral shower templates: the share of a deposit in each ECAL/PRS cell as a function of impact point.

Each template class is a table (30 cells, impact bins) on a grid of ``bin_mm`` over the 5x6 face, built
from a separable double-exponential profile per axis (core + halo), or, for a MIP, the cell containing the
impact point. Energy escaping the face is not in any cell (shares sum to < 1 near the edges).
Coordinates are in mm with the origin at the centre of cell (0, 0) (``daq.detector.cell_center_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from daq import detector
from simulator.config import EcalConfig

HALF = detector.ECAL_PITCH_MM / 2
X_LO = -HALF
Y_LO = -HALF
X_HI = X_LO + detector.ECAL_NX * detector.ECAL_PITCH_MM
Y_HI = Y_LO + detector.ECAL_NY * detector.ECAL_PITCH_MM


class Profile(IntEnum):
    """Template classes."""

    EM = 0  # electron shower, ECAL part
    EM_PRS = 1  # electron shower, first 4 X0 (narrower)
    HADRONIC = 2  # hadron shower
    MIP = 3  # a minimum-ionising track: all in the impact cell


def _laplace_cdf(t: np.ndarray, s: float) -> np.ndarray:
    return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / s), 1 - 0.5 * np.exp(-np.maximum(t, 0) / s))


def axis_shares(centres: np.ndarray, n_cells: int, weight: float, b1: float, b2: float) -> np.ndarray:
    """(n_cells, n_bins) share of a 1D double-exponential profile in each cell, impact at ``centres``."""
    edges = X_LO + np.arange(n_cells + 1) * detector.ECAL_PITCH_MM  # same origin for x and y
    t = edges[:, None] - centres[None, :]
    cdf = weight * _laplace_cdf(t, b1) + (1 - weight) * _laplace_cdf(t, b2)
    return np.diff(cdf, axis=0)


def _axis_indicator(centres: np.ndarray, n_cells: int) -> np.ndarray:
    cell = np.floor((centres - X_LO) / detector.ECAL_PITCH_MM).astype(int)
    return (cell[None, :] == np.arange(n_cells)[:, None]).astype(np.float64)


@dataclass(frozen=True)
class Grid:
    """Impact-position binning of the face."""

    bin_mm: float
    nx: int
    ny: int

    @classmethod
    def of(cls, bin_mm: float) -> Grid:
        return cls(bin_mm, int(np.ceil((X_HI - X_LO) / bin_mm)), int(np.ceil((Y_HI - Y_LO) / bin_mm)))

    @property
    def n_bins(self) -> int:
        return self.nx * self.ny

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        return X_LO + (np.arange(self.nx) + 0.5) * self.bin_mm, Y_LO + (
            np.arange(self.ny) + 0.5
        ) * self.bin_mm

    def bins(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bin index (int32) of impact points; points off the face go to the nearest edge bin."""
        inv = np.float32(1.0 / self.bin_mm)
        ix = (x - np.float32(X_LO)) * inv
        np.clip(ix, 0, self.nx - 1, out=ix)
        iy = (y - np.float32(Y_LO)) * inv
        np.clip(iy, 0, self.ny - 1, out=iy)
        b = iy.astype(np.int32)
        b *= self.nx
        b += ix.astype(np.int32)
        return b


def build_templates(config: EcalConfig) -> tuple[Grid, np.ndarray]:
    """Grid and float32 tables of shape (len(Profile), 30, n_bins); cell index = y * 5 + x."""
    grid = Grid.of(config.template_bin_mm)
    xc, yc = grid.centres()
    params = {
        Profile.EM: (config.core_weight, config.core_slope_mm, config.halo_slope_mm),
        Profile.EM_PRS: (config.prs_core_weight, config.prs_core_slope_mm, config.prs_halo_slope_mm),
        Profile.HADRONIC: (
            config.hadron_core_weight,
            config.hadron_core_slope_mm,
            config.hadron_halo_slope_mm,
        ),
    }
    n_cells = detector.ECAL_NX * detector.ECAL_NY
    tables = np.empty((len(Profile), n_cells, grid.n_bins), dtype=np.float32)
    for prof in Profile:
        if prof is Profile.MIP:
            px, py = _axis_indicator(xc, detector.ECAL_NX), _axis_indicator(yc, detector.ECAL_NY)
        else:
            w, b1, b2 = params[prof]
            px = axis_shares(xc, detector.ECAL_NX, w, b1, b2)
            py = axis_shares(yc, detector.ECAL_NY, w, b1, b2)
        # table[cy * 5 + cx, iy * nx + ix] = px[cx, ix] * py[cy, iy]
        t = py[:, None, :, None] * px[None, :, None, :]  # (ny_cells, nx_cells, ny_bins, nx_bins)
        tables[prof] = t.reshape(n_cells, grid.n_bins)
    return grid, tables
