"""``na64 simulate`` -> ``na64 daq`` as separate processes over real sockets; files read back through daq.files
and checked against the front-end's SPILL_END counters, the DAQ's summaries and the simulator's truth."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_PRS, S_TRIG
from daq.files import SpillFile, list_spill_files
from daq.protocol import NO_PARTICLE
from tests.conftest import na64_command
from tests.daq.frontend import Listener

pytestmark = pytest.mark.integration

SPILLS = 2


def test_simulator_to_daq_to_files(daq_factory: Any, tmp_path: Path) -> None:
    daq = daq_factory("--stop-after-run")
    lis = Listener(daq.publish)
    truth_path = tmp_path / "truth.h5"
    sim = subprocess.Popen(
        na64_command(
            "simulate",
            "--endpoint",
            daq.endpoint,
            "--rate",
            "2e5",
            "--spills",
            str(SPILLS),
            "--spill-length",
            "0.4",
            "--spill-period",
            "0.8",
            "--seed",
            "11",
            "--truth",
            str(truth_path),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        summaries = {sp: lis.wait_summary(1, sp, timeout_s=90) for sp in range(1, SPILLS + 1)}
        out, _ = sim.communicate(timeout=60)
        assert sim.returncode == 0, out
        assert daq.proc.wait(30) == 0, daq.output()
        # counted when RUN_STOP comes, the last file still closing
        assert f"run 1 stopped by the front-end ({SPILLS} spills" in daq.output()
    finally:
        lis.close()
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    paths = list_spill_files(daq.data_dir)
    assert len(paths) == SPILLS and not list(daq.data_dir.glob(".*partial"))
    from simulator.truth import read_truth

    truth = read_truth(truth_path)["particles"]
    for spill, path in enumerate(paths, start=1):
        s = summaries[spill]
        fe, c = s["frontend"], s["counters"]
        assert s["status"] == "ok", s
        assert all(v == 0 for k, v in s["losses"].items() if k not in ("dead_time", "monitor_skipped")), s[
            "losses"
        ]
        # the front-end's own counters agree with the DAQ's, every request was answered by 6 fragments
        for key in ("n_slices", "n_requests", "n_fragments", "n_events_read", "n_particles"):
            assert fe[key] == c[key], key
        assert c["n_fragments"] == 6 * c["n_requests"] and c["n_requests"] == c["n_slices"]
        assert s["n_events_written"] == s["n_accepted"] == fe["n_events_read"] > 0
        assert 0.8 * s["n_particles"] < s["n_beam"] <= s["n_particles"]
        assert sum(s["histograms"]["arrival_time"]["counts"]) == s["n_particles"]
        with SpillFile(path) as f:
            assert f.n_events == s["n_events_written"] and f.attrs["n_beam"] == s["n_beam"]
            assert f.frontend["n_particles"] == s["n_particles"]
            ev = f.events()
            m = ev["trigger_mask"]
            physics, beam, rand = (m & PHYSICS) != 0, (m & BEAM) != 0, (m & RANDOM) != 0
            assert physics.sum() == s["triggers"]["physics"] and beam.sum() == s["triggers"]["beam"]
            assert rand.sum() == s["triggers"]["random"] > 0
            assert np.all((m[physics] & (S_TRIG | S_PRS | S_EC)) == (S_TRIG | S_PRS | S_EC))
            assert np.all(ev["index"][rand] == NO_PARTICLE)
            # read-out particles are the simulator's: same slice, index and arrival time
            mine = truth["spill"] == spill
            key_truth = set(
                zip(
                    truth["slice"][mine].tolist(),
                    truth["index"][mine].tolist(),
                    truth["t_ns"][mine].tolist(),
                    strict=True,
                )
            )
            part = ev["index"] != NO_PARTICLE
            key_file = set(
                zip(
                    ev["slice"][part].tolist(),
                    ev["index"][part].tolist(),
                    ev["t_ns"][part].tolist(),
                    strict=True,
                )
            )
            assert key_file <= key_truth and len(key_file) == part.sum()
            # calibrated energies follow the true deposits (nominal constants vs ~10% true gain spread)
            order = {
                k: i
                for i, k in enumerate(
                    zip(
                        truth["slice"][mine].tolist(),
                        truth["index"][mine].tolist(),
                        truth["t_ns"][mine].tolist(),
                        strict=True,
                    )
                )
            }
            rows = np.flatnonzero(mine)[
                [
                    order[k]
                    for k in zip(
                        ev["slice"][part].tolist(),
                        ev["index"][part].tolist(),
                        ev["t_ns"][part].tolist(),
                        strict=True,
                    )
                ]
            ]
            true_ecal = truth["e_ecal_gev"][rows] + truth["e_prs_gev"][rows]
            big = true_ecal > 20
            ratio = ev["e_ecal"][part][big] / true_ecal[big]
            assert big.sum() > 10 and 0.9 < np.median(ratio) < 1.1, np.median(ratio)
            # random triggers read pedestal windows: little energy in the ECAL
            assert np.median(ev["e_ecal"][rand]) < 5.0
