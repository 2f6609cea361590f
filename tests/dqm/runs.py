"""Record real runs for DQM tests: ``na64 simulate`` -> ``na64 daq`` (real processes, real sockets, real files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import free_port, na64_command, wait_daq_listening

#: small, fast runs: 2e5 particles per spill at max pace
SIM_ARGS = ("--pace", "max", "--rate", "5e5", "--spill-length", "0.4", "--seed", "1", "--run", "1")


def record_run(directory: Path, *sim_args: str, spills: int = 3, timeout: float = 90.0) -> list[Path]:
    """Run a simulator and a DAQ until the run ends; return the spill files written."""
    ep, pub = free_port(), free_port()
    directory.mkdir(parents=True, exist_ok=True)
    daq_log = (directory.parent / f"{directory.name}.daq.log").open("w")
    sim_log = (directory.parent / f"{directory.name}.sim.log").open("w")
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
        ),
        stderr=daq_log,
    )
    sim = None
    try:
        daq_log.flush()
        wait_daq_listening(daq, directory.parent / f"{directory.name}.daq.log")
        sim = subprocess.Popen(
            na64_command(
                "simulate",
                "--endpoint",
                f"tcp://127.0.0.1:{ep}",
                "--spills",
                str(spills),
                *SIM_ARGS,
                *sim_args,
            ),
            stderr=sim_log,
        )
        assert sim.wait(timeout) == 0, (directory.parent / f"{directory.name}.sim.log").read_text()[-2000:]
        code = daq.wait(timeout)
        log = (directory.parent / f"{directory.name}.daq.log").read_text()
        # a fault that loses data makes the DAQ exit 1, naming what was lost (issue 16)
        assert code == 0 or (code == 1 and "lost: " in log), log[-2000:]
    finally:
        for p in (sim, daq):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        daq_log.close()
        sim_log.close()
    files = sorted(directory.glob("run*_spill*.h5"))
    assert len(files) == spills, f"expected {spills} spill files in {directory}, got {files}"
    return files
