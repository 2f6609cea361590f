"""The HDF5 spill writer alone: events/s and MB/s for each codec, with realistic waveforms.

Events are 110 channels x 32 samples of 12-bit ADC data: pedestals ~200 counts (even/odd different),
1.5 counts RMS noise in every channel, an electron shower in the ECAL/PRS cells around the beam cell, a
few HCAL, SRD and counter pulses (~7 kB raw per event). Each codec writes whole spill files through
:class:`daq.writer.SpillWriter` (create, append in slice-sized batches, close with fsync and rename), in
one thread, like the DAQ's writer thread. Target: >= 25 kHz of 7 kB events.

    python benchmarks/bench_writer.py                   # all codecs, 20 000 events each
    python benchmarks/bench_writer.py --events 50000 --codec lz4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from daq import detector
from daq.batch import EventBatch
from daq.waveform import RecoConfig, event_sums, reconstruct, synthesize
from daq.writer import CODECS, SpillFinal, SpillHeader, SpillWriter, WriterConfig


def realistic_batch(n: int, rng: np.random.Generator, first_id: int = 0) -> EventBatch:
    amp = np.zeros((n, detector.N_CHANNELS))
    e_beam = rng.normal(100.0, 1.0, n)
    frac_ecal = np.where(rng.random(n) < 0.6, rng.uniform(0.1, 0.8, n), rng.uniform(0.9, 1.0, n))
    bx, by = detector.BEAM_CELL
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            share = 0.8 if dx == dy == 0 else 0.025
            e = e_beam * frac_ecal * share * 0.95
            amp[:, detector.ecal_id(bx + dx, by + dy)] = (
                e * 1000 * detector.NOMINAL_GAIN[detector.Detector.ECAL]
            )
            amp[:, detector.prs_id(bx + dx, by + dy)] = (
                e * 0.05 * 1000 * detector.NOMINAL_GAIN[detector.Detector.PRS]
            )
    e_hcal = e_beam * (1 - frac_ecal)
    amp[:, detector.hcal_id(0, 1, 1)] = e_hcal * 0.7 * 1000 * detector.NOMINAL_GAIN[detector.Detector.HCAL]
    amp[:, detector.hcal_id(1, 1, 1)] = e_hcal * 0.25 * 1000 * detector.NOMINAL_GAIN[detector.Detector.HCAL]
    amp[:, detector.SRD_IDS] = rng.uniform(10, 80, (n, 3)) * detector.NOMINAL_GAIN[detector.Detector.SRD]
    amp[:, detector.COUNTER_IDS[:3]] = rng.normal(300, 30, (n, 3))
    ped_e = rng.normal(200, 15, detector.N_CHANNELS)
    ped_o = ped_e + rng.normal(0, 3, detector.N_CHANNELS)
    wf = synthesize(
        np.clip(amp, 0, 3800),
        peak_ns=rng.normal(125, 3, (n, 1)),
        pedestal_even=ped_e,
        pedestal_odd=ped_o,
        noise=1.5,
        rng=rng,
    )
    r = reconstruct(
        wf, detector.nominal_gains(), noise=np.full(detector.N_CHANNELS, 1.5), config=RecoConfig()
    )
    prim = detector.default_primitive_channels()
    return EventBatch(
        event_id=np.arange(first_id, first_id + n, dtype=np.uint64),
        slice=np.zeros(n, np.uint32),
        index=np.arange(n, dtype=np.uint32),
        t_ns=np.sort(rng.integers(0, 4_800_000_000, n)),
        trigger_mask=np.full(n, 0x701, np.uint32),
        missing_groups=np.zeros(n, np.uint8),
        sums=event_sums(r.energy),
        energy=r.energy,
        amplitude=r.amplitude,
        peak_time=r.peak_time,
        pileup=r.pileup,
        waveforms=wf,
        prim_amp=np.ascontiguousarray(amp[:, prim].T.astype(np.uint16)),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events per codec (one spill file)")
    ap.add_argument("--batch", type=int, default=40, help="events per append (a slice's readout)")
    ap.add_argument("--codec", action="append", choices=CODECS, help="codecs to measure (default: all)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    pool = [realistic_batch(args.batch, rng, i * args.batch) for i in range(50)]
    raw_per_event = detector.N_CHANNELS * detector.N_SAMPLES * 2
    print(
        f"{args.events} events per file, appended {args.batch} at a time, {raw_per_event} B of raw samples "
        "per event; fsync and rename included; CPU = process CPU time (all threads)"
    )
    print(
        f"{'codec':<12} {'events/s':>10} {'raw MB/s':>9} {'file MB':>8} {'B/event':>8} {'ratio':>6} {'CPU s':>6}"
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-writer-", dir=args.dir) as tmp:
        for i, codec in enumerate(args.codec or CODECS):
            w = SpillWriter(tmp, SpillHeader(run=1, spill=i + 1), WriterConfig(compression=codec))
            t0, c0 = time.perf_counter(), time.process_time()
            n = 0
            while n < args.events:
                b = pool[(n // args.batch) % len(pool)]
                w.append(b)
                n += len(b)
            res = w.close(SpillFinal(counters={"n_accepted": n}))
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            size = res.bytes
            rate = n / dt
            print(
                f"{codec:<12} {rate:>10,.0f} {n * raw_per_event / dt / 1e6:>9.1f} {size / 1e6:>8.1f} "
                f"{size / n:>8.0f} {n * raw_per_event / size:>6.2f} {cpu:>6.2f}"
            )
            if codec == WriterConfig().compression:
                ok &= rate >= 25_000
            assert res.path is not None
            res.path.unlink()
    print(f"default codec: {WriterConfig().compression}; target >= 25 kHz:", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
