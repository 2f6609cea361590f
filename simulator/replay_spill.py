"""One recorded spill, prepared for replay: its slices of recorded particles and the readout answers.

A spill file holds only the read-out particles (primitives, raw waveforms) and the random-trigger
windows. :class:`RecordedSpill` regroups the particles into their original slices (same slice ids,
original ``t_ns`` and primitive amplitudes, in their original order), or with ``merge = N`` into
slices of N consecutive recorded slices (replayed slice k' = recorded slices k'N .. k'N + N - 1,
their particles concatenated in order), and answers READOUT_REQUESTs from the stored waveforms:
particle entries by (slice, index in the replayed slice), random-trigger entries (index
``NO_PARTICLE``) by their trigger time. The bookkeeping is pure numpy on arrays in memory; the
waveforms come from a :class:`WaveformSource` (the open :class:`~daq.files.SpillFile`, or an array),
and :func:`load_spill` is the only function that opens a file.

The waveforms are read when a request asks for them, not at load: the DAQ asks in event-row order, so
each request walks the next few HDF5 chunks, :data:`READ_BLOCK` events at a time: the block's chunks
are decoded into a reused, cache-sized read-ahead window (straight from the stored bytes for the
DAQ's blosc files, see :meth:`~daq.files.SpillFile.read_waveforms_into`) and split from there into the
per-group arrays of the fragments while still in cache (reused buffers for small fragments, new arrays
for the large ones that the replay sends zero-copy). Decompressing a whole spill up front meant
~170 MB of fresh memory per spill (a page fault per page, the kernel clearing it) and every byte going
through main memory three more times.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from daq import detector, protocol
from daq.errors import UserError
from daq.files import SpillFile, SpillFileError

log = logging.getLogger(__name__)

#: waveforms are read ahead in whole blocks of this many events (a multiple of the writer's 64-event chunks)
READ_BLOCK = 128
#: longest slice the wire protocol can carry (SLICE ``length_ns`` is a uint32)
MAX_SLICE_NS = (1 << 32) - 1


class WaveformSource(Protocol):
    """Where a spill's raw waveforms (E, 110, S) uint16 are read from, a block of event rows at a time."""

    def read_waveforms_into(self, out: np.ndarray, start: int = 0) -> None: ...


class ArrayWaveforms:
    """A :class:`WaveformSource` over an (E, 110, S) array in memory (tests, tools)."""

    def __init__(self, waveforms: np.ndarray) -> None:
        self.waveforms = waveforms

    def read_waveforms_into(self, out: np.ndarray, start: int = 0) -> None:
        out[...] = self.waveforms[start : start + out.shape[0]]


class ReplayError(UserError):
    """A spill file cannot be replayed (inconsistent content, unknown slice length, ...)."""


class MergeTooLong(ReplayError):
    """Merged slices would be longer than the wire protocol allows (a user mistake, not a bad file)."""


