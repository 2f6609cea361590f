"""The trigger alone: particles per second on one core (target >= 100 M/s, 50x the 2 MHz beam).

Batches are structure-of-arrays primitives like the SLICE messages (29 rows: 5 counters, 12 ECAL and 12
PRS block cells, uint16) with a realistic mix: ~97% 100 GeV electrons (ECAL block ~95 GeV, above the
80 GeV S_EC threshold), ~0.3% with low ECAL energy (physics candidates), 10% vetoed. ``evaluate`` is the
full trigger (conditions, prescale 1/2000, 100 Hz random clock, 5 us dead time); ``conditions`` only the
per-particle bits and block energies. Figures are CPU time of this process.

"hot": a pool of 8 slices (~10 MB) cycled, as a slice just received from ZeroMQ sits in the cache;
"cold": a pool of 4e6 particles (~240 MB), read from main memory every time.
"nominal" gains take the integer path (equal gains in a block); "calibrated" (per-cell gains) the float one.

    python benchmarks/bench_trigger.py
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from calibration.constants import nominal
from daq import detector
from daq.process import tune_malloc
from daq.trigger import PrimitiveBatch, Trigger, TriggerConfig, make_batch


def slices(n_slices: int, n: int, rng: np.random.Generator) -> list[PrimitiveBatch]:
    total = n_slices * n
    e = rng.normal(95.0, 3.0, total)
    low = rng.random(total) < 0.003
    e[low] = rng.uniform(5, 79, low.sum())
    big = make_batch(
        counters={"V1": np.where(rng.random(total) < 0.1, 1500, 0)},
        ecal_block_gev=0.8 * e,
        ecal_cells_gev={(1, 3): 0.1 * e, (3, 3): 0.1 * e},
        prs_block_gev=np.clip(rng.normal(4, 1, total), 0, None),
        t_ns=np.arange(total, dtype=np.int64) * 500,  # 2 MHz
    )
    out = []
    for k in range(n_slices):
        lo = k * n
        out.append(
            PrimitiveBatch(
                t_ns=big.t_ns[lo : lo + n].copy(),
                amp=np.ascontiguousarray(big.amp[:, lo : lo + n]),
                t0_ns=lo * 500,
                length_ns=n * 500,
                slice_id=k,
            )
        )
    return out


def measure(trig: Trigger, pool: list[PrimitiveBatch], seconds: float, full: bool) -> float:
    n = 0
    trig.new_spill()
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        for b in pool:
            if full:
                trig.evaluate(b)
            else:
                trig.conditions(b.amp)
            n += b.n
        trig.new_spill()
    return n / (time.process_time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.5, help="CPU seconds per figure")
    args = ap.parse_args()
    tune_malloc()  # as in the DAQ service
    rng = np.random.default_rng(7)
    gains = detector.nominal_gains() * rng.normal(1.0, 0.1, detector.N_CHANNELS)
    calibrated = nominal().replace(gain=gains, version="bench-calibrated")
    cfg = TriggerConfig()
    print("particles/s (CPU time, one core); slice = particles per SLICE message")
    print(f"{'slice':>7} {'pool':>5} {'gains':>10} {'evaluate':>12} {'conditions':>12}")
    best = 0.0
    for n in (20_000, 40_000):
        hot = slices(8, n, rng)
        cold = slices(max(8, 4_000_000 // n), n, rng)
        for name, pool in (("hot", hot), ("cold", cold)):
            for gname, const in (("nominal", None), ("calibrated", calibrated)):
                trig = Trigger(cfg, const)
                full = measure(trig, pool, args.seconds, True)
                cond = measure(trig, pool, args.seconds, False)
                if gname == "nominal" and name == "hot":
                    best = max(best, full)
                print(f"{n:>7} {name:>5} {gname:>10} {full / 1e6:>10.0f} M {cond / 1e6:>10.0f} M", flush=True)
    d = Trigger(cfg).evaluate(slices(1, 2_000_000, rng)[0])
    c = d.counts
    print(
        f"\n2e6 particles (1 s of beam): S_trig {c['n_strig']}, physics {c['triggers_physics']}, "
        f"beam {c['triggers_beam']}, random {c['triggers_random']}, dead-time lost {c['dead_time_lost']}"
    )
    print(
        f"target >= 100 M/s (evaluate, nominal, hot): {'met' if best >= 100e6 else 'MISSED'} ({best / 1e6:.0f} M/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
