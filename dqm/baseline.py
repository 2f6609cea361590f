"""What a good spill looks like: expectations derived from a reference or from a run's first spills (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dqm import metrics
from dqm.book import Book


def spill_lite(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers of a spill summary a baseline needs (kept in reference files)."""
    trig = summary.get("triggers") or ({k: summary.get(k, 0) for k in ("physics", "beam", "random")})
    return {
        "run": int(summary.get("run", 0)),
        "spill": int(summary.get("spill", 0)),
        "n_beam": int(summary.get("n_beam", 0) or 0),
        "physics": int(trig.get("physics", 0) or 0),
        "beam": int(trig.get("beam", 0) or 0),
        "random": int(trig.get("random", 0) or 0),
        "spill_length_s": float(summary.get("spill_length_s", 0.0) or 0.0),
    }


@dataclass(frozen=True, eq=False)
class Baseline:
    """Expectations for a spill. ``source`` says where they came from (reference file or run baseline)."""

    source: str
    book: Book
    spills: tuple[dict[str, Any], ...]
    hit_rate: NDArray[np.float64]  # (2, channels): hits per physics / beam trigger
    random_mean: NDArray[np.float64]  # (channels,): mean energy in random triggers (GeV, NaN if none)
    pedestals: metrics.Pedestals
    peak: metrics.Peak | None
    eot_per_spill: float | None
    acceptance: float | None  # physics triggers per EOT

    @classmethod
    def build(
        cls, book: Book, summaries: Sequence[Mapping[str, Any]], source: str, min_peak_events: int = 30
    ) -> Baseline:
        lite = tuple(spill_lite(s) for s in summaries)
        beam_spills = [s for s in lite if s["n_beam"] > 0]
        eot = float(np.mean([s["n_beam"] for s in beam_spills])) if beam_spills else None
        n_beam = sum(s["n_beam"] for s in beam_spills)
        acceptance = sum(s["physics"] for s in beam_spills) / n_beam if n_beam > 0 else None
        h = book.h1["ecal_sum_beam"]
        peak = metrics.find_peak(h.values(), h.axes[0].edges, min_peak_events)
        return cls(
            source=source,
            book=book,
            spills=lite,
            hit_rate=metrics.hit_rates(book),
            random_mean=metrics.random_noise_gev(book)[0],
            pedestals=metrics.pedestals(book),
            peak=peak,
            eot_per_spill=eot,
            acceptance=acceptance,
        )
