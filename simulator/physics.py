"""Beam particles and their detector response, vectorised over batches (pure: no I/O, no clocks).

:class:`BeamModel` puts the three parts of the model together for one configuration:

- the beam (:mod:`simulator.beam`): arrival times, intensity profile, the ordinary electrons on their
  branch-free bulk path (:class:`~simulator.beam.BulkBeam`, spot pool);
- the rare processes (:mod:`simulator.rare`): hadrons, muons, electron tails and the Z' signal, mixed in
  at sparse positions (:class:`~simulator.rare.RareProcesses`);
- the detector response (:mod:`simulator.response`): trigger-primitive heights and the 110 channel
  deposits of a batch (:class:`~simulator.response.DetectorResponse`).

The particle layout (:class:`~simulator.particles.Batch`, :class:`Kind`, :class:`Process`) lives in
:mod:`simulator.particles`; the names are re-exported here for existing callers.
"""

from __future__ import annotations

import functools

import numpy as np

from simulator import randoms as rnd
from simulator.beam import N_COUNTERS, BulkBeam, SpotPool, arrival_times, intensity
from simulator.config import SimConfig
from simulator.particles import (
    ECAL_PROFILE,
    KIND_NAMES,
    PRS_PROFILE,
    SIGNAL_PROCESSES,
    Batch,
    Kind,
    Process,
    concat,
)
from simulator.rare import RareProcesses, bernoulli_positions
from simulator.response import DetectorResponse
from simulator.showers import Grid, Profile
from simulator.zprime_signal import ZPrimeSignal

__all__ = [
    "ECAL_PROFILE",
    "KIND_NAMES",
    "N_COUNTERS",
    "PRS_PROFILE",
    "SIGNAL_PROCESSES",
    "Batch",
    "BeamModel",
    "Kind",
    "Process",
    "Profile",
    "SpotPool",
    "arrival_times",
    "bernoulli_positions",
    "concat",
    "generate",
    "intensity",
    "model_for",
]


class BeamModel:
    """The beam, rare-process and detector-response model of one configuration."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.response = DetectorResponse(config)
        self.beam = BulkBeam(config, self.response)
        self.rare = RareProcesses(config)

    def generate(self, n: int, r: rnd.Randoms, spill_index: int = 0) -> Batch:
        """``n`` beam particles (no times): bulk electrons, then sparse rare particles.

        With :class:`~simulator.randoms.PooledRandoms` the spot (impact point, counters) is a run of the
        :class:`SpotPool`; otherwise everything is drawn exactly. ``spill_index`` selects the aim cell
        of a per-spill scan."""
        batch = self.beam.electrons(n, r, self.beam.aim_index(spill_index))
        self.rare.add(batch, r)
        return batch

    def deposits(self, b: Batch, keys: np.ndarray) -> np.ndarray:
        """All channel deposits (float32 (K, 110), MeV): :meth:`DetectorResponse.deposits`."""
        return self.response.deposits(b, keys)

    def primitives(
        self,
        b: Batch,
        scale: np.ndarray,
        out: np.ndarray | None = None,
        cols: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Noise-free primitive pulse heights (float32 (29, N)): :meth:`DetectorResponse.primitives`."""
        return self.response.primitives(b, scale, out, cols)

    # ------------------------------------------------------------ shortcuts used by tests and tools
    @property
    def grid(self) -> Grid:
        return self.response.grid

    @property
    def tables(self) -> np.ndarray:
        return self.response.tables

    @property
    def block_cells(self) -> np.ndarray:
        return self.response.block_cells

    @property
    def fused_generate(self) -> bool:
        """False: the numpy path of the bulk electrons (the reference of the fused kernel)."""
        return self.beam.fused_generate

    @fused_generate.setter
    def fused_generate(self, value: bool) -> None:
        self.beam.fused_generate = value

    @property
    def signal(self) -> ZPrimeSignal | None:
        """The injected Z' signal (yields, branching ratios), or None."""
        return self.rare.signal


@functools.lru_cache(maxsize=8)
def model_for(config: SimConfig) -> BeamModel:
    """A cached :class:`BeamModel` for a config."""
    return BeamModel(config)


def generate(n: int, rng: np.random.Generator, config: SimConfig | None = None) -> Batch:
    """``n`` particles drawn with exact random numbers from ``rng`` (pure and seedable; for tests)."""
    return model_for(config or SimConfig()).generate(n, rnd.ExactRandoms(rng))
