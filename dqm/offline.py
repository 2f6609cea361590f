"""DQM histograms from many spill files in parallel (dask, via :mod:`daq.offline`), merged per run.

Each worker fills the books of one spill file through the same path as ``na64 dqm FILES`` and
``na64 dqm-reference`` (:func:`dqm.sources.file_messages` -> :class:`dqm.monitor.Monitor`), and
returns the closed spill's book and summary; the client adds the books up
(:func:`daq.offline.merge`). :func:`promote` writes the same reference document as
:func:`dqm.reference.promote`, from books filled in parallel.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daq import __version__
from daq.offline import Skipped, collect_spill_files, map_spills
from dqm import reference
from dqm.baseline import spill_lite
from dqm.book import Book
from dqm.config import DqmConfig
from dqm.errors import DqmUserError
from dqm.monitor import Monitor, SpillClosed
from dqm.sources import file_messages

log = logging.getLogger(__name__)


def spill_book(path: Path, config: DqmConfig | None = None) -> dict[str, Any]:
    """The DQM book and summary of every spill of one file (the per-file task of a parallel run)."""
    config = config or DqmConfig()
    mon = Monitor(config, live=False, spill_checks=[], live_checks=[])
    spills: list[dict[str, Any]] = []
    for msg in file_messages([path], config.beam_energy_gev):
        for notice in mon.handle(msg, time.time()):
            if isinstance(notice, SpillClosed) and mon.last_closed is not None:
                spills.append({"summary": dict(notice.summary), "book": mon.last_closed})
    return {"file": path.name, "spills": spills}


@dataclass
class FilledBooks:
    """Books of good spills added up, their summaries in file order, and what was left out."""

    total: Book
    summaries: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    bad_spills: list[str] = field(default_factory=list)  # not ok, or no beam
    skipped: list[Skipped] = field(default_factory=list)  # unreadable files


def fill(
    paths: Sequence[str | Path],
    config: DqmConfig | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
) -> FilledBooks:
    """Fill the DQM books of the good spills (status ok, EOT > 0) of ``paths`` in parallel."""
    config = config or DqmConfig()
    files, partial = collect_spill_files(paths)
    if not files:
        raise DqmUserError("no spill files found in " + ", ".join(map(str, paths)))
    out = map_spills(
        functools.partial(spill_book, config=config), files, workers=workers, scheduler=scheduler
    )
    result = FilledBooks(Book(Monitor(config, live=False, spill_checks=[], live_checks=[]).spec))
    result.skipped = partial + out.skipped
    for part in out.results:
        for s in part["spills"]:
            summary = s["summary"]
            good = summary.get("status", "ok") == "ok" and int(summary.get("n_beam", 0) or 0) > 0
            if good:
                result.total.add(s["book"])
                result.summaries.append(summary)
                result.files.append(str(summary.get("file", part["file"])))
            else:
                result.bad_spills.append(
                    f"run {summary.get('run')} spill {summary.get('spill')} ({summary.get('status')})"
                )
    return result


def promote(
    paths: Sequence[str | Path],
    out: str | Path,
    config: DqmConfig | None = None,
    min_spills: int = 1,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """:func:`dqm.reference.promote` with the books filled in parallel; the same document."""
    config = config or DqmConfig()
    filled = fill(paths, config, workers=workers, scheduler=scheduler)
    skipped = filled.bad_spills + [f"{s.path.name} ({s.reason})" for s in filled.skipped]
    if len(filled.summaries) < min_spills:
        raise DqmUserError(
            f"only {len(filled.summaries)} good spill(s) in {', '.join(map(str, paths))} (need {min_spills}); "
            f"skipped: {', '.join(skipped) or 'none'}"
        )
    provenance = {
        "files": filled.files,
        "runs": sorted({int(s.get("run", 0)) for s in filled.summaries}),
        "n_spills": len(filled.summaries),
        "n_events": filled.total.n_events,
        "skipped": skipped,
    }
    doc = {
        "format": reference.FORMAT,
        "format_version": reference.FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software_version": __version__,
        "provenance": provenance,
        "spec": reference._spec_dict(filled.total.spec),
        "spills": [spill_lite(s) for s in filled.summaries],
        "book": filled.total.to_dict(),
    }
    reference.write_json_atomic(Path(out), doc)
    return provenance
