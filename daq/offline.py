"""Parallel offline runs over many spill files on dask.distributed, and merging their results.

The offline tools (``na64 retrigger``, DQM filling from files, calibration derivation) do the same
thing: apply a function to every spill file independently, then add the per-spill results up. This
module is that one pattern::

    from daq.offline import map_spills, merge_all

    out = map_spills(count_events, files, workers=4)              # LocalCluster with 4 processes
    out = map_spills(count_events, files, scheduler="tcp://head:8786")  # an existing cluster
    out = map_spills(count_events, files, workers=0)              # in this process, no dask
    total = merge_all(out.results)
    print(out.n_skipped, "files skipped:", [s.reason for s in out.skipped])

``func(path) -> result`` runs in a worker process, so it must be a module-level function (or a
``functools.partial`` of one) of an importable package, and the files must be visible to the workers
under the same path (a shared file system on a cluster). A file that cannot be read
(:class:`~daq.files.SpillFileError`, or an ``OSError`` from HDF5 while reading it) is skipped, logged
once and counted in :attr:`OfflineResult.skipped`; any other exception is a bug and stops the run.

Merging (:func:`merge`, :func:`merge_all`) adds numbers, numpy arrays, boost-histograms and anything
else with ``+``, and accumulators with ``copy()`` and in-place ``add()`` (DQM books), recursively
through mappings; ``(counts, edges)`` histogram pairs are
added after checking the edges; lists are concatenated (per-spill rows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from daq.errors import DaqError, UserError
from daq.files import PARTIAL_SUFFIX, SpillFileError, list_spill_files

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how long to try to reach an existing dask scheduler (s)
CONNECT_TIMEOUT_S = 10.0


class OfflineError(DaqError):
    """An offline run failed (a worker raised something other than an unreadable-file error)."""


class MergeError(UserError):
    """Two per-spill results cannot be added (different histogram binning, shapes or types)."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of an offline run, and why (one line)."""

    path: Path
    reason: str


@dataclass
class OfflineResult(Generic[T]):
    """Per-file results in input order (skipped files are left out), and what was skipped."""

    files: list[Path]
    results: list[T]
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0  # worker processes used (0: in this process)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


# ---------------------------------------------------------------- inputs
#: how ``--workers`` reads in every offline command (same words in every ``--help``)
WORKERS_HELP = "N dask worker processes on a local cluster (127.0.0.1), 0 = in this process"


def default_workers(n_files: int) -> int:
    """The ``--workers`` default of the offline commands: one worker per core, at most one per file; in
    this process (0) for a single file or when dask (``na64daq[offline]``) is not installed."""
    from daq.extras import missing

    if n_files <= 1 or missing("offline", ("dask", "distributed")):
        return 0
    return min(os.cpu_count() or 1, n_files)


