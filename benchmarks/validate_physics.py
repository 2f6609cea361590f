"""Physics validation of the reconstruction against the simulator's truth, at several beam rates.

For every rate: ``na64 daq`` and ``na64 simulate --pace max --truth`` as separate processes over real
sockets (the same programs a user runs), then the spill files are read back through ``daq.files`` and
matched event by event to the truth of the read-out particles (spill, slice, index). Prints, per rate:

- ``res68``: half the central 68% interval of E_ECAL (ECAL + PRS) over its median, for beam-trigger
  electrons with an ordinary shower (truth), and the same of the true deposits;
- ``blk>85``: PHYSICS events whose stored 3x4-block ECAL energy is above 85 GeV (their trigger said
  < 80 GeV);
- ``|blk-trg|>5``: PHYSICS events whose stored block energy differs from the trigger's (the primitives)
  by more than 5 GeV;
- ``90<E<110``: beam-trigger electrons with 90 < E_ECAL + E_HCAL < 110 GeV;
- ``box leak``: Standard-Model electrons (no Z') with a true ECAL + PRS deposit > 60 GeV stored in the
  signal box E_ECAL < 50 GeV, E_HCAL < 1 GeV, and the EOT they come from;
- ``signal``: injected Z' events (truth) whose stored E_ECAL is within 5 GeV of E0 - E_Z'.

Optional: ``--plot FILE.png`` or ``FILE.html`` (the figures vs rate, drawn with Bokeh; the PNG is the page
rendered by headless Chromium through playwright, both in the test extra), ``--json FILE``.

    python benchmarks/validate_physics.py                                   # 0.2, 1, 2, 4 MHz, 4e6 EOT each
    python benchmarks/validate_physics.py --rates 2e6 --eot 5e5             # a quick look
    python benchmarks/validate_physics.py --constants truth                 # constants = the detector truth
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from daq import detector
from daq.demo import free_port
from daq.files import SpillFile, list_spill_files
from daq.trigger import BEAM, PHYSICS
from simulator.particles import Kind, Process
from simulator.truth import read_truth

BLOCK_ECAL = np.array([detector.ecal_id(x, y) for x, y in detector.block_cells(detector.BEAM_CELL)])
SIGNAL = (int(Process.SIGNAL_BREMS), int(Process.SIGNAL_RESONANT))


def run_chain(rate: float, eot: float, args: argparse.Namespace, work: Path) -> tuple[Path, Path, float]:
    """Record ~eot electrons at ``rate``; returns (data dir, truth file, wall seconds)."""
    spills = max(1, math.ceil(eot / (rate * args.spill_length * 0.97)))
    data, truth = work / "data", work / "truth.h5"
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    py = [sys.executable, "-m", "daq"]
    daq_cmd = [*py, "daq", "--endpoint", endpoint, "--publish", publish, "--data-dir", str(data)]
    daq_cmd += ["--stop-after-run", *args.daq_arg]
    if args.constants == "truth":
        daq_cmd += ["--calibration", str(work / "truth-constants.json")]
    sim_cmd = [*py, "simulate", "--endpoint", endpoint, "--rate", str(rate), "--spills", str(spills)]
    sim_cmd += ["--spill-length", str(args.spill_length), "--spill-period", str(args.spill_length + 0.2)]
    sim_cmd += ["--pace", "max", "--seed", str(args.seed), "--truth", str(truth)]
    if args.signal:
        sim_cmd += ["--signal", args.signal, "--signal-boost", f"{signal_boost(args):.6g}"]
    if args.constants == "truth":
        write_truth_constants(args.seed, work / "truth-constants.json")
    t0 = time.monotonic()
    with open(work / "daq.log", "w") as dl, open(work / "sim.log", "w") as sl:
        daq = subprocess.Popen(daq_cmd, stdout=dl, stderr=subprocess.STDOUT)
        try:
            wait_for(work / "daq.log", b"DAQ listening", daq, 900)  # a cold kernel cache: minutes
            sim = subprocess.run(sim_cmd, stdout=sl, stderr=subprocess.STDOUT, timeout=3600)
            if sim.returncode != 0:
                raise SystemExit(f"na64 simulate failed ({sim.returncode}): see {work / 'sim.log'}")
            if daq.wait(600) != 0:
                raise SystemExit(f"na64 daq failed ({daq.returncode}): see {work / 'daq.log'}")
        finally:
            if daq.poll() is None:
                daq.kill()
    return data, truth, time.monotonic() - t0


def wait_for(log: Path, text: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"na64 daq did not start: see {log}")
        time.sleep(0.1)


def signal_boost(args: argparse.Namespace) -> float:
    """The boost that makes ``--signal-per-eot`` Z' with missing energy per electron on target."""
    from simulator.config import SignalConfig, SimConfig
    from simulator.zprime_signal import for_config

    model, mass, coupling = args.signal.split(":")
    cfg = SimConfig(
        signal=SignalConfig(enabled=True, model=model, mass_mev=float(mass), coupling=float(coupling))
    )
    return args.signal_per_eot / float(for_config(cfg).info()["missing_per_eot"])


