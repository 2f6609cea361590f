"""``na64 demo`` on a cold kernel cache and stopped with Ctrl-C mid-spill (issue 16, findings 4 and 7)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, na64_command
from tests.faults.harness import held_in_files, leftovers, wait_for

pytestmark = pytest.mark.faults


def demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    import os

    cmd = na64_command(
        "demo", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--linger", "0"
    )
    return subprocess.Popen(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_demo_on_a_cold_kernel_cache_records_every_spill(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The first start after an install: numba's cache empty (NUMBA_CACHE_DIR of its own). The DAQ compiles
    its kernels before it acknowledges the run, the simulator streams no spill before the
    acknowledgement: every spill is ``ok`` with events, and the demo exits 0 only then."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    proc = demo(
        tmp_path,
        "--spills",
        "2",
        "--spill-length",
        "0.5",
        "--spill-period",
        "1",
        env={"NUMBA_CACHE_DIR": str(cache)},
    )
    processes.append(proc)  # type: ignore[arg-type]
    out, _ = proc.communicate(timeout=400)
    held = held_in_files(tmp_path / "data")
    assert any(cache.rglob("*.nbi")), "numba did not use the empty cache: the start was not cold"
    assert sorted(held) == [1, 2]
    for h in held.values():  # (before: both incomplete with 0 events, request_failed, and exit 0)
        assert h.status == "ok" and h.n_events > 0, h
    assert proc.returncode == 0, out[-3000:]
    assert "demo finished: all processes stopped cleanly" in out
    assert "compiling the DAQ's kernels took" in out  # it was cold, and it was paid before listening
    assert out.index("DAQ listening") > out.index("compiling the DAQ's kernels took")


def test_demo_stopped_by_ctrl_c_mid_spill_says_the_spill_was_cut_short(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Ctrl-C during a spill: the spill's file is final and ``incomplete`` (cut short), not ``ok``, and the
    demo does not report success."""
    proc = demo(tmp_path, "--spills", "5", "--spill-length", "2", "--spill-period", "2.5")
    processes.append(proc)  # type: ignore[arg-type]
    lines: list[str] = []
    assert proc.stdout is not None
    wait_for(
        lambda: lines.append(proc.stdout.readline()) or "run 1 spill 2 started" in lines[-1], 120, "spill 2"
    )
    time.sleep(0.7)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 1, out[-3000:]
    assert "demo finished" not in out and "losses after the stop request" in out
    held = held_in_files(tmp_path / "data")
    assert held[1].status == "ok"
    assert held[2].status == "incomplete" and held[2].losses["spill_cut_short"] == 1
    assert "cut short by the stop request" in out
    assert leftovers(tmp_path / "data") == []
