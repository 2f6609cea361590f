"""Calibration closure: a simulated calibration campaign calibrated through the documented CLI alone, compared
channel by channel with the simulator's truth. Prints the per-group table (RMS, max, pull RMS).

    OMP_NUM_THREADS=1 python benchmarks/calibration_closure.py --seed 7 --work /tmp/closure7

Takes the campaign's two scan runs (``tests/calibration/campaign.py``: ``na64 simulate`` -> ``na64 daq``
processes; every particle aimed at a random ECAL cell, 45% muons through every HCAL cell, 2e5 Hz, 3 spills
of 0.2 s each), unless ``--work`` already holds them, then runs exactly the commands of
docs/calibration.md (``na64 calibrate pedestals``, ``gains``, ``mip``, ``timing``) as separate processes
and compares the final constants with the truth file. Nothing of the simulator is used but its truth file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.calibration import campaign  # noqa: E402
from tests.calibration.closure import calibrate_cli_only, group_table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=campaign.SEED, help="detector seed of the simulator")
    p.add_argument("--work", type=Path, required=True, help="directory for the runs and the constants")
    p.add_argument("--json", type=Path, help="also write the table as JSON")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = take_scan(args.work, args.seed)
    t0 = time.monotonic()
    out = calibrate_cli_only([r.data for r in runs], args.work / "cal")
    seconds = time.monotonic() - t0
    truth = campaign.same_detector(runs)
    table = group_table(out.constants, truth)
    print(f"seed {args.seed}: constants {out.path} ({seconds:.0f} s of calibration through the CLI)")
    print(f"{'group':9s} {'quantity':15s} {'n':>3s} {'RMS':>8s} {'max':>8s} {'mean':>8s} {'pull RMS':>8s}")
    for row in table:
        print(
            f"{row['group']:9s} {row['quantity']:15s} {row['n']:3d} {row['rms']:8.4f} {row['max']:8.4f} "
            f"{row['mean']:+8.4f} {row['pull_rms']:8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "table": table}, indent=1) + "\n")
    return 0


def take_scan(work: Path, seed: int) -> list[campaign.Run]:
    """The two scan runs of the campaign (reused when ``work`` already has them)."""
    names = ("scanA", "scanB")
    runs = [
        campaign.Run(work / n / "data", work / n / "truth.h5", 0.0)
        for n in names
        if (work / n / "truth.h5").exists()
    ]
    if len(runs) == len(names):
        return runs
    procs: list[subprocess.Popen[bytes]] = []
    try:
        got = campaign.take_runs(work, campaign.scan_specs(seed, names), procs, parallel=1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [got[n] for n in names]


if __name__ == "__main__":
    raise SystemExit(main())
