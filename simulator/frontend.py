"""The front-end core: slices of primitives, a latency buffer, and answers to readout requests.

No sockets and no clocks: :class:`FrontEnd` builds protocol messages (without sequence numbers) and keeps
the per-spill counters; :mod:`simulator.service` moves them over ZeroMQ on a schedule. Everything is
deterministic given the seed: the beam is drawn from its own generator in slice order, the readout noise
from another one, so the primitive stream does not depend on when requests arrive.

Slice ids count from 0 in every spill; spills count from 1 in every run.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from daq import config_loader, detector, protocol
from simulator import __version__
from simulator import randoms as rnd
from simulator.config import SimConfig
from simulator.electronics import (
    PrimitiveNoise,
    PulseShapes,
    WindowPulses,
    digitise_primitives,
    make_electronics,
    waveforms,
)
from simulator.faults import FaultSet, SliceState, parse_faults
from simulator.particles import ZPrimeTruth
from simulator.physics import (
    ECAL_PROFILE,
    N_COUNTERS,
    PRS_PROFILE,
    Batch,
    BeamModel,
    arrival_times,
    concat,
    intensity,
)

log = logging.getLogger(__name__)

#: particles per column block of the primitive computation (a 10-20 ms slice at 2 MHz is one block: on this
#: machine smaller cache-sized blocks measured slower, the per-call overheads outweigh the cache gains)
PRIM_BLOCK = 1 << 16
PRIM_PAD = 24

#: a truth sink receives per-particle truth rows (dict of equal-length arrays) of read-out particles
TruthSink = Callable[[dict[str, np.ndarray]], None]


@dataclass
class SliceRecord:
    spill: int
    slice_id: int
    t0_ns: int
    length_ns: int
    batch: Batch
    state: SliceState
    amp: np.ndarray | None = None  # primitives, dropped once the SLICE message is built


@dataclass
class SpillCounters:
    """Front-end counters of one spill (the first five go into SPILL_END)."""

    n_slices: int = 0
    n_requests: int = 0
    n_fragments: int = 0
    n_events_read: int = 0
    n_particles: int = 0
    n_signal: int = 0  # Z' made by the particles sent (any decay)
    n_signal_missing: int = (
        0  # of them with a missing-energy signature (invisible, or decayed beyond the HCAL)
    )
    n_random: int = 0  # random-trigger windows read
    n_expired: int = 0  # requests for slices no longer in the latency buffer (header-only answers)
    n_unknown: int = 0  # requests for slices never sent (header-only answers)
    n_bad_index: int = 0  # particle indices outside the slice (answered as pedestal windows)
    n_empty_fragments: int = 0  # header-only fragments sent (expired/unknown requests, empty_fragment fault)
    n_silent: int = 0  # fragments not sent (no_answer fault)
    n_stalled_slices: int = 0  # slices not produced during a stall
    n_late_slices: int = 0  # realtime: slices sent later than one slice length after their deadline
    max_lateness_ms: float = 0.0
    cpu_s: float = 0.0  # CPU time of the front-end process during the spill
    # bookkeeping while the spill is open (cleared at SPILL_END so that long runs stay small)
    requested: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)
    outstanding: int = 0  # slices sent but not yet requested
    last_sent: int = -1
    stalled_ids: set[int] = field(default_factory=set)
    closed: bool = False

    def public(self) -> dict[str, float]:
        d = asdict(self)
        for name in ("requested", "sent", "stalled_ids", "closed", "last_sent", "outstanding"):
            d.pop(name)
        return d

    def was_sent(self, slice_id: int) -> bool:
        if not self.closed:
            return slice_id in self.sent
        return 0 <= slice_id <= self.last_sent and slice_id not in self.stalled_ids


def zprime_rows(batch: Batch) -> dict[str, np.ndarray]:
    """Per-particle Z' truth columns of ``batch`` (zp_mode 0 and NaN where the particle made none)."""
    n = len(batch)
    out: dict[str, np.ndarray] = {
        "zp_mode": np.zeros(n, np.uint8),
        "zp_emitter": np.zeros(n, np.uint8),
        "zp_depth_x0": np.full(n, np.nan, np.float32),
        "zp_x": np.full(n, np.nan, np.float32),
        "zp_energy_gev": np.full(n, np.nan, np.float32),
        "zp_decay": np.zeros(n, np.uint8),
        "zp_decay_z_mm": np.full(n, np.nan, np.float32),
    }
    zp = batch.zprime
    if zp is not None:
        for name in ZPrimeTruth.ROWS:
            out[f"zp_{name}"][zp.index] = getattr(zp, name)
    return out


