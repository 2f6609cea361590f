"""Replay benchmark: a whole run directory at maximum pace through the DAQ and a live DQM.

    python benchmarks/bench_replay.py                      # records a run first (simulate -> daq), then replays it
    python benchmarks/bench_replay.py --run-dir na64-data  # replays an existing run directory

Processes (real sockets, free loopback ports): ``na64 replay DIR --pace max`` -> ``na64 daq`` (with the
replay settings of ``na64 replay --print-daq-settings``) -> ``na64 dqm --source`` (Bokeh server). The
clock runs from the start of the replay process to the DAQ closing the last spill file (its final name
appears).

Prints spills/s, events/s, recorded particles/s and the speed relative to real time, for two
definitions of real time: the run's duration in the SPS cycle (spills x spill period, 10.8 s by default)
and the beam time alone (spills x spill length). Target: >= 20x (spill-period definition): MET/MISSED.
The recorded run has 10 full-intensity spills by default (2 MHz, 4.8 s every 10.8 s); the replay's own
start-up (~0.5 s: Python, numpy, h5py) counts once. The same speed without it (clock from the DAQ opening
the first spill file) is printed too.

CPU seconds of every process (wait4 rusage) in total and per spill, also net of each process's idle
start-up cost (measured once: the DAQ and DQM started without traffic, the replay's ``--help``), and
the front-end alone: the replay into a sink in this process that requests every recorded particle and
random window of each slice, as the DAQ does. The machine is shared: wall-clock figures depend on the
load (printed); CPU seconds do not. ``--profile DIR`` runs every process under cProfile (per thread).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from daq.demo import free_port

ROOT = Path(__file__).resolve().parents[1]


#: set by --profile DIR: every na64 process runs under cProfile (one file per process and thread)
PROFILE_DIR: Path | None = None


def na64(*args: str) -> list[str]:
    cmd = ["--log-level", "WARNING", *args]
    if PROFILE_DIR is not None:
        return [sys.executable, __file__, "--profiled-child", str(PROFILE_DIR / args[0]), *cmd]
    return [sys.executable, "-m", "daq", *cmd]


def profiled_child(prefix: str, argv: list[str]) -> int:
    """Run ``na64 ARGV`` with a cProfile per thread, timed in thread CPU seconds (waiting for a socket,
    a lock or the GIL does not count); writes PREFIX.<thread>.prof and PREFIX.threads.txt (CPU s)."""
    import cProfile
    import threading

    cpu: list[tuple[str, float]] = []
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)  # CPU time of the thread: waits do not count
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            cpu.append((self.name, time.thread_time()))
            prof.dump_stats(f"{prefix}.{self.name}.prof")

    threading.Thread.run = run  # type: ignore[method-assign]
    sys.path.insert(0, str(ROOT))
    from daq.cli import main as cli_main

    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        return cli_main(argv)
    finally:
        prof.disable()
        cpu.append(("main", time.thread_time()))
        prof.dump_stats(f"{prefix}.main.prof")
        Path(f"{prefix}.threads.txt").write_text("".join(f"{n} {c:.3f}\n" for n, c in cpu))


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


#: extra ``na64 replay`` options (--replay-args): e.g. ``--merge-slices 8``
REPLAY_ARGS: list[str] = []


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
            "replay",
            na64("replay", str(run_dir), "--pace", "max", "--endpoint", endpoint, *REPLAY_ARGS),
            capture=True,
        )
        procs.append(rep)
        n_files = len(list(run_dir.glob("run*_spill*.h5")))
        wall = 0.0
        t_first = math.nan  # the DAQ opened the first spill file: the replay's start-up is over
        while rep.poll() is None or len(list(out_dir.glob("run*_spill*.h5"))) < n_files:
            if daq.poll() is not None:
                break
            if math.isnan(t_first) and out_dir.is_dir() and any(out_dir.iterdir()):
                t_first = time.monotonic()
            time.sleep(0.005)
        wall = time.monotonic() - t0  # the last spill file is closed (renamed to its final name)
        if rep.wait(3600) != 0:
            raise SystemExit(f"replay failed: {rep.p.stderr.read() if rep.p.stderr else ''}")
        if daq.wait(600) != 0:
            raise SystemExit(f"daq failed: {daq.p.stderr.read() if daq.p.stderr else ''}")
        summary = rep.p.stdout.read() if rep.p.stdout else ""
        print(summary.strip())
        dqm.stop()
        return {
            "wall_s": wall,
            "startup_s": t_first - t0,
            "cpu_replay": rep.cpu_s,
            "cpu_daq": daq.cpu_s,
            "cpu_dqm": dqm.cpu_s,
        }
    finally:
        for p in reversed(procs):
            p.stop()


def merge_factor() -> int:
    """The ``--merge-slices`` of REPLAY_ARGS (1 without it)."""
    for i, a in enumerate(REPLAY_ARGS):
        if a == "--merge-slices" and i + 1 < len(REPLAY_ARGS):
            return int(REPLAY_ARGS[i + 1])
        if a.startswith("--merge-slices="):
            return int(a.split("=", 1)[1])
    return 1


def random_windows(run_dir: Path) -> dict[tuple[int, int, int], list[int]]:
    """Recorded random-trigger times by (run, spill, replayed slice)."""
    sys.path.insert(0, str(ROOT))
    from daq import protocol
    from daq.files import SpillFile, list_spill_files

    out: dict[tuple[int, int, int], list[int]] = {}
    for path in list_spill_files(run_dir):
        with SpillFile(path) as f:
            if any(key[:2] == (f.run, f.spill) for key in out):
                continue  # the same spill again (a copy): the same windows
            ev = f.events(["slice", "index", "t_ns"])
            rnd = ev["index"] == protocol.NO_PARTICLE
            merge = merge_factor()
            for k, t in zip(ev["slice"][rnd].tolist(), ev["t_ns"][rnd].tolist(), strict=True):
                out.setdefault((f.run, f.spill, k // merge), []).append(t)
    return out


def replay_to_sink(run_dir: Path) -> tuple[float, float]:
    """The replay front-end alone: into a ROUTER in this process that requests, per slice, every particle
    and the recorded random windows in time order (what the replaying DAQ asks) and drops the fragments.
    Returns the wall time and the CPU seconds of the replay process."""
    import numpy as np
    import zmq

    sys.path.insert(0, str(ROOT))
    from daq import protocol

    randoms = random_windows(run_dir)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seq = protocol.SequenceCounter()
    t0 = time.monotonic()
    rep = Proc(
        "replay",
        na64("replay", str(run_dir), "--pace", "max", "--endpoint", f"tcp://127.0.0.1:{port}", *REPLAY_ARGS),
    )
    try:
        while rep.poll() is None:
            if not sock.poll(50):
                continue
            ident, *frames = sock.recv_multipart(copy=False)
            msg = protocol.decode(frames)
            if isinstance(msg, protocol.Slice):
                rt = randoms.get((msg.run, msg.spill, msg.slice_id), [])
                idx = np.concatenate(
                    [
                        np.arange(msg.n_particles, dtype=np.uint32),
                        np.full(len(rt), protocol.NO_PARTICLE, np.uint32),
                    ]
                )
                t = np.concatenate([np.asarray(msg.t_ns, np.int64), np.asarray(rt, np.int64)])
                order = np.lexsort((idx, t))
                req = protocol.ReadoutRequest(
                    run=msg.run,
                    spill=msg.spill,
                    slice_id=msg.slice_id,
                    n_events=idx.size,
                    index=idx[order],
                    t_ns=t[order],
                )
                sock.send_multipart([ident, *protocol.encode(seq.stamp(req))], copy=False)
        rep.wait(60)
        return time.monotonic() - t0, rep.cpu_s
    finally:
        rep.stop()
        sock.close(0)
        ctx.term()


def idle_cpu() -> dict[str, float]:
    """CPU seconds of each process's start-up without traffic: DAQ and DQM run 2 s idle, replay --help."""
    publish = f"tcp://127.0.0.1:{free_port()}"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-idle-") as tmp:
        daq = Proc(
            "daq",
            na64(
                "daq", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--publish", publish, "--data-dir", tmp
            ),
        )
        dqm = Proc("dqm", na64("dqm", "--source", publish, "--port", "0"), capture=True)
        try:
            _wait_url(dqm, 120)
            time.sleep(2.0)
        finally:
            for p in (daq, dqm):
                p.stop()
        out["daq"], out["dqm"] = daq.cpu_s, dqm.cpu_s
    rep = Proc("replay", na64("replay", "--help"))
    rep.wait(60)
    out["replay"] = rep.cpu_s
    return out


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
    global PROFILE_DIR
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-child":
        return profiled_child(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run-dir", type=Path, default=None, help="replay this run directory (default: record one)"
    )
    ap.add_argument(
        "--spills",
        type=int,
        default=10,
        help="spills to record (default 10: a short run; the replay's start-up counts once per run)",
    )
    ap.add_argument("--rate", type=float, default=2e6, help="beam rate of the recording, Hz")
    ap.add_argument(
        "--spill-length",
        type=float,
        default=4.8,
        help="spill length of the recording, s (4.8: full SPS spills)",
    )
    ap.add_argument("--spill-period", type=float, default=10.8, help="spill period of the recording, s")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the replay, DAQ and DQM under cProfile (per thread) into DIR (slower; skips the sink run)",
    )
    ap.add_argument(
        "--replay-args",
        default="",
        metavar="ARGS",
        help="more options for na64 replay, e.g. '--merge-slices 8' (default: none)",
    )
    args = ap.parse_args()
    REPLAY_ARGS[:] = shlex.split(args.replay_args)
    if REPLAY_ARGS:
        print(f"na64 replay options: {' '.join(REPLAY_ARGS)}")
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        run_dir = args.run_dir
        if run_dir is None:
            run_dir = Path(tmp) / "recorded"
            record(run_dir, args.spills, args.rate, args.spill_length, args.spill_period, args.seed)
        rec = totals(run_dir)
        load0 = os.getloadavg()[0]
        idle = idle_cpu() if args.profile is None else {"replay": 0.0, "daq": 0.0, "dqm": 0.0}
        sink_wall, sink_cpu = replay_to_sink(run_dir) if args.profile is None else (float("nan"),) * 2
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            PROFILE_DIR = args.profile.resolve()
        res = replay(run_dir, Path(tmp) / "replayed")
        out = totals(Path(tmp) / "replayed")
    wall, n = res["wall_s"], max(rec["spills"], 1.0)
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) before / after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} cores")
    print(
        f"run directory: {int(rec['spills'])} spills, {int(rec['events'])} events "
        f"({rec['events'] / n:.0f} per spill), {int(rec['particles'])} recorded particles, "
        f"{rec['beam_s']:.1f} s of beam in {rec['period_s']:.1f} s"
    )
    print(
        f"replayed through DAQ + live DQM in {wall:.2f} s: {out['spills'] / wall:.2f} spills/s, "
        f"{out['events'] / wall:.0f} events/s, {out['particles'] / wall:.0f} particles/s"
    )
    speed = rec["period_s"] / wall
    print(
        f"speed: {speed:.1f} x real time (spill period), {rec['beam_s'] / wall:.1f} x beam time (spill length); "
        f"target >= 20x real time: {'MET' if speed >= 20 else 'MISSED'}"
    )
    steady = wall - res["startup_s"]
    print(
        f"without the replay's start-up ({res['startup_s']:.2f} s until the first spill file opened): "
        f"{steady:.2f} s = {rec['period_s'] / steady:.1f} x real time, {steady / n:.3f} s per spill"
    )
    print("CPU s per process: total, per spill, per spill net of start-up (idle start-up CPU s)")
    for name in ("replay", "daq", "dqm"):
        cpu = res[f"cpu_{name}"]
        print(
            f"  {name:6s} {cpu:7.2f}  {cpu / n:6.2f}  {(cpu - idle[name]) / n:6.2f}   (start-up {idle[name]:.2f})"
        )
    total_net = sum(res[f"cpu_{k}"] - idle[k] for k in ("replay", "daq", "dqm")) / n
    cores = os.cpu_count() or 1
    print(
        f"  all    {sum(res[f'cpu_{k}'] for k in ('replay', 'daq', 'dqm')):7.2f}  "
        f"{sum(res[f'cpu_{k}'] for k in ('replay', 'daq', 'dqm')) / n:6.2f}  {total_net:6.2f}   "
        f"=> CPU-bound limit on {cores} cores: {rec['period_s'] / n / max(total_net / cores, 1e-9):.1f} x real time"
    )
    if not math.isnan(sink_wall):
        print(
            f"replay front-end alone (into a sink reading out every particle and random window): "
            f"{sink_wall:.2f} s = {rec['events'] / sink_wall:.0f} events/s, "
            f"{rec['period_s'] / sink_wall:.1f} x real time (start-up included); CPU {sink_cpu:.2f} s = "
            f"{sink_cpu / n:.2f} s per spill, {(sink_cpu - idle['replay']) / n:.2f} net of start-up"
        )
    print(
        f"events re-recorded: {int(out['events'])} of {int(rec['events'])}; events not sent to the DQM "
        f"(monitor_skipped, sampled by the DAQ): {int(out['skipped'])}"
    )
    return 0 if out["events"] == rec["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
