"""A data directory that fills up in the middle of a spill: a small tmpfs (issue 16, finding 7)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Setup, held_in_files, leftovers

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs (about two spills of the test's beam); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data directory needs root (mount -t tmpfs)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not allowed here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_a_full_disk_closes_the_spill_incomplete_and_recording_resumes(
    tmp_path: Path, small_disk: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Spill 2 runs out of space: it is closed ``incomplete`` with the blocks already on disk (not
    deleted), its missing events counted as ``write_error``; the operator frees space and spill 3 is
    recorded ``ok``. The DAQ exits 1 naming spill 2."""
    s = Setup(tmp_path, processes)
    daq = s.daq("--min-free-mb", "2", "--set", "writer.sync_every_mb=2", data=small_disk)
    daq.wait_log("DAQ listening", 90)
    sim = s.simulate(spills=3, length=1.4, period=2.6, rate=1.5e6)
    daq.wait_log("spill summary run 1 spill 2", 60)
    first = small_disk / "run000001_spill00001.h5"
    assert first.exists()
    sent_1 = held_in_files(small_disk)[1]
    first.unlink()  # the operator makes room
    assert sim.wait(60) == 0  # the front-end's data was all taken: the loss is the DAQ's disk
    daq.wait_log("spill summary run 1 spill 3", 30)
    daq.signal(signal.SIGTERM)
    assert daq.wait(30) == 1
    held = held_in_files(small_disk)
    assert sent_1.status == "ok"
    spill2 = held[2]
    assert spill2.status == "incomplete" and spill2.n_events >= 1024 and spill2.losses["write_error"] > 0
    assert spill2.n_events % 1024 == 0  # whole blocks, as they were on disk
    assert held[3].status == "ok" and held[3].n_events > 0
    assert "No space left on device" in daq.text and "lost: run 1 spill 2: incomplete" in daq.text
    assert leftovers(small_disk) == []