def collect_spill_files(paths: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Spill files among files and directories, sorted by (run, spill), plus the partial files found.

    Unlike :func:`daq.files.list_spill_files` alone, ``.partial`` files (named explicitly or lying in a
    given directory) are reported as skipped instead of silently ignored. A path that does not exist
    raises :class:`~daq.files.SpillFileError`.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    skipped: list[Skipped] = []
    for item in items:
        p = Path(item)
        candidates = sorted(p.iterdir()) if p.is_dir() else [p]
        for c in candidates:
            if c.name.endswith(PARTIAL_SUFFIX) and c.is_file():
                skipped.append(Skipped(c, "partial file (still being written, or left by a crash)"))
    return list_spill_files(items), skipped


# ---------------------------------------------------------------- running
def _guarded(func: Callable[[Path], T], path: str) -> tuple[str, T | None, str]:
    """Run ``func`` on one file in a worker; unreadable files come back as a reason, not an exception."""
    try:
        return path, func(Path(path)), ""
    except SpillFileError as e:
        return path, None, str(e)
    except OSError as e:
        return path, None, f"{path}: cannot be read ({e})"


def map_spills(
    func: Callable[[Path], T],
    files: Sequence[str | Path],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    progress_every_s: float = 5.0,
    on_result: Callable[[Path, T], None] | None = None,
    stop: threading.Event | None = None,
) -> OfflineResult[T]:
    """Apply ``func`` to every spill file in parallel and return the results in input order.

    ``scheduler``: address of an existing dask scheduler (``tcp://host:8786``); otherwise a LocalCluster
    of ``workers`` processes is started on 127.0.0.1 (default: one per core, at most one per file) and
    stopped afterwards. ``workers=0`` runs everything in this process without dask (debugging, tiny
    inputs). Unreadable files are skipped (logged once each, counted); progress is logged every
    ``progress_every_s`` seconds.

    ``on_result(path, result)`` (optional) is called in this thread, in input order, as soon as a file
    and all files before it are done (streaming consumers, e.g. the DQM server). ``stop`` (optional)
    ends the run early: pending tasks are cancelled and the results so far are returned.
    """
    paths = [str(Path(f)) for f in files]
    t0 = time.perf_counter()
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0 (got {workers})")
    progress = _Progress(len(paths), progress_every_s)
    ordered = _InOrder(paths, on_result)
    if scheduler is None and (workers == 0 or not paths):
        for p in paths:
            if stop is not None and stop.is_set():
                break
            ordered.add(_guarded(func, p))
            progress.step()
        return _collect(ordered.done_paths(), ordered.rows, t0, 0)
    with _client(scheduler, workers, threads_per_worker, len(paths)) as (client, n_workers):
        log.info("offline run over %d files on %d dask workers", len(paths), n_workers)
        futures = client.map(_guarded, [func] * len(paths), paths, pure=False)
        from dask.distributed import as_completed

        try:
            done = as_completed(futures)
            while not done.is_empty():
                if stop is not None and stop.is_set():
                    log.info("offline run stopped after %d of %d files", len(ordered.rows), len(paths))
                    _cancel_and_drain(client, futures)
                    break
                batch = done.next_batch(block=False)
                if not batch:
                    time.sleep(0.02)
                    continue
                for fut in batch:
                    ordered.add(fut.result())
                    progress.step()
        except Exception as e:
            for f in futures:
                f.cancel()
            if isinstance(e, UserError | DaqError):
                raise
            raise OfflineError(f"offline run failed in a worker: {type(e).__name__}: {e}") from e
        return _collect(ordered.done_paths(), ordered.rows, t0, n_workers)


def _cancel_and_drain(client: Any, futures: list[Any], timeout_s: float = 5.0) -> None:
    """Cancel the pending tasks and let the running ones end (bounded), so the cluster closes quietly."""
    for f in futures:
        f.cancel()
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(Exception):  # best effort: the cluster is closed next anyway
        while time.monotonic() < deadline and any(client.processing().values()):
            time.sleep(0.05)


class _InOrder:
    """Collects per-file rows as they complete; hands kept results to ``on_result`` in input order."""

    def __init__(self, paths: list[str], on_result: Callable[[Path, Any], None] | None) -> None:
        self.paths, self.on_result = paths, on_result
        self.rows: list[tuple[str, Any, str]] = []
        self._index: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            self._index.setdefault(p, []).append(i)
        self._ready: dict[int, tuple[str, Any, str]] = {}
        self._next = 0

    def add(self, row: tuple[str, Any, str]) -> None:
        self.rows.append(row)
        if self.on_result is None:
            return
        self._ready[self._index[row[0]].pop(0)] = row
        while self._next in self._ready:
            path, value, reason = self._ready.pop(self._next)
            self._next += 1
            if not reason:
                self.on_result(Path(path), value)

    def done_paths(self) -> list[str]:
        """The input paths whose row arrived, in input order."""
        got = {r[0] for r in self.rows}
        return [p for p in self.paths if p in got]


class _Progress:
    """Logs ``done/total`` at most every ``every`` seconds, and at the end."""

    def __init__(self, total: int, every: float) -> None:
        self.total, self.every, self.done = total, every, 0
        self.t0 = self.last = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.done == self.total or now - self.last >= self.every:
            self.last = now
            log.info("offline: %d/%d files done (%.1f s)", self.done, self.total, now - self.t0)


def _collect(
    paths: list[str], rows: list[tuple[str, Any, str]], t0: float, n_workers: int
) -> OfflineResult[Any]:
    by_path = {p: (value, reason) for p, value, reason in rows}
    results, kept, skipped = [], [], []
    for p in paths:
        value, reason = by_path[p]
        if reason:
            log.warning("skipping %s", reason)
            skipped.append(Skipped(Path(p), reason))
        else:
            kept.append(Path(p))
            results.append(value)
    if skipped:
        log.warning("%d of %d files skipped (unreadable)", len(skipped), len(paths))
    return OfflineResult(kept, results, skipped, time.perf_counter() - t0, n_workers)


@contextlib.contextmanager
def _client(
    scheduler: str | None, workers: int | None, threads_per_worker: int, n_tasks: int
) -> Iterator[tuple[Any, int]]:
    """A dask Client on an existing scheduler, or on a LocalCluster bound to 127.0.0.1."""
    from daq.extras import require

    require("offline", "a parallel offline run (--workers N, --scheduler)", ("dask", "distributed"))
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise UserError(f"cannot connect to the dask scheduler at {scheduler}: {e}") from None
        try:
            yield client, len(client.scheduler_info().get("workers", {}))
        finally:
            client.close()
        return
    n = workers if workers else max(1, min(os.cpu_count() or 1, n_tasks))
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            # no dashboard; its HTTP server (metrics) on a free port, never the shared default 8787
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client, n


# ---------------------------------------------------------------- merging
def is_histogram_pair(value: Any) -> bool:
    """True for a ``(counts, edges)`` tuple of arrays with ``len(edges) == len(counts) + 1``."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], np.ndarray)
        and isinstance(value[1], np.ndarray)
        and value[1].ndim == 1
        and value[0].shape[:1] == (value[1].shape[0] - 1,)
    )


def merge_histogram_pairs(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], name: str = "histogram"
) -> tuple[np.ndarray, np.ndarray]:
    """Add two ``(counts, edges)`` histograms; different binning is a :class:`MergeError`."""
    if a[1].shape != b[1].shape or not np.array_equal(a[1], b[1]):
        raise MergeError(f"cannot add {name}: bin edges differ ({a[1].size - 1} vs {b[1].size - 1} bins)")
    return a[0] + b[0], a[1]


def merge(a: Any, b: Any, name: str = "result") -> Any:
    """Sum of two per-spill results (see module docstring); ``None`` is the neutral element."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping):
            raise MergeError(f"cannot add {name}: a mapping and a {type(b).__name__}")
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out.get(k), v, f"{name}.{k}")
        return out
    if is_histogram_pair(a) or is_histogram_pair(b):
        if not (is_histogram_pair(a) and is_histogram_pair(b)):
            raise MergeError(f"cannot add {name}: a (counts, edges) histogram and something else")
        return merge_histogram_pairs(a, b, name)
    if isinstance(a, list):
        if not isinstance(b, list):
            raise MergeError(f"cannot add {name}: a list and a {type(b).__name__}")
        return a + b
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape != b.shape:
        raise MergeError(f"cannot add {name}: shapes {a.shape} and {b.shape}")
    if type(a) is type(b) and callable(getattr(a, "add", None)) and callable(getattr(a, "copy", None)):
        try:  # accumulators adding in place (e.g. DQM books): never modify the inputs
            return a.copy().add(b)
        except (TypeError, ValueError) as e:
            raise MergeError(f"cannot add {name}: {e}") from None
    try:
        return a + b
    except (TypeError, ValueError) as e:
        raise MergeError(f"cannot add {name}: {e}") from None


def merge_all(results: Iterable[Any], name: str = "result") -> Any:
    """Sum of all per-spill results (None for none)."""
    total: Any = None
    for r in results:
        total = merge(total, r, name)
    return total


def spill_counts(path: Path) -> dict[str, Any]:
    """Per-spill counters of a file (a small example task and a cheap sanity pass over many files)."""
    from daq.files import SpillFile

    with SpillFile(path) as f:
        return {
            "n_spills": 1,
            "n_events": f.n_events,
            "counters": f.counters,
            "losses": f.losses,
            "histograms": f.histograms(),
        }
