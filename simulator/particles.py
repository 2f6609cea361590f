"""Particles of a slice as a structure of arrays (:class:`Batch`), their kinds and processes (pure).

A :class:`Batch` holds what the beam and the rare processes made of each particle: kind, process, beam
energy, impact point, the energies that reach the PRS, ECAL and HCAL, missing energy and the five counter
deposits; :data:`ECAL_PROFILE` / :data:`PRS_PROFILE` map a process to its lateral shower template.
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
    SIGNAL_BREMS = 4  # Z' bremsstrahlung, invisible decay
    SIGNAL_RESONANT = 5  # e+ e- -> Z' on atomic electrons, invisible decay
    SIGNAL_VISIBLE = 6  # Z' produced but decayed visibly (to e+ e-) inside the ECAL
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

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def take(self, index: np.ndarray) -> Batch:
        """The particles at ``index`` (copies)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_COPIED}
        for name, value in out.items():
            if value is None:
                continue
            out[name] = value[:, index] if name == "counters" else value[index]
        return Batch(**out)

    @property
    def signal(self) -> np.ndarray:
        """True for invisible-signal particles (truth only)."""
        return (self.process == Process.SIGNAL_BREMS) | (self.process == Process.SIGNAL_RESONANT)


_NOT_COPIED = ("origin", "special")


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
    return Batch(**out)  # type: ignore[arg-type]
