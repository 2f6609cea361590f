"""One recorded spill, prepared for replay: its slices of recorded particles and the readout answers.

A spill file holds only the read-out particles (primitives, raw waveforms) and the random-trigger
windows. :class:`RecordedSpill` regroups the particles into their original slices (same slice ids,
original ``t_ns`` and primitive amplitudes, in their original order), and answers READOUT_REQUESTs from
the stored waveforms: particle entries by (slice, index in the replayed slice), random-trigger entries
(index ``NO_PARTICLE``) by their trigger time. Everything here is pure numpy on arrays already in
memory; :func:`load_spill` is the only function that reads a file (through :mod:`daq.files`).

The waveforms are kept per readout group, ``(E + 1, M_g, S)`` C-contiguous, so the answer to a request
whose entries are consecutive event rows (the usual case: the DAQ records the events of a request in
request order) is a view of memory already there: no gather, no copy before the wire.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq import detector, protocol
from daq.errors import UserError
from daq.files import SpillFile, SpillFileError

log = logging.getLogger(__name__)

#: read waveforms in blocks of this many events (a multiple of the writer's 64-event chunks; keeps each
#: h5py call, and the GIL hold, short, and the block in cache while it is split into readout groups)
READ_BLOCK = 1024
_GROUP_SLICES = tuple(slice(int(ids[0]), int(ids[-1]) + 1) for ids in detector.GROUP_IDS)


class ReplayError(UserError):
    """A spill file cannot be replayed (inconsistent content, unknown slice length, ...)."""


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

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(eq=False)
class RecordedSpill:
    """A spill file's content in replay form (arrays in memory)."""

    path: Path
    run: int
    spill: int
    prim_channels: np.ndarray  # (C,) uint16
    n_samples: int
    sample_period_ps: int
    slice_ns: int
    end_ns: int  # end of the last slice, ns since spill start
    t_start_ns: int  # original SPILL_START / SPILL_END wall-clock times (0 if unknown)
    t_end_ns: int
    #: recorded particles sorted by (slice, index): slice id, arrival time, primitives, event row
    p_slice: np.ndarray  # (P,) int64
    p_t_ns: np.ndarray  # (P,) int64
    p_amp: np.ndarray  # (C, P) uint16
    p_row: np.ndarray  # (P,) int64
    #: recorded random-trigger windows sorted by trigger time, and their event rows
    r_t_ns: np.ndarray  # (R,) int64
    r_row: np.ndarray  # (R,) int64
    #: per readout group, (E + 1, M_g, S) uint16 C-contiguous by event row; row E is all zero (``zero_row``)
    groups: tuple[np.ndarray, ...]
    missing_groups: np.ndarray  # (E + 1,) uint8
    status: str = "ok"
    frontend_info: dict[str, Any] = field(default_factory=dict)
    trigger_config: dict[str, Any] = field(default_factory=dict)
    calibration_id: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    _bounds: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._bounds = np.searchsorted(self.p_slice, np.arange(self.n_slices + 1), side="left")
        rows = self.missing_groups.shape[0]
        if len(self.groups) != detector.N_GROUPS:
            raise ValueError(f"{len(self.groups)} readout groups of waveforms, expected {detector.N_GROUPS}")
        for g, (arr, chans) in enumerate(zip(self.groups, _GROUP_SLICES, strict=True)):
            if arr.shape != (rows, chans.stop - chans.start, self.n_samples) or not arr.flags.c_contiguous:
                raise ValueError(
                    f"group {g} waveforms have shape {arr.shape}, expected C-contiguous "
                    f"({rows}, {chans.stop - chans.start}, {self.n_samples})"
                )
            if arr[-1].any():
                raise ValueError("waveforms and missing_groups need one extra, all-zero last row")

    @property
    def zero_row(self) -> int:
        """Row of the all-zero window (answers for random windows the file does not have)."""
        return int(self.missing_groups.shape[0] - 1)

    def waveforms(self, rows: np.ndarray) -> np.ndarray:
        """The (K, 110, S) windows of event rows (a copy; for checks and tools, not the hot path)."""
        return np.concatenate([arr[np.asarray(rows, dtype=np.int64)] for arr in self.groups], axis=1)

    # ------------------------------------------------------------ slices
    @property
    def n_slices(self) -> int:
        return max(1, -(-self.end_ns // self.slice_ns)) if self.end_ns > 0 else 0

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
        return protocol.Slice(
            run=self.run,
            spill=self.spill,
            slice_id=slice_id,
            t0_ns=t0,
            length_ns=length,
            n_particles=int(t.shape[0]),
            t_ns=t,
            amp=np.ascontiguousarray(self.p_amp[:, sel]),
        )

    # ------------------------------------------------------------ readout
    def answer(
        self, request: protocol.ReadoutRequest, counts: AnswerCounts, first_seq: int = 0
    ) -> list[protocol.Fragment]:
        """One FRAGMENT per readout group for a request, from the stored waveforms (updates ``counts``).

        The fragments carry sequence numbers ``first_seq``, ``first_seq + 1``, ... (one per group).
        Their waveforms are views of the stored arrays when the request's rows are consecutive.
        """
        counts.n_requests += 1
        k = request.n_events
        if request.slice_id >= self.n_slices:
            counts.unknown_slice += 1
            return self._header_only(request.slice_id, counts, first_seq)
        index = np.asarray(request.index, dtype=np.int64)
        rnd = index == protocol.NO_PARTICLE
        sel = self.particles(request.slice_id)
        n_in_slice = sel.stop - sel.start
        if np.any(index[~rnd] >= n_in_slice):
            counts.bad_index += 1
            log.debug("request for slice %d asks index >= %d", request.slice_id, n_in_slice)
            return self._header_only(request.slice_id, counts, first_seq)
        rows = np.full(k, -1, dtype=np.int64)
        rows[~rnd] = self.p_row[sel.start + index[~rnd]]
        if rnd.any():
            t_req = np.asarray(request.t_ns, dtype=np.int64)[rnd]  # decode guarantees t_ns with NO_PARTICLE
            pos = np.searchsorted(self.r_t_ns, t_req)
            if self.n_random:
                found = (pos < self.n_random) & (self.r_t_ns[np.minimum(pos, self.n_random - 1)] == t_req)
            else:
                found = np.zeros(t_req.shape, dtype=bool)
            rr = np.full(t_req.shape, -1, dtype=np.int64)
            rr[found] = self.r_row[pos[found]]
            rows[rnd] = rr
            counts.random_unavailable += int(np.count_nonzero(~found))
        rows[rows < 0] = self.zero_row  # an all-zero window for what the file does not have
        # consecutive rows (the usual case): a view; else one gather of whole rows
        run: slice | None = None
        if k == 0 or (rows[-1] - rows[0] == k - 1 and bool(np.all(rows[1:] - rows[:-1] == 1))):
            run = slice(int(rows[0]), int(rows[0]) + k) if k else slice(0, 0)
        missing = self.missing_groups[run if run is not None else rows]
        all_missing = np.bitwise_and.reduce(missing) if k > 0 else 0
        idx_u32 = np.asarray(request.index, dtype=np.uint32)
        out = []
        for g, arr in enumerate(self.groups):
            if all_missing & (1 << g):
                counts.empty_groups += 1
                out.append(
                    protocol.Fragment(
                        run=self.run, spill=self.spill, slice_id=request.slice_id, source=g, seq=first_seq + g
                    )
                )
                continue
            group_wf = arr[run] if run is not None else arr.take(rows, axis=0)  # C-contiguous (K, M, S)
            out.append(
                protocol.Fragment(
                    source=g,
                    n_events=k,
                    n_channels=group_wf.shape[1],
                    n_samples=self.n_samples,
                    index=idx_u32,
                    waveforms=group_wf,
                    run=self.run,
                    spill=self.spill,
                    slice_id=request.slice_id,
                    seq=first_seq + g,
                )
            )
        counts.n_fragments += len(out)
        counts.n_events_read += k
        return out

    def _header_only(
        self, slice_id: int, counts: AnswerCounts, first_seq: int = 0
    ) -> list[protocol.Fragment]:
        counts.n_fragments += detector.N_GROUPS
        return [
            protocol.Fragment(run=self.run, spill=self.spill, slice_id=slice_id, source=g, seq=first_seq + g)
            for g in range(detector.N_GROUPS)
        ]


# ---------------------------------------------------------------- building from arrays / files
def build_spill(
    *,
    path: Path,
    run: int,
    spill: int,
    events: dict[str, np.ndarray],
    primitives: dict[str, np.ndarray],
    groups: tuple[np.ndarray, ...],
    slice_ns: int,
    end_ns: int,
    **extra: Any,
) -> RecordedSpill:
    """Regroup a file's events into replay form (pure). ``events`` needs slice, index, t_ns, missing_groups.

    ``groups`` holds the E events' windows per readout group (:func:`split_groups`), each followed by one
    all-zero row.
    """
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
    return RecordedSpill(
        path=path,
        run=run,
        spill=spill,
        slice_ns=slice_ns,
        end_ns=end_ns,
        p_slice=p_slice,
        p_t_ns=p_t,
        p_amp=np.ascontiguousarray(amp[:, order]),
        p_row=order.astype(np.int64),
        r_t_ns=r_t[r_order],
        r_row=rnd[r_order].astype(np.int64),
        groups=tuple(groups),
        missing_groups=np.append(np.asarray(events["missing_groups"], dtype=np.uint8), np.uint8(0)),
        **extra,
    )


def empty_groups(n_events: int, n_samples: int) -> tuple[np.ndarray, ...]:
    """Per-group waveform arrays for ``n_events`` windows plus the all-zero row (that row zeroed)."""
    out = tuple(np.empty((n_events + 1, g.stop - g.start, n_samples), dtype=np.uint16) for g in _GROUP_SLICES)
    for arr in out:
        arr[n_events] = 0
    return out


def put_block(groups: tuple[np.ndarray, ...], lo: int, block: np.ndarray) -> None:
    """Copy a (B, 110, S) block of windows into rows ``lo:lo+B`` of the per-group arrays."""
    hi = lo + block.shape[0]
    for arr, chans in zip(groups, _GROUP_SLICES, strict=True):
        arr[lo:hi] = block[:, chans]


def split_groups(waveforms: np.ndarray) -> tuple[np.ndarray, ...]:
    """(E, 110, S) windows -> per-group arrays with the all-zero row appended (for tests and tools)."""
    out = empty_groups(waveforms.shape[0], waveforms.shape[2])
    put_block(out, 0, waveforms)
    return out


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


def load_spill(path: str | Path, slice_ms: float | None = None) -> RecordedSpill:
    """Read one spill file into replay form; any problem is a :class:`SpillFileError`/:class:`ReplayError`."""
    p = Path(path)
    try:
        with SpillFile(p) as f:
            attrs = f.attrs
            info = f.frontend_info
            ev = f.events(["slice", "index", "t_ns", "missing_groups"])
            prim = f.primitives()
            n, n_samples = f.n_events, f.n_samples
            groups = empty_groups(n, n_samples)
            for lo in range(0, n, READ_BLOCK):  # decompressed block by block, split while in cache
                put_block(groups, lo, f.waveforms(slice(lo, min(lo + READ_BLOCK, n))))
            counters = f.counters
            histograms = f.histograms()
            trigger = f.trigger_config
            run, spill, status = f.run, f.spill, f.status
    except SpillFileError:
        raise
    except (OSError, KeyError, ValueError) as e:  # a damaged file that passed the header checks
        raise SpillFileError(f"{p}: cannot be read ({type(e).__name__}: {e})") from None
    if prim["amp"].shape[1] != n or prim["t_ns"].shape[0] != n:
        raise ReplayError(f"{p}: primitives hold {prim['t_ns'].shape[0]} entries for {n} events")
    try:
        slice_ns = slice_length_ns(attrs, info, slice_ms)
    except ReplayError as e:
        raise ReplayError(f"{p}: {e}") from None
    n_slices = int(counters.get("n_slices", 0))
    end = spill_end_ns(histograms, n_slices, slice_ns)
    sample_period_ns = float(attrs.get("sample_period_ns", detector.SAMPLE_PERIOD_NS))
    return build_spill(
        path=p,
        run=run,
        spill=spill,
        events=ev,
        primitives=prim,
        groups=groups,
        slice_ns=slice_ns,
        end_ns=end,
        prim_channels=np.asarray(prim["channels"], dtype=np.uint16),
        n_samples=int(n_samples),
        sample_period_ps=round(sample_period_ns * 1000),
        t_start_ns=int(attrs.get("t_start_ns", 0)),
        t_end_ns=int(attrs.get("t_end_ns", 0)),
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


def frontend_info_json(spills_files: list[str], original: dict[str, Any]) -> str:
    """RUN_START info document of the replay front-end."""
    import daq

    doc = {
        "name": "na64-replay",
        "version": daq.__version__,
        "replay_of": spills_files[:100],
        "original_frontend": original,
    }
    return json.dumps(doc, sort_keys=True)
