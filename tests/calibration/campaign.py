"""Real calibration runs for the end-to-end tests: ``na64 simulate`` -> ``na64 daq`` processes, spill files.

A calibration *campaign* is what a shift crew would take: runs at reduced intensity (2e5 Hz, less pile-up
and saturation) with a prescaled beam trigger every 4th particle and a random trigger every 100 us, while
the beam is scanned over the ECAL face (the simulator's ``--scan-cells all --scan-mode particle``: every
particle aimed at a random one of the 30 cells, as the NA64 calibration scans that move the ECAL across
the beam). The calibration beam is a mixed e-/mu- beam (45% muons) whose muons cross every HCAL cell
(``--hcal-cells uniform``) and all VETO slabs, so the same runs give the MIP peaks (HCAL, VETO, PRS).

The simulator draws the detector truth (gains, pedestals, noise, time offsets) from the seed only, so
runs with the same seed and different run numbers see the same detector with different particles; the
trigger-block cells get the same gain spread as the others (``electronics.block_gain_spread = 0.1``; the
default equalises them to nominal). Each run writes to its own data directory. :func:`same_detector`
checks the truth files agree.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daq import detector
from tests.conftest import na64_command, wait_daq_listening

SEED = 7
RATE_HZ = 2e5
SPILL_S = 0.1  # 2e4 particles per spill
#: DAQ settings of a calibration run: beam trigger every 4th S_trig particle (~10,000 read-outs per 0.2 s
#: spill), random trigger every 100 us, short dead time, no physics trigger (S_PRS > 1000 GeV never fires;
#: with the beam on the trigger block it would flood the readout)
DAQ_CAL = (
    "--set",
    "trigger.prs_min_gev=1000",
    "--set",
    "trigger.beam_prescale=4",
    "--set",
    "trigger.random_period_ns=100000",
    "--set",
    "trigger.dead_time_ns=500",
)
#: DAQ settings of an ordinary run at 2e5 Hz (default physics trigger and dead time) with more beam and
#: random triggers than the default, for statistics in short spills
DAQ_RUN = ("--set", "trigger.beam_prescale=20", "--set", "trigger.random_period_ns=100000")
#: the detector truth is drawn from the seed: the same seed in every run of a campaign is the same detector
#: the front-end keeps its slices for requests up to 30 s late and the DAQ waits as long for fragments: on a
#: loaded machine (other processes on both cores) a 2 s timeout lost whole spills of a calibration run
SIM_COMMON = ("--set", "electronics.block_gain_spread=0.1", "--set", "readout.request_timeout_s=30")
DAQ_COMMON = ("--fragment-timeout", "30")
#: the calibration scan: electrons centred on all 30 ECAL cells, muons (45%) through all 36 HCAL cells
SCAN = (
    "--scan-cells",
    "all",
    "--scan-mode",
    "particle",
    "--hcal-cells",
    "uniform",
    "--set",
    "beam.muon_fraction=0.45",
)
ALL_CELLS = [(x, y) for y in range(detector.ECAL_NY) for x in range(detector.ECAL_NX)]
#: a scan run: 3 spills of 0.2 s at 2e5 Hz (1.2e5 particles, ~29,000 beam triggers: ~7,000 electrons and
#: ~6,000 muons per run; two runs give ~550 muons per PRS cell for a ~0.8% MIP peak)
SCAN_SPILLS, SCAN_SPILL_S = 3, 0.2


def scan_specs(seed: int = SEED, names: tuple[str, ...] = ("scanA", "scanB")) -> dict[str, dict[str, object]]:
    """:func:`take_runs` specs of the scan runs of a campaign (runs 1, 2, ... of the detector ``seed``)."""
    scan = {"sim_args": SCAN, "spills": SCAN_SPILLS, "spill_s": SCAN_SPILL_S, "seed": seed}
    return {name: {**scan, "run": i + 1} for i, name in enumerate(names)}


@dataclass(frozen=True)
class Run:
    data: Path
    truth: Path
    seconds: float


class PortTaken(RuntimeError):
    """The DAQ could not bind its port (another process took it after it was chosen)."""


def take_run(root: Path, name: str, procs: list[subprocess.Popen[bytes]], **kw: object) -> Run:
    """One run: a DAQ process (stops after the run) and a simulator process at max pace; retried once
    with new ports if the DAQ's port was taken meanwhile. Keyword arguments as :func:`_attempt`."""
    try:
        return _attempt(root, name, procs, **kw)  # type: ignore[arg-type]
    except PortTaken:
        import shutil

        shutil.rmtree(root / name)
        kw["ports"] = tuple(distinct_ports(2))
        return _attempt(root, name, procs, **kw)  # type: ignore[arg-type]


