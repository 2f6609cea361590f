"""Waveform reconstruction alone: microseconds per event (110 channels x 32 samples), CPU time, one core.

Events are built like the DAQ sees them: an electron shower in the ECAL/PRS block, a few HCAL, SRD and
counter pulses, noise in every channel, at random sub-sample phases, in batches of one slice's readout
(~50-100 events at 2 MHz). Prints the full ``daq.waveform.reconstruct`` (per-channel constants + one
compiled pass), the compiled pass alone, its plain-numpy reference (``reconstruct_numpy``), the event
sums, and the CPU needed for 5 kHz and 20 kHz of events (the live trigger rate and a fast replay).
Times are CPU seconds of this process (``time.process_time``), so they hold while other processes run.

    python benchmarks/bench_reco.py --batch 100
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from daq.reco_kernel import reconstruct_rows, warm_up

from daq import detector
from daq.waveform import RecoConfig, _row_params, event_sums, reconstruct, reconstruct_numpy, synthesize


def events(n: int, rng: np.random.Generator) -> np.ndarray:
    amp = np.zeros((n, detector.N_CHANNELS))
    amp[:, detector.ECAL_IDS] = rng.exponential(300, (n, 30)) * (rng.random((n, 30)) < 0.4)
    amp[:, detector.PRS_IDS] = rng.exponential(100, (n, 30)) * (rng.random((n, 30)) < 0.4)
    amp[:, detector.HCAL_IDS] = rng.exponential(50, (n, 36)) * (rng.random((n, 36)) < 0.1)
    amp[:, detector.SRD_IDS] = rng.uniform(50, 500, (n, 3))
    amp[:, detector.counter_id("S0")] = rng.uniform(500, 1500, n)
    peak = rng.uniform(110, 135, (n, detector.N_CHANNELS))
    return synthesize(amp, peak_ns=peak, noise=1.5, rng=rng)


def cpu_per_call(fns: list, seconds: float, repeats: int = 10) -> list[float]:
    """CPU seconds per call of each function: the best of ``repeats`` runs of ``seconds / repeats`` each,
    the functions' runs interleaved (the best run is the one least disturbed by other processes sharing
    the cores and caches; interleaving exposes every function to the same disturbances)."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            n, t0 = 0, time.process_time()
            while time.process_time() - t0 < seconds / repeats:
                fn()
                n += 1
            best[i] = min(best[i], (time.process_time() - t0) / n)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=50, help="events per call (one slice's readout)")
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measured function")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    pool = [events(args.batch, rng) for _ in range(8)]
    gain = detector.nominal_gains()
    noise = np.full(detector.N_CHANNELS, 1.5)
    cfg = RecoConfig()
    t0 = time.perf_counter()
    warm_up()
    print(f"kernel ready (compiled or loaded from numba's cache) in {time.perf_counter() - t0:.2f} s")
    params = _row_params(cfg, detector.N_CHANNELS, detector.N_SAMPLES, gain, noise, None, None, 12.5, None)
    energy = reconstruct(pool[0], gain, noise, config=cfg).energy
    k = iter(range(1 << 62))

    def batch() -> np.ndarray:
        return pool[next(k) % len(pool)]

    rows = [
        ("reconstruct (full)", lambda: reconstruct(batch(), gain, noise, config=cfg)),
        ("compiled pass alone", lambda: reconstruct_rows(batch().reshape(-1, detector.N_SAMPLES), params)),
        ("reconstruct, numpy", lambda: reconstruct_numpy(batch(), gain, noise, config=cfg)),
        ("event_sums", lambda: event_sums(energy, cfg.beam_energy_gev)),
    ]
    print(f"{args.batch} events per call, CPU time of this process (best of 10 interleaved runs)")
    print(f"{'':<24} {'us/event':>9} {'CPU at 5 kHz':>13} {'CPU at 20 kHz':>14}")
    for (name, _), t in zip(rows, cpu_per_call([fn for _, fn in rows], args.seconds), strict=True):
        us = t / args.batch * 1e6
        print(f"{name:<24} {us:>9.2f} {us * 5e3 / 1e6:>12.1%} {us * 20e3 / 1e6:>13.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
