"""HDF5 spill writer (format in ``docs/hdf5-format.md``): one file per spill, atomically renamed.

:class:`SpillWriter` does the h5py work for one spill (synchronous; used from one thread only).
:class:`WriterThread` owns the one writer thread, fed by a bounded queue, so that h5py never runs on the
event loop. A write error (disk full, I/O error) marks the spill failed: the partial file is deleted,
the remaining events of the spill are counted as lost (``write_error``), and the next spill starts fresh.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daq import __version__, detector, provenance
from daq.batch import SUM_NAMES, EventBatch
from daq.chunk_codec import (
    BloscUnavailable,
    ParallelBloscChunks,
    ParallelChunks,
    RawChunks,
    ShuffleDeflateChunks,
)
from daq.errors import WriteError
from daq.files import (
    EVENT_COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    RECO_DATASETS,
    dataset_info,
    partial_filename,
    spill_filename,
)
from daq.waveform import MAX_NEIGHBOURS
from daq.writer_commands import (
    AppendEvents,
    CloseSpill,
    OpenSpill,
    RunInWriter,
    SpillFinal,
    SpillHeader,
    WriterCommand,
    WriteResult,
    command_bytes,
)

if TYPE_CHECKING:
    import h5py

log = logging.getLogger(__name__)

#: buffered events are written in blocks of this many waveform chunks: 64 x 64 = 4096 events, one whole
#: chunk of every event column. Each h5py write costs ~0.1-0.2 ms whatever its size, so with 19 datasets
#: blocks of 512 events spent ~15 us per event in call overhead, blocks of 4096 ~2 us
#: (benchmarks/bench_writer.py); the block (~40 MB) is small next to the machine's memory.
FLUSH_CHUNKS = 64
#: codec names accepted by ``writer.compression`` (the raw waveforms)
CODECS = ("none", "gzip", "lz4", "zstd", "blosc-lz4", "blosc-zstd", "bitshuffle-lz4")
#: codec names accepted by ``writer.table_compression`` (every other dataset): filters that every HDF5
#: library reads without a plugin (``gzip`` = HDF5's shuffle + deflate, compressed by ISA-L)
TABLE_CODECS = ("none", "gzip")
#: deflate level of ``table_compression = "gzip"`` (ISA-L's level 1: zlib's ratio at ~5x its speed)
TABLE_GZIP_LEVEL = 1


#: blosc's byte shuffle (hdf5plugin.Blosc.SHUFFLE), used by the blosc codecs
BLOSC_SHUFFLE = 1


def codec_options(name: str, level: int | None = None) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a codec name (see :data:`CODECS`)."""
    from daq import h5filters

    hdf5plugin = h5filters.load()

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
                shuffle=BLOSC_SHUFFLE,
            )
        )
    raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")


def codec_label(name: str, level: int | None = None) -> str:
    return name if level is None or name in ("none", "lz4") else f"{name}-{level}"


