"""Injected Z' signal seen in the live DQM: ``na64 simulate --signal`` -> ``na64 daq`` -> the DQM monitor fed
live from the DAQ's monitoring feed (real processes, real sockets). For every model, one 1 s spill at 2 MHz
(2e6 electrons) with the boost stated in docs/simulator.md makes the missing-energy plots differ from a run
without signal: the signal box of the E_ECAL-E_HCAL plane (E_ECAL < 50 GeV, E_HCAL < 2 GeV) holds more than
5 sigma more events than in the run without signal, and the E_miss > 50 GeV part of the missing-energy
histogram (where early hadron showers dominate) more than 3 sigma more. The DAQ sends every event to the DQM (at max pace its
default sampling would skip a timing-dependent part; at 2 MHz in real time it skips none)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from daq import files
from dqm.monitor import Monitor
from dqm.sources import LiveSource
from simulator import zprime
from tests.conftest import free_port, na64_command, wait_daq_listening

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: the boosts of docs/simulator.md ("Seeing the signal in the DQM") for g = 1e-4 at m = 16.7 MeV: ~1.5e-3 Z'
#: with missing energy per electron on target
BOOST = {"B-L": 6e5, "B-3L_e": 1e5, "B-2L_e-L_mu": 2e5, "B-L_e-2L_mu": 5e5}
SIGNAL = "{model}:16.7:1e-4"
SIM_ARGS = ("--pace", "max", "--rate", "2e6", "--spill-length", "1", "--spills", "1", "--seed", "11")


def run_live(directory: Path, *sim_args: str) -> tuple[Monitor, Path]:
    """One spill through a real DAQ; the monitor filled live from its publisher; the spill file."""
    ep, pub = free_port(), free_port()
    directory.mkdir(parents=True, exist_ok=True)
    daq_log, sim_log = directory / "daq.log", directory / "sim.log"
    monitor = Monitor(live=True)
    source = LiveSource(f"tcp://127.0.0.1:{pub}", lambda msg: monitor.handle(msg, time.time()))
    with daq_log.open("w") as dl, sim_log.open("w") as sl:
        daq = subprocess.Popen(
            na64_command(
                "daq",
                "--endpoint",
                f"tcp://127.0.0.1:{ep}",
                "--publish",
                f"tcp://127.0.0.1:{pub}",
                "--data-dir",
                str(directory),
                "--stop-after-run",
                "--fragment-timeout",
                "1",
                "--set",
                "monitor.max_events_per_batch=1000000",
            ),
            stderr=dl,
        )
        sim = None
        try:
            wait_daq_listening(daq, daq_log)
            source.start()
            time.sleep(0.5)  # the subscription is up before the first event is published
            sim = subprocess.Popen(
                na64_command("simulate", "--endpoint", f"tcp://127.0.0.1:{ep}", *SIM_ARGS, *sim_args),
                stderr=sl,
            )
            assert sim.wait(180) == 0, sim_log.read_text()[-2000:]
            assert daq.wait(180) == 0, daq_log.read_text()[-2000:]
            time.sleep(0.5)  # the last published messages
        finally:
            source.stop()
            for p in (sim, daq):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(10)
    monitor.flush(time.time() + 3600)
    (path,) = files.list_spill_files([directory])
    return monitor, path


def signal_counts(monitor: Monitor) -> tuple[float, float, float]:
    """(physics events, signal box E_ECAL < 50 GeV with E_HCAL < 2 GeV, E_miss > 50 GeV) of the run view."""
    book = monitor.range_book("run")
    h2 = book.h2["ecal_hcal"]
    ex, ey = h2.axes[0].edges, h2.axes[1].edges
    box = float(h2.values()[ex[1:] <= 50.0 + 1e-9][:, ey[1:] <= 2.0 + 1e-9].sum())
    h1 = book.h1["e_miss"]
    miss = float(h1.values()[h1.axes[0].edges[:-1] >= 50.0 - 1e-9].sum())
    return float(book.arrays["n_type"][0]), box, miss


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, float, float]:
    """The same run without signal (once for all models)."""
    monitor, _ = run_live(tmp_path_factory.mktemp("baseline") / "nosignal")
    return signal_counts(monitor)


@pytest.mark.parametrize("model", list(zprime.CHARGES))
def test_every_model_is_visible_in_the_live_missing_energy_plots_within_one_spill(
    model: str, baseline: tuple[float, float, float], tmp_path: Path
) -> None:
    signal, boost = SIGNAL.format(model=model), BOOST[model]
    monitor, path = run_live(tmp_path / model, "--signal", signal, "--signal-boost", f"{boost:g}")
    n, box, miss = signal_counts(monitor)
    n0, box0, miss0 = baseline
    print(
        f"{model}: physics {n:.0f} (without signal {n0:.0f}), signal box {box:.0f} ({box0:.0f}), "
        f"E_miss > 50 GeV {miss:.0f} ({miss0:.0f})"
    )
    assert n0 > 3000 and n > n0  # every physics event of the spill (~4 kHz), the signal's on top
    assert box - box0 > 5 * math.sqrt(box + box0), (model, box, box0)
    assert miss - miss0 > 3 * math.sqrt(miss + miss0), (model, miss, miss0)
    with files.SpillFile(path) as sf:  # the spill file records the physical yield and the boost
        info = sf.frontend_info["signal"]
    assert info["boost"] == boost and info["model"] == model
    assert 0 < info["produced_per_eot"] < 1e-6
    assert np.isclose(info["injected_per_eot"], boost * info["produced_per_eot"])
    assert 1e-3 < info["missing_per_eot"] * boost < 2e-3  # the rule of the docs: ~1.5e-3 per EOT
