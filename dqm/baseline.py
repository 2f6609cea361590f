"""What a good spill looks like: expectations derived from a reference or from a run's first spills (pure)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daq.summary import SpillSummary
from dqm import metrics
from dqm.book import Book


@dataclass(frozen=True)
class SpillNumbers:
    """The few numbers of a spill summary a baseline needs (kept in reference files as ``spills``)."""

    run: int
    spill: int
    n_beam: int
    physics: int
    beam: int
    random: int
    spill_length_s: float

    @classmethod
    def of(cls, s: SpillSummary) -> SpillNumbers:
        t = s.triggers
        return cls(s.run, s.spill, s.n_beam, t.physics, t.beam, t.random, s.spill_length_s)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpillNumbers:
        """An entry of a reference file; a missing or non-numeric value raises KeyError/TypeError/ValueError."""
        n = {k: int(d[k]) for k in ("run", "spill", "n_beam", "physics", "beam", "random")}
        return cls(**n, spill_length_s=float(d["spill_length_s"]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Baseline:
    """Expectations for a spill. ``source`` says where they came from (reference file or run baseline)."""

    source: str
    book: Book
    spills: tuple[SpillNumbers, ...]
    hit_rate: NDArray[np.float64]  # (2, channels): hits per physics / beam trigger
    random_mean: NDArray[np.float64]  # (channels,): mean energy in random triggers (GeV, NaN if none)
    pedestals: metrics.Pedestals
    peak: metrics.Peak | None
    eot_per_spill: float | None
    acceptance: float | None  # physics triggers per EOT
    #: statistical error of the peak position (GeV; NaN if unknown)
    peak_error: float = math.nan
    #: channels found dead, hot or noisy while the baseline was formed: not compared with it
    masked: frozenset[int] = frozenset()

    @classmethod
    def build(
        cls,
        book: Book,
        spills: Sequence[SpillNumbers],
        source: str,
        min_peak_events: int = 30,
        masked: frozenset[int] = frozenset(),
    ) -> Baseline:
        beam_spills = [s for s in spills if s.n_beam > 0]
        eot = float(np.mean([s.n_beam for s in beam_spills])) if beam_spills else None
        n_beam = sum(s.n_beam for s in beam_spills)
        acceptance = sum(s.physics for s in beam_spills) / n_beam if n_beam > 0 else None
        h = book.h1["ecal_sum_beam"]
        peak = metrics.find_peak(h.values(), h.axes[0].edges, min_peak_events)
        return cls(
            source=source,
            book=book,
            spills=tuple(spills),
            hit_rate=metrics.hit_rates(book),
            random_mean=metrics.random_noise_gev(book)[0],
            pedestals=metrics.pedestals(book),
            peak=peak,
            eot_per_spill=eot,
            acceptance=acceptance,
            peak_error=metrics.peak_error(h.values(), h.axes[0].edges, min_peak_events)
            if peak is not None
            else math.nan,
            masked=masked,
        )
