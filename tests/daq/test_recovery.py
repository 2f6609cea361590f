"""Crash-safe spill files (issue 16, finding 2): a writer killed at random moments leaves a partial file
that recovers into a valid spill file holding every whole block written before the kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daq.batch import EventBatch
from daq.files import SpillFile, partial_filename
from daq.recovery import recover_directory, recover_partial
from tests.conftest import na64_command
from tests.daq.test_writer import ROOT, assert_file_holds, batches

BLOCK = 64 * 16  # events per block with chunk_events=16: the unit a crash can lose
SIZES = [300, 517, 1200, 64, 900, 2000, 333, 1500, 700, 1100] * 3

WRITER = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    from daq.writer import SpillWriter, WriterConfig
    from daq.writer_commands import SpillHeader
    from tests.daq.test_writer import batches
    w = SpillWriter(Path(sys.argv[1]), SpillHeader(run=5, spill=2), WriterConfig(chunk_events=16))
    print("open", flush=True)
    n = 0
    for b in batches({SIZES!r}):
        n += len(b)
        print("appending", n, w.good_events, flush=True)  # before: a kill inside append is covered
        w.append(b)
    print("all appended", flush=True)
    import time
    time.sleep(60)  # killed before closing
    """
)


def write_and_kill(data: Path, delay: float) -> tuple[int, int]:
    """A writer process killed (SIGKILL) ``delay`` s after it opened its file: (events handed to the
    writer at most, events it had checkpointed at least) as it last said before the kill."""
    data.mkdir(exist_ok=True)
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "open"
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    appended = checkpointed = 0
    lines = p.stdout.read().splitlines()
    p.stdout.close()
    for line in lines:
        if line.startswith("appending"):
            appended, checkpointed = (int(x) for x in line.split()[1:])
    return appended, checkpointed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_writer_killed_at_a_random_moment_leaves_a_recoverable_file(tmp_path: Path, seed: int) -> None:
    delay = random.Random(seed).uniform(0.2, 2.5)
    appended, checkpointed = write_and_kill(tmp_path / "data", delay)
    partial = tmp_path / "data" / partial_filename(5, 2)
    res = recover_partial(partial)
    assert res.file == "run000005_spill00002.h5", (delay, res)
    assert res.n_events % BLOCK == 0 and checkpointed <= res.n_events <= appended, (delay, res, appended)
    assert not partial.exists()
    path = tmp_path / "data" / res.file
    keep = EventBatch.concat(batches(SIZES))
    assert_file_holds(path, [keep.take(slice(0, res.n_events))])
    with SpillFile(path) as f:
        assert f.status == "recovered" and f.losses["daq_crash"] == 1
        assert f.summary()["status"] == "recovered" and f.summary()["n_events_written"] == res.n_events


def test_na64_recover_a_partial_file_moved_elsewhere(tmp_path: Path) -> None:
    write_and_kill(tmp_path / "data", 1.5)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    src = tmp_path / "data" / partial_filename(5, 2)
    src.rename(moved / src.name)
    out = subprocess.run(na64_command("recover", str(moved)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "run000005_spill00002.h5: recovered" in out.stdout
    with SpillFile(moved / "run000005_spill00002.h5") as f:
        assert f.status == "recovered" and f.n_events % BLOCK == 0
    bad = subprocess.run(na64_command("recover", str(tmp_path / "x.h5")), capture_output=True, text=True)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_partial_file_that_is_not_hdf5_is_kept_aside_and_reported(tmp_path: Path) -> None:
    partial = tmp_path / partial_filename(1, 1)
    partial.write_bytes(b"\0" * 4096)  # a DAQ killed before it wrote anything useful
    [res] = recover_directory(tmp_path)
    assert res.file is None and res.error
    assert not partial.exists() and (tmp_path / (partial.name + ".unrecoverable")).exists()
    assert recover_directory(tmp_path) == []  # not retried at every start
