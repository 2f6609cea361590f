"""Particles of a slice as a structure of arrays (:class:`Batch`), their kinds and processes (pure).

A :class:`Batch` holds what the beam and the rare processes made of each particle: kind, process, beam
energy, impact point, the energies that reach the PRS, ECAL and HCAL, missing energy and the five counter
deposits; :data:`ECAL_PROFILE` / :data:`PRS_PROFILE` map a process to its lateral shower template. The few
particles that made a Z' carry its truth in a sparse side table (:class:`ZPrimeTruth`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from simulator.showers import Profile

if TYPE_CHECKING:
    from simulator.beam import SpotPool


class Kind(IntEnum):
    ELECTRON = 0
    PION = 1
    KAON = 2
    ANTIPROTON = 3
    MUON = 4


KIND_NAMES = ("e", "pi", "K", "pbar", "mu")


class Process(IntEnum):
    """What happened to the particle (truth only)."""

    ELECTRON = 0  # ordinary electron shower
    RADIATIVE = 1  # lost energy upstream
    ELECTRONUCLEAR = 2  # hard photo-nuclear interaction in the ECAL: hadrons into VETO/HCAL
    DIMUON = 3  # gamma -> mu+ mu- in the target
    SIGNAL_BREMS = 4  # Z' bremsstrahlung; missing energy (invisible decay, or decay beyond the HCAL)
    SIGNAL_RESONANT = 5  # e+ e- -> Z' on atomic electrons; missing energy (as above)
    SIGNAL_VISIBLE = 6  # Z' (either way) decayed visibly (ee, mumu, hadrons) before the end of the HCAL
    HADRON_EARLY = 7  # hadron interacting in the PRS
    HADRON_SHOWER = 8  # hadron interacting in the ECAL after the PRS
    HADRON_MIP = 9  # hadron crossing the ECAL without interacting
    MUON = 10


SIGNAL_PROCESSES = (Process.SIGNAL_BREMS, Process.SIGNAL_RESONANT)

#: template class of the ECAL and PRS deposits, per process
ECAL_PROFILE = np.array(
    [Profile.EM] * 7 + [Profile.HADRONIC, Profile.HADRONIC, Profile.MIP, Profile.MIP], dtype=np.intp
)
PRS_PROFILE = np.array(
    [Profile.EM_PRS] * 7 + [Profile.EM_PRS, Profile.MIP, Profile.MIP, Profile.MIP], dtype=np.intp
)


class Production(IntEnum):
    """How a Z' was made (truth ``zp_mode``)."""

    NONE = 0
    BREMS = 1  # e Z -> e Z Z' by a beam or shower e+-
    RESONANT = 2  # e+ e- -> Z' by a shower positron on an atomic electron


class Emitter(IntEnum):
    """The particle that made the Z' (truth ``zp_emitter``)."""

    NONE = 0
    BEAM_ELECTRON = 1
    SHOWER_ELECTRON = 2
    SHOWER_POSITRON = 3


class Decay(IntEnum):
    """How a Z' decayed (truth ``zp_decay``); where is ``zp_decay_z_mm``."""

    NONE = 0
    INVISIBLE = 1  # neutrinos (or dark matter)
    EE = 2
    MUMU = 3
    HADRONS = 4
    TAUTAU = 5