def zprime_slice_rows(rec: SliceRecord, run: int) -> dict[str, np.ndarray]:
    """Truth of every Z' made in a slice: where (run, spill, slice, index, t_ns), what the detector saw
    (process, beam energy, deposits, missing energy) and the zp_* columns of :func:`zprime_rows`."""
    b = rec.batch
    zp = b.zprime
    assert zp is not None and b.t_ns is not None
    idx = zp.index
    n = idx.size
    sub = b.take(idx)
    rows: dict[str, np.ndarray] = {
        "run": np.full(n, run, np.uint32),
        "spill": np.full(n, rec.spill, np.uint32),
        "slice": np.full(n, rec.slice_id, np.uint32),
        "index": idx.astype(np.uint32),
        "t_ns": b.t_ns[idx].astype(np.int64),
        "process": sub.process.copy(),
        "energy_gev": sub.e_beam.copy(),
        "e_prs_gev": sub.e_prs.copy(),
        "e_ecal_gev": sub.e_ecal.copy(),
        "e_hcal_gev": sub.e_hcal.copy(),
        "e_miss_gev": sub.e_miss.copy(),
    }
    rows.update(zprime_rows(sub))
    return rows


def detector_rng(seed: int) -> np.random.Generator:
    """The generator of the per-channel detector truth: a function of the seed alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, DETECTOR_STREAM]))


#: SeedSequence key of the detector truth (distinct from any run number's beam streams)
DETECTOR_STREAM = 0x4E413634_0000_0001


class FrontEnd:
    """A simulated front-end for one run."""

    def __init__(self, config: SimConfig, truth_sink: TruthSink | None = None) -> None:
        self.config = config
        self.truth_sink = truth_sink
        #: receives the truth of every Z' made, read out or not (rows as :func:`zprime_slice_rows`)
        self.zprime_sink: TruthSink | None = None
        seeds = np.random.SeedSequence([config.seed, config.run]).spawn(4)
        self.beam_rng = np.random.default_rng(seeds[0])
        self.readout_rng = np.random.default_rng(seeds[1])
        # the detector (gains, pedestals, noise, time offsets) depends on the seed only, not on the run:
        # constants calibrated on one run apply to the next run of the same simulated detector
        self.electronics = make_electronics(
            config.electronics, detector_rng(config.seed), config.beam.beam_cell
        )
        noise_rng = np.random.default_rng(seeds[3])
        self.model = BeamModel(config)
        pool = config.readout.noise_pool_size
        self.randoms = rnd.PooledRandoms(self.beam_rng, pool)
        self.faults = FaultSet(
            parse_faults(config.faults),
            self.electronics.gain,
            self.electronics.pedestal_even,
            self.electronics.pedestal_odd,
            self.electronics.noise,
            config.beam.spill_length_s,
            config.electronics.n_samples,
        )
        self.electronics.status[:] = self.faults.status
        self.shapes = PulseShapes(config.electronics)
        self.prim_channels = detector.default_primitive_channels(config.beam.beam_cell)
        self._prim = self.prim_channels.astype(np.intp)
        self._work = np.empty(0, np.float32)
        #: False: always the reference path of the primitives (for the bit-for-bit tests)
        self.fused_primitives = True
        # noise pool: >= 3 slices of particles at the mean rate (below 2 per slice it would draw afresh)
        per_slice = config.beam.rate_hz * config.readout.slice_ms * 1e-3
        noise_size = max(1 << 16, 1 << math.ceil(math.log2(max(3 * per_slice, 1))))
        self.prim_noise = PrimitiveNoise(self.electronics.noise[self._prim], noise_rng, noise_size)
        self._noisy_prim = self.faults.of("noisy")
        self.wave_pool = self.readout_rng.standard_normal(pool, dtype=np.float32)
        self.slice_ns = round(config.readout.slice_ms * 1e6)
        self.spill_ns = round(config.beam.spill_length_s * 1e9)
        self.n_slices = math.ceil(self.spill_ns / self.slice_ns)
        self.buffer: OrderedDict[tuple[int, int], SliceRecord] = OrderedDict()
        self.keep = math.ceil(config.readout.latency_buffer_s * 1e9 / self.slice_ns) + 2
        self.counters: dict[int, SpillCounters] = {}
        self.spill_index: dict[int, int] = {}
        self.run_unknown_requests = 0
        ns = config.electronics.n_samples
        self.window_after_ns = (ns - config.electronics.peak_sample + 1) * detector.SAMPLE_PERIOD_NS + 40.0
        self.window_before_ns = config.readout.pileup_before_ns

    def warm_up(self) -> None:
        """Build the random pools, scaled tables and caches now, not in the first slice of the run
        (does not touch the beam generator's state used by the run... except the pools, which are part
        of the seeded sequence)."""
        from simulator import kernels  # lazy: numba's import only where windows are read out

        kernels.warm_up()  # compile or load the waveform kernel before the first request
        state = self.electronics_state(1, 0.0)
        batch = self.model.generate(1000, self.randoms)
        self._primitives(batch, state)

    # ------------------------------------------------------------ run and spill markers
    def info(self) -> dict[str, object]:
        """RUN_START info: simulator version, seed and the full config."""
        return {
            "frontend": "na64 simulate",
            "version": __version__,
            "seed": self.config.seed,
            "run": self.config.run,
            "config": config_loader.to_dict(self.config),
            "signal": self.signal_info(),
        }

    def signal_info(self) -> dict[str, object] | None:
        """The injected Z' signal: model, coupling, boost and the expected yields (None without)."""
        signal = self.model.signal
        return None if signal is None else signal.info()

    def run_start(self) -> protocol.RunStart:
        info = json.dumps(self.info(), default=str)
        return protocol.RunStart(
            run=self.config.run,
            n_samples=self.config.electronics.n_samples,
            n_channels=detector.N_CHANNELS,
            sample_period_ps=round(detector.SAMPLE_PERIOD_NS * 1000),
            slice_ns=self.slice_ns,
            prim_channels=self.prim_channels,
            info=protocol.RunStart.info_bytes(info),
        )

    def run_stop(self, n_spills: int) -> protocol.RunStop:
        return protocol.RunStop(run=self.config.run, n_spills=n_spills)

    def begin_spill(self, spill: int, wall_ns: int) -> protocol.SpillStart:
        self.spill_index.setdefault(spill, len(self.spill_index))
        self.counters[spill] = SpillCounters()
        return protocol.SpillStart(run=self.config.run, spill=spill, t_start_ns=wall_ns)

    def end_spill(self, spill: int, wall_ns: int) -> protocol.SpillEnd:
        c = self.counters[spill]
        c.closed = True
        c.sent.clear()
        c.requested.clear()
        return protocol.SpillEnd(
            run=self.config.run,
            spill=spill,
            slice_id=self.n_slices,  # the slices the spill should have: fewer sent = cut short
            n_slices=c.n_slices,
            n_requests=c.n_requests,
            n_fragments=c.n_fragments,
            n_events_read=c.n_events_read,
            n_particles=c.n_particles,
            t_end_ns=wall_ns,
        )

    def heartbeat(self, state: protocol.FrontEndState, uptime_ns: int, spill: int = 0) -> protocol.Heartbeat:
        return protocol.Heartbeat(run=self.config.run, spill=spill, uptime_ns=uptime_ns, state=int(state))

    def spill_complete(self, spill: int) -> bool:
        """True when every slice sent in ``spill`` has been requested (and so answered)."""
        return self.counters[spill].outstanding == 0

    def electronics_state(self, spill: int, t_s: float) -> SliceState:
        return self.faults.state(self.spill_index.get(spill, 0), spill, t_s)

    # ------------------------------------------------------------ slices
    def prepare(self, spill: int, slice_id: int) -> SliceRecord:
        """Generate slice ``slice_id`` of ``spill`` (if not done yet) and keep it in the latency buffer."""
        key = (spill, slice_id)
        rec = self.buffer.get(key)
        if rec is not None:
            return rec
        t0 = slice_id * self.slice_ns
        length = min(self.slice_ns, self.spill_ns - t0)
        t_mid = (t0 + length / 2) / 1e9
        rate = (
            self.config.beam.rate_hz
            * intensity(t_mid, self.config)
            * self.faults.intensity_factor(spill, t_mid)
        )
        times = arrival_times(rate, t0, length, self.beam_rng, self.randoms)
        batch = self.model.generate(times.size, self.randoms, self.spill_index.get(spill, 0))
        batch.t_ns = times
        state = self.electronics_state(spill, t0 / 1e9)
        rec = SliceRecord(spill, slice_id, t0, length, batch, state)
        rec.amp = self._primitives(batch, state)
        self.buffer[key] = rec
        while len(self.buffer) > self.keep:
            self.buffer.popitem(last=False)
        return rec

    def _primitives(self, batch: Batch, state: SliceState) -> np.ndarray:
        """uint16 (29, N) primitives of a slice: the fused kernel for a pooled batch (bulk electrons
        straight from shares x energy to uint16, hadrons and muons redone from their templates row by
        row while the row is in the cache), else (hot or noisy
        channel faults, batches not from the spot pool, huge slices) :meth:`_primitives_reference`.
        Both give the same primitives bit for bit and draw the same random numbers."""
        prim = self._prim
        n = len(batch)
        noise = self.prim_noise
        scale = state.gain32[prim]
        shares = self.model.response.pooled_shares(batch, scale) if self.fused_primitives else None
        if (
            shares is None
            or self._noisy_prim
            or bool((state.hot_prob[prim] > 0).any())
            or not min(n, PRIM_BLOCK) < noise.size // 2
        ):
            return self._primitives_reference(batch, state)
        from simulator import kernels  # lazy: numba only where a front-end is simulated

        pool_ecal, pool_prs, so = shares
        out = np.empty((prim.size, n), np.uint16)
        ratio = self.model.response.gain_ratio(scale)
        ratio_rows = np.ones(prim.size, np.float32) if ratio is None else ratio
        sat32 = state.saturation[prim].astype(np.float32)  # inf where nothing saturates: min() no-op
        ecal_t, prs_t = self.model.response.special_templates()
        max_counts = (detector.ADC_MAX - state.pedestal_even[prim]).astype(np.float32)
        nc = N_COUNTERS
        for c0 in range(0, n, PRIM_BLOCK):  # the blocks (and noise offsets) of the reference
            c1 = min(c0 + PRIM_BLOCK, n)
            o = noise.offset(c1 - c0)
            special = self.model.response.special_index(batch, (c0, c1))
            proc = batch.process[c0:c1][special]
            kernels.primitives_fused(
                batch.counters,
                c0,
                scale[:nc],
                pool_ecal,
                pool_prs,
                so + c0,
                batch.e_ecal[c0:c1],
                batch.e_prs[c0:c1],
                ratio_rows,
                sat32,
                noise.pool,
                o,
                max_counts,
                out[:, c0:c1],
                (special, ECAL_PROFILE[proc], PRS_PROFILE[proc], batch.bin[c0:c1][special], ecal_t, prs_t),
            )
            noise.renew(c1 - c0)
        return out

    def _primitives_reference(self, batch: Batch, state: SliceState) -> np.ndarray:
        """uint16 (29, N) primitives, computed in column blocks of PRIM_BLOCK particles so that the float
        work buffer stays in the CPU cache through heights, faults, noise, clipping and conversion."""
        prim = self._prim
        n = len(batch)
        out = np.empty((prim.size, n), np.uint16)
        if self._work.shape != (prim.size, PRIM_BLOCK + PRIM_PAD):
            # padded rows: a row stride that is a multiple of 4 kB makes every row operation hit the
            # same cache sets (4k aliasing) and costs up to 5x
            self._work = np.empty((prim.size, PRIM_BLOCK + PRIM_PAD), np.float32)
        scale = state.gain32[prim]
        sat = state.saturation[prim]
        saturates = bool(np.isfinite(sat).any())
        sat32 = sat.astype(np.float32)[:, None]
        hot = np.flatnonzero(state.hot_prob[prim] > 0)
        extra_noise = None
        if self._noisy_prim:
            extra_noise = np.sqrt(
                np.maximum(state.noise[prim] ** 2 - self.electronics.noise[prim] ** 2, 0)
            ).astype(np.float32)[:, None]
        max_counts = (detector.ADC_MAX - state.pedestal_even[prim]).astype(np.float32)
        for c0 in range(0, n, PRIM_BLOCK):
            c1 = min(c0 + PRIM_BLOCK, n)
            heights = self._work[:, : c1 - c0]
            self.model.response.primitives(batch, scale, out=heights, cols=(c0, c1))
            if saturates:
                np.minimum(heights, sat32, out=heights)
            for row in hot:
                n_hot = int(self.beam_rng.binomial(c1 - c0, state.hot_prob[prim[row]]))
                at = self.beam_rng.integers(0, c1 - c0, n_hot)
                heights[row, at] += self.beam_rng.uniform(100, 2000, n_hot).astype(np.float32)
            if extra_noise is not None:
                heights += self.beam_rng.standard_normal(heights.shape, dtype=np.float32) * extra_noise
            digitise_primitives(heights, self.prim_noise, max_counts, out=out[:, c0:c1])
        return out

    def slice_message(self, spill: int, slice_id: int) -> protocol.Slice:
        """The SLICE message of a prepared slice (counted as sent)."""
        rec = self.prepare(spill, slice_id)
        amp, rec.amp = rec.amp, None
        assert amp is not None and rec.batch.t_ns is not None, "slice sent twice"
        c = self.counters[spill]
        c.n_slices += 1
        c.n_particles += len(rec.batch)
        zp = rec.batch.zprime
        if zp is not None:
            c.n_signal += len(zp)
            c.n_signal_missing += int(rec.batch.signal[zp.index].sum())
            if self.zprime_sink is not None:
                self.zprime_sink(zprime_slice_rows(rec, self.config.run))
        c.sent.add(slice_id)
        c.outstanding += 1
        c.last_sent = max(c.last_sent, slice_id)
        return protocol.Slice(
            run=self.config.run,
            spill=spill,
            slice_id=slice_id,
            t0_ns=rec.t0_ns,
            length_ns=rec.length_ns,
            n_particles=len(rec.batch),
            t_ns=rec.batch.t_ns,
            amp=amp,
        )

    def skip_slice(self, spill: int, slice_id: int) -> None:
        """A slice lost to a front-end stall: generated (the beam went on) but never sent."""
        rec = self.prepare(spill, slice_id)
        rec.amp = None
        self.counters[spill].n_stalled_slices += 1
        self.counters[spill].stalled_ids.add(slice_id)

    # ------------------------------------------------------------ readout
    def answer(self, req: protocol.ReadoutRequest) -> list[protocol.Fragment]:
        """Fragments (one per readout group, unless a fault silences one) answering a request."""
        spill, sid = req.spill, req.slice_id
        c = self.counters.get(spill)
        if c is None:
            self.run_unknown_requests += 1
            log.warning("readout request for unknown spill %d slice %d: header-only answer", spill, sid)
            return self._header_only(req, None)
        c.n_requests += 1
        sent = c.was_sent(sid)
        if sent and not c.closed and sid not in c.requested:
            c.requested.add(sid)
            c.outstanding -= 1
        rec = self.buffer.get((spill, sid))
        if rec is None or not sent:
            if sent:
                c.n_expired += 1
            else:
                c.n_unknown += 1
            return self._header_only(req, c)
        wf = self.read_windows(rec, np.asarray(req.index), req.t_ns, c)
        t_s = rec.t0_ns / 1e9
        out: list[protocol.Fragment] = []
        k = int(req.n_events)
        index = np.ascontiguousarray(req.index, dtype=np.uint32)
        for g in range(detector.N_GROUPS):
            mode = self.faults.group_mode(spill, t_s, g)
            ids = detector.GROUP_IDS[g]
            if mode == "silent":
                c.n_silent += 1
                continue
            if mode == "empty":
                out.append(self._fragment(req, g, None, None))
                c.n_empty_fragments += 1
                continue
            frag = protocol.Fragment(
                run=self.config.run,
                spill=spill,
                slice_id=sid,
                source=g,
                n_events=k,
                n_channels=ids.size,
                n_samples=self.shapes.n_samples,
                index=index,
                waveforms=np.ascontiguousarray(wf[:, detector.GROUP_SLICES[g], :]),
            )
            out.append(frag)
        c.n_fragments += len(out)
        c.n_events_read += k
        return out

    def _fragment(
        self, req: protocol.ReadoutRequest, g: int, index: np.ndarray | None, wf: np.ndarray | None
    ) -> protocol.Fragment:
        ids = detector.GROUP_IDS[g]
        return protocol.Fragment(
            run=self.config.run,
            spill=req.spill,
            slice_id=req.slice_id,
            source=g,
            n_events=0,
            n_channels=ids.size,
            n_samples=self.shapes.n_samples,
        )

    def _header_only(self, req: protocol.ReadoutRequest, c: SpillCounters | None) -> list[protocol.Fragment]:
        out = [self._fragment(req, g, None, None) for g in range(detector.N_GROUPS)]
        if c is not None:
            c.n_fragments += len(out)
            c.n_empty_fragments += len(out)
        return out

    def read_windows(
        self, rec: SliceRecord, index: np.ndarray, t_req: np.ndarray | None, c: SpillCounters | None = None
    ) -> np.ndarray:
        """Waveforms (uint16 (K, 110, n_samples)) of the requested windows of a slice, with pile-up."""
        batch = rec.batch
        assert batch.t_ns is not None
        n = len(batch)
        idx = index.astype(np.int64)
        k = idx.size
        rand = idx == protocol.NO_PARTICLE
        bad = (~rand) & (idx >= n)
        part = (~rand) & (~bad)
        trig = np.full(k, rec.t0_ns, dtype=np.int64)
        if t_req is not None:
            trig[:] = np.asarray(t_req, dtype=np.int64)
        trig[part] = batch.t_ns[idx[part]]
        if c is not None:
            c.n_random += int(rand.sum())
            if bad.any():
                c.n_bad_index += int(bad.sum())
                log.warning(
                    "spill %d slice %d: %d requested indices >= %d particles: pedestal windows sent",
                    rec.spill,
                    rec.slice_id,
                    int(bad.sum()),
                    n,
                )
        wins, dts, subs, keys, states, invs = [], [], [], [], [], []
        n_unique = 0
        sources = [rec.slice_id]
        if k and int(trig.min()) - self.window_before_ns < rec.t0_ns:
            sources.insert(0, rec.slice_id - 1)  # pile-up from the end of the previous slice
        if k and int(trig.max()) + self.window_after_ns >= rec.t0_ns + rec.length_ns:
            sources.append(rec.slice_id + 1)  # ... or from the start of the next one
        for sid in sources:
            src = self.buffer.get((rec.spill, sid))
            if src is None or src.batch.t_ns is None or len(src.batch) == 0:
                continue
            t_src = src.batch.t_ns
            lo = np.searchsorted(t_src, trig - int(self.window_before_ns), "left")
            hi = np.searchsorted(t_src, trig + int(self.window_after_ns), "right")
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            win = np.repeat(np.arange(k), counts)
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            j = starts + np.arange(total)
            uniq, inv = np.unique(j, return_inverse=True)
            subs.append(src.batch.take(uniq))
            keys.append(rnd.particle_keys(self.config.seed, rec.spill, sid, uniq))
            states.append(src.state)
            invs.append(inv + n_unique)
            n_unique += uniq.size
            wins.append(win)
            dts.append((t_src[j] - trig[win]).astype(np.float64))
        heights: list[np.ndarray] = []
        if subs:
            dep = self.model.deposits(subs[0] if len(subs) == 1 else concat(subs), np.concatenate(keys))
            o = 0
            for sub, st in zip(subs, states, strict=True):  # pulse heights with each slice's own gains
                seg = dep[o : o + len(sub)]
                seg *= st.gain32
                if st.saturates:
                    np.minimum(seg, st.saturation32, out=seg)
                o += len(sub)
            heights.append(dep[np.concatenate(invs)])
            wins, dts = [np.concatenate(wins)], [np.concatenate(dts)]
        state = rec.state
        hot = np.flatnonzero(state.hot_prob > 0)
        for ch in hot:
            fire = np.flatnonzero(self.readout_rng.random(k) < state.hot_prob[ch])
            if fire.size:
                h = np.zeros((fire.size, detector.N_CHANNELS), np.float32)
                h[:, ch] = self.readout_rng.uniform(100, 2000, fire.size)
                wins.append(fire)
                dts.append(self.readout_rng.uniform(-100, 200, fire.size))
                heights.append(h)
        if wins:
            pulses = WindowPulses(np.concatenate(wins), np.concatenate(dts), np.concatenate(heights))
        else:
            pulses = WindowPulses(
                np.zeros(0, np.intp), np.zeros(0), np.zeros((0, detector.N_CHANNELS), np.float32)
            )
        wf = waveforms(
            k,
            trig,
            pulses,
            self.shapes,
            state.baseline,
            state.noise32,
            self.readout_rng,
            self.config.electronics.peak_sample,
            self.electronics.time_offset_ns,
            self.wave_pool,
        )
        if self.truth_sink is not None and part.any():
            self._truth(rec, idx[part], trig[part])
        return wf

    def _truth(self, rec: SliceRecord, idx: np.ndarray, t_ns: np.ndarray) -> None:
        assert self.truth_sink is not None
        sub = rec.batch.take(idx)
        dep = self.model.deposits(sub, rnd.particle_keys(self.config.seed, rec.spill, rec.slice_id, idx))
        n = idx.size
        row: dict[str, np.ndarray] = {
            "run": np.full(n, self.config.run, np.uint32),
            "spill": np.full(n, rec.spill, np.uint32),
            "slice": np.full(n, rec.slice_id, np.uint32),
            "index": idx.astype(np.uint32),
            "t_ns": t_ns.astype(np.int64),
            "kind": sub.kind.copy(),
            "process": sub.process.copy(),
            "energy_gev": sub.e_beam.copy(),
            "x_mm": sub.x.copy(),
            "y_mm": sub.y.copy(),
            "signal": sub.signal.astype(np.uint8),
            "e_miss_gev": sub.e_miss.copy(),
        }
        row.update(zprime_rows(sub))
        for name, ids in (
            ("ecal", detector.ECAL_IDS),
            ("prs", detector.PRS_IDS),
            ("hcal", detector.HCAL_IDS),
            ("veto", detector.VETO_IDS),
            ("srd", detector.SRD_IDS),
        ):
            row[f"e_{name}_gev"] = (dep[:, ids].sum(axis=1) / 1000.0).astype(np.float32)
        self.truth_sink(row)
