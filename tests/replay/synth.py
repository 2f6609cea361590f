"""Synthetic recorded spills for replay/retrigger tests: a hand-made primitive stream through the real
trigger (:mod:`daq.trigger`), written by the real spill writer (:mod:`daq.writer`), read back through
:mod:`daq.files` like any recorded spill. Waveforms are random but distinct per event, so a replayed
readout can be checked sample by sample."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daq import detector
from daq.batch import EventBatch
from daq.files import spill_filename
from daq.protocol import NO_PARTICLE
from daq.trigger import PrimitiveBatch, Trigger, TriggerConfig
from daq.writer import SpillWriter, WriterConfig
from daq.writer_commands import SpillFinal, SpillHeader

SLICE_NS = 10_000_000


@dataclass(frozen=True)
class SynthSpill:
    """Truth of a synthetic spill: the full primitive stream and what the trigger read out."""

    path: Path
    t_ns: np.ndarray  # (N,) full stream
    amp: np.ndarray  # (C, N)
    n_slices: int
    slice_ns: int
    readout_slice: np.ndarray  # (E,) in file order
    readout_index: np.ndarray
    readout_t: np.ndarray
    readout_mask: np.ndarray


def primitive_stream(
    rng: np.random.Generator, n: int, end_ns: int, signal_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Particles with times in [0, end_ns): mostly 100 GeV electrons, a few low-ECAL physics candidates."""
    prim = detector.default_primitive_channels()
    gains = detector.nominal_gains()
    t = np.sort(rng.integers(0, end_ns, n)).astype(np.int64)
    per_ch = np.zeros((detector.N_CHANNELS, n))
    for name in ("S0", "S2", "S3"):
        per_ch[detector.counter_id(name)] = rng.normal(300, 30, n)
    per_ch[detector.counter_id("S2"), rng.random(n) < 0.02] = 0  # missed coincidences
    per_ch[detector.counter_id("V1"), rng.random(n) < 0.01] = 400  # halo in the hole veto
    e = np.where(rng.random(n) < signal_fraction, rng.uniform(5, 95, n), rng.normal(100, 2, n))
    cells = detector.block_cells()
    share = np.full(len(cells), 0.2 / (len(cells) - 1))
    share[cells.index(detector.BEAM_CELL)] = 0.8
    for (x, y), f in zip(cells, share, strict=True):
        ch = detector.ecal_id(x, y)
        per_ch[ch] = e * 0.95 * f * 1000 * gains[ch]
        pch = detector.prs_id(x, y)
        per_ch[pch] = rng.uniform(0.0, 0.08, n) * e * f * 1000 * gains[pch]
    amp = np.clip(np.rint(per_ch[prim]), 0, 4095).astype(np.uint16)
    return t, amp


def make_spill(
    data_dir: Path,
    *,
    run: int = 1,
    spill: int = 1,
    n_particles: int = 20_000,
    n_slices: int = 12,
    slice_ns: int = SLICE_NS,
    last_slice_ns: int | None = None,
    trigger: TriggerConfig | None = None,
    seed: int = 0,
    frontend_info: dict | None = None,
    missing_group_every: int = 0,
) -> SynthSpill:
    """Write one synthetic recorded spill file into ``data_dir`` and return its truth."""
    rng = np.random.default_rng(seed)
    cfg = trigger or TriggerConfig(beam_prescale=100, random_period_ns=3_000_000, dead_time_ns=5_000)
    end_ns = (n_slices - 1) * slice_ns + (last_slice_ns or slice_ns)
    t, amp = primitive_stream(rng, n_particles, end_ns)
    prim = detector.default_primitive_channels()
    trig = Trigger(cfg, None, prim)
    trig.new_spill()
    sl, ix, tt, mm = [], [], [], []
    for k in range(n_slices):
        t0 = k * slice_ns
        length = min(slice_ns, end_ns - t0)
        lo, hi = np.searchsorted(t, [t0, t0 + length])
        d = trig.evaluate(
            PrimitiveBatch(t_ns=t[lo:hi], amp=amp[:, lo:hi], t0_ns=t0, length_ns=length, slice_id=k)
        )
        sl.append(np.full(d.n_readout, k, np.uint32))
        ix.append(d.index)
        tt.append(d.t_ns)
        mm.append(d.trigger_mask)
    r_slice, r_index, r_t, r_mask = (np.concatenate(a) for a in (sl, ix, tt, mm))
    e = r_slice.size
    # the primitives of each read-out particle (zeros for random triggers)
    bounds = np.searchsorted(t, np.arange(n_slices) * slice_ns)
    is_p = r_index != NO_PARTICLE
    pos = np.zeros(e, np.int64)
    pos[is_p] = bounds[r_slice[is_p]] + r_index[is_p]
    prim_amp = np.zeros((len(prim), e), np.uint16)
    prim_amp[:, is_p] = amp[:, pos[is_p]]
    prim_t = np.where(is_p, t[pos], r_t)
    waveforms = rng.integers(150, 4000, (e, detector.N_CHANNELS, detector.N_SAMPLES)).astype(np.uint16)
    energy = rng.uniform(0, 50, (e, detector.N_CHANNELS)).astype(np.float32)
    missing = np.zeros(e, np.uint8)
    if missing_group_every:
        missing[::missing_group_every] = 1 << 3  # VETO missing
    sums = np.zeros((6, e), np.float32)
    sums[1] = energy[:, detector.ECAL_IDS].sum(axis=1)
    sums[5] = 100.0 - sums[1] / 10
    batch = EventBatch(
        event_id=np.arange(e, dtype=np.uint64),
        slice=r_slice,
        index=r_index,
        t_ns=prim_t.astype(np.int64),
        trigger_mask=r_mask,
        missing_groups=missing,
        sums=sums,
        energy=energy,
        amplitude=energy * 10,
        peak_time=np.full_like(energy, 120.0),
        pileup=np.zeros(energy.shape, bool),
        waveforms=waveforms,
        prim_amp=prim_amp,
        **EventBatch.without_fit(prim_amp.shape[1], prim_amp.shape[0]),
    )
    info = {"name": "synth", "slice_ns": slice_ns} if frontend_info is None else frontend_info
    header = SpillHeader(
        run=run,
        spill=spill,
        t_start_ns=1_700_000_000_000_000_000 + spill * 10_800_000_000,
        config={"trigger": cfg.thresholds()},
        trigger=cfg.thresholds(),
        frontend_info=json.dumps(info),
        prim_channels=prim,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    w = SpillWriter(data_dir, header, WriterConfig(fsync=False))
    w.append(batch)
    edges = np.linspace(0, end_ns / 1e9, 101)
    counts = np.histogram(t / 1e9, bins=edges)[0]
    final = SpillFinal(
        t_end_ns=header.t_start_ns + 5_000_000_000,
        counters={
            "n_slices": n_slices,
            "n_particles": n_particles,
            "n_accepted": e,
            "n_beam": int(trig.state.n_strig),
        },
        histograms={"arrival_time": (counts, edges, "s")},
    )
    w.close(final)
    path = data_dir / spill_filename(run, spill)
    return SynthSpill(path, t, amp, n_slices, slice_ns, r_slice, r_index, r_t, r_mask)