def write_truth_constants(seed: int, path: Path) -> None:
    """Calibration constants equal to the simulated detector's truth (isolates the reconstruction from
    the calibration): gains, pedestals, noise and time offsets with tiny errors."""
    from calibration.constants import Constants
    from calibration.constants import save as save_constants
    from simulator.config import SimConfig
    from simulator.electronics import make_electronics
    from simulator.frontend import detector_rng

    cfg = SimConfig(seed=seed)
    el = make_electronics(cfg.electronics, detector_rng(seed), cfg.beam.beam_cell)
    small = {
        q: np.full(detector.N_CHANNELS, 1e-3) for q in ("pedestal_even", "pedestal_odd", "noise", "gain")
    }
    small["time_offset_ns"] = np.full(detector.N_CHANNELS, 0.05)
    c = Constants(
        f"truth-seed{seed}",
        pedestal_even=el.pedestal_even,
        pedestal_odd=el.pedestal_odd,
        noise=el.noise,
        gain=el.gain,
        time_offset_ns=el.time_offset_ns,
        errors=small,
        provenance={"source": "simulator truth", "seed": seed},
    )
    save_constants(c, path)


def measure(data: Path, truth_path: Path, constants: str) -> dict[str, Any]:
    """The figures of one recorded run (see the module docstring)."""
    truth = read_truth(truth_path)
    tp = truth["particles"]
    key_t = (tp["spill"].astype(np.int64) << 40) | (tp["slice"].astype(np.int64) << 20) | tp["index"]
    order = np.argsort(key_t)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("e_ecal", "e_hcal", "mask", "blk", "trg", "ti")}
    eot = 0
    n_spills = 0
    not_ok: list[str] = []  # spills that lost data: their figures would not be the reconstruction's
    gains = detector.nominal_gains() if constants == "nominal" else truth["channels"]["gain"]
    for path in list_spill_files([data]):
        with SpillFile(path) as f:
            n_spills += 1
            eot += int(f.attrs["n_beam"])
            if f.status != "ok":
                lost = {k: v for k, v in f.losses.items() if v and k != "dead_time"}
                not_ok.append(f"spill {f.spill}: {f.status} {lost}")
            ev = f.events(["slice", "index", "trigger_mask", "e_ecal", "e_hcal"])
            energy = f.energy()
            prim = f.primitives()
            key = (
                (np.int64(f.spill) << 40)
                | (ev["slice"].astype(np.int64) << 20)
                | ev["index"].astype(np.int64)
            )
            pos = np.searchsorted(key_t[order], key)
            pos = np.minimum(pos, max(key_t.size - 1, 0))
            found = key_t[order][pos] == key if key_t.size else np.zeros(key.size, bool)
            ti = np.where(found, order[pos], -1)
            rows["ti"].append(ti)
            rows["e_ecal"].append(ev["e_ecal"])
            rows["e_hcal"].append(ev["e_hcal"])
            rows["mask"].append(ev["trigger_mask"])
            rows["blk"].append(energy[:, BLOCK_ECAL].sum(axis=1))
            ch = list(prim["channels"])
            trg_rows = [ch.index(c) for c in BLOCK_ECAL]
            trg = (prim["amp"][trg_rows].astype(np.float64) / (1000.0 * gains[BLOCK_ECAL][:, None])).sum(
                axis=0
            )
            rows["trg"].append(trg)
    if not n_spills:
        raise SystemExit(f"no spill files in {data}")
    r = {k: np.concatenate(v) for k, v in rows.items()}
    has = r["ti"] >= 0
    ti = np.where(has, r["ti"], 0)
    kind, proc = tp["kind"][ti], tp["process"][ti]
    e_true = (tp["e_ecal_gev"] + tp["e_prs_gev"])[ti]
    beam = has & ((r["mask"] & BEAM) != 0) & (kind == int(Kind.ELECTRON)) & (proc == int(Process.ELECTRON))
    phys = (r["mask"] & PHYSICS) != 0
    sm_e = has & (kind == int(Kind.ELECTRON)) & ~np.isin(proc, SIGNAL) & (e_true > 60)
    box = (r["e_ecal"] < 50) & (r["e_hcal"] < 1)
    sig = has & np.isin(proc, SIGNAL)
    e0_minus = (tp["energy_gev"] - tp["e_miss_gev"])[ti]

    def half68(x: np.ndarray) -> float:
        if x.size < 10:
            return float("nan")
        lo, med, hi = np.percentile(x, [16, 50, 84])
        return float((hi - lo) / 2 / med)

    return {
        "not_ok": not_ok,
        "spills": n_spills,
        "eot": eot,
        "events": int(r["mask"].size),
        "n_beam_e": int(beam.sum()),
        "res68": half68(r["e_ecal"][beam]),
        "res68_truth": half68(e_true[beam]),
        "n_physics": int(phys.sum()),
        "blk_gt85": float(np.mean(r["blk"][phys] > 85)) if phys.any() else float("nan"),
        "blk_vs_trigger": float(np.mean(np.abs(r["blk"][phys] - r["trg"][phys]) > 5))
        if phys.any()
        else float("nan"),
        "sum_window": float(np.mean((np.abs(r["e_ecal"] + r["e_hcal"] - 100) < 10)[beam]))
        if beam.any()
        else float("nan"),
        "box_leak": int((sm_e & box).sum()),
        "n_signal": int(sig.sum()),
        "signal_ok": float(np.mean(np.abs(r["e_ecal"][sig] - e0_minus[sig]) < 5))
        if sig.any()
        else float("nan"),
    }