@dataclass
class ZPrimeTruth:
    """Truth of the Z' made by some particles of a batch (sparse: one row per Z', ``index`` = the
    particle's position in the batch, sorted)."""

    index: np.ndarray  # int64
    mode: np.ndarray  # uint8 Production
    emitter: np.ndarray  # uint8 Emitter
    depth_x0: np.ndarray  # float32 emission depth in the ECAL (radiation lengths from its face)
    x: np.ndarray  # float32 Z' energy / emitter energy (1 for resonant production)
    energy_gev: np.ndarray  # float32 Z' energy
    decay: np.ndarray  # uint8 Decay
    decay_z_mm: np.ndarray  # float32 decay point along the beam, from the ECAL face

    ROWS = ("mode", "emitter", "depth_x0", "x", "energy_gev", "decay", "decay_z_mm")

    def __len__(self) -> int:
        return int(self.index.size)

    def rows(self, sel: np.ndarray | slice, index: np.ndarray) -> ZPrimeTruth:
        """Rows ``sel`` (positions or mask) renumbered to batch positions ``index``."""
        return ZPrimeTruth(index.astype(np.int64), **{k: getattr(self, k)[sel] for k in self.ROWS})

    def take(self, positions: np.ndarray) -> ZPrimeTruth | None:
        """The truth of the particles at batch ``positions`` (any order), renumbered to their order there."""
        positions = np.asarray(positions)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        if not self.index.size:
            return None
        at = np.minimum(np.searchsorted(self.index, positions), self.index.size - 1)
        hit = self.index[at] == positions
        if not hit.any():
            return None
        return self.rows(at[hit], np.flatnonzero(hit))

    @staticmethod
    def concat(parts: list[tuple[ZPrimeTruth | None, int]]) -> ZPrimeTruth | None:
        """One table from (table, offset of its batch) pairs."""
        real = [(t, o) for t, o in parts if t is not None and len(t)]
        if not real:
            return None
        return ZPrimeTruth(
            np.concatenate([t.index + o for t, o in real]),
            **{k: np.concatenate([getattr(t, k) for t, _ in real]) for k in ZPrimeTruth.ROWS},
        )


@dataclass
class Batch:
    """Particles of one slice, structure of arrays. Energies in GeV, positions in mm (face coordinates)."""

    kind: np.ndarray  # uint8 Kind
    process: np.ndarray  # uint8 Process
    e_beam: np.ndarray  # float32 GeV
    x: np.ndarray  # float32 mm, origin at the centre of ECAL cell (0, 0)
    y: np.ndarray
    bin: np.ndarray  # int32 shower-template bin of (x, y)
    e_prs: np.ndarray  # float32 GeV deposited in the PRS (EM scale)
    e_ecal: np.ndarray  # float32 GeV deposited in the ECAL after the PRS
    e_hcal: np.ndarray  # float32 GeV sent to the HCAL (visible, before per-module sharing)
    e_miss: np.ndarray  # float32 GeV escaping undetected (Z', neutrinos, muons, neutrons)
    counters: np.ndarray  # float32 (5, N) MeV in S0 S2 S3 V1 V2
    t_ns: np.ndarray | None = None  # int64 ns since spill start
    #: (pool, offset, generation) when the spot came from a contiguous run of a SpotPool (primitives read
    #: its pre-scaled block shares); None otherwise. Not copied by take/concat.
    origin: tuple[SpotPool, int, int] | None = None
    #: sorted indices of the particles that are not bulk electrons (None: unknown), not copied either
    special: np.ndarray | None = None
    #: truth of the Z' made in this batch (None: none)
    zprime: ZPrimeTruth | None = None

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def take(self, index: np.ndarray) -> Batch:
        """The particles at ``index`` (copies)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_COPIED}
        for name, value in out.items():
            if value is None:
                continue
            out[name] = value[:, index] if name == "counters" else value[index]
        if self.zprime is not None:
            out["zprime"] = self.zprime.take(index)
        return Batch(**out)

    @property
    def signal(self) -> np.ndarray:
        """True for invisible-signal particles (truth only)."""
        return (self.process == Process.SIGNAL_BREMS) | (self.process == Process.SIGNAL_RESONANT)


_NOT_COPIED = ("origin", "special", "zprime")


def concat(batches: list[Batch]) -> Batch:
    """One batch from several (copies)."""
    out: dict[str, np.ndarray | None] = {}
    for f in dataclasses.fields(Batch):
        if f.name in _NOT_COPIED:
            continue
        parts = [getattr(b, f.name) for b in batches]
        if any(p is None for p in parts):
            out[f.name] = None
        else:
            out[f.name] = np.concatenate(parts, axis=1 if f.name == "counters" else 0)
    offsets = np.cumsum([0] + [len(b) for b in batches])[:-1]
    zp = ZPrimeTruth.concat([(b.zprime, int(o)) for b, o in zip(batches, offsets, strict=True)])
    return Batch(**out, zprime=zp)  # type: ignore[arg-type]
