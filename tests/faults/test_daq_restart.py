"""The DAQ killed or stopped in the middle of a run, with the real processes (issue 16, findings 1 and 2)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    Setup,
    held_in_files,
    kill9,
    leftovers,
    run_summaries,
    sent_by_frontend,
)

pytestmark = pytest.mark.faults


def test_daq_killed_mid_spill_and_restarted_records_the_rest_of_the_run(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """kill -9 of ``na64 daq`` in spill 3, restarted 2 s later with the same arguments: the killed spill is
    recovered from its partial file (status ``recovered``), every spill the new DAQ sees start is ``ok``
    with all the events the front-end read out, the spills in between are gaps of the run (with the
    front-end's counters), and both the DAQ and the front-end exit 1 saying what was lost."""
    s = Setup(tmp_path, processes)
    daq1 = s.daq()
    daq1.wait_log("DAQ listening", 90)
    dqm = s.dqm()
    sim = s.simulate(spills=7, length=1.2, period=2.2, rate=1.5e6)
    daq1.wait_log("run 1 spill 3 started", 60)
    daq1.wait_log("closed run000001_spill00002.h5", 10)
    time.sleep(0.8)  # some blocks of spill 3 are on disk
    kill9(daq1)
    kill9(dqm)  # the DQM dies too: restarted, it reads the new DAQ
    assert any(p.name.endswith(".partial") for p in s.data.glob(".run000001_spill00003*"))
    time.sleep(2.0)
    daq2 = s.daq("--stop-after-run")
    dqm = s.dqm()
    assert sim.wait(120) == 1  # the front-end says the DAQ did not take everything
    assert daq2.wait(60) == 1  # so does the DAQ
    sent = sent_by_frontend(sim.text)
    held = held_in_files(s.data)
    assert leftovers(s.data) == []
    assert held[1].status == held[2].status == "ok"
    for spill in (1, 2):
        assert held[spill].n_events == sent[spill]["n_events_read"]
    # the killed spill: recovered, with the blocks written before the crash (not all of it)
    rec = held[3]
    assert rec.status == "recovered" and rec.losses["daq_crash"] == 1
    assert 1024 <= rec.n_events < sent[3]["n_events_read"]
    assert "recovered run000001_spill00003.h5" in daq2.text
    # every spill whose start the new DAQ saw is complete
    seen = [n for n in range(4, 8) if f"run 1 spill {n} started" in daq2.text]
    assert len(seen) >= 2 and seen == list(range(seen[0], 8))
    for spill in seen:
        assert held[spill].status == "ok", held[spill]
        assert held[spill].n_events == sent[spill]["n_events_read"] > 0
        assert held[spill].n_particles == sent[spill]["n_particles"]
    # nothing silent: each spill is a file or a gap of the run with what the front-end sent
    [summary] = run_summaries(s.data)
    gaps = {g["spill"]: g for g in summary["gaps"]}
    for spill in range(1, 8):
        assert spill in held or spill in gaps, f"spill {spill}: neither a file nor a gap"
    for spill in set(gaps) - {3} - set(held):
        assert gaps[spill]["reason"] == "run_unknown"
        assert gaps[spill]["frontend"]["n_particles"] == sent[spill]["n_particles"]
    assert "re-announced by front-end" in daq2.text and "announcing run 1 again" in sim.text
    assert "lost: run 1 spill 3: recovered" in daq2.text
    assert "lost: spill 3:" in sim.text  # the front-end saw its slices not requested
    dqm.signal(signal.SIGTERM)
    dqm.wait(30)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_daq_stopped_by_a_signal_mid_spill_closes_the_spill(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], sig: signal.Signals
) -> None:
    """SIGHUP (the terminal closed) and SIGTERM close the spill in progress as a final file with status
    ``incomplete`` (no partial file left), and the DAQ exits 1 naming that spill."""
    s = Setup(tmp_path, processes)
    daq = s.daq()
    daq.wait_log("DAQ listening", 90)
    sim = s.simulate(spills=3, length=1.5, period=2.0)
    daq.wait_log("run 1 spill 2 started", 60)
    time.sleep(0.5)
    daq.signal(sig)
    assert daq.wait(60) == 1
    held = held_in_files(s.data)
    assert leftovers(s.data) == []
    assert held[1].status == "ok" and held[2].status == "incomplete" and held[2].n_events > 0
    assert f"{sig.name} received" in daq.text and "lost: run 1 spill 2: incomplete (stopped" in daq.text
    sim.signal(signal.SIGTERM)
    assert sim.wait(60) == 1  # the DAQ took only part of the run
