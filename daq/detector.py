"""The NA64 invisible-mode detector model: channel map, geometry, beam cell and trigger block.

This is the one place that knows the detector. Every package imports it; nobody copies it.

Channel ids are dense (0..N_CHANNELS-1) and ordered by detector:

    ECAL 5x6 (0-29), PRS 5x6 (30-59), HCAL 4 modules x 3x3 (60-95),
    VETO 3 slabs x 2 PMTs (96-101), SRD 3 (102-104), counters S0 S2 S3 V1 V2 (105-109).

ECAL/PRS cells are indexed (x, y) with x in 0..4 (columns) and y in 0..5 (rows); the cell id is
``base + y * 5 + x``. HCAL cells are (module, x, y) with module 0..3 (module 3 = HCAL4 at zero degrees).
Every channel belongs to one readout group: one front-end source sending one fragment per readout.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

ECAL_NX = 5
ECAL_NY = 6
ECAL_PITCH_MM = 38.2
HCAL_MODULES = 4
HCAL_NX = 3
HCAL_NY = 3
VETO_SLABS = 3
VETO_PMTS = 2
SRD_MODULES = 3
COUNTER_NAMES: tuple[str, ...] = ("S0", "S2", "S3", "V1", "V2")
#: counters that must fire for S_trig, and the hole vetoes that must not
BEAM_COUNTERS: tuple[str, ...] = ("S0", "S2", "S3")
VETO_COUNTERS: tuple[str, ...] = ("V1", "V2")

#: the cell the beam is aimed at, (x, y); it moved between run periods, so it is configurable
BEAM_CELL: tuple[int, int] = (2, 3)
#: the trigger block: (nx, ny) cells around the beam cell
BLOCK_SIZE: tuple[int, int] = (3, 4)


class Detector(IntEnum):
    """Detector of a channel; also its readout group (one front-end source per detector)."""

    ECAL = 0
    PRS = 1
    HCAL = 2
    VETO = 3
    SRD = 4
    COUNTER = 5


class PulseShape(IntEnum):
    """Pulse-shape class of a channel (electronics response family)."""

    EM = 0  # ECAL and PRS: rise ~12 ns, FWHM ~40 ns
    HADRONIC = 1  # HCAL: FWHM ~70 ns
    FAST = 2  # VETO, SRD, counters: FWHM ~30 ns


N_GROUPS = len(Detector)

CHANNEL_DTYPE = np.dtype(
    [
        ("id", "<u2"),
        ("detector", "u1"),
        ("name", "S12"),
        ("module", "i1"),
        ("x", "i1"),
        ("y", "i1"),
        ("group", "u1"),
        ("shape", "u1"),
    ]
)

ECAL_BASE = 0
PRS_BASE = ECAL_BASE + ECAL_NX * ECAL_NY
HCAL_BASE = PRS_BASE + ECAL_NX * ECAL_NY
VETO_BASE = HCAL_BASE + HCAL_MODULES * HCAL_NX * HCAL_NY
SRD_BASE = VETO_BASE + VETO_SLABS * VETO_PMTS
COUNTER_BASE = SRD_BASE + SRD_MODULES
N_CHANNELS = COUNTER_BASE + len(COUNTER_NAMES)


def _build_channel_map() -> np.ndarray:
    rows: list[tuple[int, int, bytes, int, int, int, int, int]] = []

    def add(det: Detector, name: str, module: int, x: int, y: int, shape: PulseShape) -> None:
        rows.append((len(rows), int(det), name.encode(), module, x, y, int(det), int(shape)))

    for det, prefix in ((Detector.ECAL, "ECAL"), (Detector.PRS, "PRS")):
        for y in range(ECAL_NY):
            for x in range(ECAL_NX):
                add(det, f"{prefix}{x}{y}", -1, x, y, PulseShape.EM)
    for m in range(HCAL_MODULES):
        for y in range(HCAL_NY):
            for x in range(HCAL_NX):
                add(Detector.HCAL, f"HCAL{m}_{x}{y}", m, x, y, PulseShape.HADRONIC)
    for s in range(VETO_SLABS):
        for p in range(VETO_PMTS):
            add(Detector.VETO, f"VETO{s}_{p}", s, p, -1, PulseShape.FAST)
    for s in range(SRD_MODULES):
        add(Detector.SRD, f"SRD{s}", s, -1, -1, PulseShape.FAST)
    for i, name in enumerate(COUNTER_NAMES):
        add(Detector.COUNTER, name, i, -1, -1, PulseShape.FAST)
    table = np.array(rows, dtype=CHANNEL_DTYPE)
    table.flags.writeable = False
    return table


#: the channel map, one row per channel, indexed by channel id
CHANNELS: np.ndarray = _build_channel_map()


def _ids(det: Detector) -> np.ndarray:
    ids = np.flatnonzero(CHANNELS["detector"] == det).astype(np.intp)
    ids.flags.writeable = False
    return ids


ECAL_IDS = _ids(Detector.ECAL)
PRS_IDS = _ids(Detector.PRS)
HCAL_IDS = _ids(Detector.HCAL)
VETO_IDS = _ids(Detector.VETO)
SRD_IDS = _ids(Detector.SRD)
COUNTER_IDS = _ids(Detector.COUNTER)
#: channel ids of each readout group (index = Detector value)
GROUP_IDS: tuple[np.ndarray, ...] = tuple(_ids(d) for d in Detector)
#: the same as slices of the channel axis: a group's channels are contiguous (a fragment's waveforms
#: are ``waveforms[:, GROUP_SLICES[g], :]`` of the event's (events, N_CHANNELS, samples) array)
GROUP_SLICES: tuple[slice, ...] = tuple(slice(int(ids[0]), int(ids[-1]) + 1) for ids in GROUP_IDS)
assert all(
    np.array_equal(np.arange(s.start, s.stop), ids) for s, ids in zip(GROUP_SLICES, GROUP_IDS, strict=True)
)
#: a bit mask with the bit of every readout group set (bit g: group g, as in ``missing_groups``)
ALL_GROUPS_MASK = (1 << N_GROUPS) - 1


def channel_name(channel: int) -> str:
    """Human-readable name of a channel id, e.g. ``ECAL23``."""
    return str(CHANNELS["name"][channel].decode())


def channel_id(name: str) -> int:
    """Channel id of a channel name (inverse of :func:`channel_name`)."""
    hits = np.flatnonzero(CHANNELS["name"] == name.encode())
    if hits.size != 1:
        raise KeyError(f"no channel named {name!r}")
    return int(hits[0])


def ecal_id(x: int, y: int) -> int:
    """Channel id of ECAL cell (x, y)."""
    _check_cell(x, y)
    return ECAL_BASE + y * ECAL_NX + x


def prs_id(x: int, y: int) -> int:
    """Channel id of PRS cell (x, y)."""
    _check_cell(x, y)
    return PRS_BASE + y * ECAL_NX + x


def hcal_id(module: int, x: int, y: int) -> int:
    """Channel id of HCAL cell (x, y) of a module (0..3)."""
    if not (0 <= module < HCAL_MODULES and 0 <= x < HCAL_NX and 0 <= y < HCAL_NY):
        raise ValueError(f"HCAL cell (module={module}, x={x}, y={y}) is outside 4 x 3x3")
    return HCAL_BASE + module * HCAL_NX * HCAL_NY + y * HCAL_NX + x


def veto_id(slab: int, pmt: int) -> int:
    """Channel id of VETO slab (0..2), PMT (0..1)."""
    if not (0 <= slab < VETO_SLABS and 0 <= pmt < VETO_PMTS):
        raise ValueError(f"VETO (slab={slab}, pmt={pmt}) is outside 3 slabs x 2 PMTs")
    return VETO_BASE + slab * VETO_PMTS + pmt


def srd_id(module: int) -> int:
    """Channel id of SRD module 0..2."""
    if not 0 <= module < SRD_MODULES:
        raise ValueError(f"SRD module {module} is outside 0..{SRD_MODULES - 1}")
    return SRD_BASE + module


def counter_id(name: str) -> int:
    """Channel id of a beam counter or hole veto by name (S0, S2, S3, V1, V2)."""
    if name not in COUNTER_NAMES:
        raise ValueError(f"unknown counter {name!r}; known: {', '.join(COUNTER_NAMES)}")
    return COUNTER_BASE + COUNTER_NAMES.index(name)


def _check_cell(x: int, y: int) -> None:
    if not (0 <= x < ECAL_NX and 0 <= y < ECAL_NY):
        raise ValueError(f"cell ({x}, {y}) is outside the {ECAL_NX}x{ECAL_NY} ECAL grid")


def block_cells(
    beam_cell: tuple[int, int] = BEAM_CELL, size: tuple[int, int] = BLOCK_SIZE
) -> list[tuple[int, int]]:
    """Cells (x, y) of the trigger block of ``size`` (nx, ny) around the beam cell.

    The block spans x in [bx - (nx-1)//2, ...] and y in [by - ny//2, ...]: for the default 3x4 block
    around (2, 3) that is x 1..3, y 1..4, centred on the grid. Raises ValueError if it leaves the grid.
    """
    bx, by = beam_cell
    nx, ny = size
    x0, y0 = bx - (nx - 1) // 2, by - ny // 2
    cells = [(x, y) for y in range(y0, y0 + ny) for x in range(x0, x0 + nx)]
    if nx < 1 or ny < 1 or x0 < 0 or y0 < 0 or x0 + nx > ECAL_NX or y0 + ny > ECAL_NY:
        raise ValueError(
            f"a {nx}x{ny} block around beam cell {beam_cell} leaves the {ECAL_NX}x{ECAL_NY} grid"
        )
    return cells


def cell_center_mm(x: int | np.ndarray, y: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of ECAL cell (x, y) in mm, origin at the centre of cell (0, 0)."""
    return np.asarray(x, dtype=np.float64) * ECAL_PITCH_MM, np.asarray(y, dtype=np.float64) * ECAL_PITCH_MM


#: default channels carried in trigger primitives, in order: counters, ECAL block, PRS block
def default_primitive_channels(
    beam_cell: tuple[int, int] = BEAM_CELL, size: tuple[int, int] = BLOCK_SIZE
) -> np.ndarray:
    """Channel ids carried by the trigger primitives: the 5 counters, then ECAL and PRS block cells."""
    cells = block_cells(beam_cell, size)
    ids = list(COUNTER_IDS) + [ecal_id(x, y) for x, y in cells] + [prs_id(x, y) for x, y in cells]
    return np.array(ids, dtype=np.uint16)


# ---------------------------------------------------------------- nominal electronics
#: digitizer: 12-bit samples at 80 MS/s, 32 samples per channel read out
ADC_MAX = 4095
SAMPLE_PERIOD_NS = 12.5
N_SAMPLES = 32
NOMINAL_PEDESTAL = 200.0

#: nominal gain of each detector in ADC counts per MeV deposited (on the EM scale), chosen so that the
#: largest expected deposit stays below ADC_MAX: ~80 GeV in an ECAL cell, ~8 GeV in a PRS cell,
#: ~60 GeV in an HCAL cell, ~20 MIP (10 MeV each) in a VETO slab, ~80 MeV in an SRD module.
#: Counters: a beam particle leaves ~0.3 MeV in 1.5 mm of scintillator, i.e. ~300 counts.
NOMINAL_GAIN: dict[Detector, float] = {
    Detector.ECAL: 0.045,
    Detector.PRS: 0.45,
    Detector.HCAL: 0.06,
    Detector.VETO: 15.0,
    Detector.SRD: 40.0,
    Detector.COUNTER: 1000.0,
}


def nominal_gains() -> np.ndarray:
    """Nominal gain (ADC counts per MeV) of every channel, indexed by channel id."""
    gains = np.empty(N_CHANNELS, dtype=np.float64)
    for det, g in NOMINAL_GAIN.items():
        gains[CHANNELS["detector"] == det] = g
    return gains
