"""What the detector model expects of the channels' occupancies, without any reference (pure).

A channel dead from the start of a run is in its run baseline too, so comparing with the baseline
cannot find it. The detector's symmetry can: channels that see the same particles, or sit at
mirror-image positions around the shower axis, must have about the same occupancy in beam triggers.

- ECAL and PRS: cells at offsets (dx, dy) from the beam cell, under the symmetries of the square
  (dx -> -dx, dy -> -dy, dx <-> dy; the cells are square), e.g. the four neighbours of the beam cell;
- HCAL: in each module the same, around the module's centre cell;
- VETO: the 6 PMTs (3 slabs x 2 PMTs at the same position in the beam);
- SRD: the 3 modules; counters: S0, S2, S3 (every beam particle), V1 and V2.

A shower's occupancy also falls off away from its axis: a calorimeter cell is not hit much more often
than its *inward* neighbours (one step closer to the beam cell, or to an HCAL module's centre). That
finds a hot cell without a reference, and tells which of a mirror pair is the bad one.

The beam cell is found from the data (the ECAL energy centroid of beam triggers), so a beam aimed at
another cell (``--aim-cell``) keeps its symmetry; when the centroid is not close to a cell centre the
ECAL/PRS groups are not used (the pattern is not symmetric around a cell then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from daq import detector

#: the centroid must be this close (in cell pitches, in x and in y) to a cell centre for ECAL/PRS symmetry
MAX_CENTROID_OFFSET = 0.3


@dataclass(frozen=True)
class PeerGroups:
    """Channels expected to have equal occupancy. ``groups`` are tuples of channel ids (size >= 2);
    ``beam_only`` marks groups whose symmetry holds in beam triggers only (the physics trigger selects
    on the ECAL block energy, which breaks the calorimeters' mirror symmetry); ``beam_cell`` is the
    ECAL cell the symmetry is taken around (None: ECAL/PRS groups not used)."""

    groups: tuple[tuple[int, ...], ...]
    beam_only: tuple[bool, ...]
    beam_cell: tuple[int, int] | None
    #: calorimeter channel -> its inward neighbours (beam triggers)
    inward: dict[int, tuple[int, ...]]

    def of_channel(self) -> dict[int, int]:
        """Channel id -> index of its group."""
        return {c: i for i, g in enumerate(self.groups) for c in g}


def centroid(esum_beam: NDArray[np.float64]) -> tuple[float, float] | None:
    """Energy-weighted (x, y) of the ECAL in beam triggers (cell units), None without energy."""
    ids = np.asarray(detector.ECAL_IDS)
    e = np.clip(np.asarray(esum_beam, np.float64)[ids], 0.0, None)
    total = float(e.sum())
    if not total > 0:
        return None
    x = detector.CHANNELS["x"][ids].astype(np.float64)
    y = detector.CHANNELS["y"][ids].astype(np.float64)
    return float((e * x).sum() / total), float((e * y).sum() / total)


def _square_orbits(
    nx: int, ny: int, cx: int, cy: int, cell_id: Sequence[Sequence[int]]
) -> list[tuple[int, ...]]:
    """Groups of cells whose offsets from (cx, cy) map onto each other under the square's symmetries."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, ...]] = []
    for x in range(nx):
        for y in range(ny):
            if (x, y) in seen:
                continue
            dx, dy = x - cx, y - cy
            images = {(sx * a, sy * b) for a, b in ((dx, dy), (dy, dx)) for sx in (1, -1) for sy in (1, -1)}
            cells = sorted((cx + a, cy + b) for a, b in images if 0 <= cx + a < nx and 0 <= cy + b < ny)
            seen.update(cells)
            if len(cells) >= 2:
                out.append(tuple(cell_id[cxy[0]][cxy[1]] for cxy in cells))
    return out


def _inward(
    nx: int, ny: int, cx: int, cy: int, cell_id: Sequence[Sequence[int]]
) -> dict[int, tuple[int, ...]]:
    """Each cell's neighbours one step closer to (cx, cy) in x or in y."""
    out: dict[int, tuple[int, ...]] = {}
    for x in range(nx):
        for y in range(ny):
            steps = []
            if x != cx:
                steps.append((x - (1 if x > cx else -1), y))
            if y != cy:
                steps.append((x, y - (1 if y > cy else -1)))
            if steps:
                out[cell_id[x][y]] = tuple(cell_id[a][b] for a, b in steps)
    return out


def peer_groups(esum_beam: NDArray[np.float64] | None) -> PeerGroups:
    """The symmetry groups for a spill whose beam-trigger energy sums per channel are ``esum_beam``."""
    groups: list[tuple[int, ...]] = []
    beam_only: list[bool] = []
    inward: dict[int, tuple[int, ...]] = {}
    beam_cell: tuple[int, int] | None = None
    c = centroid(esum_beam) if esum_beam is not None else None
    if c is not None:
        bx, by = round(c[0]), round(c[1])
        if abs(c[0] - bx) <= MAX_CENTROID_OFFSET and abs(c[1] - by) <= MAX_CENTROID_OFFSET:
            beam_cell = (bx, by)
            for base in (detector.ECAL_BASE, detector.PRS_BASE):
                ids = [
                    [base + y * detector.ECAL_NX + x for y in range(detector.ECAL_NY)]
                    for x in range(detector.ECAL_NX)
                ]
                for g in _square_orbits(detector.ECAL_NX, detector.ECAL_NY, bx, by, ids):
                    groups.append(g)
                    beam_only.append(True)
                inward.update(_inward(detector.ECAL_NX, detector.ECAL_NY, bx, by, ids))
    for m in range(detector.HCAL_MODULES):
        ids = [[detector.hcal_id(m, x, y) for y in range(detector.HCAL_NY)] for x in range(detector.HCAL_NX)]
        for g in _square_orbits(detector.HCAL_NX, detector.HCAL_NY, 1, 1, ids):
            groups.append(g)
            beam_only.append(True)
        inward.update(_inward(detector.HCAL_NX, detector.HCAL_NY, 1, 1, ids))
    counters = {name: detector.channel_id(name) for name in detector.COUNTER_NAMES}
    for g in (
        tuple(int(i) for i in detector.VETO_IDS),
        tuple(int(i) for i in detector.SRD_IDS),
        tuple(counters[n] for n in detector.BEAM_COUNTERS),
        tuple(counters[n] for n in detector.VETO_COUNTERS),
    ):
        groups.append(g)
        beam_only.append(False)
    return PeerGroups(tuple(groups), tuple(beam_only), beam_cell, inward)