def plot(results: dict[float, dict[str, Any]], path: Path) -> None:
    """The figures vs rate as a standalone HTML page (Bokeh, already a dependency of the DQM)."""
    from bokeh.embed import file_html
    from bokeh.layouts import row
    from bokeh.models import Span
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    rates = sorted(results)
    mhz = [r / 1e6 for r in rates]

    def panel(title: str, y_label: str) -> Any:
        f = figure(title=title, width=420, height=340, x_axis_label="beam rate [MHz]", y_axis_label=y_label)
        f.toolbar_location = None
        return f

    def series(f: Any, ys: list[float], label: str, color: str, dash: str = "solid") -> None:
        f.line(mhz, ys, legend_label=label, color=color, line_dash=dash)
        f.scatter(mhz, ys, legend_label=label, color=color, size=7)

    res = panel("E_ECAL of 100 GeV beam electrons", "68% half-width / E [%]")
    series(res, [100 * results[r]["res68"] for r in rates], "reconstructed", "navy")
    series(res, [100 * results[r]["res68_truth"] for r in rates], "truth", "darkorange", "dashed")
    res.y_range.start = 0
    box = panel("SM electrons in the signal box", "per 1e6 EOT")
    leak = [results[r]["box_leak"] / results[r]["eot"] * 1e6 for r in rates]
    upper = [max(results[r]["box_leak"], 2.3) / results[r]["eot"] * 1e6 for r in rates]  # 90% CL for 0
    series(box, upper, "90% CL upper limit", "grey", "dotted")
    series(box, leak, "observed", "navy")
    box.add_layout(Span(location=0.25, dimension="width", line_color="red", line_width=1))
    frac = panel("fractions", "%")
    series(frac, [100 * results[r]["sum_window"] for r in rates], "beam e-: 90<E_ECAL+E_HCAL<110", "navy")
    series(
        frac, [100 * (1 - results[r]["blk_vs_trigger"]) for r in rates], "physics: |block-trigger|<5", "green"
    )
    if all(np.isfinite(results[r]["signal_ok"]) for r in rates):
        series(frac, [100 * results[r]["signal_ok"] for r in rates], "Z': |E_ECAL-(E0-E_Z')|<5 GeV", "purple")
    frac.y_range.start = 80
    res.legend.location = "bottom_right"
    box.legend.location = "top_right"
    frac.legend.location = "bottom_left"
    for f in (res, box, frac):
        f.legend.label_text_font_size = "8pt"
    page = file_html(row(res, box, frac), INLINE, "na64daq physics validation")
    if path.suffix.lower() != ".png":
        path.write_text(page)
        return
    # a PNG: the page rendered by the system's headless Chromium (playwright, as the DQM's browser test)
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--plot FILE.png needs chromium (apt-get install chromium); FILE.html does not")
    html = path.with_suffix(".html")
    html.write_text(page)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            view = browser.new_page(viewport={"width": 1300, "height": 360})
            view.goto(html.resolve().as_uri())
            view.wait_for_selector(".bk-Canvas, canvas", timeout=30_000)
            view.wait_for_timeout(500)
            view.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="2e5,1e6,2e6,4e6", help="beam rates, Hz, comma-separated")
    ap.add_argument("--eot", type=float, default=4e6, help="electrons on target per rate (default 4e6)")
    ap.add_argument("--spill-length", type=float, default=1.0, help="s (default 1)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--signal", default="B-L:232:1e-4", help="MODEL:MASS_MEV:COUPLING ('' for none)")
    ap.add_argument("--signal-per-eot", type=float, default=2.5e-4, help="Z' with missing energy per EOT")
    ap.add_argument(
        "--constants",
        choices=("nominal", "truth"),
        default="nominal",
        help="nominal (what a new user runs) or the simulated detector's truth",
    )
    ap.add_argument("--daq-arg", action="append", default=[], help="extra argument for na64 daq")
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    ap.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="save the figures vs rate: FILE.html (Bokeh) or FILE.png (and the .html next to it)",
    )
    ap.add_argument("--json", type=Path, default=None, help="save the figures as JSON")
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",") if x]
    tmp = tempfile.TemporaryDirectory(prefix="validate-physics-")
    base = args.work or Path(tmp.name)
    results: dict[float, dict[str, Any]] = {}
    for rate in rates:
        work = base / f"rate{rate:.0f}"
        work.mkdir(parents=True, exist_ok=True)
        data, truth, wall = run_chain(rate, args.eot, args, work)
        results[rate] = measure(data, truth, args.constants) | {"wall_s": wall}
        m = results[rate]
        print(
            f"{rate / 1e6:4.1f} MHz: {m['spills']} spills, {m['eot']:.3g} EOT, {m['events']} events ({wall:.0f} s)",
            flush=True,
        )
    print(f"\nconstants: {args.constants}; signal: {args.signal or 'none'} ({args.signal_per_eot:g} per EOT)")
    head = f"{'figure':52s}" + "".join(f"{r / 1e6:>10.1f} MHz" for r in rates)
    print(head)
    lines = [
        ("ECAL 68% half-width / E, beam e- (reco)", lambda m: f"{100 * m['res68']:.2f}%"),
        ("ECAL 68% half-width / E, beam e- (truth)", lambda m: f"{100 * m['res68_truth']:.2f}%"),
        ("PHYSICS events with stored block > 85 GeV", lambda m: f"{100 * m['blk_gt85']:.2f}%"),
        ("PHYSICS events |stored block - trigger| > 5 GeV", lambda m: f"{100 * m['blk_vs_trigger']:.2f}%"),
        ("beam e- with 90 < E_ECAL + E_HCAL < 110 GeV", lambda m: f"{100 * m['sum_window']:.2f}%"),
        ("SM e- (true > 60 GeV) in the signal box", lambda m: f"{m['box_leak']} in {m['eot']:.2g}"),
        (
            "Z' with |E_ECAL - (E0 - E_Z')| < 5 GeV",
            lambda m: f"{100 * m['signal_ok']:.1f}% of {m['n_signal']}",
        ),
    ]
    for name, fmt in lines:
        print(f"{name:52s}" + "".join(f"{fmt(results[r]):>14s}" for r in rates))
    lossy = {r: m["not_ok"] for r, m in results.items() if m["not_ok"]}
    if args.json:
        args.json.write_text(json.dumps({f"{r:g}": m for r, m in results.items()}, indent=1))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    for r, spills in lossy.items():
        print(
            f"DATA LOST at {r / 1e6:g} MHz, these figures are not the reconstruction's: {'; '.join(spills[:5])}"
        )
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
