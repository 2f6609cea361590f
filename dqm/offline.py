"""DQM histograms from many spill files in parallel (dask, via :mod:`daq.offline`), merged per run.

Each worker fills the books of one spill file through the same path as ``na64 dqm FILES`` and
``na64 dqm-reference`` (:func:`dqm.sources.file_messages` -> :class:`dqm.monitor.Monitor`), and
returns the closed spill's book and summary; the client adds the books up
(:func:`daq.offline.merge`). :func:`promote` writes the same reference document as
:func:`dqm.reference.promote`, from books filled in parallel.

``na64 dqm FILES --workers N`` (or ``--scheduler``) uses :class:`ParallelFileSource`: workers fill every
EVENTS message of a spill but its last (:func:`spill_parts`); the server's monitor then handles that
last message, adds the worker's book to the spill's open book (:meth:`dqm.monitor.Monitor.add_filled`)
and handles the spill summary, in file order. Its views, history, checks and alarms equal those of the
serial :class:`dqm.sources.FileSource` (the same messages, the same additions).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daq import __version__, protocol
from daq.contract import SpillStatus
from daq.offline import Skipped, collect_spill_files, map_spills
from daq.summary import SpillSummary
from dqm import reference
from dqm.baseline import SpillNumbers
from dqm.batch import MonitoredEvents
from dqm.book import Book, BookSpec
from dqm.config import DqmConfig
from dqm.errors import DqmUserError
from dqm.monitor import Monitor, SpillClosed
from dqm.sources import OFFLINE_MESSAGE_EVENTS, Handler, file_messages

log = logging.getLogger(__name__)


def spill_book(path: Path, config: DqmConfig | None = None) -> dict[str, Any]:
    """The DQM book and summary of every spill of one file (the per-file task of a parallel run)."""
    config = config or DqmConfig()
    mon = Monitor(config, live=False, spill_checks=[], live_checks=[])
    spills: list[dict[str, Any]] = []
    for msg in file_messages([path], config.beam_energy_gev, events_per_message=OFFLINE_MESSAGE_EVENTS):
        for notice in mon.handle(msg, time.time()):
            if isinstance(notice, SpillClosed) and mon.last_closed is not None:
                spills.append({"summary": notice.summary, "book": mon.last_closed})
    return {"file": path.name, "spills": spills}


@dataclass
class FilledBooks:
    """Books of good spills added up, their summaries in file order, and what was left out."""

    total: Book
    summaries: list[SpillSummary] = field(default_factory=list)
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
            summary: SpillSummary = s["summary"]
            if summary.status == SpillStatus.OK and summary.n_beam > 0:
                result.total.add(s["book"])
                result.summaries.append(summary)
                result.files.append(summary.file or part["file"])
            else:
                result.bad_spills.append(f"run {summary.run} spill {summary.spill} ({summary.status})")
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
        "runs": sorted({s.run for s in filled.summaries}),
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
        "spills": [SpillNumbers.of(s).to_dict() for s in filled.summaries],
        "book": filled.total.to_dict(),
    }
    reference.write_json_atomic(Path(out), doc)
    return provenance


# ---------------------------------------------------------------- `na64 dqm FILES` in parallel
@dataclass
class SpillPart:
    """One spill of a file, filled by a worker except for its last EVENTS message."""

    book: Book  # every EVENTS message of the spill but the last
    n_batches: int  # messages filled into ``book``
    last: protocol.Events | None  # the spill's last EVENTS message (None: the spill has no events)
    summary: protocol.Summary  # the spill summary


def spill_parts(path: Path, config: DqmConfig | None = None) -> list[SpillPart]:
    """The per-file task of a parallel ``na64 dqm FILES``: the file's spills as :class:`SpillPart`."""
    config = config or DqmConfig()
    spec = BookSpec.from_config(config)
    out: list[SpillPart] = []
    book, n, held = Book(spec), 0, None
    for msg in file_messages([path], config.beam_energy_gev, events_per_message=OFFLINE_MESSAGE_EVENTS):
        if isinstance(msg, protocol.Events):
            if held is not None:
                book.fill(MonitoredEvents.from_events(held))
                n += 1
            held = msg
        elif isinstance(msg, protocol.Summary):
            out.append(SpillPart(book, n, held, msg))
            book, n, held = Book(spec), 0, None
    return out


#: adds a worker's book to the monitor's open book of (run, spill): ``add(run, spill, book, n_batches)``
AddBook = Callable[[int, int, Book, int], None]


def apply_parts(parts: Iterable[SpillPart], handle: Handler, add: AddBook) -> None:
    """Feed a file's spill parts to a monitor: last message, the worker's book, then the summary."""
    for part in parts:
        if part.last is not None:
            handle(part.last)
            if part.n_batches:
                add(part.last.run, part.last.spill, part.book, part.n_batches)
        handle(part.summary)


class ParallelFileSource:
    """``na64 dqm FILES`` on dask: like :class:`dqm.sources.FileSource` (start/stop/done/error), with
    the files read and filled by :func:`daq.offline.map_spills` workers (a LocalCluster of ``workers``
    processes, or the cluster at ``scheduler``) and handed to the monitor in file order.

    Unreadable files are skipped, logged and listed in ``skipped`` (the serial source stops at them).
    """

    def __init__(
        self,
        paths: Iterable[str | Path],
        handler: Handler,
        add: AddBook,
        config: DqmConfig | None = None,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
    ) -> None:
        self.config = config or DqmConfig()
        files, partial = collect_spill_files(list(paths))  # validates the paths now (UserError)
        if not files:
            raise DqmUserError("no spill files found in " + ", ".join(map(str, paths)))
        self.paths = files
        self.skipped: list[Skipped] = list(partial)
        self.handler, self.add = handler, add
        self.workers, self.scheduler = workers, scheduler
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dqm-files-parallel", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            out = map_spills(
                functools.partial(spill_parts, config=self.config),
                self.paths,
                workers=self.workers,
                scheduler=self.scheduler,
                on_result=lambda _path, parts: apply_parts(parts, self.handler, self.add),
                stop=self._stop,
            )
            self.skipped += out.skipped
            log.info(
                "offline: %d spill file(s) loaded on %d dask workers in %.1f s; %d skipped",
                len(out.results),
                out.workers,
                out.seconds,
                len(self.skipped),
            )
        except Exception as e:
            self.error = e
            log.error("offline: reading spill files in parallel failed: %s", e)
        finally:
            self.done.set()
