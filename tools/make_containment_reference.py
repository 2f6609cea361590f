"""Make the ECAL shower-containment reference shipped with the detector model (only on purpose).

    python tools/make_containment_reference.py                       # writes calibration/reference/...
    python tools/make_containment_reference.py --out /tmp/c.json --set beam.spot_sigma_mm=[8,8]

For electrons of a calibration scan (every particle aimed at a random one of the 30 ECAL cells, the
simulator's nominal geometry, shower model and beam spot), grouped by their most energetic ECAL cell (the
*shower-centre cell*, as ``na64 calibrate gains`` groups them): the peak (Gaussian core, +-2 sigma) of the
electron's deposit in the 30 ECAL + 30 PRS cells / the beam energy, the same estimator with which the gains
fit puts the calibrated sum at its target (the rest of the shower leaks off the face; an edge cell's
leakage varies with the impact point, so its peak sits ~0.5% above the mean share, which is recorded too).
Computed from the simulator's own deposits (``simulator.physics.BeamModel.deposits``): it is geometry (cell
pitch, face size, lateral profiles of the ECAL and PRS parts, the PRS share) convolved with the beam spot
and the energy resolution. It does not depend on gains, pedestals, noise or the reconstruction, nor on
the beam energy (the model's profiles have no energy dependence) beyond the resolution's small effect on
the peak.

The file records what it depends on (the geometry, which ``calibration.containment`` checks at load
against ``daq.detector``, and the simulator settings used), how it was made (this command, git hash,
seed, statistics) and the statistical error of every cell. Bump ``--version`` when the model changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration import containment  # noqa: E402
from calibration.fitting import gaussian_core  # noqa: E402
from daq import (  # noqa: E402
    __version__,
    config_loader,
    detector,
)
from simulator import config as sim_config  # noqa: E402
from simulator import physics  # noqa: E402
from simulator.randoms import particle_keys  # noqa: E402

CALO_IDS = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])
#: the containment is the peak (Gaussian core, +-2 sigma) of deposit / beam energy, the estimator with which
#: ``calibrate gains`` sets the scale of the calibrated sum
CORE_SIGMAS = 2.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=containment.DEFAULT_REFERENCE, help="file to write")
    p.add_argument("--version", default="ecal-containment-v1", help="version id of the reference")
    p.add_argument("--electrons", type=int, default=600_000, help="electrons in the scan (all cells)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="simulator setting, e.g. beam.spot_sigma_mm=[8,8] (default: the simulator's nominal model)",
    )
    args = p.parse_args()
    overrides = dict(config_loader.parse_assignment(a) for a in args.overrides)
    overrides |= {
        "beam.scan_cells": [[x, y] for y in range(detector.ECAL_NY) for x in range(detector.ECAL_NX)],
        "beam.scan_mode": "particle",
    }
    cfg = sim_config.load(overrides=overrides)
    ratio, share, centre = scan(cfg, args.electrons, args.seed)
    cells: dict[str, dict[str, float | int]] = {}
    for i, ch in enumerate(detector.ECAL_IDS):
        core = gaussian_core(ratio[centre == i], k=CORE_SIGMAS)
        s = share[centre == i]
        cells[detector.channel_name(int(ch))] = {
            "containment": round(core.position, 6),
            "error": round(core.error, 7),
            "mean": round(float(s.mean()), 6),
            "median": round(float(np.median(s)), 6),
            "n": int(s.size),
        }
    doc = {
        "format": containment.FORMAT,
        "format_version": containment.FORMAT_VERSION,
        "version": args.version,
        "quantity": "peak (Gaussian core, +-2 sigma) of an electron's deposit in the 30 ECAL + 30 PRS cells / "
        "the beam energy, per shower-centre cell (most energetic ECAL cell), for a calibration scan aiming "
        "every particle at a random cell; also the mean and median of the share of its own shower",
        "geometry": containment.geometry(),
        "depends_on": {
            "ecal": {
                k: v
                for k, v in dataclasses.asdict(cfg.ecal).items()
                if k.startswith(("core", "halo", "prs_core", "prs_halo", "prs_fraction", "template"))
            },
            "beam": {
                k: getattr(cfg.beam, k)
                for k in ("spot_sigma_mm", "spot_offset_mm", "halo_fraction", "halo_sigma_mm", "scan_mode")
            },
            "simulator_overrides": {k: v for k, v in overrides.items() if not k.startswith("beam.scan")},
        },
        "provenance": {
            "script": "tools/make_containment_reference.py",
            "command": " ".join(["python", "tools/make_containment_reference.py", *sys.argv[1:]]),
            "software_version": __version__,
            "git_hash": _git_hash(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "electrons": int(centre.size),
            "seed": args.seed,
        },
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    ref = containment.load_reference(args.out)  # the file reads back and validates
    grid = ref.containment.reshape(detector.ECAL_NY, detector.ECAL_NX)
    print(f"{args.out}: {ref.version}, {centre.size} electrons")
    for y in reversed(range(detector.ECAL_NY)):
        print("  " + " ".join(f"{v:.4f}" for v in grid[y]))
    return 0


def scan(cfg: sim_config.SimConfig, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ordinary electron: (deposit in the 60 cells / nominal beam energy, share of its own shower in
    the 60 cells, shower-centre cell index 0..29)."""
    model = physics.model_for(cfg)
    rng = np.random.default_rng(seed)
    ratios, shares, centres = [], [], []
    done = 0
    while done < n:
        batch = physics.generate(min(100_000, n - done), rng, cfg)
        keep = np.flatnonzero(
            (batch.kind == physics.Kind.ELECTRON) & (batch.process == physics.Process.ELECTRON)
        )
        electrons = batch.take(keep)
        keys = particle_keys(1, 1, done, np.arange(len(electrons), dtype=np.uint64))
        dep = model.deposits(electrons, keys)[:, CALO_IDS].astype(np.float64)
        shower_mev = 1000.0 * (electrons.e_ecal.astype(np.float64) + electrons.e_prs)
        ok = shower_mev > 0
        ratios.append(dep[ok].sum(axis=1) / (1000.0 * cfg.beam.energy_gev))
        shares.append(dep[ok].sum(axis=1) / shower_mev[ok])
        centres.append(np.argmax(dep[ok, : detector.ECAL_IDS.size], axis=1))
        done += batch.kind.size
    return np.concatenate(ratios), np.concatenate(shares), np.concatenate(centres)


def _git_hash() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