def table_codec_options(name: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a :data:`TABLE_CODECS` name."""
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": TABLE_GZIP_LEVEL, "shuffle": True}
    raise ValueError(f"unknown table codec {name!r}; known: {', '.join(TABLE_CODECS)}")


def git_hash() -> str:
    """Commit of the software (``unknown`` if not known; see :mod:`daq.provenance`)."""
    return str(provenance.software()["git_commit"])


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (for the user, not root's reserve)."""
    return int(shutil.disk_usage(path).free)


@dataclass(frozen=True)
class WriterConfig:
    """HDF5 writer settings (``[writer]`` in the DAQ config)."""

    #: codec of the raw waveforms (the bulk of the file)
    compression: str = "blosc-lz4"
    compression_level: int | None = None
    #: codec of every other dataset (event columns, reco arrays, primitives): readable by any HDF5
    table_compression: str = "none"
    chunk_events: int = 64
    queue_size: int = 256  # batches waiting for the writer thread (back-pressure beyond)
    #: MB of events waiting for the writer thread (back-pressure beyond; one batch always fits): keeps
    #: the DAQ's memory bounded and reused when it builds events faster than they are written
    queue_mb: float = 64.0
    fsync: bool = True
    #: fdatasync the partial file every this many MB during the spill (in a helper thread), so that
    #: closing it only has the tail to flush (0: only at the end)
    sync_every_mb: float = 16.0
    #: threads compressing the chunks of a block at the same time (blosc codecs; the writer
    #: thread and helpers, outside the GIL)
    compress_threads: int = 2

    def __post_init__(self) -> None:
        if self.compression not in CODECS:
            raise ValueError(f"compression must be one of {list(CODECS)} (got {self.compression!r})")
        if self.table_compression not in TABLE_CODECS:
            raise ValueError(
                f"table_compression must be one of {list(TABLE_CODECS)} (got {self.table_compression!r})"
            )
        if not 1 <= self.chunk_events <= 4096:
            raise ValueError(f"chunk_events must be in 1..4096 (got {self.chunk_events})")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 (got {self.queue_size})")
        if not self.queue_mb > 0:
            raise ValueError(f"queue_mb must be > 0 (got {self.queue_mb})")
        if not 1 <= self.compress_threads <= 16:
            raise ValueError(f"compress_threads must be in 1..16 (got {self.compress_threads})")
        if self.sync_every_mb < 0:
            raise ValueError(f"sync_every_mb must be >= 0 (got {self.sync_every_mb})")


class _GuardedFile(io.RawIOBase):
    """The file under h5py (its ``fileobj`` driver): the first OSError of a write is remembered and
    later writes are dropped, so HDF5 never sees an I/O error (it copes badly: noise, even crashes)
    and the writer reports the failure itself (:meth:`SpillWriter.check`)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        # "x": never truncate a file that is there (a partial file of a crashed DAQ is recovered, not lost)
        self._f = open(path, "x+b", buffering=0)  # noqa: SIM115 (closed in close())
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


class EventBlock:
    """A reusable buffer of up to ``capacity`` events in the file's layout (one array per dataset).

    Arriving batches are copied in (:meth:`fill`) and a full block is written with one call per dataset:
    no concatenation of the batches, and the same memory is reused for every block of every spill (no
    fresh pages to fault in and clear for each block).
    """

    #: per-event fields stored as (capacity, ...) arrays; sums and prim_amp are (rows, capacity)
    _ROWS = ("sums", "prim_amp")

    def __init__(self, capacity: int, n_prim: int, n_samples: int) -> None:
        n_ch = detector.N_CHANNELS
        self.capacity, self.n_prim, self.n_samples = capacity, n_prim, n_samples
        self.n = 0
        self.arrays: dict[str, np.ndarray] = {
            "event_id": np.empty(capacity, np.uint64),
            "slice": np.empty(capacity, np.uint32),
            "index": np.empty(capacity, np.uint32),
            "t_ns": np.empty(capacity, np.int64),
            "trigger_mask": np.empty(capacity, np.uint32),
            "missing_groups": np.empty(capacity, np.uint8),
            "sums": np.empty((len(SUM_NAMES), capacity), np.float32),
            "energy": np.empty((capacity, n_ch), np.float32),
            "amplitude": np.empty((capacity, n_ch), np.float32),
            "peak_time": np.empty((capacity, n_ch), np.float32),
            "pileup": np.empty((capacity, n_ch), np.uint8),  # the file's type; bools are copied as 0/1
            "chi2": np.empty((capacity, n_ch), np.float32),
            "n_pulses": np.empty((capacity, n_ch), np.uint8),
            "waveforms": np.empty((capacity, n_ch, n_samples), np.uint16),
            "prim_amp": np.empty((n_prim, capacity), np.uint16),
            "nb_count": np.empty(capacity, np.uint8),
            "nb_dt_ns": np.empty((capacity, MAX_NEIGHBOURS), np.int32),
            "nb_amp": np.empty((capacity, MAX_NEIGHBOURS, n_prim), np.uint16),
        }

    def fits(self, capacity: int, n_prim: int, n_samples: int) -> bool:
        return (self.capacity, self.n_prim, self.n_samples) == (capacity, n_prim, n_samples)

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def fill(self, batch: EventBatch, start: int = 0) -> int:
        """Copy events ``start:`` of ``batch`` (as many as fit); returns how many were copied."""
        k = min(len(batch) - start, self.capacity - self.n)
        lo, hi = self.n, self.n + k
        for name, a in self.arrays.items():
            src = getattr(batch, name)
            if name in self._ROWS:
                a[:, lo:hi] = src[:, start : start + k]
            else:
                a[lo:hi] = src[start : start + k]
        self.n = hi
        return k


class SpillWriter:
    """Writes one spill file; not thread-safe (owned by the writer thread)."""

    def __init__(
        self,
        data_dir: str | Path,
        header: SpillHeader,
        config: WriterConfig | None = None,
        block: EventBlock | None = None,
    ) -> None:
        import h5py

        self.header = header
        self.config = config = config or WriterConfig()
        self.data_dir = Path(data_dir)
        self.final_path = self.data_dir / spill_filename(header.run, header.spill)
        self.partial_path = self.data_dir / partial_filename(header.run, header.spill)
        self.n_written = 0
        self.n_appended = 0  # events handed to append() (all lost if the file fails)
        self.seconds = 0.0
        self.sync_seconds = 0.0  # this thread waiting for syncs (wall)
        self.background_sync_seconds = 0.0  # mid-spill fdatasyncs in the helper thread (wall)
        self._syncing: threading.Thread | None = None
        self._synced = 0
        capacity = FLUSH_CHUNKS * config.chunk_events
        n_prim = len(header.prim_channels)
        if block is None or not block.fits(capacity, n_prim, header.n_samples):
            block = EventBlock(capacity, n_prim, header.n_samples)
        block.n = 0
        #: the buffer of events not yet written (reused by the next spill: :class:`WriterThread`)
        self.block = block
        t0 = time.perf_counter()
        self._cpu0 = time.thread_time()
        self._raw = _GuardedFile(self.partial_path)
        try:
            self._h5 = h5py.File(self._raw, "w", libver=("v110", "latest"))
        except BaseException:
            self._raw.close()
            raise
        #: file size and events at the last metadata flush: a consistent HDF5 file up to there
        self.good_eof = 0
        self.good_events = 0
        try:
            hold_metadata(self._h5)
            self._create()
            self._checkpoint()
            self.check()
        except BaseException:
            self.abort()
            raise
        self.seconds += time.perf_counter() - t0

    @property
    def write_failed(self) -> bool:
        """A write to the file failed (disk full, I/O error)."""
        return self._raw.error is not None

    def check(self) -> None:
        """Raise :class:`WriteError` if a write to the file has failed."""
        e = self._raw.error
        if e is not None:
            raise WriteError(f"{self.partial_path.name}: {e.strerror or e} (errno {e.errno})")

    def _create(self) -> None:
        h, f, cfg = self.header, self._h5, self.config
        opts = codec_options(cfg.compression, cfg.compression_level)
        table_opts = table_codec_options(cfg.table_compression)
        n_ch, n_s, n_prim = detector.N_CHANNELS, h.n_samples, len(h.prim_channels)
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = np.int64(FORMAT_VERSION)
        a["run"] = np.int64(h.run)
        a["spill"] = np.int64(h.spill)
        a["status"] = "incomplete"  # until closed properly
        a["t_start_ns"] = np.int64(h.t_start_ns)
        sw = provenance.software()
        a["software_version"] = __version__
        a["git_hash"] = str(sw["git_commit"])
        a["git_dirty"] = np.int64({True: 1, False: 0, None: -1}[sw["git_dirty"]])
        a["software_source"] = str(sw["source"])
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
        a["table_compression"] = cfg.table_compression
        f.create_dataset("channels", data=detector.CHANNELS)
        f["channels"].attrs["detector_names"] = [d.name for d in detector.Detector]
        ev = f.create_group("events")
        for name, dtype in EVENT_COLUMNS.items():
            ev.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,), **table_opts)
        reco = f.create_group("reco")
        for name, dtype in RECO_DATASETS.items():
            reco.create_dataset(
                name, shape=(0, n_ch), maxshape=(None, n_ch), dtype=dtype, chunks=(512, n_ch), **table_opts
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
        pr.create_dataset("t_ns", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,), **table_opts)
        pr.create_dataset(
            "amp",
            shape=(n_prim, 0),
            maxshape=(n_prim, None),
            dtype="<u2",
            chunks=(n_prim, 4096),
            **table_opts,
        )
        nb = f.create_group("neighbours")
        nb.create_dataset("count", shape=(0,), maxshape=(None,), dtype="u1", chunks=(4096,), **table_opts)
        nb.create_dataset(
            "dt_ns",
            shape=(0, MAX_NEIGHBOURS),
            maxshape=(None, MAX_NEIGHBOURS),
            dtype="<i4",
            chunks=(4096, MAX_NEIGHBOURS),
            **opts,
        )
        nb.create_dataset(
            "amp",
            shape=(0, MAX_NEIGHBOURS, n_prim),
            maxshape=(None, MAX_NEIGHBOURS, n_prim),
            dtype="<u2",
            chunks=(512, MAX_NEIGHBOURS, n_prim),
            **opts,
        )
        for g in ("counters", "losses", "frontend", "histograms"):
            f.create_group(g)
        f.visititems(_describe)
        # dataset handles, looked up once (h5py lookups cost more than small writes), each with the block
        # array it is written from: (dataset, array name, row of the array or None, event axis, whether
        # it is the waveforms (their codec) or a table (the table codec))
        self._targets: list[tuple[h5py.Dataset, str, int | None, int, bool]] = [
            (f["events"][name], "sums", SUM_NAMES.index(name), 0, False)
            if name in SUM_NAMES
            else (f["events"][name], name, None, 0, False)
            for name in EVENT_COLUMNS
        ]
        self._targets += [(f["reco"][name], name, None, 0, False) for name in RECO_DATASETS]
        self._targets += [
            (f["waveforms"], "waveforms", None, 0, True),
            (f["primitives/t_ns"], "t_ns", None, 0, False),
            (f["primitives/amp"], "prim_amp", None, 1, False),
            # the padded neighbour lists are mostly zeros: the waveforms' codec (blosc) where it pays
            (f["neighbours/count"], "nb_count", None, 0, False),
            (f["neighbours/dt_ns"], "nb_dt_ns", None, 0, True),
            (f["neighbours/amp"], "nb_amp", None, 0, True),
        ]
        #: chunks compressed outside the GIL and written whole with write_direct_chunk: the waveforms with
        #: the blosc codecs (others go through h5py's filters), the tables always (no filter, or shuffle +
        #: deflate by ISA-L)
        self._packer: ParallelChunks | None = None
        if cfg.compression in ("blosc-lz4", "blosc-zstd"):
            try:
                self._packer = ParallelBloscChunks(
                    "lz4" if cfg.compression == "blosc-lz4" else "zstd",
                    5 if cfg.compression_level is None else cfg.compression_level,
                    BLOSC_SHUFFLE,
                    cfg.compress_threads,
                )
            except BloscUnavailable as e:
                log.warning("%s: compressing through h5py", e)
        self._table_packer: ParallelChunks = (
            ParallelChunks(RawChunks, 1)
            if cfg.table_compression == "none"
            else ParallelChunks(lambda: ShuffleDeflateChunks(TABLE_GZIP_LEVEL), cfg.compress_threads)
        )

    # ------------------------------------------------------------ events
    def append(self, batch: EventBatch) -> None:
        """Copy a batch into the block buffer; a full block (whole chunks of every dataset) is written."""
        k = len(batch)
        if k == 0:
            return
        self.n_appended += k
        blk = self.block
        done = 0
        while done < k:
            done += blk.fill(batch, done)
            if blk.full:
                self._flush(final=False)
                self.check()

    def _flush(self, final: bool) -> None:
        """Write the buffered events (whole blocks while filling; whatever is left at the end)."""
        blk = self.block
        n = blk.n
        if not n:
            return
        t0 = time.perf_counter()
        self._write(blk, n)
        blk.n = 0
        if not final:
            self._checkpoint()
        every = self.config.sync_every_mb * 1e6
        if self.config.fsync and every and not final:
            size = os.fstat(self._raw.fileno()).st_size
            if size - self._synced >= every and (self._syncing is None or not self._syncing.is_alive()):
                # in a helper thread: the disk works while this thread goes on writing (one at a time)
                self._syncing = threading.Thread(target=self._datasync, name="na64-writer-sync", daemon=True)
                self._syncing.start()
                self._synced = size
        self.seconds += time.perf_counter() - t0

    def _checkpoint(self) -> None:
        """Flush HDF5's metadata after a block: the file on disk is then a valid HDF5 file holding every
        event written so far (metadata is written only here and at the close, see :func:`hold_metadata`),
        which a crash (kill -9) leaves recoverable (:mod:`daq.recovery`) and a full disk closable."""
        self._h5.flush()
        if self._raw.error is None:
            self.good_eof = os.fstat(self._raw.fileno()).st_size
            self.good_events = self.n_written

    def salvage(self, final: SpillFinal, lost: int) -> WriteResult:
        """After a write error (disk full): close the file as it was at the last good block, with the end
        records and status ``incomplete``, under its final name; the events after that block (``lost``
        more were not written at all) are counted as ``write_error``. Raises if that fails too."""
        from daq import recovery

        with contextlib.suppress(Exception):
            self._h5.close()  # its writes are dropped (the file object has seen an error)
        self._wait_sync()
        self._close_packers()
        error = self._raw.error
        self._raw.close()
        n = self.good_events
        n_lost = self.n_appended - n + lost
        with open(self.partial_path, "r+b") as f:
            f.truncate(self.good_eof)  # gives back the space of the failed block
        losses = dict(final.losses)
        losses["write_error"] = int(losses.get("write_error", 0)) + n_lost
        why = f"{error.strerror or error} (errno {error.errno})" if error is not None else "write error"
        recovery.finish(
            self.partial_path,
            status="incomplete",
            final=dataclasses.replace(final, status="incomplete", losses=losses),
            note=f"write error after {n} events: {why}; {n_lost} events lost",
        )
        path = recovery.publish(self.partial_path, self.final_path, fsync=self.config.fsync)
        return WriteResult(
            self.header.run,
            self.header.spill,
            path,
            "incomplete",
            n,
            n_lost,
            path.stat().st_size,
            self.seconds,
            f"{why}: the spill is closed with the {n} events on disk",
        )

    def _datasync(self) -> None:
        """fdatasync the partial file (helper thread); a failure fails the spill like a failed write."""
        t0 = time.perf_counter()
        try:
            os.fdatasync(self._raw.fileno())
        except OSError as e:
            self._raw.error = self._raw.error or e
        self.background_sync_seconds += time.perf_counter() - t0

    def _wait_sync(self) -> None:
        """Wait for a mid-spill fdatasync still running (before the file's last writes and its close)."""
        if self._syncing is not None:
            t0 = time.perf_counter()
            self._syncing.join()
            self._syncing = None
            self.sync_seconds += time.perf_counter() - t0

    def _close_packers(self) -> None:
        for name in ("_packer", "_table_packer"):
            packers = getattr(self, name, None)  # absent if the file could not be created
            if packers is not None:
                packers.close()

    def _write(self, blk: EventBlock, n: int) -> None:
        """Write the block's first ``n`` events to every dataset: whole chunks compressed here and
        written directly where the block lines up with the dataset's chunks, through h5py otherwise."""
        lo = self.n_written
        hi = lo + n
        direct: list[tuple[h5py.Dataset, tuple[int, ...], np.ndarray]] = []
        direct_tables: list[tuple[h5py.Dataset, tuple[int, ...], np.ndarray]] = []
        for ds, name, row, axis, is_waveforms in self._targets:
            arr = blk.arrays[name] if row is None else blk.arrays[name][row]
            shape = list(ds.shape)
            shape[axis] = hi
            ds.resize(tuple(shape))
            rows = ds.chunks[axis]
            packer = self._packer if is_waveforms else self._table_packer
            # lo is a multiple of the capacity: whole chunks line up when the capacity is a multiple of rows
            if packer is None or blk.capacity % rows or ds.dtype != arr.dtype:
                if axis == 0:
                    ds[lo:hi] = arr[:n]
                else:
                    ds[:, lo:hi] = arr[:, :n]
                continue
            padded = -(-n // rows) * rows
            for c0 in range(0, padded, rows):
                if axis == 0:
                    chunk = arr[c0 : c0 + rows]
                    if c0 + rows > n:
                        chunk[n - c0 :] = 0  # the file's last chunk: rows beyond the extent are not read
                    offset = (lo + c0,) + (0,) * (arr.ndim - 1)
                else:
                    chunk = arr[:, c0 : c0 + rows]
                    if c0 + rows > n:
                        chunk[:, n - c0 :] = 0
                    offset = (0, lo + c0)
                (direct if is_waveforms else direct_tables).append((ds, offset, np.ascontiguousarray(chunk)))
        for todo, packer in ((direct, self._packer), (direct_tables, self._table_packer)):
            if todo:
                assert packer is not None
                packed = packer.compress_each([chunk for _, _, chunk in todo])
                for (ds, offset, _), data in zip(todo, packed, strict=True):
                    ds.id.write_direct_chunk(offset, data)
        self.n_written = hi

    @property
    def n_buffered(self) -> int:
        return self.block.n

    # ------------------------------------------------------------ close
    def close(self, final: SpillFinal) -> WriteResult:
        """Write the remaining events and the end-of-spill records, fsync, rename to the final name."""
        self.close_file(final)
        return self.finalize()

    def close_file(self, final: SpillFinal) -> None:
        """Write the remaining events and the end-of-spill records and close the HDF5 file (the part
        that needs h5py); :meth:`finalize` then makes it durable under its final name."""
        self._t_close = t0 = time.perf_counter()
        self._status = final.status
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
            for key, array in (("counts", np.asarray(counts, "<i8")), ("edges", np.asarray(edges, "<f8"))):
                ds = g.create_dataset(key, data=array)
                ds.attrs["units"], ds.attrs["description"] = dataset_info(ds.name, unit)
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
        self._wait_sync()
        self._close_packers()
        self.check()
        self._cpu = time.thread_time() - self._cpu0  # the writing thread's CPU for the spill
        self._t_closed = time.perf_counter()

    def finalize(self) -> WriteResult:
        """fsync the closed file, rename it to its final name, fsync the directory (no h5py: may run in
        another thread than the writing, while the next spill is written)."""
        t_sync = time.perf_counter()
        if self.config.fsync:
            os.fsync(self._raw.fileno())
        self._raw.close()
        from daq import recovery

        path = recovery.publish(self.partial_path, self.final_path, fsync=False)  # never overwrites
        if self.config.fsync:
            _fsync_dir(self.data_dir)
        t_end = time.perf_counter()
        close_s = self._t_closed - self._t_close + t_end - t_sync  # without a wait for the finisher
        self.seconds += close_s
        if self.config.fsync:
            self.sync_seconds += t_end - t_sync
        cpu = self._cpu
        size = path.stat().st_size
        log.info(
            "closed %s: %d events, %.1f MB, %.3f s writing in all, %.3f CPU s (%.1f us/event); "
            "close %.3f s (fsync %.3f s); waited for syncs %.3f s in all (mid-spill fdatasync %.3f s in "
            "the background)",
            self.final_path.name,
            self.n_written,
            size / 1e6,
            self.seconds,
            cpu,
            cpu / max(self.n_written, 1) * 1e6,
            close_s,
            t_end - t_sync,
            self.sync_seconds,
            self.background_sync_seconds,
        )
        return WriteResult(
            self.header.run,
            self.header.spill,
            path,
            self._status,
            self.n_written,
            0,
            size,
            self.seconds,
            ""
            if path == self.final_path
            else f"{self.final_path.name} exists: not overwritten, this spill is {path.name}",
            cpu_seconds=cpu,
            sync_seconds=self.sync_seconds,
        )

    def abort(self) -> None:
        """Give up this spill: close what can be closed and delete the partial file."""
        with contextlib.suppress(Exception):
            self._h5.close()
        self._wait_sync()  # the file descriptor stays open until a running fdatasync is done
        self._close_packers()
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(OSError):
            self.partial_path.unlink()


def hold_metadata(f: Any) -> None:
    """Keep HDF5's metadata in memory between flushes (no evictions): the file on disk then changes its
    metadata only at :meth:`SpillWriter._checkpoint`, so that a crash between two leaves the state of the
    last one, plus raw chunks past its end (ignored). ~1 MB of metadata per spill fits easily."""
    cfg = f.id.get_mdc_config()
    cfg.incr_mode = 0  # H5C_incr__off (evictions can be disabled only with every automatic resize off)
    cfg.decr_mode = 0  # H5C_decr__off
    cfg.flash_incr_mode = 0  # H5C_flash_incr__off
    cfg.set_initial_size = True
    cfg.initial_size = cfg.max_size = 32 * 1024 * 1024
    cfg.evictions_enabled = False
    f.id.set_mdc_config(cfg)


def _describe(name: str, obj: Any) -> None:
    """Set the ``units`` and ``description`` attributes of a dataset (h5py ``visititems`` callback)."""
    import h5py

    if isinstance(obj, h5py.Dataset):
        obj.attrs["units"], obj.attrs["description"] = dataset_info(name)


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
    #: a write to the file failed (disk full): writing stopped, the spill is closed with what is on disk
    broken: bool = False


class _Stop:
    """End the writer thread (queued last by :meth:`WriterThread.stop`)."""


class WriterThread:
    """The one thread that runs h5py, fed by a queue of commands bounded in count and in bytes.

    Commands (:mod:`daq.writer_commands`) are queued from the event loop: ``try_put`` never blocks (when
    the queue is full the caller waits for the ``wake`` callback it passed, called from the writer thread
    as soon as a command is taken out: back-pressure, nothing dropped). One producer waits at a time (the
    last ``wake`` given is the one called). A command's ``done`` future, if given, is resolved with its
    outcome: a :class:`WriteResult` for :class:`CloseSpill`, the function's value for
    :class:`RunInWriter`.
    """

    def __init__(self, data_dir: str | Path, config: WriterConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config = config or WriterConfig()
        self._queue: queue.Queue[tuple[WriterCommand | _Stop, Future[Any] | None, int]] = queue.Queue()
        self._lock = threading.Lock()  # guards the three below
        self._queued = 0  # commands in the queue
        self._queued_bytes = 0
        self._wake: Callable[[], None] | None = None  # the producer waiting for room
        self._max_bytes = int(config.queue_mb * 1e6)
        self._thread = threading.Thread(target=self._run, name="na64-writer", daemon=True)
        #: fsync + rename of closed files, in order, while the writer thread writes the next spill
        self._finisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="na64-writer-fsync")
        self._spill: _SpillState | None = None
        self._block: EventBlock | None = None  # the event buffer, reused from spill to spill
        self.busy_seconds = 0.0
        self._thread.start()

    # -------------------------------------------------- producer side
    def try_put(
        self,
        command: WriterCommand,
        wake: Callable[[], None] | None = None,
        done: Future[Any] | None = None,
    ) -> bool:
        """Queue a command unless the queue is full; then ``wake`` (if given) is called once, from the
        writer thread, when there is room again."""
        nbytes = command_bytes(command)
        with self._lock:
            full = self._queued >= self.config.queue_size or (
                self._queued > 0 and self._queued_bytes + nbytes > self._max_bytes
            )
            if full:
                self._wake = wake
                return False
            self._queued += 1
            self._queued_bytes += nbytes
            self._queue.put((command, done, nbytes))
        return True

    def put(self, command: WriterCommand, done: Future[Any] | None = None) -> None:
        """Queue a command beyond the bounds (for a producer that cannot wait any more: the service
        stopping while a spill's close or a batch waits for room; nothing is dropped)."""
        nbytes = command_bytes(command)
        with self._lock:
            self._queued += 1
            self._queued_bytes += nbytes
            self._queue.put((command, done, nbytes))

    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def producer_waiting(self) -> bool:
        """Whether a producer waits for room (the queue was full when it last tried)."""
        return self._wake is not None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _taken(self, nbytes: int) -> None:
        """A command left the queue: account for it and wake a waiting producer."""
        with self._lock:
            self._queued -= 1
            self._queued_bytes -= nbytes
            wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # the producer's event loop is already closed
                wake()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued commands and end the thread (an open spill is aborted)."""
        with self._lock:
            self._queued += 1
            self._queue.put((_Stop(), None, 0))
        self._thread.join(timeout)
        self._finisher.shutdown(wait=True)

    # -------------------------------------------------- writer side
    def _run(self) -> None:
        _set_os_thread_name(b"na64-writer")
        while True:
            cmd, done, nbytes = self._queue.get()
            self._taken(nbytes)
            t0 = time.perf_counter()
            try:
                match cmd:
                    case _Stop():
                        if self._spill is not None:
                            self._fail("writer stopped with the spill still open")
                            self._finish_failed(None)
                        return
                    case OpenSpill(header=header):
                        self._open(header)
                    case AppendEvents(batch=batch):
                        self._append(batch)
                    case CloseSpill(final=final):
                        self._close(final, done)
                    case RunInWriter(function=function):
                        result = function()
                        if done is not None:
                            done.set_result(result)
            except Exception as e:  # the writer thread must survive anything
                log.exception("writer: unexpected error on %s", type(cmd).__name__)
                if done is not None and not done.done():
                    done.set_exception(e)
            finally:
                self.busy_seconds += time.perf_counter() - t0

    def _open(self, header: SpillHeader) -> None:
        if self._spill is not None:  # a spill left open (should not happen): close it as failed
            self._fail("a new spill was opened before this one was closed")
            self._finish_failed(None)
        self._spill = st = _SpillState(header)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            st.writer = SpillWriter(self.data_dir, header, self.config, self._block)
            self._block = st.writer.block
        except Exception as e:
            self._fail(f"cannot create {partial_filename(header.run, header.spill)}: {_reason(e)}")

    def _append(self, batch: EventBatch) -> None:
        st = self._spill
        if st is None:
            log.error("writer: %d events arrived with no spill open; dropped (write_error)", len(batch))
            return
        if st.writer is None or st.broken:
            st.n_lost += len(batch)
            return
        try:
            st.writer.append(batch)
        except Exception as e:
            self._failed_write(f"writing events: {_reason(e)}")

    def _failed_write(self, message: str) -> None:
        """A failure while writing: a failed write to the file (disk full, I/O error) stops the writing
        and the spill is closed at its end with the events already on disk; anything else fails it."""
        st = self._spill
        assert st is not None
        if st.writer is None or not st.writer.write_failed:
            self._fail(message)
            return
        if not st.broken:
            st.broken, st.error = True, message
            h = st.header
            log.error(
                "run %d spill %d: %s; writing stops, the spill will be closed with the %d events on disk",
                h.run,
                h.spill,
                message,
                st.writer.good_events,
            )

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

    def _finish_failed(self, fut: Future[WriteResult] | None) -> None:
        st = self._spill
        assert st is not None
        self._spill = None
        h = st.header
        res = WriteResult(h.run, h.spill, None, "failed", 0, st.n_lost, 0, 0.0, st.error)
        if fut is not None:
            fut.set_result(res)

    def _close(self, final: SpillFinal, fut: Future[WriteResult] | None) -> None:
        st = self._spill
        if st is None:
            raise WriteError("close: no spill is open")
        if st.writer is not None and not st.broken:
            try:
                st.writer.close_file(final)
            except Exception as e:
                self._failed_write(f"closing the file: {_reason(e)}")
            else:
                self._spill = None
                self._finisher.submit(self._finalize, st, fut)
                return
        if st.writer is not None and st.broken:
            self._salvage(st, final, fut)
            return
        self._finish_failed(fut)

    def _salvage(self, st: _SpillState, final: SpillFinal, fut: Future[WriteResult] | None) -> None:
        """Close a spill whose writing failed with the events on disk (:meth:`SpillWriter.salvage`); if
        even that fails the partial file is kept for ``na64 recover`` (never deleted)."""
        w = st.writer
        assert w is not None
        self._spill = None
        h = st.header
        try:
            res = w.salvage(final, st.n_lost)
            log.error("run %d spill %d closed incomplete: %s", h.run, h.spill, res.error)
        except Exception as e:
            message = (
                f"{st.error}; closing it with the {w.good_events} events on disk failed too ({_reason(e)}): "
                f"{w.partial_path.name} is kept, `na64 recover` saves them once there is space"
            )
            log.error("run %d spill %d FAILED: %s", h.run, h.spill, message)
            res = WriteResult(h.run, h.spill, None, "failed", 0, st.n_lost + w.n_appended, 0, 0.0, message)
        if fut is not None:
            fut.set_result(res)

    def _finalize(self, st: _SpillState, fut: Future[WriteResult] | None) -> None:
        """fsync + rename of a closed file (finisher thread: the writer thread goes on with the next
        spill meanwhile; files are finalized in order). A failure fails the spill like a failed write."""
        w = st.writer
        assert w is not None
        try:
            res = w.finalize()
        except Exception as e:
            h = st.header
            message = f"closing the file: {_reason(e)}"
            log.error("run %d spill %d FAILED: %s; spill data is dropped", h.run, h.spill, message)
            w.abort()
            res = WriteResult(h.run, h.spill, None, "failed", 0, st.n_lost + w.n_appended, 0, 0.0, message)
        if fut is not None:
            fut.set_result(res)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    if isinstance(e, WriteError):
        return str(e)
    return f"{type(e).__name__}: {e}"
