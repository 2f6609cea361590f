"""Replay benchmark: a whole run directory at maximum pace through the DAQ and a live DQM.

    python benchmarks/bench_replay.py                      # records a run first (simulate -> daq), then replays it
    python benchmarks/bench_replay.py --run-dir na64-data  # replays an existing run directory

Processes (real sockets, free loopback ports): ``na64 replay DIR --pace max`` -> ``na64 daq`` (with the
replay settings of ``na64 replay --print-daq-settings``) -> ``na64 dqm --source`` (Bokeh server). The
clock runs from the start of the replay process to the DAQ closing the last spill file (its final name
appears).

Prints spills/s, events/s, recorded particles/s and the speed relative to real time, for two
definitions of real time: the run's duration in the SPS cycle (spills x spill period, 10.8 s by default)
and the beam time alone (spills x spill length). Target: >= 20x (spill-period definition).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from daq.demo import free_port

ROOT = Path(__file__).resolve().parents[1]


def na64(*args: str) -> list[str]:
    return [sys.executable, "-m", "daq", "--log-level", "WARNING", *args]


class Proc:
    """A child process whose CPU time is collected with wait4."""

    def __init__(self, name: str, cmd: list[str], capture: bool = False) -> None:
        self.name = name
        self.p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.cpu_s = 0.0
        self.code: int | None = None

    def poll(self) -> int | None:
        """Exit code if the process has ended (reaped with wait4 to get its CPU time), else None."""
        if self.code is None:
            pid, status, usage = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                self.cpu_s = usage.ru_utime + usage.ru_stime
                self.code = os.waitstatus_to_exitcode(status)
                self.p.returncode = self.code
        return self.code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.poll()
            if code is not None:
                return code
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} did not finish within {timeout:.0f} s")

    def stop(self) -> None:
        if self.poll() is None:
            self.p.terminate()
            with contextlib.suppress(TimeoutError):
                self.wait(15)
            if self.code is None:
                self.p.kill()
                self.wait(5)


def record(run_dir: Path, spills: int, rate: float, length: float, period: float, seed: int) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daq = Proc(
        "daq",
        na64(
            "daq",
            "--endpoint",
            endpoint,
            "--publish",
            f"tcp://127.0.0.1:{free_port()}",
            "--data-dir",
            str(run_dir),
            "--stop-after-run",
        ),
    )
    sim = Proc(
        "simulate",
        na64(
            "simulate",
            "--endpoint",
            endpoint,
            "--pace",
            "max",
            "--spills",
            str(spills),
            "--rate",
            repr(rate),
            "--spill-length",
            repr(length),
            "--spill-period",
            repr(period),
            "--seed",
            str(seed),
        ),
    )
    try:
        t0 = time.monotonic()
        if sim.wait(3600) != 0 or daq.wait(600) != 0:
            raise SystemExit(f"recording failed: {sim.p.stderr.read() if sim.p.stderr else ''}")
        print(f"recorded {spills} spills of {length} s at {rate:.3g} Hz in {time.monotonic() - t0:.1f} s")
    finally:
        sim.stop()
        daq.stop()


def replay(run_dir: Path, out_dir: Path) -> dict[str, float]:
    settings = subprocess.run(
        na64("replay", str(run_dir), "--print-daq-settings"),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.splitlines()[0]
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daq = Proc(
        "daq",
        na64(
            "daq",
            "--endpoint",
            endpoint,
            "--publish",
            publish,
            "--data-dir",
            str(out_dir),
            "--stop-after-run",
            *shlex.split(settings),
        ),
    )
    dqm = Proc("dqm", na64("dqm", "--source", publish, "--port", "0"), capture=True)
    procs = [daq, dqm]
    try:
        url = _wait_url(dqm, 120)
        print(f"DQM live at {url}")
        time.sleep(1.0)  # let the DQM's SUB connect before the first events
        t0 = time.monotonic()
        rep = Proc(
            "replay", na64("replay", str(run_dir), "--pace", "max", "--endpoint", endpoint), capture=True
        )
        procs.append(rep)
        n_files = len(list(run_dir.glob("run*_spill*.h5")))
        wall = 0.0
        while rep.poll() is None or len(list(out_dir.glob("run*_spill*.h5"))) < n_files:
            if daq.poll() is not None:
                break
            time.sleep(0.01)
        wall = time.monotonic() - t0  # the last spill file is closed (renamed to its final name)
        if rep.wait(3600) != 0:
            raise SystemExit(f"replay failed: {rep.p.stderr.read() if rep.p.stderr else ''}")
        if daq.wait(600) != 0:
            raise SystemExit(f"daq failed: {daq.p.stderr.read() if daq.p.stderr else ''}")
        summary = rep.p.stdout.read() if rep.p.stdout else ""
        print(summary.strip())
        dqm.stop()
        return {"wall_s": wall, "cpu_replay": rep.cpu_s, "cpu_daq": daq.cpu_s, "cpu_dqm": dqm.cpu_s}
    finally:
        for p in reversed(procs):
            p.stop()


def replay_to_sink(run_dir: Path) -> float:
    """The replay front-end alone: into a ROUTER in this process that requests every particle of every
    slice (and nothing else) and drops the fragments. Returns the wall time of the replay process."""
    import numpy as np
    import zmq

    sys.path.insert(0, str(ROOT))
    from daq import protocol

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seq = protocol.SequenceCounter()
    t0 = time.monotonic()
    rep = Proc(
        "replay", na64("replay", str(run_dir), "--pace", "max", "--endpoint", f"tcp://127.0.0.1:{port}")
    )
    try:
        while rep.poll() is None:
            if not sock.poll(50):
                continue
            ident, *frames = sock.recv_multipart(copy=False)
            msg = protocol.decode(frames)
            if isinstance(msg, protocol.Slice):
                idx = np.arange(msg.n_particles, dtype=np.uint32)
                req = protocol.ReadoutRequest(
                    run=msg.run,
                    spill=msg.spill,
                    slice_id=msg.slice_id,
                    n_events=idx.size,
                    index=idx,
                    t_ns=np.asarray(msg.t_ns),
                )
                sock.send_multipart([ident, *protocol.encode(seq.stamp(req))], copy=False)
        return time.monotonic() - t0
    finally:
        rep.stop()
        sock.close(0)
        ctx.term()


def _wait_url(dqm: Proc, timeout: float) -> str:
    assert dqm.p.stdout is not None
    found: list[str] = []
    stream = dqm.p.stdout

    def pump() -> None:
        for line in stream:
            m = re.search(r"DQM at (http://\S+)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if dqm.poll() is not None:
            raise SystemExit(f"the DQM exited: {dqm.p.stderr.read() if dqm.p.stderr else ''}")
        if time.monotonic() > deadline:
            raise SystemExit("the DQM did not start")
        time.sleep(0.05)
    return found[0]


def totals(run_dir: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from daq.files import SpillFile, list_spill_files

    out = {"spills": 0.0, "events": 0.0, "particles": 0.0, "beam_s": 0.0, "period_s": 0.0, "skipped": 0.0}
    for path in list_spill_files(run_dir):
        with SpillFile(path) as f:
            out["spills"] += 1
            out["events"] += f.n_events
            ev = f.events(["index"])
            out["particles"] += int((ev["index"] != 0xFFFFFFFF).sum())
            cfg = f.frontend_info.get("config", {}).get("beam", {})
            out["beam_s"] += float(cfg.get("spill_length_s", 4.8))
            out["period_s"] += float(cfg.get("spill_period_s", 10.8))
            out["skipped"] += f.losses.get("monitor_skipped", 0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run-dir", type=Path, default=None, help="replay this run directory (default: record one)"
    )
    ap.add_argument("--spills", type=int, default=4, help="spills to record")
    ap.add_argument("--rate", type=float, default=2e6, help="beam rate of the recording, Hz")
    ap.add_argument("--spill-length", type=float, default=1.0, help="spill length of the recording, s")
    ap.add_argument("--spill-period", type=float, default=10.8, help="spill period of the recording, s")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        run_dir = args.run_dir
        if run_dir is None:
            run_dir = Path(tmp) / "recorded"
            record(run_dir, args.spills, args.rate, args.spill_length, args.spill_period, args.seed)
        rec = totals(run_dir)
        sink_wall = replay_to_sink(run_dir)
        res = replay(run_dir, Path(tmp) / "replayed")
        out = totals(Path(tmp) / "replayed")
    wall = res["wall_s"]
    print(
        f"run directory: {int(rec['spills'])} spills, {int(rec['events'])} events, "
        f"{int(rec['particles'])} recorded particles, {rec['beam_s']:.1f} s of beam in {rec['period_s']:.1f} s"
    )
    print(
        f"replayed through DAQ + live DQM in {wall:.2f} s: {out['spills'] / wall:.2f} spills/s, "
        f"{out['events'] / wall:.0f} events/s, {out['particles'] / wall:.0f} particles/s"
    )
    print(
        f"speed: {rec['period_s'] / wall:.1f} x real time (spill period), "
        f"{rec['beam_s'] / wall:.1f} x beam time (spill length); target >= 20x real time"
    )
    print(
        f"replay front-end alone (into a sink that reads every particle out): {sink_wall:.2f} s = "
        f"{rec['particles'] / sink_wall:.0f} events/s, {rec['period_s'] / sink_wall:.1f} x real time "
        "(process start-up included)"
    )
    print(
        f"events re-recorded: {int(out['events'])} of {int(rec['events'])}; events not sent to the DQM "
        f"(monitor_skipped): {int(out['skipped'])}"
    )
    print(
        f"CPU s: replay {res['cpu_replay']:.2f}, daq {res['cpu_daq']:.2f}, dqm {res['cpu_dqm']:.2f} "
        f"(self {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.2f})"
    )
    return 0 if out["events"] == rec["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
