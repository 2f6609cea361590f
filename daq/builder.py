"""Readout bookkeeping and event building (pure: no sockets, no clocks but the ``now`` passed in).

:class:`Readout` remembers every READOUT_REQUEST sent, matches the returning FRAGMENTs (one per readout
group), detects what is missing, empty, truncated or unexpected, and turns each completed request into an
:class:`~daq.batch.EventBatch` (waveforms decoded, reconstructed, calibrated). :class:`SpillHistograms`
fills the per-spill histograms of the full primitive stream; losses are counted by reason in a
:class:`daq.contract.Losses`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from daq import detector
from daq.batch import EventBatch
from daq.contract import FRONTEND_COUNTERS, ChannelConstants, Losses
from daq.protocol import NO_PARTICLE, Fragment
from daq.trigger import BlockEnergy
from daq.waveform import (
    ChannelTracker,
    Neighbours,
    RecoConfig,
    event_sums,
    find_neighbours,
    neighbour_range_ns,
    reconstruct,
)

#: the readout groups' channels as slices of the channel axis, and the mask of all groups
_GROUP_SLICES = detector.GROUP_SLICES
_ALL_GROUPS = detector.ALL_GROUPS_MASK


@dataclass
class Pending:
    """One READOUT_REQUEST waiting for its fragments."""

    spill: int
    slice_id: int
    sent_at: float
    index: np.ndarray  # (K,) uint32
    t_ns: np.ndarray  # (K,) int64
    trigger_mask: np.ndarray  # (K,) uint32
    event_id: np.ndarray  # (K,) uint64
    prim_amp: np.ndarray  # (C, K) uint16 (owned copy)
    got: np.ndarray = field(default_factory=lambda: np.zeros(detector.N_GROUPS, bool))
    missing: int = 0  # bit g: group g has no data
    waveforms: np.ndarray | None = None  # (K, 110, S), allocated on the first fragment with data
    filled: int = 0  # bit g: group g's waveforms are in ``waveforms``
    any_data: bool = False
    neighbours: Neighbours | None = None  # the other particles near each trigger (pile-up fit)
    #: until the next slice is seen, the particles the neighbours are taken from (t_ns, amp, own indices),
    #: for triggers whose window reaches past the end of their slice (t_end_ns)
    stream: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    t_end_ns: int = 0

    @property
    def k(self) -> int:
        return int(self.index.shape[0])


class Readout:
    """Requests sent and fragments expected for the current run; builds events.

    ``constants``: e.g. a ``calibration.constants.Constants`` (gain, noise, time_offset_ns, status).
    """

    def __init__(
        self,
        constants: ChannelConstants,
        n_samples: int = detector.N_SAMPLES,
        n_prim: int = 29,
        reco: RecoConfig | None = None,
        sample_period_ns: float = detector.SAMPLE_PERIOD_NS,
        prim_channels: np.ndarray | None = None,
    ) -> None:
        self.constants = constants
        self.n_samples = n_samples
        self.n_prim = n_prim
        self.reco = reco or RecoConfig()
        self.sample_period_ns = sample_period_ns
        self.pending: dict[tuple[int, int], Pending] = {}
        self.closed: set[tuple[int, int]] = set()  # requests already completed or expired (this spill)
        self.next_event_id = 0
        self.losses = Losses()
        self.n_requests = 0
        self.n_fragments = 0
        self.n_events_read = 0
        self._logged: set[str] = set()
        #: channel ids of the primitive rows (RUN_START), to match neighbours' primitives to channels
        self.prim_channels = (
            detector.default_primitive_channels()[:n_prim]
            if prim_channels is None
            else np.asarray(prim_channels, dtype=np.uint16)
        )
        #: particles of the previous slice(s) a trigger of the next slice may have as neighbours
        self._tail: tuple[int, np.ndarray, np.ndarray] | None = None  # (spill, t_ns, amp)
        self.before_ns, self.after_ns = neighbour_range_ns(self.reco, sample_period_ns, n_samples)
        self.n_neighbours_dropped = 0  # events with more neighbours than the fit keeps
        #: time offsets and noise learned in this run for channels the calibration gives none
        self.tracker = ChannelTracker.new()

    # ------------------------------------------------------------ requests
    def add_request(
        self,
        spill: int,
        slice_id: int,
        index: np.ndarray,
        t_ns: np.ndarray,
        trigger_mask: np.ndarray,
        prim_amp: np.ndarray,
        now: float,
        stream_t_ns: np.ndarray | None = None,
        t_end_ns: int | None = None,
        context: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[EventBatch]:
        """Register a request (the caller sends it). ``prim_amp`` (C, N) of the whole slice, whose particles
        arrive at ``stream_t_ns`` (N,); the slice ends at ``t_end_ns``; ``context``: (t_ns, amp) of other
        particles of the beam that are not trigger candidates (a replay's recorded pile-up). The triggers'
        neighbours for the pile-up fit are the particles of this slice, its context and the end of the
        previous slice, and, for triggers near the end of the slice, the start of the next one: such a
        request is completed when the next slice comes (or it expires, or the spill ends). Returns the
        events of earlier requests this slice completed."""
        k = int(index.shape[0])
        part = index != NO_PARTICLE
        amp = np.zeros((prim_amp.shape[0], k), np.uint16)
        if k:
            amp[:, part] = prim_amp[:, index[part].astype(np.intp)]
        ids = np.arange(self.next_event_id, self.next_event_id + k, dtype=np.uint64)
        self.next_event_id += k
        p = Pending(
            spill,
            slice_id,
            now,
            index.astype(np.uint32),
            t_ns.astype(np.int64),
            trigger_mask.astype(np.uint32),
            ids,
            amp,
        )
        done = []
        if stream_t_ns is not None:
            end = int(t_end_ns) if t_end_ns is not None else None
            s_t, s_amp, own = self._stream(spill, index, p.t_ns, stream_t_ns, prim_amp, context, end)
            done = self._extend_waiting(spill, s_t, s_amp)
            p.neighbours, over = find_neighbours(
                p.t_ns, own, s_t, s_amp, self.prim_channels, self.before_ns, self.after_ns
            )
            self.n_neighbours_dropped += over.size
            if end is None:
                end = int(s_t[-1]) + 1 if s_t.size else 0
            if k and int(p.t_ns.max()) + self.after_ns > end:
                p.stream, p.t_end_ns = (s_t, s_amp, own), end
            self._keep_tail(spill, s_t, s_amp, end)
        self.pending[(spill, slice_id)] = p
        self.n_requests += 1
        return done

    def _stream(
        self,
        spill: int,
        index: np.ndarray,
        trigger_ns: np.ndarray,
        t_ns: np.ndarray,
        amp: np.ndarray,
        context: tuple[np.ndarray, np.ndarray] | None,
        t_end_ns: int | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The particles the neighbours of a slice's triggers come from, in time order: the tail of the
        previous slice, the slice, its context; and where each trigger's own particle is among them. Of
        the slice (40 000 particles at 2 MHz) only those a trigger's window, the next slice's triggers or
        the previous slice's waiting requests can reach are kept (a few hundred): copying them all cost
        ~1 ms per slice."""
        t_ns = np.asarray(t_ns, np.int64)
        amp = np.asarray(amp, np.uint16)
        idx = np.asarray(index).astype(np.int64)
        part = idx != NO_PARTICLE
        keep = self._in_reach(spill, t_ns, trigger_ns, t_end_ns)
        if keep is not None:
            position = np.cumsum(keep) - 1  # a kept particle's index among the kept ones
            t_ns, amp = t_ns[keep], amp[:, keep]
            idx = np.where(part, position[np.where(part, idx, 0)], idx)
        parts_t, parts_amp = [t_ns], [amp]
        n_tail = 0
        if self._tail is not None and self._tail[0] == spill:
            parts_t.insert(0, self._tail[1])
            parts_amp.insert(0, self._tail[2])
            n_tail = self._tail[1].size
        if context is not None and context[0].size:
            parts_t.append(np.asarray(context[0], np.int64))
            parts_amp.append(np.asarray(context[1], np.uint16))
        s_t, s_amp, rank = _in_time_order(parts_t, parts_amp)
        own = np.full(idx.size, -1, np.int64)
        own[part] = rank[idx[part] + n_tail]
        return s_t, s_amp, own

    def _in_reach(
        self, spill: int, t_ns: np.ndarray, trigger_ns: np.ndarray, t_end_ns: int | None
    ) -> np.ndarray | None:
        """(N,) bool: the slice's particles that can be a neighbour of one of its triggers, of the next
        slice's (the slice's end) or of the previous slice's waiting requests (its start); None: keep all
        (a slice not in time order, or no known end)."""
        n = t_ns.size
        if n < 2 or t_end_ns is None or not bool(np.all(t_ns[1:] >= t_ns[:-1])):
            return None
        before, after = int(np.ceil(self.before_ns)), int(np.ceil(self.after_ns))
        trig = np.asarray(trigger_ns, np.int64)
        opened = np.bincount(np.searchsorted(t_ns, trig - before, "left"), minlength=n + 1)
        closed = np.bincount(np.searchsorted(t_ns, trig + after, "right"), minlength=n + 1)
        keep: np.ndarray = np.cumsum(opened[:n] - closed[:n]) > 0  # inside some trigger's reach
        keep[np.searchsorted(t_ns, t_end_ns - before, "left") :] = True  # the tail kept for the next slice
        waiting = [p.t_end_ns for p in self.pending.values() if p.stream is not None and p.spill == spill]
        if waiting:
            keep[: np.searchsorted(t_ns, max(waiting) + after, "right")] = True
        return keep

    def _keep_tail(self, spill: int, s_t: np.ndarray, s_amp: np.ndarray, t_end_ns: int) -> None:
        first = np.searchsorted(s_t, t_end_ns - int(np.ceil(self.before_ns)), "left")
        self._tail = (spill, s_t[first:].copy(), s_amp[:, first:].copy())

    def _extend_waiting(self, spill: int, s_t: np.ndarray, s_amp: np.ndarray) -> list[EventBatch]:
        """Requests waiting for the start of the next slice get their last neighbours from this one."""
        done = []
        for key, p in list(self.pending.items()):
            if p.stream is None or key[0] != spill:
                continue
            t0, amp0, own = p.stream
            head = np.searchsorted(s_t, p.t_end_ns + int(np.ceil(self.after_ns)), "right")
            fresh = s_t[:head] >= p.t_end_ns  # the tail of p's slice is in both
            t, amp, rank = _in_time_order([t0, s_t[:head][fresh]], [amp0, s_amp[:, :head][:, fresh]])
            p.neighbours, over = find_neighbours(
                p.t_ns,
                np.where(own < 0, -1, rank[np.maximum(own, 0)]),
                t,
                amp,
                self.prim_channels,
                self.before_ns,
                self.after_ns,
            )
            self.n_neighbours_dropped += over.size
            p.stream = None
            if p.got.all():
                done.append(self._complete(key))
        return done

    def cancel(self, spill: int, slice_id: int) -> Pending | None:
        """Forget a request that could not be sent."""
        self.n_requests -= 1
        return self.pending.pop((spill, slice_id), None)

    # ------------------------------------------------------------ fragments
    def add_fragment(self, frag: Fragment) -> tuple[EventBatch | None, str | None]:
        """Match a fragment. Returns (events if the request is now complete, loss reason or None)."""
        key = (frag.spill, frag.slice_id)
        p = self.pending.get(key)
        g = frag.source
        if p is None or not 0 <= g < detector.N_GROUPS or p.got[g]:
            self.losses["unexpected_fragment"] += 1
            return None, "unexpected_fragment"
        self.n_fragments += 1
        p.got[g] = True
        reason: str | None = None
        n_ch = len(detector.GROUP_IDS[g])
        if frag.empty:
            if p.k:
                reason = "empty_fragment"
                p.missing |= 1 << g
        else:
            assert frag.index is not None and frag.waveforms is not None
            if (
                frag.n_events != p.k
                or frag.n_channels != n_ch
                or frag.n_samples != self.n_samples
                or not np.array_equal(frag.index, p.index)
            ):
                reason = "truncated_fragment"
                p.missing |= 1 << g
            elif p.k:
                if p.waveforms is None:  # filled group by group; groups without data are zeroed in build
                    p.waveforms = np.empty((p.k, detector.N_CHANNELS, self.n_samples), np.uint16)
                p.waveforms[:, _GROUP_SLICES[g], :] = frag.waveforms
                p.filled |= 1 << g
                p.any_data = True
        if reason:
            self.losses[reason] += 1
        if p.got.all() and p.stream is None:
            return self._complete(key), reason
        return None, reason

    def expire(self, now: float, timeout_s: float) -> list[EventBatch]:
        """Close requests older than ``timeout_s``: missing fragments count as ``fragment_timeout``."""
        old = [k for k, p in self.pending.items() if now - p.sent_at > timeout_s]
        return [self._timeout(k) for k in old]

    def flush(self, spill: int | None = None) -> list[EventBatch]:
        """Close every pending request (of one spill, or all): the end of a spill or of the run."""
        keys = [k for k in self.pending if spill is None or k[0] == spill]
        return [self._timeout(k) for k in keys]

    def _timeout(self, key: tuple[int, int]) -> EventBatch:
        p = self.pending[key]
        lost = ~p.got
        n_lost = int(np.count_nonzero(lost))
        self.losses["fragment_timeout"] += n_lost
        for g in np.flatnonzero(lost):
            p.missing |= 1 << int(g)
        return self._complete(key)

    def new_spill(self) -> None:
        self._tail = None
        self.closed.clear()
        self.n_requests = self.n_fragments = self.n_events_read = 0

    # ------------------------------------------------------------ event building
    def _complete(self, key: tuple[int, int]) -> EventBatch:
        p = self.pending.pop(key)
        self.closed.add(key)
        if p.any_data:
            self.n_events_read += p.k
        return self.build(p)

    def build(self, p: Pending) -> EventBatch:
        """Reconstruct and calibrate the events of a completed (or expired) request."""
        c = self.constants
        wf = p.waveforms
        if wf is None:
            wf = np.zeros((p.k, detector.N_CHANNELS, self.n_samples), np.uint16)
        elif p.filled != _ALL_GROUPS:
            for g in range(detector.N_GROUPS):
                if not p.filled & (1 << g):
                    wf[:, _GROUP_SLICES[g], :] = 0
        nb = p.neighbours if p.neighbours is not None else Neighbours.none(p.k, self.prim_channels)
        if p.k:
            errors = getattr(c, "errors", None) or {}
            err = errors.get("time_offset_ns")
            # noise without an uncertainty (nominal constants) is learned in the run
            noise_err = errors.get("noise", np.full(detector.N_CHANNELS, np.nan))
            r = reconstruct(
                wf,
                c.gain,
                noise=c.noise,
                time_offset_ns=c.time_offset_ns,
                status=c.status,
                config=self.reco,
                sample_period_ns=self.sample_period_ns,
                trigger_ns=p.t_ns,
                neighbours=nb,
                time_offset_error_ns=err,
                tracker=self.tracker,
                noise_error=noise_err,
            )
            energy, amplitude, peak_time, pileup = r.energy, r.amplitude, r.peak_time, r.pileup
            chi2, n_pulses = r.chi2, r.n_pulses
            if p.missing:  # absent groups: zeros, not the reconstruction of an empty window
                for g in range(detector.N_GROUPS):
                    if p.missing & (1 << g):
                        s = _GROUP_SLICES[g]
                        energy[:, s] = amplitude[:, s] = peak_time[:, s] = chi2[:, s] = 0
                        pileup[:, s] = False
                        n_pulses[:, s] = 0
        else:
            shape = (0, detector.N_CHANNELS)
            energy, amplitude, peak_time, chi2 = (np.zeros(shape, np.float32) for _ in range(4))
            pileup = np.zeros(shape, bool)
            n_pulses = np.zeros(shape, np.uint8)
        return EventBatch(
            event_id=p.event_id,
            slice=np.full(p.k, p.slice_id, np.uint32),
            index=p.index,
            t_ns=p.t_ns,
            trigger_mask=p.trigger_mask,
            missing_groups=np.full(p.k, p.missing, np.uint8),
            sums=event_sums(energy, self.reco.beam_energy_gev, float(getattr(c, "ecal_scale", 1.0))),
            energy=energy,
            amplitude=amplitude,
            peak_time=peak_time,
            pileup=pileup,
            chi2=chi2,
            n_pulses=n_pulses,
            waveforms=wf,
            prim_amp=p.prim_amp,
            nb_count=nb.count,
            nb_dt_ns=nb.dt_ns,
            nb_amp=nb.amp,
        )


def _in_time_order(
    parts_t: list[np.ndarray], parts_amp: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Particles of several parts (each usually in time order) joined in time order: (t_ns, amp (P, N),
    rank: where each input particle went). A stable sort of sorted runs is a merge (timsort); parts already
    in order one after another are not sorted at all."""
    t = np.concatenate(parts_t) if len(parts_t) > 1 else np.asarray(parts_t[0])
    amp = np.concatenate(parts_amp, axis=1) if len(parts_amp) > 1 else np.asarray(parts_amp[0])
    if t.size < 2 or bool(np.all(t[1:] >= t[:-1])):
        return t, amp, np.arange(t.size)
    order = np.argsort(t, kind="stable")
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return t[order], np.ascontiguousarray(amp[:, order]), rank


def compare_counters(daq: Mapping[str, int], frontend: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Counters that disagree: name -> (DAQ's count, front-end's count)."""
    return {
        n: (int(daq[n]), int(frontend[n]))
        for n in FRONTEND_COUNTERS
        if n in daq and n in frontend and daq[n] != frontend[n]
    }


class SpillHistograms:
    """Histograms of every particle of a spill: arrival time, ECAL and PRS trigger-block energies.

    The arrival time is filled in 1 ms bins and rebinned to ``arrival_bins`` bins over the spill length
    at the end; energies in fixed bins (the last bin includes the overflow).
    """

    def __init__(
        self,
        arrival_bins: int = 100,
        ecal_bins: int = 240,
        ecal_max_gev: float = 120.0,
        prs_bins: int = 200,
        prs_max_gev: float = 10.0,
    ) -> None:
        self.arrival_bins = arrival_bins
        self._t_ms = np.zeros(0, np.int64)
        self.ecal_edges = np.linspace(0.0, ecal_max_gev, ecal_bins + 1)
        self.prs_edges = np.linspace(0.0, prs_max_gev, prs_bins + 1)
        self.ecal = np.zeros(ecal_bins, np.int64)
        self.prs = np.zeros(prs_bins, np.int64)
        self.t_end_ns = 0
        self._luts: dict[tuple[float, float, float, int], np.ndarray] = {}

    def fill(
        self,
        t_ns: np.ndarray,
        e_ecal: np.ndarray | BlockEnergy,
        e_prs: np.ndarray | BlockEnergy,
        t_end_ns: int | None = None,
    ) -> None:
        """Add a batch of particles: arrival times (ns) and block energies (GeV arrays, or the trigger's
        :class:`~daq.trigger.BlockEnergy`, whose integer sums are binned through a lookup table)."""
        if t_ns.size:
            self._fill_arrival(t_ns)
            self.ecal += self._binned(e_ecal, self.ecal_edges)
            self.prs += self._binned(e_prs, self.prs_edges)
        if t_end_ns is not None:
            self.t_end_ns = max(self.t_end_ns, t_end_ns)

    def _fill_arrival(self, t_ns: np.ndarray) -> None:
        first, last = int(t_ns[0]), int(t_ns[-1])
        if 0 <= first <= last < _MAX_MS * 1_000_000 and bool(np.all(t_ns[1:] >= t_ns[:-1])):
            # times in order (as front-ends send them): count per ms by bisection, not per particle
            lo, hi = first // 1_000_000, last // 1_000_000
            cuts = np.searchsorted(t_ns, np.arange(lo + 1, hi + 1, dtype=np.int64) * 1_000_000)
            counts = np.diff(cuts, prepend=0, append=t_ns.size)
            t_max = last
        else:
            ms = np.minimum(np.maximum(t_ns // 1_000_000, 0), _MAX_MS)
            lo = int(ms.min())
            counts = np.bincount(ms - lo)
            t_max = int(t_ns.max())
        end = lo + counts.size
        if end > self._t_ms.size:
            self._t_ms = np.concatenate([self._t_ms, np.zeros(end - self._t_ms.size, np.int64)])
        self._t_ms[lo:end] += counts
        self.t_end_ns = max(self.t_end_ns, t_max + 1)

    def _binned(self, e: np.ndarray | BlockEnergy, edges: np.ndarray) -> np.ndarray:
        if isinstance(e, BlockEnergy):
            if e.sums is not None and e.sums.dtype == np.uint16:
                # the bin of every possible 16-bit ADC sum, computed once with the same float32 arithmetic
                key = (float(e.gev_per_count), float(edges[0]), float(edges[-1]), edges.size)
                lut = self._luts.get(key)
                if lut is None:
                    gev = np.arange(1 << 16, dtype=np.uint16).astype(np.float32) * np.float32(e.gev_per_count)
                    lut = _bin_index(gev, edges).astype(np.uint16)
                    self._luts[key] = lut
                return np.bincount(lut.take(e.sums), minlength=edges.size - 1)
            e = e.gev()
        return _bincount(e, edges)

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
        """name -> (counts, edges, unit)."""
        n_ms = max(1, -(-self.t_end_ns // 1_000_000), self._t_ms.size)
        width = -(-n_ms // self.arrival_bins)  # whole ms per bin
        fine = np.zeros(width * self.arrival_bins, np.int64)
        fine[: self._t_ms.size] = self._t_ms
        arrival = fine.reshape(self.arrival_bins, width).sum(axis=1)
        edges = np.arange(self.arrival_bins + 1) * width / 1000.0
        return {
            "arrival_time": (arrival, edges, "s"),
            "ecal_block_gev": (self.ecal.copy(), self.ecal_edges.copy(), "GeV"),
            "prs_block_gev": (self.prs.copy(), self.prs_edges.copy(), "GeV"),
        }


#: arrival times are histogrammed up to an hour after the spill start (later ones go to the last ms)
_MAX_MS = 3_600_000


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    nb = edges.size - 1
    scale = np.float32(nb / (edges[-1] - edges[0]))
    idx = (values * scale).astype(np.int32)  # values >= 0 (block energies)
    np.minimum(np.maximum(idx, 0, out=idx), nb - 1, out=idx)
    return idx


def _bincount(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(_bin_index(values, edges), minlength=edges.size - 1)


def histograms_json(
    hists: Mapping[str, tuple[np.ndarray, np.ndarray, str]],
) -> dict[str, dict[str, list[float]]]:
    return {
        name: {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
        for name, (counts, edges, _unit) in hists.items()
    }


def sum_counts(items: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for it in items:
        out.update(it)
    return dict(out)
