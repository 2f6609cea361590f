"""The replay chain's floor: CPU that a replay -> DAQ of one recorded spill cannot avoid, whatever the code.

    python benchmarks/bench_replay_floor.py FILE.h5     # a spill file written by the DAQ

Each step is the bulk work on the spill's raw waveforms done once, in one call where possible, with no
per-message or per-slice overhead at all (the real chain does each of them in ~240 slices and ~1700
messages per spill):

1. replay: read and decompress the recorded waveforms (h5py, the file's codec);
2. CRC-32 of every fragment byte, twice (the replay's encode and the DAQ's decode; ISA-L);
3. the waveforms through a ZeroMQ TCP loopback connection in fragment-sized messages (both ends'
   CPU: the I/O threads and the kernel);
4. DAQ: the event builder's copy of each readout group into the event's (E, 110, S) array;
5. DAQ: the waveform reconstruction (compiled kernels) in batches of 100 events, nominal constants;
6. DAQ: the writer: every event of the spill written to a new spill file in blocks of 4096 events,
   with the default codec (compression, HDF5, the kernel's page cache), fsync off.

Prints CPU seconds per step (process CPU, user + system; best of 3, buffers reused) and the sum, and the speed that sum allows on
this machine's cores with perfect overlap and nothing else running (the DQM, the trigger, the protocol
and every per-message cost left out): the ceiling for ``benchmarks/bench_replay.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daq import detector
from daq.batch import EventBatch
from daq.files import SpillFile
from daq.waveform import RecoConfig, event_sums, reconstruct
from daq.writer import SpillWriter, WriterConfig
from daq.writer_commands import SpillFinal, SpillHeader


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(label: str, fn: Callable[[], object], out: dict[str, float], repeat: int = 3) -> object:
    """Best of ``repeat`` runs (buffers are reused as the services reuse theirs: no first-touch pages)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        c0 = cpu_s()
        result = fn()
        best = min(best, cpu_s() - c0)
    out[label] = best
    return result


def transfer(frames: list[np.ndarray]) -> None:
    """Send every array through a DEALER -> ROUTER TCP loopback connection in this process."""
    import zmq

    ctx = zmq.Context()
    rx = ctx.socket(zmq.ROUTER)
    port = rx.bind_to_random_port("tcp://127.0.0.1")
    tx = ctx.socket(zmq.DEALER)
    tx.connect(f"tcp://127.0.0.1:{port}")
    header = b"\0" * 120

    def send() -> None:
        for a in frames:
            tx.send_multipart([header, a], copy=False)

    t = threading.Thread(target=send)
    t.start()
    for _ in frames:
        rx.recv_multipart(copy=False)
    t.join()
    tx.close(0)
    rx.close(0)
    ctx.term()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path, help="a spill file written by na64 daq")
    ap.add_argument("--batch", type=int, default=100, help="events per reconstruction call (default 100)")
    args = ap.parse_args()
    from daq import pulse_fit

    pulse_fit.warm_up()
    out: dict[str, float] = {}
    with SpillFile(args.file) as f:
        n_events = f.n_events
        wf = np.empty((f.n_events, detector.N_CHANNELS, f.n_samples), np.uint16)
        timed("replay: read + decompress waveforms", lambda: f.read_waveforms_into(wf), out)
        cols = f.events()
        prim = f.primitives()
        period = float(f.frontend_info.get("config", {}).get("beam", {}).get("spill_period_s", 10.8))
        run, spill, n_samples = f.run, f.spill, wf.shape[2]
    groups = [np.ascontiguousarray(wf[:, ids[0] : ids[-1] + 1]) for ids in detector.GROUP_IDS]
    per_slice = max(1, n_events // 240)  # fragments of ~240 slices, one per group
    frames = [g[i : i + per_slice] for i in range(0, n_events, per_slice) for g in groups]

    from isal.isal_zlib import crc32

    def crc_twice() -> None:
        for _ in range(2):
            for a in frames:
                crc32(a.reshape(-1).view(np.uint8).data)

    timed("CRC-32 of every fragment, both ends", crc_twice, out)
    timed("ZeroMQ TCP loopback, both ends", lambda: transfer(frames), out)
    assembled = np.empty_like(wf)

    def assemble() -> None:
        for ids, g in zip(detector.GROUP_IDS, groups, strict=True):
            assembled[:, ids[0] : ids[-1] + 1] = g

    timed("event builder: groups into events", assemble, out)
    from calibration.constants import nominal

    c = nominal()
    cfg = RecoConfig()
    recos: list[tuple[object, np.ndarray]] = []

    def reco() -> None:
        recos.clear()
        for i in range(0, n_events, args.batch):
            r = reconstruct(
                assembled[i : i + args.batch],
                c.gain,
                noise=c.noise,
                time_offset_ns=c.time_offset_ns,
                status=c.status,
                config=cfg,
            )
            recos.append((r, event_sums(r.energy, cfg.beam_energy_gev, float(c.ecal_scale))))

    timed(f"reconstruction (batches of {args.batch})", reco, out)
    energy = np.concatenate([r.energy for r, _ in recos])
    batch = EventBatch(
        event_id=np.asarray(cols["event_id"]),
        slice=np.asarray(cols["slice"]),
        index=np.asarray(cols["index"]),
        t_ns=np.asarray(cols["t_ns"]),
        trigger_mask=np.asarray(cols["trigger_mask"]),
        missing_groups=np.asarray(cols["missing_groups"]),
        sums=np.concatenate([s for _, s in recos], axis=1),
        energy=energy,
        amplitude=np.concatenate([r.amplitude for r, _ in recos]),
        peak_time=np.concatenate([r.peak_time for r, _ in recos]),
        pileup=np.concatenate([r.pileup for r, _ in recos]),
        waveforms=assembled,
        prim_amp=np.ascontiguousarray(prim["amp"]),
        **EventBatch.without_fit(prim["amp"].shape[1], prim["amp"].shape[0]),
    )
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        header = SpillHeader(
            run=run,
            spill=spill,
            t_start_ns=0,
            config={},
            trigger={},
            calibration_id="nominal",
            frontend_info="{}",
            prim_channels=np.asarray(prim["channels"]),
            n_samples=n_samples,
            sample_period_ns=detector.SAMPLE_PERIOD_NS,
        )

        block = []

        def write() -> None:
            w = SpillWriter(tmp, header, WriterConfig(fsync=False), *block)
            block[:] = [w.block]
            for i in range(0, n_events, 4096):
                w.append(batch.take(slice(i, i + 4096)))
            w.close(SpillFinal())

        timed("writer: compress + write (default codec)", write, out)
    total = sum(out.values())
    print(f"{args.file.name}: {n_events} events, {wf.nbytes / 1e6:.0f} MB of raw waveforms")
    for label, sec in out.items():
        print(f"  {sec:6.3f} CPU s  {label}")
    cores = os.cpu_count() or 1
    print(f"  {total:6.3f} CPU s  floor per spill (no DQM, no trigger, no per-message cost)")
    print(
        f"ceiling with perfect overlap on {cores} cores: {period / (total / cores):.1f} x real time "
        f"(spill period {period} s; 20x needs <= {period / 20 * cores:.2f} CPU s per spill for everything)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
