"""End to end: ``na64 simulate`` and ``na64 daq`` as separate processes on this machine.

Runs the simulator at the beam rate in realtime for N full spills against the DAQ, listens to the DAQ's
publish socket (spill summaries, status) and samples both processes' CPU time from /proc. Prints, per
spill: particles, EOT, accepted, written, losses, front-end vs DAQ counters, and how long after the
front-end's SPILL_END the spill file was closed (the summary is published only after the close); then the
CPU share of each process. Exit code 1 if any target is missed.

    python benchmarks/bench_readout.py                       # 2 MHz, 5 spills of 4.8 s every 10.8 s
    python benchmarks/bench_readout.py --spills 1 --spill-length 1 --spill-period 2   # quick look
    python benchmarks/bench_readout.py --curve     # the same over ZeroMQ CURVE (keys made in a temp dir)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from daq import curve, protocol
from daq.demo import free_port
from daq.files import SpillFile

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads) in seconds, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (the DAQ's writer thread is named na64-writer)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2e6)
    ap.add_argument("--spills", type=int, default=5)
    ap.add_argument("--spill-length", type=float, default=4.8)
    ap.add_argument("--spill-period", type=float, default=10.8)
    ap.add_argument(
        "--slice-ms", type=float, default=20.0, help="SLICE length (default: the simulator default, 20 ms)"
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory, removed")
    ap.add_argument("--daq-arg", action="append", default=[], help="extra argument for na64 daq (repeatable)")
    ap.add_argument(
        "--curve",
        action="store_true",
        help="authenticate and encrypt both links with ZeroMQ CURVE (na64 daq --server-key, simulate and "
        "this listener with client keys): the cost of encryption",
    )
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-readout-")
    data = args.data_dir or Path(tmp.name) / "data"
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    py = [sys.executable, "-m", "daq"]
    daq_log = open(Path(tmp.name) / "daq.log", "w+")  # noqa: SIM115
    sim_log = open(Path(tmp.name) / "sim.log", "w+")  # noqa: SIM115
    curve_daq: list[str] = []
    curve_sim: list[str] = []
    listener_keys = None
    if args.curve:
        keys = Path(tmp.name) / "keys"
        for name in ("server/daq", "allowed/simulate", "allowed/bench"):
            curve.generate(keys / name)
        curve_daq = [
            "--server-key",
            str(keys / "server/daq.key_secret"),
            "--allowed-clients",
            str(keys / "allowed"),
        ]
        curve_sim = [
            "--server-public-key",
            str(keys / "server/daq.key"),
            "--client-key",
            str(keys / "allowed/simulate.key_secret"),
        ]
        listener_keys = curve.client_keys(keys / "server/daq.key", keys / "allowed/bench.key_secret")
    daq = subprocess.Popen(
        [
            *py,
            "daq",
            "--endpoint",
            endpoint,
            "--publish",
            publish,
            "--data-dir",
            str(data),
            "--stop-after-run",
            *curve_daq,
            *args.daq_arg,
        ],
        stdout=daq_log,
        stderr=subprocess.STDOUT,
    )
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    if listener_keys is not None:
        curve.secure_client(sub, listener_keys)
    sub.connect(publish)
    sub.subscribe(b"")
    summaries: dict[int, tuple[dict[str, Any], int]] = {}
    sim: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, float]] = []
    threads: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while not sub.poll(200):  # the first status document: the DAQ is up
            if daq.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("na64 daq did not start")
        sim = subprocess.Popen(
            [
                *py,
                "simulate",
                "--endpoint",
                endpoint,
                "--rate",
                str(args.rate),
                "--spills",
                str(args.spills),
                "--spill-length",
                str(args.spill_length),
                "--spill-period",
                str(args.spill_period),
                "--slice-ms",
                str(args.slice_ms),
                "--pace",
                "realtime",
                *curve_sim,
            ],
            stdout=sim_log,
            stderr=subprocess.STDOUT,
        )
        t_start = time.monotonic()
        mono_to_wall = time.time() - t_start  # wall-clock = monotonic + this
        limit = t_start + 120 + args.spills * args.spill_period * 1.5
        next_sample = 0.0
        while daq.poll() is None and time.monotonic() < limit:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now, cpu_seconds(daq.pid), cpu_seconds(sim.pid)))
                next_sample = now + 0.25
            if sub.poll(50):
                msg = protocol.decode(sub.recv_multipart())
                if isinstance(msg, protocol.Summary) and msg.kind == protocol.Summary.KIND_SPILL:
                    doc = json.loads(msg.text)
                    summaries[doc["spill"]] = (doc, time.time_ns())
                    print(f"  spill {doc['spill']} summary received: status {doc['status']}", flush=True)
            if daq.poll() is None:
                for name, sec in thread_cpu(daq.pid).items():
                    threads[name] = max(threads.get(name, 0.0), sec)
        sim.wait(60)
        daq.wait(60)
    finally:
        for p in (sim, daq):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        sub.close(0)
        ctx.term()

    ok = True
    print(
        f"\nna64 simulate --rate {args.rate:g} --spills {args.spills} --spill-length {args.spill_length} "
        f"--spill-period {args.spill_period} --pace realtime  ->  na64 daq (separate processes)"
        + (", both links over CURVE" if args.curve else "")
    )
    print(
        f"{'spill':>5} {'particles':>10} {'EOT':>10} {'accepted':>8} {'written':>8} {'phys/beam/rand':>16} "
        f"{'dead%':>6} {'losses':>14} {'fe==daq':>7} {'close s':>7} {'MB':>6}"
    )
    for spill in range(1, args.spills + 1):
        if spill not in summaries:
            print(f"{spill:>5} NO SUMMARY")
            ok = False
            continue
        s, t_recv = summaries[spill]
        c, fe = s["counters"], s["frontend"]
        losses = {k: v for k, v in s["losses"].items() if v and k not in ("dead_time", "monitor_skipped")}
        same = (
            fe.get("n_slices") == c["n_slices"]
            and fe.get("n_requests") == c["n_requests"]
            and fe.get("n_fragments") == c["n_fragments"] == 6 * c["n_requests"]
            and fe.get("n_events_read") == c["n_events_read"]
            and fe.get("n_particles") == c["n_particles"]
        )
        close_s = (t_recv - s["t_end_ns"]) / 1e9 if s["t_end_ns"] else float("nan")
        tr = s["triggers"]
        print(
            f"{spill:>5} {s['n_particles']:>10,} {s['n_beam']:>10,} {s['n_accepted']:>8,} "
            f"{s['n_events_written']:>8,} {tr['physics']:>6}/{tr['beam']}/{tr['random']:<4} "
            f"{100 * s['dead_time_fraction']:>6.2f} {json.dumps(losses) if losses else 'none':>14} "
            f"{'yes' if same else 'NO':>7} {close_s:>7.3f} {s['write_mb']:>6.1f}"
        )
        ok &= s["status"] == "ok" and not losses and same and s["n_events_written"] == s["n_accepted"]
        ok &= close_s < 1.0
        if s["file"]:
            with SpillFile(data / s["file"]) as f:
                ok &= f.n_events == s["n_accepted"] and f.attrs["n_beam"] == s["n_beam"]
    if len(samples) >= 2:
        (t0, d0, s0), (t1, d1, s1) = samples[0], samples[-1]
        wall = t1 - t0
        print(
            f"\nCPU over {wall:.1f} s wall: na64 daq {d1 - d0:.1f} s ({100 * (d1 - d0) / wall:.1f}% of one core), "
            f"na64 simulate {s1 - s0:.1f} s ({100 * (s1 - s0) / wall:.1f}%)"
        )
        busy = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]
        busy.sort()
        if busy:
            top = busy[int(0.9 * (len(busy) - 1))]
            print(
                f"na64 daq CPU share in 0.25 s windows: median {100 * busy[len(busy) // 2]:.1f}%, "
                f"90th percentile {100 * top:.1f}%, max {100 * busy[-1]:.1f}% of one core"
            )
        # in-spill share: the windows inside [end - spill length, end] of a spill (front-end's SPILL_END)
        spans = [
            (doc["t_end_ns"] / 1e9 - mono_to_wall - args.spill_length, doc["t_end_ns"] / 1e9 - mono_to_wall)
            for doc, _ in summaries.values()
            if doc.get("t_end_ns")
        ]
        in_cpu = in_wall = 0.0
        for a, b in itertools.pairwise(samples):
            mid = 0.5 * (a[0] + b[0])
            if any(lo <= mid <= hi for lo, hi in spans):
                in_cpu += b[1] - a[1]
                in_wall += b[0] - a[0]
        if in_wall > 0:
            share = in_cpu / in_wall
            print(
                f"na64 daq CPU share during the spills (windows inside the {args.spill_length:g} s spills): "
                f"{100 * share:.1f}% of one core (target <= 50%: {'met' if share <= 0.5 else 'MISSED'})"
            )
            ok &= share <= 0.5
        beam_s = args.spills * args.spill_length
        print(
            f"CPU per second of beam ({args.rate:g} Hz): na64 daq {(d1 - d0) / beam_s:.2f} s, "
            f"na64 simulate {(s1 - s0) / beam_s:.2f} s"
        )
        if threads:
            print(
                "na64 daq CPU by thread, whole process life (s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1]))
            )
    daq_log.seek(0)
    lines = daq_log.read().splitlines()
    tail = [line for line in lines if "WARNING" in line or "ERROR" in line]
    if tail:
        print("\nDAQ warnings/errors:\n  " + "\n  ".join(tail[:20]))
    ends = [line for line in lines if " ended (" in line or "closed run" in line or "spill summary" in line]
    print("\nDAQ spill ends:\n  " + "\n  ".join(ends[:30]))
    print("\nRESULT:", "all targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
