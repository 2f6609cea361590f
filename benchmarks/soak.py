"""Soak: the real DAQ, front-end and DQM processes for N spills, longer than CI allows (issue 16).

Starts ``na64 daq``, ``na64 dqm`` and ``na64 simulate`` on loopback ports, optionally kills the DAQ
(SIGKILL) once in the middle of a spill and restarts it (``--kill-daq-in-spill K``), and samples every
second the resident memory (VmRSS) and CPU time of each process. At the end it prints, per process, RSS
at start / at half time / at the end and its growth per 100 spills over the second half, CPU seconds per spill; the
spills by status, the losses by reason summed over the spill files, the gaps of the run summary, every
file that does not open, partial files left; the DQM's spills with a WARN or ERROR (false alarms in a
fault-free run) and the DAQ's alarms seen in its status documents; the exit codes.

    python benchmarks/soak.py --spills 200                                  # ~36 min at the SPS cycle
    python benchmarks/soak.py --spills 20 --spill-length 1 --spill-period 2  # a quick one
    python benchmarks/soak.py --spills 30 --spill-length 1 --spill-period 2.2 --kill-daq-in-spill 10
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from daq import files, protocol
from daq.contract import NOT_DATA_LOSS, is_breakdown

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(pid: int) -> tuple[float, float] | None:
    """(RSS in MB, CPU seconds) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6
    except (OSError, IndexError):
        return None
    return rss, (int(stat[11]) + int(stat[12])) / TICK


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.series: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(1.0):
            for name, p in list(self.procs.items()):
                s = sample(p.pid)
                if s is not None and s[0] > 0 and p.poll() is None:
                    self.series[name].append((time.monotonic() - t0, *s))


class Feed(threading.Thread):
    """The DAQ's published documents: status alarms and spill summaries (what the DQM reads)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.alarms: collections.Counter[str] = collections.Counter()
        self.summaries: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.address)
        while not self.stop.is_set():
            if not sub.poll(200):
                continue
            try:
                msg = protocol.decode(sub.recv_multipart())
            except Exception:
                continue
            if isinstance(msg, protocol.Summary):
                doc = json.loads(msg.text)
                if msg.kind == protocol.Summary.KIND_STATUS:
                    for name in doc.get("alarms", {}):
                        self.alarms[name] += 1
                elif msg.kind == protocol.Summary.KIND_SPILL:
                    self.summaries.append(doc)
        sub.close(0)


def start(name: str, args: list[str], log: Path, sampler: Sampler) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "daq", *args], stdout=out, stderr=subprocess.STDOUT)
    sampler.procs[name] = p
    return p


def wait_text(log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {needle!r} in {log}")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spills", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2e6)
    ap.add_argument("--spill-length", type=float, default=4.8)
    ap.add_argument("--spill-period", type=float, default=10.8)
    ap.add_argument("--kill-daq-in-spill", type=int, default=0, help="SIGKILL the DAQ 0.6 s into spill K")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the spill files (default: deleted at the end)")
    a = ap.parse_args()
    work = a.dir or Path(tempfile.mkdtemp(prefix="na64-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daq_args = ["daq", "--endpoint", endpoint, "--publish", publish, "--data-dir", str(data)]
    daq_args += ["--calibration", "nominal", "--stop-after-run"]
    sampler = Sampler()
    sampler.start()
    feed = Feed(publish)
    feed.start()
    t0 = time.monotonic()
    daq = start("daq", daq_args, work / "daq.log", sampler)
    wait_text(work / "daq.log", "DAQ listening", 300)
    dqm = start("dqm", ["dqm", "--source", publish, "--port", str(free_port())], work / "dqm.log", sampler)
    sim_args = ["simulate", "--endpoint", endpoint, "--spills", str(a.spills), "--rate", repr(a.rate)]
    sim_args += ["--spill-length", repr(a.spill_length), "--spill-period", repr(a.spill_period)]
    sim = start("simulate", sim_args, work / "sim.log", sampler)
    if a.kill_daq_in_spill:
        wait_text(work / "daq.log", f"run 1 spill {a.kill_daq_in_spill} started", 3600)
        time.sleep(0.6)
        daq.send_signal(signal.SIGKILL)
        daq.wait()
        time.sleep(2.0)
        daq = start("daq", daq_args, work / "daq2.log", sampler)
    codes = {"simulate": sim.wait(), "daq": daq.wait(timeout=120)}
    time.sleep(3)
    dqm.send_signal(signal.SIGTERM)
    codes["dqm"] = dqm.wait(30)
    wall = time.monotonic() - t0
    sampler.stop.set()
    feed.stop.set()
    sampler.join()
    feed.join()

    print(
        f"soak: {a.spills} spills of {a.spill_length} s every {a.spill_period} s at {a.rate:.3g} Hz, "
        f"{wall:.0f} s wall; work directory {work}"
    )
    print(f"exit codes: {codes}")
    print("process    RSS start    half time   end   growth/100 spills   CPU s/spill")
    per_spill = max(a.spills, 1)
    for name, s in sampler.series.items():
        if len(s) < 3:
            continue
        rss = [x[1] for x in s]
        k = len(s) // 2  # half time: start-up and the first spills' allocations are behind
        growth = (rss[-1] - rss[k]) / max(a.spills / 2, 1) * 100
        print(
            f"{name:9s} {rss[0]:8.0f} MB {rss[k]:10.0f} MB {rss[-1]:7.0f} MB {growth:+12.1f} MB "
            f"{s[-1][2] / per_spill:14.2f}   (median RSS {statistics.median(rss):.0f} MB)"
        )
    statuses: collections.Counter[str] = collections.Counter()
    losses: collections.Counter[str] = collections.Counter()
    bad_files = []
    for path in files.list_spill_files([data]):
        try:
            with files.SpillFile(path) as f:
                statuses[f.status] += 1
                losses.update({k: v for k, v in f.losses.items() if v and not is_breakdown(k)})
        except Exception as e:
            bad_files.append(f"{path.name}: {e}")
    print(f"spill files by status: {dict(statuses)}; files that do not open: {bad_files or 'none'}")
    print(f"partial files left: {sorted(p.name for p in data.glob('.*')) or 'none'}")
    data_losses = {k: v for k, v in losses.items() if k not in NOT_DATA_LOSS}
    print(
        f"losses over the files: data {data_losses or 'none'}; not data {dict(losses - collections.Counter(data_losses)) or 'none'}"
    )
    for p in sorted(data.glob("run*_summary*.json")):
        doc = json.loads(p.read_text())
        print(
            f"{p.name}: {doc['status_counts']}, gaps {[(g['spill'], g['reason']) for g in doc['gaps']] or 'none'}, "
            f"losses outside spills {({k: v for k, v in doc['losses_outside_spills'].items() if v}) or 'none'}"
        )
    dqm_text = (work / "dqm.log").read_text(errors="replace")
    closed = [line for line in dqm_text.splitlines() if re.search(r"run \d+ spill \d+ closed:", line)]
    flagged = [line.split("dqm.monitor: ")[-1] for line in closed if "no WARN or ERROR" not in line]
    print(f"DQM: {len(closed)} spills judged, {len(flagged)} with a WARN or ERROR: {flagged[:10] or 'none'}")
    print(f"DAQ alarms in its status documents (documents carrying each): {dict(feed.alarms) or 'none'}")
    print(f"spill summaries published: {len(feed.summaries)}")
    if not a.keep and a.dir is None:
        for p in data.glob("*.h5"):
            p.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
