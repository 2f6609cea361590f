"""Canned simulator scenarios for trigger unit tests: the full primitive stream of a short spill, in process.

Each scenario is the simulator's own front-end (:class:`simulator.frontend.FrontEnd`, the code behind
``na64 simulate``) with a few settings and faults, run without sockets: it yields the SLICE messages of
one spill (every particle, as the DAQ would receive them) together with the truth of every particle::

    s = scenario("dead_ecal_cell", n_slices=10)
    for msg, truth in zip(s.slices, s.truth):
        ...                      # msg: daq.protocol.Slice, truth: simulator.physics.Batch (kind, e_beam, ...)

=================  ====================================================================================
name               what it is
=================  ====================================================================================
nominal            the default beam (2e5 Hz here to keep tests fast)
dead_ecal_cell     ECAL beam cell (2, 3) dead (gain 0): electrons lose ~80% of their block energy
intensity_spike    4x intensity in the first 30% of the spill, ECAL PMTs saturating at 2500 counts meanwhile
hadron_burst       30% pions, 5% kaons, 2% antiprotons in the beam (a badly tuned beam line)
=================  ====================================================================================

Extra ``faults`` (``simulator.faults`` syntax) and dotted config ``overrides`` can be added to any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daq import protocol
from simulator import config as sim_config
from simulator.frontend import FrontEnd
from simulator.physics import Batch, Kind, concat


@dataclass(frozen=True)
class ScenarioSpec:
    """Settings of a canned scenario: simulator config overrides and faults."""

    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple[str, ...] = ()


SCENARIOS: dict[str, ScenarioSpec] = {
    "nominal": ScenarioSpec("the default beam"),
    "dead_ecal_cell": ScenarioSpec("ECAL beam cell (2, 3) dead", faults=("dead:ECAL23",)),
    "intensity_spike": ScenarioSpec(
        "4x intensity in the first 30% of the spill with ECAL saturation at 2500 counts",
        faults=("spike:4:{spike_s}:2500",),
    ),
    "hadron_burst": ScenarioSpec(
        "30% pions, 5% kaons, 2% antiprotons",
        overrides={"beam.pion_fraction": 0.30, "beam.kaon_fraction": 0.05, "beam.antiproton_fraction": 0.02},
    ),
}


@dataclass(frozen=True, eq=False)
class ScenarioStream:
    """One simulated spill: SLICE messages (every particle) and per-particle truth, slice by slice."""

    name: str
    config: sim_config.SimConfig
    prim_channels: np.ndarray
    slices: list[protocol.Slice]
    truth: list[Batch]

    @property
    def n_particles(self) -> int:
        return sum(m.n_particles for m in self.slices)

    @property
    def spill_ns(self) -> int:
        return round(self.config.beam.spill_length_s * 1e9)

    def all_truth(self) -> Batch:
        """The truth of every particle of the spill, in stream order."""
        return concat(self.truth)

    def kinds(self) -> np.ndarray:
        """Particle kind (``simulator.physics.Kind``) of every particle, in stream order."""
        return np.concatenate([t.kind for t in self.truth])

    def is_hadron(self) -> np.ndarray:
        k = self.kinds()
        return (k == Kind.PION) | (k == Kind.KAON) | (k == Kind.ANTIPROTON)


def scenario(
    name: str,
    *,
    n_slices: int = 10,
    slice_ms: float = 10.0,
    rate_hz: float = 2e5,
    seed: int = 1,
    run: int = 1,
    spill: int = 1,
    faults: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ScenarioStream:
    """Simulate one spill of ``n_slices`` slices of the named scenario (see :data:`SCENARIOS`)."""
    try:
        spec = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})") from None
    spill_s = n_slices * slice_ms / 1e3
    data: dict[str, Any] = {
        "seed": seed,
        "run": run,
        "beam.rate_hz": rate_hz,
        "beam.spill_length_s": spill_s,
        "beam.spill_period_s": max(spill_s, 10.8),
        "readout.slice_ms": slice_ms,
        **spec.overrides,
        **(overrides or {}),
    }
    all_faults = [f.format(spike_s=0.3 * spill_s) for f in spec.faults] + list(faults)
    cfg = sim_config.load(None, {k: v for k, v in data.items()})
    cfg = sim_config.replace(cfg, faults=tuple(all_faults))
    fe = FrontEnd(cfg)
    fe.begin_spill(spill, 0)
    slices, truth = [], []
    for k in range(fe.n_slices):
        msg = fe.slice_message(spill, k)
        rec = fe.buffer[(spill, k)]
        slices.append(msg)
        truth.append(rec.batch)
    return ScenarioStream(name, cfg, np.asarray(fe.prim_channels), slices, truth)
