"""Speed of the calibration fits on synthetic data (prints its figures).

    python benchmarks/bench_calibration.py [--windows 4000] [--electrons 12000]

- pedestals: random-trigger windows (110 channels x 32 samples, 2 MHz pile-up) per second through the
  pulse finder and accumulator;
- ECAL/PRS least squares: seconds for a 60-cell fit over N electrons (5 selection iterations x 2 passes);
- Moyal fit: fits per second of a 2000-entry MIP peak;
- monitoring: spill_monitor on 500 beam triggers + 500 random windows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration import constants, monitoring
from calibration.fitting import fit_moyal, sample_moyal
from calibration.gains import shower_gains
from calibration.pedestals import pedestals
from daq import detector
from tests.calibration import synth


def best_of(func, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=4000)
    ap.add_argument("--electrons", type=int, default=12000)
    args = ap.parse_args()
    truth = synth.make_truth(1)
    rng = np.random.default_rng(1)

    w = synth.random_windows(rng, truth, args.windows)
    t = best_of(lambda: pedestals(w))
    print(
        f"pedestals: {args.windows} windows in {t:.2f} s = {args.windows / t:,.0f} windows/s "
        f"({args.windows * detector.N_CHANNELS * detector.N_SAMPLES / t / 1e6:.1f} M samples/s)"
    )

    per_cell = max(args.electrons // 30, 10)
    amps, targets = [], []
    for y in range(detector.ECAL_NY):
        for x in range(detector.ECAL_NX):
            a, _ = synth.electron_showers(rng, truth, per_cell, (x, y))
            amps.append(a)
            targets.append(np.full(per_cell, 1e5 * synth.containment((x, y))))
    amp, target = np.concatenate(amps), np.concatenate(targets)
    prior = detector.nominal_gains()[synth.CALO_IDS]
    t = best_of(lambda: shower_gains(amp, target, prior))
    print(f"ECAL/PRS least squares: {amp.shape[0]} electrons, 60 cells in {t:.3f} s")

    x = sample_moyal(rng, 150.0, 22.5, 2000)
    n = 50
    t = best_of(lambda: [fit_moyal(x) for _ in range(n)], 1)
    print(f"Moyal fit: {n / t:.0f} fits/s (2000 entries each)")

    calo = rng.normal(99.0, 4.5, 1000)
    mask = np.where(np.arange(1000) < 500, monitoring.BEAM_BIT, monitoring.RANDOM_BIT).astype(np.uint32)
    t = best_of(lambda: monitoring.spill_monitor(mask, calo, None, w[:500], constants.nominal()))
    print(f"spill_monitor: 500 beam triggers + 500 random windows in {t * 1000:.0f} ms")


if __name__ == "__main__":
    main()
