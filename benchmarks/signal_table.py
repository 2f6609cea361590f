"""Z' signal figures of the simulator: expected yields per model and mass, and the trigger efficiency.

    python benchmarks/signal_table.py [--coupling 1e-4] [--per-point 3000] [--masses 1,16.7,100,250,300]

1. yields: Z' per electron on target above ``signal.min_energy_gev`` (bremsstrahlung + resonant), the
   resonant share, BR(invisible) and the share with missing energy (invisible decay or decay beyond the
   HCAL), and the model ratios at equal coupling;
2. trigger efficiency: the real trigger (``daq.trigger.Trigger`` with the DAQ's default thresholds and
   nominal constants, as ``na64 daq`` starts) applied to the simulator's SLICE messages of a beam with the
   signal injected (boosted to ~3% of the electrons); per model and mass, the share of the Z' with missing
   energy that fire the physics trigger (S_trig x S_PRS x S_EC, before dead time: the boosted beam triggers
   far more often than a real one, so its dead time says nothing), of them with E_Z' > 50 GeV (the signal
   box E_ECAL < 50 GeV), and each condition.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daq import trigger  # noqa: E402
from daq.config import from_dict  # noqa: E402
from simulator import zprime  # noqa: E402
from simulator.config import SimConfig  # noqa: E402
from simulator.frontend import FrontEnd  # noqa: E402
from simulator.particles import Process  # noqa: E402
from simulator.zprime_signal import for_config  # noqa: E402


def signal_config(model: str, mass: float, g: float, boost: float = 1.0, seed: int = 3) -> SimConfig:
    sig = {"enabled": True, "model": model, "mass_mev": mass, "coupling": g, "boost": boost}
    return from_dict(SimConfig, {"signal": sig, "seed": seed})


def yields(masses: list[float], g: float) -> None:
    print(f"yields per electron on target, g = {g:g}, Z' above 10 GeV (bremsstrahlung IWW + resonant):")
    print(f"  {'model':12s} {'m/MeV':>7s} {'produced':>10s} {'resonant':>9s} {'BR_inv':>7s} {'missing':>10s}")
    for model in zprime.CHARGES:
        for m in masses:
            s = for_config(signal_config(model, m, g))
            print(
                f"  {model:12s} {m:7g} {s.produced_per_eot:10.3e} {s.resonant_share:9.3f} {s.br_invisible:7.3f} "
                f"{s.produced_per_eot * s.missing_fraction:10.3e}"
            )
    for m in (0.5, 100.0):
        bl, b3 = for_config(signal_config("B-L", m, g)), for_config(signal_config("B-3L_e", m, g))
        inv = (b3.produced_per_eot * b3.br_invisible) / (bl.produced_per_eot * bl.br_invisible)
        print(
            f"  B-3L_e / B-L at {m:g} MeV: produced {b3.produced_per_eot / bl.produced_per_eot:.3f}, invisible {inv:.3f}"
        )
    lo, hi = (for_config(signal_config("B-L", 16.7, c)).produced_per_eot for c in (1e-3, 3e-3))
    print(f"  g 3e-3 / 1e-3 (B-L, 16.7 MeV): {hi / lo:.4f}")


def efficiency(model: str, mass: float, g: float, n_target: int, max_slices: int = 200) -> dict[str, float]:
    """Trigger decisions for the Z' of a boosted beam (3% of the electrons make one)."""
    physical = for_config(signal_config(model, mass, g)).produced_per_eot
    fe = FrontEnd(signal_config(model, mass, g, boost=0.03 / physical))
    fe.begin_spill(1, 0)
    trig = trigger.Trigger(prim_channels=fe.prim_channels)
    cols: list[np.ndarray] = []
    n = 0
    for i in range(min(max_slices, fe.n_slices)):
        fe.prepare(1, i)
        msg = fe.slice_message(1, i)
        d = trig.evaluate(trigger.Batch.from_slice(msg))
        b = fe.buffer.pop((1, i)).batch
        zp = b.zprime
        if zp is None:
            continue
        idx = zp.index
        miss = b.process[idx] != Process.SIGNAL_VISIBLE
        cols.append(
            np.stack(
                [
                    miss,
                    d.physics[idx],
                    d.accept[idx],
                    d.strig[idx],
                    d.s_prs[idx],
                    d.s_ec[idx],
                    zp.energy_gev > 50,
                ],
                axis=1,
            )
        )
        n += int(miss.sum())
        if n >= n_target:
            break
    a = np.concatenate(cols).astype(bool)
    m = a[a[:, 0]]
    box = m[m[:, 5]]

    def share(x: np.ndarray, col: int) -> float:
        return float(x[:, col].mean()) if len(x) else float("nan")

    return {
        "n": len(m),
        "phys": share(m, 1),
        "strig": share(m, 2),
        "s_prs": share(m, 3),
        "s_ec": share(m, 4),
        "n_box": len(box),
        "phys_box": share(box, 1),
        "s_prs_box": share(box, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coupling", type=float, default=1e-4)
    ap.add_argument("--per-point", type=int, default=3000, help="Z' with missing energy per model and mass")
    ap.add_argument("--masses", default="1,16.7,100,250,300")
    ap.add_argument("--skip-efficiency", action="store_true")
    args = ap.parse_args()
    masses = [float(v) for v in args.masses.split(",")]
    yields(masses, args.coupling)
    if args.skip_efficiency:
        return
    print(
        "trigger efficiency of Z' with missing energy (daq.trigger, default thresholds, nominal constants); "
        "binomial errors ~ sqrt(p(1-p)/n):"
    )
    print(
        f"  {'model':12s} {'m/MeV':>7s} {'n':>6s} {'S_phys':>7s} {'S_trig':>7s} {'S_PRS':>6s} "
        f"{'S_EC':>6s} | {'n(E>50)':>7s} {'S_phys':>7s} {'S_PRS':>6s}"
    )
    t0 = time.process_time()
    for model in zprime.CHARGES:
        for m in masses:
            r = efficiency(model, m, args.coupling, args.per_point)
            print(
                f"  {model:12s} {m:7g} {r['n']:6d} {r['phys']:7.3f} {r['strig']:7.3f} "
                f"{r['s_prs']:6.3f} {r['s_ec']:6.3f} | {r['n_box']:7d} {r['phys_box']:7.3f} {r['s_prs_box']:6.3f}"
            )
    print(f"  ({time.process_time() - t0:.1f} CPU s)")


if __name__ == "__main__":
    main()
