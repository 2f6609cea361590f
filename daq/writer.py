"""HDF5 spill writer (format in ``docs/hdf5-format.md``): one file per spill, atomically renamed.

:class:`SpillWriter` does the h5py work for one spill (synchronous; used from one thread only).
:class:`WriterThread` owns the one writer thread, fed by a bounded queue, so that h5py never runs on the
event loop. A write error (disk full, I/O error) marks the spill failed: the partial file is deleted,
the remaining events of the spill are counted as lost (``write_error``), and the next spill starts fresh.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import io
import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq import __version__, detector
from daq.batch import EventBatch
from daq.errors import WriteError
from daq.files import (
    EVENT_COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    RECO_DATASETS,
    partial_filename,
    spill_filename,
)

log = logging.getLogger(__name__)

#: buffered events are written in blocks of this many waveform chunks: 64 x 64 = 4096 events, one whole
#: chunk of every event column. Each h5py write costs ~0.1-0.2 ms whatever its size, so with 19 datasets
#: blocks of 512 events spent ~15 us per event in call overhead, blocks of 4096 ~2 us
#: (benchmarks/bench_writer.py); the block (~40 MB) is small next to the machine's memory.
FLUSH_CHUNKS = 64
#: codec names accepted by ``writer.compression``
CODECS = ("none", "gzip", "lz4", "zstd", "blosc-lz4", "blosc-zstd", "bitshuffle-lz4")


def codec_options(name: str, level: int | None = None) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a codec name (see :data:`CODECS`)."""
    import hdf5plugin

    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1 if level is None else level, "shuffle": True}
    if name == "lz4":
        return dict(hdf5plugin.LZ4())
    if name == "zstd":
        return dict(hdf5plugin.Zstd(clevel=3 if level is None else level))
    if name == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name in ("blosc-lz4", "blosc-zstd"):
        return dict(
            hdf5plugin.Blosc(
                cname="lz4" if name == "blosc-lz4" else "zstd",
                clevel=5 if level is None else level,
                shuffle=hdf5plugin.Blosc.SHUFFLE,
            )
        )
    raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")


def codec_label(name: str, level: int | None = None) -> str:
    return name if level is None or name in ("none", "lz4") else f"{name}-{level}"


_GIT_HASH: str | None = None


