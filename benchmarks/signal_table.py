"""Z' signal figures of the simulator: expected yields per model and mass, and the trigger efficiency.

    python benchmarks/signal_table.py [--coupling 1e-4] [--per-point 3000] [--masses 1,16.7,100,250,300]
    python benchmarks/signal_table.py --through-daq B-L:250:1e-4 [--spill-length 2]

1. yields: Z' per electron on target above ``signal.min_energy_gev`` (bremsstrahlung + resonant), the
   resonant share, BR(invisible) and the share with missing energy (invisible decay or decay beyond the
   HCAL), and the model ratios at equal coupling;
2. trigger efficiency: the real trigger (``daq.trigger.Trigger`` with the DAQ's default thresholds and
   nominal constants, as ``na64 daq`` starts) applied to the simulator's SLICE messages of a beam with the
   signal injected (boosted to ~3% of the electrons); per model and mass, the share of the Z' with missing
   energy that fire the physics trigger (S_trig x S_PRS x S_EC, before dead time: the boosted beam triggers
   far more often than a real one, so its dead time says nothing), of them with E_Z' > 50 GeV (the signal
   box E_ECAL < 50 GeV), and each condition;
3. ``--through-daq MODEL:MASS:G``: the same through real processes, ``na64 simulate --signal ... --truth``
   against ``na64 daq`` (one spill at 2 MHz, ~5e-4 Z' per electron): the Z' of the truth file's /zprime/
   rows matched by time with the spill file's PHYSICS events, over all of them and those above 50 GeV;
   this one includes the DAQ's dead time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daq import trigger  # noqa: E402
from daq.config_loader import from_dict  # noqa: E402
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


def through_daq(signal: str, spill_length: float) -> None:
    from daq import files
    from daq.demo import free_port
    from simulator.truth import read_truth

    model, mass, g = signal.split(":")
    physical = for_config(signal_config(model, float(mass), float(g))).produced_per_eot
    boost = 5e-4 / physical
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ep = free_port()
        log = (d / "daq.log").open("w")
        cmd = [sys.executable, "-m", "daq"]
        daq = subprocess.Popen(
            [*cmd, "daq", "--endpoint", f"tcp://127.0.0.1:{ep}", "--data-dir", str(d), "--stop-after-run"],
            stderr=log,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while b"DAQ listening" not in (d / "daq.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        sim = subprocess.run(
            [
                *cmd,
                "simulate",
                "--endpoint",
                f"tcp://127.0.0.1:{ep}",
                "--spills",
                "1",
                "--spill-length",
                str(spill_length),
                "--rate",
                "2e6",
                "--pace",
                "realtime",
                "--seed",
                "5",
                "--signal",
                signal,
                "--signal-boost",
                f"{boost:.6g}",
                "--truth",
                str(d / "truth.h5"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        daq.wait(120)
        log.close()
        if sim.returncode != 0 or daq.returncode != 0:
            raise SystemExit(f"run failed: {sim.stderr[-2000:]} {(d / 'daq.log').read_text()[-2000:]}")
        truth = read_truth(d / "truth.h5")
        (path,) = files.list_spill_files([d])
        with files.SpillFile(path) as f:
            ev = f.events(["t_ns", "trigger_mask"])
            losses = f.losses
    made = truth["zprime"]  # every Z' made, read out or not
    missing = (made["process"] == Process.SIGNAL_BREMS) | (made["process"] == Process.SIGNAL_RESONANT)
    phys_t = ev["t_ns"][(ev["trigger_mask"] & trigger.PHYSICS) != 0]
    read = np.isin(made["t_ns"], phys_t)
    info = json.loads(truth["attrs"]["signal"])
    expected = info["missing_per_eot"] * boost * truth["spills"]["n_particles"].sum()
    print(
        f"through na64 daq ({signal}, boost {boost:.3g}, {spill_length:g} s spill at 2 MHz; dead time "
        f"included, it lost {losses.get('dead_time', 0)} triggers): {int(missing.sum())} Z' with missing "
        f"energy made (expected {expected:.0f})"
    )
    for label, sel in (("all", missing), ("E_Z' > 50 GeV", missing & (made["zp_energy_gev"] > 50))):
        k, n = int(read[sel].sum()), int(sel.sum())
        eff = k / n
        print(
            f"  {label}: {k} of {n} read out by PHYSICS triggers -> {eff:.3f} +- {np.sqrt(eff * (1 - eff) / n):.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coupling", type=float, default=1e-4)
    ap.add_argument("--per-point", type=int, default=3000, help="Z' with missing energy per model and mass")
    ap.add_argument("--masses", default="1,16.7,100,250,300")
    ap.add_argument("--skip-efficiency", action="store_true")
    ap.add_argument("--through-daq", default=None, metavar="MODEL:MASS_MEV:COUPLING")
    ap.add_argument("--spill-length", type=float, default=2.0)
    args = ap.parse_args()
    if args.through_daq:
        through_daq(args.through_daq, args.spill_length)
        return
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