def _attempt(
    root: Path,
    name: str,
    procs: list[subprocess.Popen[bytes]],
    sim_args: tuple[str, ...] = (),
    daq_args: tuple[str, ...] = DAQ_CAL,
    spills: int = 1,
    spill_s: float = SPILL_S,
    rate_hz: float = RATE_HZ,
    timeout: float = 180.0,
    ports: tuple[int, int] | None = None,
    run: int = 1,
    seed: int = SEED,
) -> Run:
    out = root / name
    out.mkdir(parents=True)
    port, pub = ports or distinct_ports(2)
    endpoint = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    with (out / "daq.log").open("wb") as dlog, (out / "sim.log").open("wb") as slog:
        daq = subprocess.Popen(
            na64_command(
                "daq",
                "--endpoint",
                endpoint,
                "--publish",
                f"tcp://127.0.0.1:{pub}",
                "--data-dir",
                str(out / "data"),
                "--stop-after-run",
                "--min-free-mb",
                "10",
                *DAQ_COMMON,
                *daq_args,
            ),
            stdout=dlog,
            stderr=subprocess.STDOUT,
        )
        procs.append(daq)
        # the simulator does not wait for a listener: start it only once the DAQ is bound (on a loaded
        # machine the DAQ's start-up takes seconds, and a spill sent before would be lost)
        wait_daq_listening(daq, out / "daq.log", timeout)
        sim = subprocess.Popen(
            na64_command(
                "simulate",
                "--endpoint",
                endpoint,
                "--pace",
                "max",
                "--spills",
                str(spills),
                "--spill-length",
                str(spill_s),
                "--spill-period",
                str(spill_s),
                "--rate",
                str(rate_hz),
                "--truth",
                str(out / "truth.h5"),
                "--run",
                str(run),
                "--seed",
                str(seed),
                *SIM_COMMON,
                *sim_args,
            ),
            stdout=slog,
            stderr=subprocess.STDOUT,
        )
        procs.append(sim)
        deadline = time.monotonic() + timeout
        while sim.poll() is None:
            if daq.poll() not in (None, 0):  # the DAQ failed (e.g. its port was taken): stop the simulator
                sim.terminate()
                sim.wait(timeout=30)
                break
            if time.monotonic() > deadline:
                sim.kill()
                daq.kill()
                raise AssertionError(f"run {name} timed out; logs in {out}")
            time.sleep(0.05)
        if sim.returncode != 0:
            daq.terminate()  # the run never started or ended early: do not wait for a RUN_STOP
        try:
            daq_rc = daq.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daq.kill()
            raise AssertionError(f"run {name}: the DAQ did not stop; logs in {out}") from None
    sim_rc = sim.returncode
    if daq_rc != 0 and "cannot bind" in (out / "daq.log").read_text(errors="replace"):
        raise PortTaken(f"run {name}: a DAQ port was taken by another process")
    if sim_rc != 0 or daq_rc != 0:
        tail = (out / "sim.log").read_text(errors="replace")[-400:] + (out / "daq.log").read_text(
            errors="replace"
        )[-400:]
        raise AssertionError(f"run {name}: simulate exit {sim_rc}, daq exit {daq_rc}; logs in {out}:\n{tail}")
    files = sorted((out / "data").glob("run*.h5"))
    assert len(files) == spills, f"run {name}: {len(files)} spill files, expected {spills}"
    _check_frontend(files[0], sim_args, out)
    return Run(out / "data", out / "truth.h5", time.monotonic() - t0)


