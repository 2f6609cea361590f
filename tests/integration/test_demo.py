"""End to end: ``na64 demo`` and the three services as separate processes over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from daq import files
from tests.conftest import free_port, na64_command, require_program

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and b"bokeh" in r.read().lower()
    except OSError:
        return False


def test_demo_two_quick_spills_exits_by_itself(tmp_path: Path) -> None:
    """The issue's acceptance command: exits 0 by itself, two valid spill files, page served meanwhile."""
    data = tmp_path / "data"
    port = free_port()
    cmd = na64_command(
        "demo",
        "--spills",
        "2",
        "--spill-length",
        "0.5",
        "--spill-period",
        "1",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--linger",
        "1",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = f"http://127.0.0.1:{port}/"
        wait_for(lambda: http_ok(page) or proc.poll() is not None, 90, "the DQM page")
        assert http_ok(page), "the DQM page did not answer while the demo ran"
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert out.count(f"http://127.0.0.1:{port}/") == 1, out  # one DQM URL, printed once
    paths = files.list_spill_files([data])
    assert [p.name for p in paths] == ["run000001_spill00001.h5", "run000001_spill00002.h5"]
    assert not list(data.glob("*.partial"))
    h5dump = require_program("h5dump")
    for path in paths:
        with files.SpillFile(path) as f:
            assert f.attrs["status"] == "ok"
            assert f.attrs["n_beam"] > 0.5 * 2e6 * 0.5  # most of 1e6 particles are electrons on target
            assert f.n_events > 0
        listing = subprocess.run([h5dump, "-H", str(path)], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        assert "format_version" in listing.stdout and "waveforms" in listing.stdout
        inspected = subprocess.run(
            na64_command("inspect", str(path)), capture_output=True, text=True, timeout=60
        )
        assert inspected.returncode == 0, inspected.stderr
        assert "EOT" in inspected.stdout


def test_demo_sigterm_stops_everything_and_closes_the_spill(tmp_path: Path) -> None:
    """SIGTERM in the middle of a long spill: every child exits, the open spill file is closed properly."""
    data = tmp_path / "data"
    cmd = na64_command(
        "demo",
        "--spill-length",
        "30",
        "--spill-period",
        "31",
        "--rate",
        "2e5",
        "--data-dir",
        str(data),
        "--port",
        str(free_port()),
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_for(lambda: any(data.glob("*.partial")) or proc.poll() is not None, 90, "a spill in progress")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the spill was cut short: not a success (issue 16), and the demo says so
    assert proc.returncode == 1 and "losses after the stop request" in out, out
    # no child left behind: nothing else in the demo's process group
    alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert alive.stdout.strip() == "", f"orphans: {alive.stdout}"
    paths = files.list_spill_files([data])
    assert len(paths) == 1 and not list(data.glob("*.partial"))
    with files.SpillFile(paths[0]) as f:
        assert f.attrs["status"] == "incomplete" and f.losses["spill_cut_short"] == 1
        assert f.n_events > 0


def test_services_as_separate_processes_file_matches_what_the_frontend_sent(
    tmp_path: Path, processes
) -> None:  # type: ignore[no-untyped-def]
    """Simulator, DAQ and DQM started by hand on real sockets; the file agrees with the front-end's counts."""
    data = tmp_path / "data"
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    daq = subprocess.Popen(
        na64_command(
            "daq", "--endpoint", endpoint, "--publish", publish, "--data-dir", str(data), "--stop-after-run"
        )
    )
    processes.append(daq)
    dqm = subprocess.Popen(
        na64_command("dqm", "--source", publish, "--port", str(port)), stdout=subprocess.DEVNULL
    )
    processes.append(dqm)
    sim = subprocess.Popen(
        na64_command(
            "simulate",
            "--endpoint",
            endpoint,
            "--rate",
            "1e6",
            "--spills",
            "1",
            "--spill-length",
            "0.5",
            "--spill-period",
            "0.8",
            "--seed",
            "7",
        )
    )
    processes.append(sim)
    assert sim.wait(timeout=120) == 0
    assert daq.wait(timeout=60) == 0
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/"), 30, "the DQM page")
    dqm.send_signal(signal.SIGTERM)
    assert dqm.wait(timeout=30) == 0
    (path,) = files.list_spill_files([data])
    with files.SpillFile(path) as f:
        summary = f.summary()
        frontend = summary["frontend"]
        events = f.events()
        counts, _edges = f.histograms()["arrival_time"]
        assert int(np.sum(counts)) == frontend["n_particles"] == summary["n_particles"]
        assert f.n_events == summary["n_events_written"] == summary["n_accepted"] == frontend["n_events_read"]
        assert frontend["n_slices"] == frontend["n_requests"]
        assert frontend["n_fragments"] == 6 * frontend["n_requests"]
        assert all(v == 0 for k, v in summary["losses"].items() if k not in ("dead_time", "monitor_skipped"))
        assert 0 < f.attrs["n_beam"] <= frontend["n_particles"]
        assert np.all(np.diff(events["t_ns"]) >= 0)
        assert f.waveforms(slice(0, 3)).shape == (min(3, f.n_events), 110, 32)


def test_the_same_demo_command_twice_records_a_new_run_and_overwrites_nothing(tmp_path: Path) -> None:
    """A user runs the README's command again in the same directory: the second demo takes the next free
    run number (recorded runs are never overwritten, issue 16), both exit 0, the first run's file is
    untouched."""
    data = tmp_path / "data"
    cmd = [
        *("demo", "--spills", "1", "--spill-length", "0.3", "--spill-period", "0.6"),
        *("--data-dir", str(data), "--linger", "0"),
    ]
    outs = []
    for _ in range(2):
        done = subprocess.run(
            na64_command(*cmd, "--port", str(free_port())), capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outs.append(done.stdout)
        if not outs[1:]:
            first = (data / "run000001_spill00001.h5").stat()
    assert "run 1," in outs[0] and "run 2," in outs[1]
    names = [p.name for p in files.list_spill_files([data])]
    assert names == ["run000001_spill00001.h5", "run000002_spill00001.h5"]
    again = (data / "run000001_spill00001.h5").stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (
        first.st_ino,
        first.st_mtime_ns,
        first.st_size,
    )


def test_next_free_run_looks_at_every_file_the_daq_leaves(tmp_path: Path) -> None:
    from daq.demo import next_free_run

    assert next_free_run(tmp_path / "missing") == 1
    (tmp_path / "run000003_spill00001.h5").touch()
    (tmp_path / ".run000007_spill00002.h5.partial").touch()
    (tmp_path / "run000005_summary.json").touch()
    (tmp_path / "notes.txt").touch()
    assert next_free_run(tmp_path) == 8