def git_hash() -> str:
    """Commit of the software (``unknown`` outside a git checkout); computed once."""
    global _GIT_HASH
    if _GIT_HASH is None:
        here = Path(__file__).resolve().parent
        try:
            out = subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
            _GIT_HASH = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT_HASH = "unknown"
    return _GIT_HASH


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (for the user, not root's reserve)."""
    return int(shutil.disk_usage(path).free)


@dataclass(frozen=True)
class WriterConfig:
    """HDF5 writer settings (``[writer]`` in the DAQ config)."""

    compression: str = "blosc-lz4"
    compression_level: int | None = None
    chunk_events: int = 64
    queue_size: int = 256  # batches waiting for the writer thread (back-pressure beyond)
    fsync: bool = True
    #: fdatasync the partial file every this many MB during the spill, so that closing it only has the
    #: tail to flush (0: only at the end)
    sync_every_mb: float = 16.0

    def __post_init__(self) -> None:
        if self.compression not in CODECS:
            raise ValueError(f"compression must be one of {list(CODECS)} (got {self.compression!r})")
        if not 1 <= self.chunk_events <= 4096:
            raise ValueError(f"chunk_events must be in 1..4096 (got {self.chunk_events})")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 (got {self.queue_size})")
        if self.sync_every_mb < 0:
            raise ValueError(f"sync_every_mb must be >= 0 (got {self.sync_every_mb})")


@dataclass(frozen=True)
class SpillHeader:
    """What is known when a spill starts (becomes root attributes)."""

    run: int
    spill: int
    t_start_ns: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    trigger: Mapping[str, Any] = field(default_factory=dict)
    calibration_id: str = "nominal-v1"
    frontend_info: str = "{}"
    prim_channels: np.ndarray = field(default_factory=detector.default_primitive_channels)
    n_samples: int = detector.N_SAMPLES
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS


@dataclass(frozen=True)
class SpillFinal:
    """What is known when a spill ends (counters, histograms, the summary document)."""

    status: str = "ok"
    t_end_ns: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    losses: Mapping[str, int] = field(default_factory=dict)
    frontend: Mapping[str, int] = field(default_factory=dict)
    histograms: Mapping[str, tuple[np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a spill file: final path (None if failed), size, events, time spent writing."""

    run: int
    spill: int
    path: Path | None
    status: str  # ok | incomplete | failed
    n_events_written: int
    n_events_lost: int
    bytes: int
    write_seconds: float
    error: str = ""


class _GuardedFile(io.RawIOBase):
    """The file under h5py (its ``fileobj`` driver): the first OSError of a write is remembered and
    later writes are dropped, so HDF5 never sees an I/O error (it copes badly: noise, even crashes)
    and the writer reports the failure itself (:meth:`SpillWriter.check`)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed in close())
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(memoryview(b).cast("B"))
        if self.error is None:
            try:
                written = self._f.write(b)
                if written is not None and written < n:  # a short write: disk full
                    raise OSError(28, "No space left on device (short write)")
            except OSError as e:
                self.error = e
        return n

    def readinto(self, b: Any) -> int:
        return self._f.readinto(b) or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._f.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return size or 0

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()
        super().close()


class SpillWriter:
    """Writes one spill file; not thread-safe (owned by the writer thread)."""

    def __init__(self, data_dir: str | Path, header: SpillHeader, config: WriterConfig | None = None) -> None:
        import h5py

        self.header = header
        self.config = config = config or WriterConfig()
        self.data_dir = Path(data_dir)
        self.final_path = self.data_dir / spill_filename(header.run, header.spill)
        self.partial_path = self.data_dir / partial_filename(header.run, header.spill)
        self.n_written = 0
        self.n_appended = 0  # events handed to append() (all lost if the file fails)
        self.seconds = 0.0
        self._pending: list[EventBatch] = []
        self._n_pending = 0
        self._synced = 0
        t0 = time.perf_counter()
        self._raw = _GuardedFile(self.partial_path)
        try:
            self._h5 = h5py.File(self._raw, "w", libver=("v110", "latest"))
        except BaseException:
            self._raw.close()
            raise
        try:
            self._create()
            self.check()
        except BaseException:
            self.abort()
            raise
        self.seconds += time.perf_counter() - t0

    def check(self) -> None:
        """Raise :class:`WriteError` if a write to the file has failed."""
        e = self._raw.error
        if e is not None:
            raise WriteError(f"{self.partial_path.name}: {e.strerror or e} (errno {e.errno})")

    def _create(self) -> None:
        h, f, cfg = self.header, self._h5, self.config
        opts = codec_options(cfg.compression, cfg.compression_level)
        n_ch, n_s, n_prim = detector.N_CHANNELS, h.n_samples, len(h.prim_channels)
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = np.int64(FORMAT_VERSION)
        a["run"] = np.int64(h.run)
        a["spill"] = np.int64(h.spill)
        a["status"] = "incomplete"  # until closed properly
        a["t_start_ns"] = np.int64(h.t_start_ns)
        a["software_version"] = __version__
        a["git_hash"] = git_hash()
        a["calibration_id"] = h.calibration_id
        a["config"] = json.dumps(dict(h.config), sort_keys=True)
        a["trigger"] = json.dumps(dict(h.trigger), sort_keys=True)
        for key in ("prs_min_gev", "ecal_max_gev"):
            if key in h.trigger:
                a[f"trigger_{key}"] = np.float64(h.trigger[key])
        for key in ("beam_prescale", "dead_time_ns", "random_period_ns"):
            if key in h.trigger:
                a[f"trigger_{key}"] = np.int64(h.trigger[key])
        a["frontend_info"] = h.frontend_info
        a["n_samples"] = np.int64(n_s)
        a["sample_period_ns"] = np.float64(h.sample_period_ns)
        a["compression"] = codec_label(cfg.compression, cfg.compression_level)
        f.create_dataset("channels", data=detector.CHANNELS)
        f["channels"].attrs["detector_names"] = [d.name for d in detector.Detector]
        ev = f.create_group("events")
        for name, dtype in EVENT_COLUMNS.items():
            ev.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,), **opts)
        reco = f.create_group("reco")
        for name, dtype in RECO_DATASETS.items():
            reco.create_dataset(
                name, shape=(0, n_ch), maxshape=(None, n_ch), dtype=dtype, chunks=(512, n_ch), **opts
            )
        f.create_dataset(
            "waveforms",
            shape=(0, n_ch, n_s),
            maxshape=(None, n_ch, n_s),
            dtype="<u2",
            chunks=(cfg.chunk_events, n_ch, n_s),
            **opts,
        )
        pr = f.create_group("primitives")
        pr.create_dataset("channels", data=np.asarray(h.prim_channels, dtype="<u2"))
        pr.create_dataset("t_ns", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,), **opts)
        pr.create_dataset(
            "amp", shape=(n_prim, 0), maxshape=(n_prim, None), dtype="<u2", chunks=(n_prim, 4096), **opts
        )
        for g in ("counters", "losses", "frontend", "histograms"):
            f.create_group(g)
        # dataset handles, looked up once (h5py lookups cost more than small writes)
        self._columns = {name: f["events"][name] for name in EVENT_COLUMNS}
        self._reco = {name: f["reco"][name] for name in RECO_DATASETS}
        self._waveforms = f["waveforms"]
        self._prim_t = f["primitives/t_ns"]
        self._prim_amp = f["primitives/amp"]

    # ------------------------------------------------------------ events
    def append(self, batch: EventBatch) -> None:
        """Buffer a batch; whole chunks are written as soon as they are complete."""
        if len(batch) == 0:
            return
        self.n_appended += len(batch)
        self._pending.append(batch)
        self._n_pending += len(batch)
        if self._n_pending >= FLUSH_CHUNKS * self.config.chunk_events:
            self._flush(final=False)
            self.check()

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        t0 = time.perf_counter()
        batch = EventBatch.concat(self._pending)
        n = len(batch) if final else (len(batch) // self.config.chunk_events) * self.config.chunk_events
        if n < len(batch):
            rest = batch.take(slice(n, None))
            batch = batch.take(slice(0, n))
            self._pending, self._n_pending = [rest], len(rest)
        else:
            self._pending, self._n_pending = [], 0
        if n:
            self._write(batch)
            every = self.config.sync_every_mb * 1e6
            if self.config.fsync and every and not final:
                size = os.fstat(self._raw.fileno()).st_size
                if size - self._synced >= every:
                    os.fdatasync(self._raw.fileno())
                    self._synced = size
        self.seconds += time.perf_counter() - t0

    def _write(self, b: EventBatch) -> None:
        lo, n = self.n_written, len(b)
        hi = lo + n
        for name, ds in self._columns.items():
            ds.resize((hi,))
            ds[lo:hi] = b.column(name)
        for name, ds in self._reco.items():
            arr = getattr(b, name)
            ds.resize((hi, ds.shape[1]))
            ds[lo:hi] = arr.view(np.uint8) if arr.dtype == bool else arr
        wf = self._waveforms
        wf.resize((hi, *wf.shape[1:]))
        wf[lo:hi] = b.waveforms
        self._prim_t.resize((hi,))
        self._prim_t[lo:hi] = b.t_ns
        pa = self._prim_amp
        pa.resize((pa.shape[0], hi))
        pa[:, lo:hi] = b.prim_amp
        self.n_written = hi

    @property
    def n_buffered(self) -> int:
        return self._n_pending

    # ------------------------------------------------------------ close
    def close(self, final: SpillFinal) -> WriteResult:
        """Write the remaining events and the end-of-spill records, fsync, rename to the final name."""
        t0 = time.perf_counter()
        self._flush(final=True)
        f = self._h5
        counters = dict(final.counters)
        counters["n_events_written"] = self.n_written
        for group, values in (("counters", counters), ("losses", final.losses), ("frontend", final.frontend)):
            for k, v in values.items():
                f[group].attrs[k] = np.int64(v)
        hg = f["histograms"]
        for name, (counts, edges, unit) in final.histograms.items():
            g = hg.create_group(name)
            g.create_dataset("counts", data=np.asarray(counts, dtype="<i8"))
            g.create_dataset("edges", data=np.asarray(edges, dtype="<f8"))
            g.attrs["unit"] = unit
        a = f.attrs
        a["status"] = final.status
        a["t_end_ns"] = np.int64(final.t_end_ns)
        a["n_beam"] = np.int64(counters.get("n_beam", 0))
        a["n_particles"] = np.int64(counters.get("n_particles", 0))
        a["n_triggers"] = np.int64(counters.get("n_accepted", 0))
        a["n_events"] = np.int64(self.n_written)
        a["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        summary = {k: v for k, v in final.summary.items() if k != "histograms"}
        summary.update(
            status=final.status,
            file=self.final_path.name,
            n_events_written=self.n_written,
            write_seconds=round(self.seconds + time.perf_counter() - t0, 4),
        )
        f.flush()
        summary["write_mb"] = round(os.fstat(self._raw.fileno()).st_size / 1e6, 3)
        a["summary"] = json.dumps(summary, sort_keys=True)
        f.close()
        self.check()
        t_sync = time.perf_counter()
        if self.config.fsync:
            os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.partial_path, self.final_path)
        if self.config.fsync:
            _fsync_dir(self.data_dir)
        t_end = time.perf_counter()
        self.seconds += t_end - t0
        size = self.final_path.stat().st_size
        log.info(
            "closed %s: %d events, %.1f MB, %.3f s writing in all; close %.3f s (fsync %.3f s)",
            self.final_path.name,
            self.n_written,
            size / 1e6,
            self.seconds,
            t_end - t0,
            t_end - t_sync,
        )
        return WriteResult(
            self.header.run,
            self.header.spill,
            self.final_path,
            final.status,
            self.n_written,
            0,
            size,
            self.seconds,
        )

    def abort(self) -> None:
        """Give up this spill: close what can be closed and delete the partial file."""
        with contextlib.suppress(Exception):
            self._h5.close()
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(OSError):
            self.partial_path.unlink()


def _set_os_thread_name(name: bytes) -> None:
    """Name the current thread for the OS (top -H, /proc/PID/task/*/comm), Linux only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(15, name[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the writer thread
@dataclass
class _SpillState:
    header: SpillHeader
    writer: SpillWriter | None = None
    error: str = ""
    n_lost: int = 0
    n_buffered_lost: int = 0


class WriterThread:
    """The one thread that runs h5py, fed by a bounded queue of commands.

    ``open``/``append``/``close`` are called from the event loop: ``try_put`` never blocks (the caller
    awaits and retries when the queue is full: back-pressure, nothing dropped). ``close`` and ``abort``
    return a ``concurrent.futures.Future`` resolved with a :class:`WriteResult`.
    """

    def __init__(self, data_dir: str | Path, config: WriterConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config = config or WriterConfig()
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=config.queue_size)
        self._thread = threading.Thread(target=self._run, name="na64-writer", daemon=True)
        self._spill: _SpillState | None = None
        self.busy_seconds = 0.0
        self._thread.start()

    # -------------------------------------------------- producer side
    def try_put(self, command: tuple[Any, ...]) -> bool:
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            return False
        return True

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued commands and end the thread (an open spill is aborted)."""
        self._queue.put(("stop",))
        self._thread.join(timeout)

    # -------------------------------------------------- writer side
    def _run(self) -> None:
        _set_os_thread_name(b"na64-writer")
        while True:
            cmd = self._queue.get()
            kind = cmd[0]
            t0 = time.perf_counter()
            try:
                if kind == "stop":
                    if self._spill is not None:
                        self._fail("writer stopped with the spill still open")
                        self._finish_failed(None)
                    return
                if kind == "open":
                    self._open(cmd[1])
                elif kind == "append":
                    self._append(cmd[1])
                elif kind == "close":
                    self._close(cmd[1], cmd[2])
                elif kind == "call":  # run a function in the writer thread (tests, sync points)
                    fut: concurrent.futures.Future[Any] = cmd[2]
                    fut.set_result(cmd[1]())
            except Exception as e:  # the writer thread must survive anything
                log.exception("writer: unexpected error on %s", kind)
                if len(cmd) > 2 and isinstance(cmd[-1], concurrent.futures.Future) and not cmd[-1].done():
                    cmd[-1].set_exception(e)
            finally:
                self.busy_seconds += time.perf_counter() - t0

    def _open(self, header: SpillHeader) -> None:
        if self._spill is not None:  # a spill left open (should not happen): close it as failed
            self._fail("a new spill was opened before this one was closed")
            self._finish_failed(None)
        self._spill = st = _SpillState(header)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            st.writer = SpillWriter(self.data_dir, header, self.config)
        except Exception as e:
            self._fail(f"cannot create {partial_filename(header.run, header.spill)}: {_reason(e)}")

    def _append(self, batch: EventBatch) -> None:
        st = self._spill
        if st is None:
            log.error("writer: %d events arrived with no spill open; dropped (write_error)", len(batch))
            return
        if st.writer is None:
            st.n_lost += len(batch)
            return
        try:
            st.writer.append(batch)
        except Exception as e:
            self._fail(f"writing events: {_reason(e)}")

    def _fail(self, message: str) -> None:
        st = self._spill
        assert st is not None
        if st.error:
            return
        st.error = message
        h = st.header
        log.error("run %d spill %d FAILED: %s; spill data is dropped", h.run, h.spill, message)
        if st.writer is not None:
            st.n_lost += st.writer.n_appended
            st.writer.abort()
            st.writer = None

    def _finish_failed(self, fut: concurrent.futures.Future[WriteResult] | None) -> None:
        st = self._spill
        assert st is not None
        self._spill = None
        h = st.header
        res = WriteResult(h.run, h.spill, None, "failed", 0, st.n_lost, 0, 0.0, st.error)
        if fut is not None:
            fut.set_result(res)

    def _close(self, final: SpillFinal, fut: concurrent.futures.Future[WriteResult]) -> None:
        st = self._spill
        if st is None:
            raise WriteError("close: no spill is open")
        if st.writer is not None:
            try:
                res = st.writer.close(final)
            except Exception as e:
                self._fail(f"closing the file: {_reason(e)}")
            else:
                self._spill = None
                fut.set_result(res)
                return
        self._finish_failed(fut)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    if isinstance(e, WriteError):
        return str(e)
    return f"{type(e).__name__}: {e}"