@dataclass
class AnswerCounts:
    """What answering readout requests cost and could not do (per spill)."""

    n_requests: int = 0
    n_fragments: int = 0
    n_events_read: int = 0  # entries whose waveforms were sent
    random_unavailable: int = 0  # random windows not in the file: sent as all-zero waveforms
    bad_index: int = 0  # particle index beyond the replayed slice: header-only fragments
    unknown_slice: int = 0  # request for a slice id the spill does not have: header-only fragments
    empty_groups: int = 0  # header-only fragments sent because the group was missing in every entry
    read_errors: int = 0  # requests whose waveforms could not be read from the file: header-only fragments

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(eq=False)
class RecordedSpill:
    """A spill file's content in replay form: bookkeeping arrays in memory, waveforms read on demand from
    ``source`` (an open file: :meth:`close` it, or use the spill as a context manager)."""

    path: Path
    run: int
    spill: int
    prim_channels: np.ndarray  # (C,) uint16
    n_samples: int
    sample_period_ps: int
    slice_ns: int  # of the replayed slices: merge x the recorded slice length
    end_ns: int  # end of the last slice, ns since spill start
    t_start_ns: int  # original SPILL_START / SPILL_END wall-clock times (0 if unknown)
    t_end_ns: int
    #: recorded particles sorted by (slice, index): replayed slice id, arrival time, primitives, event row
    p_slice: np.ndarray  # (P,) int64
    p_t_ns: np.ndarray  # (P,) int64
    p_amp: np.ndarray  # (C, P) uint16
    p_row: np.ndarray  # (P,) int64
    #: recorded random-trigger windows sorted by trigger time, and their event rows
    r_t_ns: np.ndarray  # (R,) int64
    r_row: np.ndarray  # (R,) int64
    #: the E recorded (E, 110, S) windows by event row; row E (``zero_row``) stands for an all-zero window
    source: WaveformSource
    missing_groups: np.ndarray  # (E + 1,) uint8, the last one 0
    status: str = "ok"
    frontend_info: dict[str, Any] = field(default_factory=dict)
    trigger_config: dict[str, Any] = field(default_factory=dict)
    calibration_id: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    #: recorded slices per replayed slice (1: the recorded slices as they were)
    merge: int = 1
    #: context: the other particles the DAQ fitted as pile-up around the recorded events (file version 2),
    #: not recorded as events themselves, in time order; sent with the slice they fall in
    c_t_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (M,)
    c_amp: np.ndarray | None = None  # (C, M) uint16
    _bounds: np.ndarray = field(init=False, repr=False)
    _c_bounds: np.ndarray = field(init=False, repr=False)
    _block: np.ndarray = field(init=False, repr=False)  # reused (capacity, 110, S) rows read
    _group_bufs: tuple[np.ndarray, ...] = field(init=False, repr=False)  # reused (capacity, M_g, S)
    _win: np.ndarray = field(init=False, repr=False)  # read-ahead window of rows _win_rows[0]..[1]-1
    _win_rows: tuple[int, int] = field(init=False, repr=False, default=(0, 0))

    def __post_init__(self) -> None:
        self._bounds = np.searchsorted(self.p_slice, np.arange(self.n_slices + 1), side="left")
        self._c_bounds = np.searchsorted(
            self.c_t_ns, np.arange(self.n_slices + 1) * self.slice_ns, side="left"
        )
        if self.missing_groups.shape[0] < 1 or self.missing_groups[-1] != 0:
            raise ValueError("missing_groups needs one extra, 0 last entry (the all-zero row)")
        self._buffers(256)
        self._win = np.empty((2 * READ_BLOCK, detector.N_CHANNELS, self.n_samples), dtype=np.uint16)
        self._win_rows = (0, 0)

    def _buffers(self, capacity: int) -> None:
        s = self.n_samples
        self._block = np.empty((capacity, detector.N_CHANNELS, s), dtype=np.uint16)
        self._group_bufs = tuple(
            np.empty((capacity, g.stop - g.start, s), dtype=np.uint16) for g in detector.GROUP_SLICES
        )

    def close(self) -> None:
        """Close the waveform source if it is a file (the bookkeeping arrays stay usable)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RecordedSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_events(self) -> int:
        return int(self.missing_groups.shape[0] - 1)

    @property
    def zero_row(self) -> int:
        """Row of the all-zero window (answers for random windows the file does not have)."""
        return self.n_events

    def waveforms(self, rows: np.ndarray | slice) -> np.ndarray:
        """The (K, 110, S) windows of event rows (``zero_row``: zeros), a new array."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.n_events + 1))
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], detector.N_CHANNELS, self.n_samples), dtype=np.uint16)
        self._read_rows(rows, out)
        return out

    def _read_rows(self, rows: slice | np.ndarray, out: np.ndarray) -> None:
        """Windows of event rows into ``out`` (K, 110, S): a consecutive run in one read, else run by run."""
        e = self.n_events
        if isinstance(rows, slice):
            hi = min(rows.stop, e)
            if hi > rows.start:
                out[: hi - rows.start] = self._window(rows.start, hi)
            out[max(hi - rows.start, 0) :] = 0  # rows past the file: the all-zero row
            return
        real = rows < e
        out[~real] = 0
        want = np.unique(rows[real])
        if want.size == 0:
            return
        got = np.empty((want.size, *out.shape[1:]), dtype=np.uint16)
        breaks = np.flatnonzero(np.diff(want) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, want.size].tolist(), strict=True):
            self.source.read_waveforms_into(got[lo:hi], int(want[lo]))
        out[real] = got[np.searchsorted(want, rows[real])]

    def _window(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 from a read-ahead window of whole READ_BLOCK-aligned blocks (so that every HDF5
        chunk is read whole and decompressed once while requests walk the rows in order)."""
        w0, w1 = self._win_rows
        if not (w0 <= lo and hi <= w1):
            start = lo if w0 <= lo < w1 else lo - lo % READ_BLOCK  # keep the rows still to come
            stop = min(self.n_events, -(-hi // READ_BLOCK) * READ_BLOCK)
            if stop - start > self._win.shape[0]:
                grown = np.empty((stop - start + READ_BLOCK, *self._win.shape[1:]), dtype=np.uint16)
                if w0 <= lo < w1:
                    grown[: w1 - lo] = self._win[lo - w0 : w1 - w0]
                self._win = grown
            elif w0 <= lo < w1:
                np.copyto(self._win[: w1 - lo], self._win[lo - w0 : w1 - w0])  # numpy minds any overlap
            have = w1 - lo if w0 <= lo < w1 else 0
            self.source.read_waveforms_into(self._win[have : stop - start], start + have)
            self._win_rows = (start, stop)
            w0 = start
        return self._win[lo - w0 : hi - w0]

    def _group_waveforms(
        self, rows: slice | np.ndarray, k: int, new_from_bytes: int = 0
    ) -> tuple[np.ndarray, ...]:
        """Per readout group, the (K, M_g, S) C-contiguous windows of the rows: new arrays for the groups of
        at least ``new_from_bytes`` bytes, views of reused buffers (the next call overwrites them) for the
        smaller ones. Consecutive rows of the file are split straight from the read-ahead window."""
        s = self.n_samples
        if k > self._block.shape[0]:
            self._buffers(max(k, 2 * self._block.shape[0]))
        out = tuple(
            np.empty((k, chans.stop - chans.start, s), dtype=np.uint16)
            if k * (chans.stop - chans.start) * s * 2 >= new_from_bytes
            else buf[:k]
            for buf, chans in zip(self._group_bufs, detector.GROUP_SLICES, strict=True)
        )
        if isinstance(rows, slice) and rows.stop <= self.n_events:
            # block by block of the read-ahead window (cache-sized): decoded, then split while still cached
            lo = first = rows.start
            while lo < rows.stop:
                hi = min(rows.stop, (lo // READ_BLOCK + 1) * READ_BLOCK)
                block = self._window(lo, hi)
                for dst, chans in zip(out, detector.GROUP_SLICES, strict=True):
                    np.copyto(dst[lo - first : hi - first], block[:, chans])
                lo = hi
            return out
        block = self._block[:k]  # a gather of rows, or rows past the file (the all-zero row)
        self._read_rows(rows, block)
        for dst, chans in zip(out, detector.GROUP_SLICES, strict=True):
            np.copyto(dst, block[:, chans])
        return out

    # ------------------------------------------------------------ slices
    @property
    def n_slices(self) -> int:
        return max(1, -(-self.end_ns // self.slice_ns)) if self.end_ns > 0 else 0

    @property
    def recorded_slice_ns(self) -> int:
        """The recorded slice length (``slice_ns`` is ``merge`` times it)."""
        return self.slice_ns // self.merge

    @property
    def n_particles(self) -> int:
        return int(self.p_t_ns.shape[0])

    @property
    def n_random(self) -> int:
        return int(self.r_t_ns.shape[0])

    def slice_window(self, slice_id: int) -> tuple[int, int]:
        """(t0_ns, length_ns) of a slice: consecutive slices of ``slice_ns``, the last one cut at the end."""
        t0 = slice_id * self.slice_ns
        return t0, min(self.slice_ns, self.end_ns - t0)

    def particles(self, slice_id: int) -> slice:
        """Position range of a slice's particles in the ``p_*`` arrays."""
        return slice(int(self._bounds[slice_id]), int(self._bounds[slice_id + 1]))

    def slice_message(self, slice_id: int) -> protocol.Slice:
        """The SLICE message of one slice: the recorded particles with their original times and amplitudes."""
        sel = self.particles(slice_id)
        t0, length = self.slice_window(slice_id)
        t = self.p_t_ns[sel]
        ctx_t = ctx_amp = None
        if self.c_amp is not None and slice_id < self.n_slices:
            c = slice(int(self._c_bounds[slice_id]), int(self._c_bounds[slice_id + 1]))
            if c.stop > c.start:
                ctx_t, ctx_amp = self.c_t_ns[c], np.ascontiguousarray(self.c_amp[:, c])
        return protocol.Slice(
            run=self.run,
            spill=self.spill,
            slice_id=slice_id,
            t0_ns=t0,
            length_ns=length,
            n_particles=int(t.shape[0]),
            t_ns=t,
            amp=np.ascontiguousarray(self.p_amp[:, sel]),
            ctx_t_ns=ctx_t,
            ctx_amp=ctx_amp,
        )

    # ------------------------------------------------------------ readout
    def answer(
        self, request: protocol.ReadoutRequest, counts: AnswerCounts, first_seq: int = 0
    ) -> list[protocol.Fragment]:
        """One FRAGMENT per readout group for a request, from the stored waveforms (updates ``counts``).

        The fragments carry sequence numbers ``first_seq``, ``first_seq + 1``, ... (one per group).
        """
        head: dict[str, Any] = {"run": self.run, "spill": self.spill, "slice_id": request.slice_id}
        plan = self._plan(request, counts)
        if plan is None:
            return [protocol.Fragment(source=g, seq=first_seq + g, **head) for g in range(detector.N_GROUPS)]
        rows, all_missing = plan
        idx_u32 = np.asarray(request.index, dtype=np.uint32)
        out = []
        for g, group_wf in enumerate(self._group_waveforms(rows, request.n_events)):
            if all_missing & (1 << g):
                out.append(protocol.Fragment(source=g, seq=first_seq + g, **head))
                continue
            out.append(
                protocol.Fragment(
                    source=g,
                    seq=first_seq + g,
                    n_events=request.n_events,
                    n_channels=group_wf.shape[1],
                    n_samples=self.n_samples,
                    index=idx_u32,
                    waveforms=group_wf,
                    **head,
                )
            )
        return out

    def answer_frames(
        self,
        request: protocol.ReadoutRequest,
        counts: AnswerCounts,
        first_seq: int = 0,
        send_time_ns: int | None = None,
        own_from_bytes: int | None = None,
    ) -> list[list[bytes | memoryview]]:
        """:meth:`answer`, already encoded: ``protocol.encode`` of each fragment, byte for byte (with
        ``send_time_ns``, by default the clock now), without building the message objects (hot path).

        Waveform frames of at least ``own_from_bytes`` bytes are views of new arrays (the caller may keep
        them, e.g. in zero-copy ZeroMQ messages); the others (all of them by default) are views of buffers
        that the next call overwrites: send (copy) them first.
        """
        send_ns = time.time_ns() if send_time_ns is None else send_time_ns
        run, spill, slice_id = self.run, self.spill, request.slice_id
        plan = self._plan(request, counts)
        if plan is None:
            return [
                encode_fragment(run, spill, slice_id, g, first_seq + g, send_ns)
                for g in range(detector.N_GROUPS)
            ]
        rows, all_missing = plan
        try:
            waveforms = self._group_waveforms(
                rows, request.n_events, (1 << 62) if own_from_bytes is None else own_from_bytes
            )
        except (OSError, ValueError, IndexError) as e:  # a damaged chunk: counted, the replay goes on
            counts.read_errors += 1
            counts.n_events_read -= request.n_events
            log.debug("%s: slice %d waveforms cannot be read (%s)", self.path, slice_id, e)
            return [
                encode_fragment(run, spill, slice_id, g, first_seq + g, send_ns)
                for g in range(detector.N_GROUPS)
            ]
        index = _bytes_of(np.asarray(request.index, dtype=np.uint32))
        out = []
        for g, group_wf in enumerate(waveforms):
            if all_missing & (1 << g):
                out.append(encode_fragment(run, spill, slice_id, g, first_seq + g, send_ns))
                continue
            out.append(encode_fragment(run, spill, slice_id, g, first_seq + g, send_ns, index, group_wf))
        return out

    def _plan(
        self, request: protocol.ReadoutRequest, counts: AnswerCounts
    ) -> tuple[slice | np.ndarray, int] | None:
        """Event rows of a request's entries (a slice when consecutive) and the groups missing in all of
        them (bit mask); None for header-only fragments. Updates ``counts`` for the whole answer."""
        counts.n_requests += 1
        counts.n_fragments += detector.N_GROUPS
        k = request.n_events
        if request.slice_id >= self.n_slices:
            counts.unknown_slice += 1
            return None
        index = np.asarray(request.index, dtype=np.int64)
        rnd = index == protocol.NO_PARTICLE
        sel = self.particles(request.slice_id)
        n_in_slice = sel.stop - sel.start
        any_rnd = bool(rnd.any())
        part = index[~rnd] if any_rnd else index
        if part.size and int(part.max()) >= n_in_slice:
            counts.bad_index += 1
            log.debug("request for slice %d asks index >= %d", request.slice_id, n_in_slice)
            return None
        if any_rnd:
            rows = np.full(k, -1, dtype=np.int64)
            rows[~rnd] = self.p_row[sel.start + part]
            t_req = np.asarray(request.t_ns, dtype=np.int64)[rnd]  # decode guarantees t_ns with NO_PARTICLE
            pos = np.searchsorted(self.r_t_ns, t_req)
            if self.n_random:
                found = (pos < self.n_random) & (self.r_t_ns[np.minimum(pos, self.n_random - 1)] == t_req)
            else:
                found = np.zeros(t_req.shape, dtype=bool)
            rr = np.full(t_req.shape, self.zero_row, dtype=np.int64)  # all-zero windows for what is not there
            rr[found] = self.r_row[pos[found]]
            rows[rnd] = rr
            counts.random_unavailable += int(found.size - np.count_nonzero(found))
        else:
            rows = self.p_row[sel.start + part]
        counts.n_events_read += k
        if k == 0:
            return slice(0, 0), 0
        # consecutive rows (the usual case): a view; else one gather of whole rows
        first = int(rows[0])
        sel_rows: slice | np.ndarray = rows
        if int(rows[-1]) - first == k - 1 and (k < 3 or bool(np.all(np.diff(rows) == 1))):
            sel_rows = slice(first, first + k)
        all_missing = int(np.bitwise_and.reduce(self.missing_groups[sel_rows])) & detector.ALL_GROUPS_MASK
        counts.empty_groups += all_missing.bit_count()  # header-only fragments: the group is in no entry
        return sel_rows, all_missing


#: FRAGMENT layout constants of :func:`encode_fragment` (from :mod:`daq.protocol`)
_FRAGMENT_TYPE = int(protocol.MessageType.FRAGMENT)
_FRAGMENT_BODY = struct.Struct("<" + "".join(code for _, code in protocol.Fragment.BODY))
_INDEX_CODE = protocol.CODE_OF_DTYPE[np.dtype("<u4")]
_WAVEFORM_CODE = protocol.CODE_OF_DTYPE[np.dtype("<u2")]
_LE_U16 = np.dtype("<u2")


def _bytes_of(a: np.ndarray) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


def encode_fragment(
    run: int,
    spill: int,
    slice_id: int,
    source: int,
    seq: int,
    send_time_ns: int,
    index: memoryview | None = None,
    waveforms: np.ndarray | None = None,
) -> list[bytes | memoryview]:
    """``protocol.encode`` of a FRAGMENT, byte for byte, without the message object (the replay's hot
    path: ~1400 per spill). ``index``: the request's uint32 indices as bytes; ``waveforms``: (K, M, S)
    C-contiguous little-endian uint16; both None for a header-only fragment."""

    def head(n_frames: int) -> bytearray:
        return bytearray(
            protocol.HEADER.pack(
                protocol.MAGIC,
                protocol.VERSION,
                _FRAGMENT_TYPE,
                source,
                n_frames,
                run,
                spill,
                _FRAGMENT_BODY.size,
                seq,
                slice_id,
                send_time_ns,
                0,
                0,
            )
        )

    if waveforms is None or index is None:
        header = head(0)
        header += _FRAGMENT_BODY.pack(0, 0, 0)
        struct.pack_into("<I", header, protocol.CRC_OFFSET, protocol.crc32(header))
        return [bytes(header)]
    k, m, n = waveforms.shape
    if waveforms.dtype != _LE_U16 or not waveforms.flags.c_contiguous or len(index) != 4 * k:
        raise ValueError(
            f"fragment of slice {slice_id} source {source}: waveforms {waveforms.dtype}"
            f"{waveforms.shape} (C-contiguous uint16 expected) for {len(index) // 4} indices"
        )
    body = _FRAGMENT_BODY.pack(k, m, n)
    header = head(2)
    header += protocol.DESCRIPTOR.pack(_INDEX_CODE, 1, 0, k, 0, 0)
    header += protocol.DESCRIPTOR.pack(_WAVEFORM_CODE, 3, 0, k, m, n)
    header += body
    data = _bytes_of(waveforms)
    crc = protocol.crc32(data, protocol.crc32(index, protocol.crc32(header)))
    struct.pack_into("<I", header, protocol.CRC_OFFSET, crc)
    return [bytes(header), index, data]


# ---------------------------------------------------------------- building from arrays / files
def build_spill(
    *,
    path: Path,
    run: int,
    spill: int,
    events: dict[str, np.ndarray],
    primitives: dict[str, np.ndarray],
    source: WaveformSource,
    slice_ns: int,
    end_ns: int,
    merge: int = 1,
    neighbours: dict[str, np.ndarray] | None = None,
    **extra: Any,
) -> RecordedSpill:
    """Regroup a file's events into replay form (pure). ``events`` needs slice, index, t_ns, missing_groups.

    ``neighbours`` (``SpillFile.neighbours()`` of the E events, file version 2): the particles the DAQ
    fitted as pile-up; those that are not recorded particles themselves are replayed as context.

    ``source`` gives the E events' (E, 110, S) windows by event row. ``slice_ns`` is the recorded slice
    length; with ``merge = N`` the replayed slice k' covers recorded slices k'N .. k'N + N - 1 (length
    N x ``slice_ns``, the last one cut at ``end_ns``), its particles those slices' in their order.
    """
    if merge < 1:
        raise ValueError(f"merge must be >= 1 (got {merge})")
    if merge > 1 and merge * slice_ns > MAX_SLICE_NS:
        raise MergeTooLong(
            f"{path}: {merge} merged slices of {slice_ns / 1e6:g} ms would last {merge * slice_ns / 1e9:g} s, "
            f"above the protocol's maximum of {MAX_SLICE_NS / 1e9:.2f} s: use --merge-slices "
            f"{max(1, MAX_SLICE_NS // slice_ns)} or less"
        )
    index = np.asarray(events["index"])
    slice_id = np.asarray(events["slice"]).astype(np.int64)
    is_rnd = index == protocol.NO_PARTICLE
    part = np.flatnonzero(~is_rnd)
    order = part[np.lexsort((index[part], slice_id[part]))]
    p_slice = slice_id[order]
    if p_slice.size and np.any((p_slice[1:] == p_slice[:-1]) & (index[order][1:] == index[order][:-1])):
        raise ReplayError(f"{path}: the same (slice, index) particle appears twice in the event table")
    p_t = np.asarray(primitives["t_ns"], dtype=np.int64)[order]
    amp = np.asarray(primitives["amp"])
    if p_t.size and (np.any(p_t < p_slice * slice_ns) or np.any(p_t >= (p_slice + 1) * slice_ns)):
        bad = int(np.flatnonzero((p_t < p_slice * slice_ns) | (p_t >= (p_slice + 1) * slice_ns))[0])
        raise ReplayError(
            f"{path}: particle at t={int(p_t[bad])} ns is not inside slice {int(p_slice[bad])} of {slice_ns} ns: "
            "wrong slice length (give --slice-ms)"
        )
    if p_t.size:
        end_ns = max(end_ns, int(p_t.max()) + 1)
    rnd = np.flatnonzero(is_rnd)
    r_t = np.asarray(events["t_ns"], dtype=np.int64)[rnd]
    r_order = np.argsort(r_t, kind="stable")
    if merge > 1:  # still sorted: (slice, index) order is (slice // merge, position in the merged slice)
        p_slice = p_slice // merge
    c_t, c_amp = (np.zeros(0, np.int64), None)
    if neighbours is not None:
        c_t, c_amp = context_particles(
            np.asarray(events["t_ns"], dtype=np.int64), neighbours, p_t, np.asarray(amp)[:, order]
        )
    return RecordedSpill(
        path=path,
        run=run,
        spill=spill,
        slice_ns=slice_ns * merge,
        end_ns=end_ns,
        merge=merge,
        p_slice=p_slice,
        p_t_ns=p_t,
        p_amp=np.ascontiguousarray(amp[:, order]),
        p_row=order.astype(np.int64),
        r_t_ns=r_t[r_order],
        r_row=rnd[r_order].astype(np.int64),
        source=source,
        missing_groups=np.append(np.asarray(events["missing_groups"], dtype=np.uint8), np.uint8(0)),
        c_t_ns=c_t,
        c_amp=c_amp,
        **extra,
    )


def context_particles(
    event_t_ns: np.ndarray, neighbours: dict[str, np.ndarray], p_t_ns: np.ndarray, p_amp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct neighbours of the recorded events that are not recorded particles: (t_ns (M,) in time
    order, amp (C, M)). A particle is its arrival time and primitive amplitudes (two particles alike in
    both cannot be told apart, by the DAQ either)."""
    count = np.asarray(neighbours["count"], dtype=np.int64)
    dt = np.asarray(neighbours["dt_ns"], dtype=np.int64)
    valid = np.arange(dt.shape[1])[None, :] < count[:, None]
    t = (event_t_ns[:, None] + dt)[valid]
    amp = np.asarray(neighbours["amp"])[valid]  # (N, C)
    c = amp.shape[1]
    rows = np.empty((t.size, 1 + c), np.int64)
    rows[:, 0], rows[:, 1:] = t, amp
    rows = np.unique(rows, axis=0)  # sorted by time, then amplitudes
    if p_t_ns.size and rows.size:
        rec = np.empty((p_t_ns.size, 1 + c), np.int64)
        rec[:, 0], rec[:, 1:] = p_t_ns, np.asarray(p_amp).T
        void = np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))
        rows = rows[~np.isin(rows.view(void).ravel(), np.ascontiguousarray(rec).view(void).ravel())]
    return rows[:, 0].copy(), np.ascontiguousarray(rows[:, 1:].T.astype(np.uint16))


#: bounds of a recorded spill's length (end of its last slice): a damaged arrival_time histogram or
#: n_slices counter must not make the replay allocate or play billions of empty slices
MAX_SPILL_NS = 600 * 10**9
MAX_SLICES = 10**6


def slice_length_ns(attrs: dict[str, Any], frontend_info: dict[str, Any], override_ms: float | None) -> int:
    """The slice length of a spill: ``--slice-ms``, else the file's ``slice_ns``, else the front-end's config."""
    if override_ms is not None:
        return round(override_ms * 1e6)
    for key in ("slice_ns",):
        if key in attrs and int(attrs[key]) > 0:
            return int(attrs[key])
    for doc in (frontend_info, frontend_info.get("config", {}) if isinstance(frontend_info, dict) else {}):
        if isinstance(doc, dict):
            if int(doc.get("slice_ns", 0) or 0) > 0:
                return int(doc["slice_ns"])
            readout = doc.get("readout")
            if isinstance(readout, dict) and float(readout.get("slice_ms", 0) or 0) > 0:
                return round(float(readout["slice_ms"]) * 1e6)
    raise ReplayError("the slice length is not recorded in the file: give it with --slice-ms")


def spill_end_ns(histograms: dict[str, tuple[np.ndarray, np.ndarray]], n_slices: int, slice_ns: int) -> int:
    """End of the last slice: the upper edge of the ``arrival_time`` histogram (s), else n_slices x slice."""
    if "arrival_time" in histograms:
        edges = histograms["arrival_time"][1]
        if edges.size >= 2 and edges[-1] > 0:
            return round(float(edges[-1]) * 1e9)
    return n_slices * slice_ns


def load_spill(path: str | Path, slice_ms: float | None = None, merge: int = 1) -> RecordedSpill:
    """Open one spill file in replay form; any problem is a :class:`SpillFileError`/:class:`ReplayError`.

    ``merge``: recorded slices per replayed slice (see :func:`build_spill`). The event table, primitives
    and metadata are read now; the waveforms when requests ask for them, so the file stays open: close
    the returned spill (or use it as a context manager).
    """
    p = Path(path)
    f = SpillFile(p)
    try:
        return _load(p, f, slice_ms, merge)
    except BaseException:
        f.close()
        raise


def _load(p: Path, f: SpillFile, slice_ms: float | None, merge: int) -> RecordedSpill:
    try:
        attrs = f.attrs
        info = f.frontend_info
        ev = f.events(["slice", "index", "t_ns", "missing_groups"])
        prim = f.primitives()
        neighbours = f.neighbours()
        n, n_samples = f.n_events, f.n_samples
        if (
            n
        ):  # the last window is there and decodes (a missing filter or short dataset fails here, not in play)
            f.read_waveforms_into(np.empty((1, detector.N_CHANNELS, n_samples), dtype=np.uint16), n - 1)
        counters = f.counters
        histograms = f.histograms()
        trigger = f.trigger_config
        run, spill, status = f.run, f.spill, f.status
    except SpillFileError:
        raise
    except (OSError, KeyError, ValueError, IndexError) as e:  # a damaged file that passed the header checks
        raise SpillFileError(f"{p}: cannot be read ({type(e).__name__}: {e})") from None
    try:
        slice_ns = slice_length_ns(attrs, info, slice_ms)
    except ReplayError as e:
        raise ReplayError(f"{p}: {e}") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise SpillFileError(f"{p}: the slice length recorded in the file is not a number ({e})") from None
    try:
        end = spill_end_ns(histograms, counters.get("n_slices", 0), slice_ns)
        sample_period_ns = float(attrs.get("sample_period_ns", detector.SAMPLE_PERIOD_NS))
        sample_period_ps = round(sample_period_ns * 1000)
        t_start_ns, t_end_ns = int(attrs.get("t_start_ns", 0)), int(attrs.get("t_end_ns", 0))
    except (TypeError, ValueError, OverflowError) as e:
        raise SpillFileError(f"{p}: a recorded time is not a number ({type(e).__name__}: {e})") from None
    if not 0 <= run < 1 << 32 or not 0 <= spill < 1 << 32:
        raise SpillFileError(f"{p}: run {run} / spill {spill} outside the wire's 32-bit range")
    if not 0 < sample_period_ps < 1 << 32:
        raise SpillFileError(f"{p}: sample period {sample_period_ns} ns is not a positive time")
    if not 0 <= end <= MAX_SPILL_NS or end > MAX_SLICES * slice_ns:
        raise SpillFileError(
            f"{p}: the recorded spill end ({end / 1e9:.6g} s, {end / slice_ns:.6g} slices of {slice_ns} ns) is "
            f"beyond {MAX_SPILL_NS / 1e9:.0f} s or {MAX_SLICES} slices: a damaged histogram or n_slices counter"
        )
    return build_spill(
        path=p,
        run=run,
        spill=spill,
        events=ev,
        primitives=prim,
        source=f,
        slice_ns=slice_ns,
        end_ns=end,
        merge=merge,
        neighbours=neighbours,
        prim_channels=np.asarray(prim["channels"], dtype=np.uint16),
        n_samples=int(n_samples),
        sample_period_ps=sample_period_ps,
        t_start_ns=t_start_ns,
        t_end_ns=t_end_ns,
        status=status,
        frontend_info=info,
        trigger_config=trigger,
        calibration_id=str(attrs.get("calibration_id", "")),
        counters=counters,
    )


def equivalence_overrides(trigger: dict[str, Any]) -> dict[str, Any]:
    """Trigger settings for a DAQ that replays a spill recorded with ``trigger`` and keeps every recorded event.

    Everything as recorded (thresholds, block, masked cells, counter thresholds, random period, dead
    time), except ``beam_prescale = 1``: the prescaler counted S_trig particles that were never recorded,
    so its selection cannot be redone; with 1, every recorded S_trig particle (all recorded particles
    are) is a beam trigger, which keeps the recorded beam triggers and adds the BEAM bit to recorded
    physics events that did not have it. The random clock depends only on time since spill start and
    the dead time only on the accepted triggers, so with the same settings they select the same windows.
    """
    out = {k: v for k, v in trigger.items()}
    out["beam_prescale"] = 1
    return out


def toml_value(value: Any) -> str:
    """A value as TOML text for ``--set key=value`` (numbers, booleans, strings, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def frontend_info_json(
    spills_files: list[str], original: dict[str, Any], slice_ns: int = 0, merge: int = 1
) -> str:
    """RUN_START info document of the replay front-end. With ``slice_ns`` (the replayed slice length) it
    records ``slice_ns`` and ``merge_slices``, so that the replayed files say how long their slices are."""
    import daq

    doc: dict[str, Any] = {
        "name": "na64-replay",
        "version": daq.__version__,
        "replay_of": spills_files[:100],
        "original_frontend": original,
    }
    if slice_ns > 0:
        doc.update(slice_ns=slice_ns, merge_slices=merge)
    return json.dumps(doc, sort_keys=True)