def _check_frontend(path: Path, sim_args: tuple[str, ...], out: Path) -> None:
    """The file was recorded from this run's simulator (no cross-talk between runs taken in parallel)."""
    from daq.files import SpillFile

    with SpillFile(path) as f:
        info = f.frontend_info
        complete = float(np.mean(f.events(["missing_groups"])["missing_groups"] == 0))
    assert complete > 0.99, f"{path}: only {complete:.1%} of the events are complete; logs in {out}"
    beam = info.get("config", {}).get("beam", {})
    for key, value in zip(sim_args[::2], sim_args[1::2], strict=False):
        if key == "--set" and value.startswith("beam."):
            name, raw = value[len("beam.") :].split("=", 1)
            assert str(beam.get(name)).replace(" ", "") == raw.replace(" ", ""), (
                f"{path} was recorded from another front-end ({name} = {beam.get(name)}); logs in {out}"
            )


def distinct_ports(n: int) -> list[int]:
    """``n`` different free TCP ports on 127.0.0.1 (all bound at once, so they cannot repeat)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def take_runs(
    root: Path, specs: dict[str, dict[str, object]], procs: list[subprocess.Popen[bytes]], parallel: int = 2
) -> dict[str, Run]:
    """Several independent runs, ``parallel`` at a time (each is a DAQ and a simulator process);
    ``specs`` maps a run name to keyword arguments of :func:`take_run`."""
    from concurrent.futures import ThreadPoolExecutor

    ports = distinct_ports(2 * len(specs))  # chosen up front: threads picking free ports could collide
    with ThreadPoolExecutor(parallel) as pool:
        futures = {
            name: pool.submit(take_run, root, name, procs, ports=(ports[2 * i], ports[2 * i + 1]), **kw)  # type: ignore[arg-type]
            for i, (name, kw) in enumerate(specs.items())
        }
        return {name: f.result() for name, f in futures.items()}


def truth_channels(run: Run) -> dict[str, np.ndarray]:
    from simulator.truth import read_truth

    return read_truth(run.truth)["channels"]


def same_detector(runs: list[Run]) -> dict[str, np.ndarray]:
    """The per-channel truth, checked to be identical in every run."""
    first = truth_channels(runs[0])
    for r in runs[1:]:
        other = truth_channels(r)
        for key in ("gain", "pedestal_even", "pedestal_odd", "noise", "time_offset_ns"):
            np.testing.assert_array_equal(other[key], first[key], err_msg=f"truth {key} differs in {r.truth}")
    return first


def amplitude_response(shape: detector.PulseShape, n: int = 20000) -> float:
    """Mean ratio of the DAQ's amplitude (``daq.waveform``) to the true pulse height, for the simulator's
    pulse shape of a class, with the trigger's sub-sample phase uniform over the 1 ns steps of the trigger
    time the DAQ knows (1 for an unbiased estimator)."""
    from daq import waveform
    from simulator import electronics
    from simulator.config import ElectronicsConfig

    cfg = ElectronicsConfig()
    shapes = electronics.PulseShapes(cfg)
    rng = np.random.default_rng(0)
    period = detector.SAMPLE_PERIOD_NS
    trigger_ns = rng.integers(0, int(period), n)  # the pulse peaks peak_sample - (period - t) / period
    peak = cfg.peak_sample * period - (np.ceil(trigger_ns / period) * period - trigger_ns)
    t = np.arange(cfg.n_samples) * period
    w = 1000.0 * electronics.pulse(t[None, :] - peak[:, None], cfg.shape_order, shapes.tau[shape])
    w += detector.NOMINAL_PEDESTAL
    reco = waveform.reconstruct(
        np.rint(w)[:, None, :].astype(np.uint16),
        np.ones(1),
        shape=np.array([int(shape)]),
        config=waveform.RecoConfig(expected_peak_ns=cfg.peak_sample * period),
        trigger_ns=trigger_ns,
    )
    return float(np.mean(reco.amplitude[:, 0]) / 1000.0)
