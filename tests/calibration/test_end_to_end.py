"""End to end, as a user would: a simulated calibration campaign (real ``na64 simulate`` -> ``na64 daq`` runs)
calibrated through the documented CLI alone (``na64 calibrate pedestals``, ``gains``, ``mip``, ``timing``
as separate processes, no option beyond docs/calibration.md: the containment comes from the reference
shipped with the detector model), checked channel by channel against the simulator's truth; then applied by
the DAQ to fresh spills; then a gain drift seen by the monitoring.

Statistics (see campaign.py): 2 scan runs (every particle aimed at a random one of the 30 ECAL cells, 45%
muons crossing a random one of the 9 HCAL towers), each 3 spills of 0.2 s at 2e5 Hz = 1.2e5 particles with a
beam trigger every 4th: ~59,000 beam triggers in all, ~30,000 electrons (~1,000 centred on each ECAL cell),
~25,000 muon-like events (~2,800 per HCAL cell, ~830 per PRS cell, all through the VETO), ~12,000 random
windows. Runs are taken two at a time.
The figures measured are printed (``pytest -s``) and written to test-artifacts/calibration_e2e.json.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from calibration import constants as cc
from calibration import monitoring
from daq import contract, detector
from daq.cli import main
from daq.files import SpillFile, list_spill_files
from tests.calibration import campaign
from tests.calibration.closure import Calibrated, calibrate_cli_only, group_table
from tests.conftest import na64_command

# the campaign (6 runs, 4 calibration processes) is taken in the first test's setup: ~3-5 min on a loaded
# machine, longer than the default per-test timeout
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

FIGURES: dict[str, object] = {}
FAULTS = ("--fault", "noisy:HCAL1_00", "--fault", "hot:SRD1:0.03", "--fault", "dead:ECAL22")


@dataclass(frozen=True)
class Campaign:
    root: Path
    scan: list[campaign.Run]
    drift: campaign.Run
    faults: campaign.Run
    truth: dict[str, np.ndarray]
    constants: cc.Constants
    path: Path  # the final constants file
    cli: Calibrated  # what the four CLI steps printed


@pytest.fixture(scope="module")
def cal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    root = tmp_path_factory.mktemp("campaign")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        specs: dict[str, dict[str, object]] = dict(campaign.scan_specs())
        # the gain-drift run does not need the derived constants: take it with the scan
        specs["drift"] = {
            "sim_args": ("--fault", "gain_drift:ECAL:-2"),
            "daq_args": campaign.DAQ_RUN,
            "spills": 3,
            "spill_s": 0.08,
            "run": 3,
        }
        # faults for the channel status: a noisy HCAL cell (15 counts RMS), a hot SRD module (spurious
        # pulses in 3% of the windows), a dead ECAL cell next to the beam (gain 0: noise, no signal)
        specs["faults"] = {"sim_args": FAULTS, "spill_s": 0.1, "run": 4}
        runs = campaign.take_runs(root, specs, procs)
        scan_runs = [runs["scanA"], runs["scanB"]]
        FIGURES["seconds_per_run"] = round(float(np.mean([r.seconds for r in runs.values()])), 2)
        truth = campaign.same_detector(scan_runs)
        cli = calibrate_cli_only([r.data for r in scan_runs], root / "cal", version="e2e-v1")
        yield Campaign(root, scan_runs, runs["drift"], runs["faults"], truth, cli.constants, cli.path, cli)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "calibration_e2e.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


def test_pedestals_within_0_2_counts_of_the_truth(cal: Campaign) -> None:
    d = np.concatenate(
        [
            cal.constants.pedestal_even - cal.truth["pedestal_even"],
            cal.constants.pedestal_odd - cal.truth["pedestal_odd"],
        ]
    )
    noise = cal.constants.noise / cal.truth["noise"] - 1
    FIGURES["pedestal_max_abs_diff"] = round(float(np.max(np.abs(d))), 4)
    FIGURES["pedestal_rms_diff"] = round(float(np.sqrt(np.mean(d**2))), 4)
    FIGURES["noise_max_rel_diff"] = round(float(np.max(np.abs(noise))), 4)
    print("pedestals vs truth:", FIGURES)
    assert np.max(np.abs(d)) <= 0.2, detector.channel_name(int(np.argmax(np.abs(d)) % detector.N_CHANNELS))
    assert np.max(np.abs(noise)) < 0.1
    # no fault injected: every channel good, but the hole vetoes (halo only: too few particles for their
    # gain, time offsets) say that their constants were not determined
    status = {
        detector.channel_name(int(i)): cc.STATUS_NAMES[cal.constants.status[i]]
        for i in np.flatnonzero(cal.constants.status)
    }
    assert status == {"V1": "undetermined", "V2": "undetermined"}
    assert set(cc.undetermined(cal.constants, detector.counter_id("V1"))) == {"gain", "time_offset_ns"}


def test_gains_through_the_cli_meet_the_targets_with_honest_errors(cal: Campaign) -> None:
    """Every gain group against the simulator's truth: ECAL (all 30 cells, edges and corners included) within
    1% RMS and 2% max, PRS within 1% RMS, HCAL and VETO within 3%; the quoted errors cover the deviations
    (pull RMS <= 1.5 in every group)."""
    table = group_table(cal.constants, cal.truth)
    FIGURES["gains"] = {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in table}
    FIGURES["amplitude_response_em"] = round(campaign.amplitude_response(detector.PulseShape.EM), 4)
    FIGURES["ecal_scale"] = round(cal.constants.ecal_scale, 4)
    print("\ngroup     n    RMS     max    mean  pull RMS")
    for r in table:
        print(
            f"{r['group']:8s} {r['n']:3d} {r['rms']:.4f} {r['max']:.4f} {r['mean']:+.4f} {r['pull_rms']:6.2f}"
        )
    g = {r["group"]: r for r in table}
    assert g["ECAL"]["n"] == 30 and g["PRS"]["n"] == 30 and g["HCAL"]["n"] == 36 and g["VETO"]["n"] == 6
    assert g["SRD"]["n"] == 3 and g["counters"]["not_determined"] == ["V1", "V2"]
    assert g["ECAL"]["rms"] <= 0.01 and g["ECAL"]["max"] <= 0.02
    assert g["PRS"]["rms"] <= 0.01
    assert g["HCAL"]["max"] <= 0.03 and g["VETO"]["max"] <= 0.03
    for r in table:
        assert r["pull_rms"] <= 1.5, r
    # the outer ring explicitly: the cells whose showers leak off the face
    ids = detector.ECAL_IDS
    x, y = (ids - ids[0]) % detector.ECAL_NX, (ids - ids[0]) // detector.ECAL_NX
    ring = ids[(x == 0) | (x == detector.ECAL_NX - 1) | (y == 0) | (y == detector.ECAL_NY - 1)]
    rel = cal.constants.gain[ring] / cal.truth["gain"][ring] - 1
    FIGURES["ecal_outer_ring_rms"] = round(float(np.sqrt(np.mean(rel**2))), 4)
    assert ring.size == 18 and np.sqrt(np.mean(rel**2)) <= 0.01
    assert abs(FIGURES["amplitude_response_em"] - 1.0) < 0.003  # type: ignore[operator]


def test_the_gains_step_cross_checks_itself_and_warns_only_for_cause(cal: Campaign) -> None:
    """The cross-check against the containment measured from the data passed (and is in the provenance);
    no per-cell peak warning (muons and hadrons once made 'ECAL44 peak at 0.537'); the undetermined hole
    vetoes are named."""
    log = cal.cli.logs["gains"]
    assert "cross-check: showers centred on the outer ring read" in log
    assert "centred on" not in log.replace("showers centred on the outer ring", "")
    check = cal.constants.provenance["steps"][1]["results"]["cross_check"]
    assert check["performed"] and not check["failed"] and abs(check["ring_deviation"]) < 0.01
    FIGURES["crosscheck_ring_deviation"] = check["ring_deviation"]
    assert "V1 not determined" in log and "V2 not determined" in log


def test_a_containment_that_does_not_fit_the_showers_fails_loudly(cal: Campaign, tmp_path: Path) -> None:
    """One containment for every cell (the issue's 18 of 30 cells 6-13% off): the cross-check stops the
    step with one line, exit 2, and no constants file."""
    dirs = [str(r.data) for r in cal.scan]
    out = tmp_path / "gains.json"
    proc = subprocess.run(
        na64_command(
            "calibrate",
            "gains",
            *dirs,
            "--base",
            str(cal.path.parent / "peds.json"),
            "--out",
            str(out),
            "--containment",
            "0.994",
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and not out.exists()
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("na64 calibrate: error:")]
    assert "cross-check failed, nothing written" in line and "outer ring read +" in line
    FIGURES["crosscheck_uniform_containment"] = line


def test_time_offsets_follow_the_truth(cal: Campaign) -> None:
    """Offsets relative to the counters, per pulse-shape class (each class has its own constant peak-time
    delay): the precise channels (error < 0.1 ns) agree with the truth within 0.3 ns RMS, and every
    determined channel is within 4 of its quoted errors (+ 0.1 ns)."""
    err = cal.constants.errors["time_offset_ns"]
    ok = np.isfinite(err)
    ref = cal.truth["time_offset_ns"][[detector.counter_id(c) for c in detector.BEAM_COUNTERS]].mean()
    diff = cal.constants.time_offset_ns - (cal.truth["time_offset_ns"] - ref)
    spreads, worst_pull = [], 0.0
    for shape in detector.PulseShape:
        precise = ok & (err < 0.1) & (detector.CHANNELS["shape"] == shape)
        if precise.sum() < 3:
            continue
        delay = float(np.mean(diff[precise]))
        spreads.append(float(np.std(diff[precise])))
        sel = ok & (detector.CHANNELS["shape"] == shape)
        worst_pull = max(worst_pull, float(np.max(np.abs(diff[sel] - delay) / (err[sel] + 0.1))))
    FIGURES["time_offset_channels"] = int(ok.sum())
    FIGURES["time_offset_rms_ns_within_shape"] = round(max(spreads), 3)
    assert ok.sum() >= 40 and len(spreads) == len(detector.PulseShape)
    assert max(spreads) < 0.3
    assert worst_pull < 4


def test_constants_file_records_how_it_was_made(cal: Campaign) -> None:
    prov = cal.constants.provenance
    assert cal.constants.version == "e2e-v1" and cal.constants.run_min == 1 and cal.constants.run_max is None
    assert [s["step"] for s in prov["steps"]] == ["pedestals", "gains", "mip", "timing"]
    assert (
        len(prov["steps"][0]["inputs"]) == 2 * campaign.SCAN_SPILLS
        and prov["steps"][1]["results"]["n_events"] > 10000
    )
    assert all(s["software_version"] and s["git_hash"] for s in prov["steps"])


def test_derived_constants_put_the_electron_peak_at_the_beam_energy(cal: Campaign) -> None:
    """A fresh 100 GeV run (default beam cell and physics trigger) recorded with the derived constants."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fresh = campaign.take_run(
            cal.root,
            "fresh",
            procs,
            daq_args=(*campaign.DAQ_RUN, "--calibration", str(cal.path)),
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (path,) = list_spill_files(fresh.data)
    with SpillFile(path) as f:
        assert f.attrs["calibration_id"] == "e2e-v1"
        ev = f.events(["trigger_mask", "e_ecal"])
    beam = (ev["trigger_mask"] & contract.BEAM) != 0
    peak = monitoring.electron_peak(ev["e_ecal"][beam], 100.0)
    FIGURES["closure_electron_peak_gev"] = round(peak.position_gev, 3)
    FIGURES["closure_electron_peak_error_gev"] = round(peak.error_gev, 3)
    FIGURES["closure_electron_peak_n"] = peak.n
    print("closure:", {k: v for k, v in FIGURES.items() if k.startswith("closure")})
    assert peak.n > 500
    assert abs(peak.ratio - 1.0) <= 0.01


def test_gain_drift_shows_in_the_per_spill_monitoring(cal: Campaign) -> None:
    """The simulator's gain_drift fault (ECAL -2% per spill), 3 spills of 0.08 s (~800 beam triggers each)
    recorded with nominal constants, monitored against the derived constants' pedestals."""
    ratios, errors = [], []
    for path in list_spill_files(cal.drift.data):
        with SpillFile(path) as f:
            ev = f.events(["trigger_mask", "e_ecal"])
            random = (ev["trigger_mask"] & contract.RANDOM) != 0
            doc = monitoring.spill_monitor(
                ev["trigger_mask"], ev["e_ecal"], None, f.waveforms(np.flatnonzero(random)), cal.constants
            )
        ratios.append(doc["electron_peak"]["ratio"])
        errors.append(doc["electron_peak"]["ratio_error"])
        shift = np.array(doc["pedestal_shift"], dtype=float)
        assert np.nanmax(np.abs(shift)) < 0.5  # the pedestals did not move
    steps = np.diff(ratios)
    slope = np.polyfit(np.arange(len(ratios)), ratios, 1)[0]
    FIGURES["drift_peak_ratio_per_spill"] = [round(r, 4) for r in ratios]
    FIGURES["drift_peak_ratio_error"] = round(max(errors), 4)
    FIGURES["drift_slope_per_spill"] = round(float(slope), 4)
    print("gain drift:", FIGURES["drift_peak_ratio_per_spill"], "slope", FIGURES["drift_slope_per_spill"])
    assert np.all(steps < -3 * max(errors))  # each spill's drop is significant
    assert slope == pytest.approx(-0.02 * ratios[0], abs=0.005)


def test_status_finds_the_noisy_and_the_hot_channel(cal: Campaign, tmp_path: Path) -> None:
    out = tmp_path / "peds.json"
    assert main(["calibrate", "pedestals", str(cal.faults.data), "--out", str(out)]) == 0
    c = cc.load(out)
    bad = {
        detector.channel_name(int(i)): cc.STATUS_NAMES[c.status[i]]
        for i in np.flatnonzero((c.status != cc.GOOD) & (c.status != cc.UNDETERMINED))
    }
    FIGURES["status_with_faults"] = bad
    assert bad == {"HCAL1_00": "noisy", "SRD1": "hot", "ECAL22": "dead"}
    # pedestals alone: the gains and time offsets of every other channel are still nominal, and say so
    assert (c.status == cc.UNDETERMINED).sum() == detector.N_CHANNELS - 3
    reasons = c.provenance["steps"][0]["results"]["status_reasons"]
    assert any(r.startswith("SRD1: hot") for r in reasons)
    assert any(r.startswith("ECAL22: dead") for r in reasons)


def test_gains_on_a_dask_cluster_equal_the_serial_result(cal: Campaign, tmp_path: Path) -> None:
    """``--workers 2``: every spill file is read in a worker of a LocalCluster, the per-spill arrays are
    merged in file order; the constants are the serial ones, bit for bit."""
    pytest.importorskip("dask.distributed")
    dirs = [str(r.data) for r in cal.scan]
    base = cal.path.parent / "peds.json"
    common = ("--base", str(base), "--version", "same")
    assert main(["calibrate", "gains", *dirs, *common, "--out", str(tmp_path / "serial.json")]) == 0
    assert (
        main(["calibrate", "gains", *dirs, *common, "--out", str(tmp_path / "dask.json"), "--workers", "2"])
        == 0
    )
    serial, parallel = cc.load(tmp_path / "serial.json"), cc.load(tmp_path / "dask.json")
    np.testing.assert_array_equal(parallel.gain, serial.gain)
    np.testing.assert_array_equal(parallel.errors["gain"], serial.errors["gain"])
    assert parallel.ecal_scale == serial.ecal_scale
