"""Speed of the calibration fits on synthetic data (prints its figures).

    python benchmarks/bench_calibration.py [--windows 4000] [--electrons 12000]

- pedestals: random-trigger windows (110 channels x 32 samples, 2 MHz pile-up) per second through the
  pulse finder and accumulator;
- ECAL/PRS least squares: seconds for a 60-cell fit over N electrons (5 selection iterations x 2 passes);
- Moyal fit: fits per second of a 2000-entry MIP peak;
- monitoring: spill_monitor on 500 beam triggers + 500 random windows;
- the DAQ's amplitude estimator (``daq.waveform.reconstruct``, 110 channels x 32 samples) per event with
  amplitude_method max / parabola / template (the default), and the gains step's fixed-time fit of the
  60 calorimeter cells per event.

Times are CPU times (time.process_time, robust to other processes sharing the cores); run it with
``flock /tmp/na64-bench.lock`` so benchmarks do not overlap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration import constants, monitoring
from calibration.calibrate_cli import fixed_time_signals
from calibration.fitting import fit_moyal, sample_moyal
from calibration.gains import shower_gains
from calibration.pedestals import pedestals
from daq import detector, waveform
from tests.calibration import synth


def best_of(func, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        func()
        times.append(time.process_time() - t0)
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

    n_ev = 2000
    amp = rng.uniform(0.0, 300.0, (n_ev, detector.N_CHANNELS))
    wf = waveform.synthesize(amp, rng.uniform(118.0, 132.0, (n_ev, 1)), noise=1.5, rng=rng)
    gains, noise = detector.nominal_gains(), np.full(detector.N_CHANNELS, 1.5)
    for method in waveform.AMPLITUDE_METHODS[::-1]:
        cfg = waveform.RecoConfig(amplitude_method=method)
        t = best_of(lambda cfg=cfg: waveform.reconstruct(wf, gains, noise=noise, config=cfg), 5)
        print(f"daq.waveform.reconstruct ({method}): {t / n_ev * 1e6:.1f} us CPU per event (110 channels)")
    calo = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])
    centre = detector.ECAL_IDS[np.argmax(amp[:, detector.ECAL_IDS], axis=1)]
    reco = waveform.RecoConfig()
    t = best_of(lambda: fixed_time_signals(wf, amp, calo, centre, reco))
    print(f"gains step, fixed-time fit of the 60 calorimeter cells: {t / n_ev * 1e6:.1f} us CPU per event")


if __name__ == "__main__":
    main()
