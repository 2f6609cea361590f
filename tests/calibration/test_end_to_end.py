"""End to end: constants derived from real ``na64 simulate`` -> ``na64 daq`` spill files, checked against the
simulator's truth directly; then applied by the DAQ to fresh spills; then a gain drift seen by the monitoring.

Statistics (see campaign.py): 2 scan runs (every particle aimed at a random one of the 30 ECAL cells, 45%
muons crossing a random one of the 9 HCAL towers), each 2 spills of 0.2 s at 2e5 Hz = 8e4 particles with a
beam trigger every 4th: ~39,000 beam triggers in all, ~20,000 electrons (~650 centred on each ECAL cell),
~17,000 muon-like events (~1,900 per HCAL cell, ~550 per PRS cell, all through the VETO), ~8,000 random
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
from daq import detector
from daq.cli import main
from daq.files import SpillFile, list_spill_files
from tests.calibration import campaign

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIGURES: dict[str, object] = {}
SCAN_SPILLS, SCAN_SPILL_S = 2, 0.2
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
    containment: Path  # [reference.containment_map] of all 30 cells


def _calibrate(*argv: str) -> None:
    assert main(["calibrate", *argv]) == 0


@pytest.fixture(scope="module")
def cal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    root = tmp_path_factory.mktemp("campaign")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        scan = {"sim_args": campaign.SCAN, "spills": SCAN_SPILLS, "spill_s": SCAN_SPILL_S}
        specs: dict[str, dict[str, object]] = {"scanA": {**scan, "run": 1}, "scanB": {**scan, "run": 2}}
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
        dirs = [str(r.data) for r in scan_runs]
        c = root / "cal"
        c.mkdir()
        containment = _containment_config(root)
        _calibrate("pedestals", *dirs, "--out", str(c / "1-peds.json"), "--version", "e2e-peds")
        _calibrate(
            "gains",
            *dirs,
            "--base",
            str(c / "1-peds.json"),
            "--out",
            str(c / "2-gains.json"),
            "--config",
            str(containment),
        )
        _calibrate("mip", *dirs, "--base", str(c / "2-gains.json"), "--out", str(c / "3-mip.json"))
        _calibrate(
            "timing",
            *dirs,
            "--base",
            str(c / "3-mip.json"),
            "--out",
            str(c / "cal.json"),
            "--version",
            "e2e-v1",
            "--run-range",
            "1:",
        )
        yield Campaign(
            root,
            scan_runs,
            runs["drift"],
            runs["faults"],
            truth,
            cc.load(c / "cal.json"),
            c / "cal.json",
            containment,
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "calibration_e2e.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


def _containment_config(root: Path) -> Path:
    """Containment per shower-centre cell from simulation (the simulator's shower model, in process):
    median (ECAL + PRS deposit) / beam energy of electrons aimed at each of the 30 cells (0.88 in the
    corners, 0.93 at the edges, 0.99 inside)."""
    lines = ["[reference.containment_map]"]
    for (x, y), (containment, _) in campaign.shower_reference(campaign.ALL_CELLS, n=4000).items():
        lines.append(f"ECAL{x}{y} = {containment:.5f}")
    path = root / "containment.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    assert (cal.constants.status == cc.GOOD).all()  # no fault injected: every channel good


def test_ecal_gains_within_1_percent_rms_of_the_truth(cal: Campaign) -> None:
    """All 30 ECAL cells, derived gain / the simulator's truth gain directly (the DAQ's amplitude is the
    pulse height, the cells under the zero suppression enter the fit with their fixed-time amplitude)."""
    ids = detector.ECAL_IDS
    rel = cal.constants.gain[ids] / cal.truth["gain"][ids] - 1
    err = cal.constants.errors["gain"][ids] / cal.constants.gain[ids]
    FIGURES["amplitude_response_em"] = round(campaign.amplitude_response(detector.PulseShape.EM), 4)
    FIGURES["ecal_cells"] = int(ids.size)
    FIGURES["ecal_gain_mean_rel_diff"] = round(float(rel.mean()), 4)
    FIGURES["ecal_gain_rms_rel_diff"] = round(float(np.sqrt(np.mean(rel**2))), 4)
    FIGURES["ecal_gain_max_rel_diff"] = round(float(np.max(np.abs(rel))), 4)
    FIGURES["ecal_gain_median_quoted_error"] = round(float(np.median(err)), 4)
    FIGURES["ecal_scale"] = round(cal.constants.ecal_scale, 4)
    print("ECAL gains vs truth:", {k: v for k, v in FIGURES.items() if k.startswith(("ecal", "ampl"))})
    assert np.isfinite(err).all()
    assert np.sqrt(np.mean(rel**2)) <= 0.01
    assert np.max(np.abs(rel)) <= 0.025
    assert abs(FIGURES["amplitude_response_em"] - 1.0) < 0.003  # type: ignore[operator]


def test_prs_gains_from_their_mip_peak(cal: Campaign) -> None:
    """All 30 PRS cells from the muons crossing them (~550 per cell): statistical precision ~1-1.5%."""
    ids = detector.PRS_IDS
    rel = cal.constants.gain[ids] / cal.truth["gain"][ids] - 1
    err = cal.constants.errors["gain"][ids] / cal.constants.gain[ids]
    FIGURES["prs_cells"] = int(np.isfinite(err).sum())
    FIGURES["prs_gain_mean_rel_diff"] = round(float(rel.mean()), 4)
    FIGURES["prs_gain_rms_rel_diff"] = round(float(np.sqrt(np.mean(rel**2))), 4)
    FIGURES["prs_gain_max_rel_diff"] = round(float(np.max(np.abs(rel))), 4)
    FIGURES["prs_gain_median_quoted_error"] = round(float(np.median(err)), 4)
    print("PRS gains vs truth:", {k: v for k, v in FIGURES.items() if k.startswith("prs")})
    assert np.isfinite(err).all()
    assert np.sqrt(np.mean(rel**2)) <= 0.03
    assert np.all(np.abs(rel) <= 4 * err + 0.005)  # consistent with the quoted errors


def test_hcal_and_veto_mip_gains_within_3_percent(cal: Campaign) -> None:
    """All 36 HCAL cells (~1,900 muons each) and the 6 VETO PMTs, vs the truth gains directly."""
    ids = detector.HCAL_IDS
    rel = cal.constants.gain[ids] / cal.truth["gain"][ids] - 1
    err = cal.constants.errors["gain"][ids] / cal.constants.gain[ids]
    veto = cal.constants.gain[detector.VETO_IDS] / cal.truth["gain"][detector.VETO_IDS] - 1
    FIGURES["hcal_mip_cells"] = int(np.isfinite(err).sum())
    FIGURES["hcal_gain_rms_rel_diff"] = round(float(np.sqrt(np.mean(rel**2))), 4)
    FIGURES["hcal_gain_max_rel_diff"] = round(float(np.max(np.abs(rel))), 4)
    FIGURES["hcal_gain_median_quoted_error"] = round(float(np.median(err)), 4)
    FIGURES["veto_gain_max_rel_diff"] = round(float(np.max(np.abs(veto))), 4)
    print("MIP gains vs truth:", {k: v for k, v in FIGURES.items() if k.startswith(("hcal", "veto"))})
    assert np.isfinite(err).all() and np.isfinite(cal.constants.errors["gain"][detector.VETO_IDS]).all()
    assert np.sqrt(np.mean(rel**2)) <= 0.03
    assert np.max(np.abs(rel)) <= 0.03
    assert np.max(np.abs(veto)) <= 0.03


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
        len(prov["steps"][0]["inputs"]) == 2 * SCAN_SPILLS and prov["steps"][1]["results"]["n_events"] > 10000
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
    beam = (ev["trigger_mask"] & monitoring.BEAM_BIT) != 0
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
            random = (ev["trigger_mask"] & monitoring.RANDOM_BIT) != 0
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
    bad = {detector.channel_name(int(i)): cc.STATUS_NAMES[c.status[i]] for i in np.flatnonzero(c.status)}
    FIGURES["status_with_faults"] = bad
    assert bad == {"HCAL1_00": "noisy", "SRD1": "hot", "ECAL22": "dead"}
    reasons = c.provenance["steps"][0]["results"]["status_reasons"]
    assert any(r.startswith("SRD1: hot") for r in reasons)
    assert any(r.startswith("ECAL22: dead") for r in reasons)


def test_gains_on_a_dask_cluster_equal_the_serial_result(cal: Campaign, tmp_path: Path) -> None:
    """``--workers 2``: every spill file is read in a worker of a LocalCluster, the per-spill arrays are
    merged in file order; the constants are the serial ones, bit for bit."""
    pytest.importorskip("dask.distributed")
    dirs = [str(r.data) for r in cal.scan]
    base = cal.path.parent / "1-peds.json"
    common = ("--base", str(base), "--config", str(cal.containment), "--version", "same")
    _calibrate("gains", *dirs, *common, "--out", str(tmp_path / "serial.json"))
    _calibrate("gains", *dirs, *common, "--out", str(tmp_path / "dask.json"), "--workers", "2")
    serial, parallel = cc.load(tmp_path / "serial.json"), cc.load(tmp_path / "dask.json")
    np.testing.assert_array_equal(parallel.gain, serial.gain)
    np.testing.assert_array_equal(parallel.errors["gain"], serial.errors["gain"])
    assert parallel.ecal_scale == serial.ecal_scale
