"""False-alarm benchmark of the DQM: fault-free spills through the live chain, then every simulator fault.

    python benchmarks/bench_dqm_alarms.py [--spills 120] [--runs 3] [--rate 2e6]
        [--spill-length 0.5] [--spill-period 1] [--monitor-batches 40] [--faults all|none|NAME,...]
        [--json out.json]

The live chain of a shift: ``na64 simulate`` (real time) -> ``na64 daq`` -> ``na64 dqm --mqtt`` with a
real mosquitto; alarms are read from the DQM's retained MQTT topics (every alarm payload carries its
latest transitions), as any consumer would.

1. **Fault-free**: ``--spills`` spills in ``--runs`` runs (every run a new ``na64 simulate``: a new
   front-end identity, a run end, a new run); the DQM is restarted (SIGTERM, then a new process) in the
   middle of the second run. Alarms raised (and escalations) are counted by check and severity, per 100
   spills. An alarm is marked *true* when the DAQ's own spill summary shows what it reports (data lost,
   spill incomplete): those are not false alarms of the DQM.
2. **Faults**: a reference is promoted from the fault-free run's files (``na64 dqm-reference``), the
   DQM restarted with it, and each simulator fault runs as its own short run (a short clean run between
   two). Detection latency = the spill of the expected alarm's first raise minus the fault's first
   spill; faults without a spill (``dead`` before the run's first spill, a killed DAQ) in seconds too.

The spills are shortened (0.5 s every 1 s instead of 4.8 s every 10.8 s) to fit >= 100 spills in a few
minutes. The checks' thresholds come from p-values computed from the spill's own counts, so their
false-alarm probability per spill does not depend on the spill length; what a shorter spill changes is
the number of monitored waveforms (one per DAQ EVENTS message): ``--monitor-batches 40`` (DAQ
``monitor.batches_per_s``, default 4) gives a 0.5 s spill the ~20 waveforms a 4.8 s spill has by default.
Run ``--spill-length 4.8 --spill-period 6 --monitor-batches 4 --faults none`` for the nominal spill.
Figures are printed; nothing is asserted (tests/dqm has the checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, na64_command, wait_daq_listening  # noqa: E402

PREFIX = "bench/dqm"

#: fault, expected alarm(s) (any of them), first spill of the fault (0: from the start), spills to run.
#: A stall lasts at most the rest of its spill (0.4 s here): shorter than the front-end's heartbeat and
#: the DAQ's status period (1 s), so it shows as the spill's missing EOT rather than as a STALLED state.
#: Two more, not simulator faults: the DAQ killed (SIGKILL) and the run's front-end killed, in spill 2.
FAULTS: list[tuple[str, tuple[str, ...], int, int]] = [
    ("dead:ECAL22", ("dead_channels",), 0, 3),
    ("noisy:ECAL25", ("hot_channels",), 0, 3),
    ("hot:ECAL00", ("hot_channels",), 0, 3),
    ("gain_drift:ECAL:-4", ("electron_peak",), 1, 4),
    ("pedestal_jump:ECAL:15:2", ("pedestals",), 2, 4),
    ("no_answer:HCAL:2", ("missing_sources",), 2, 4),
    ("empty_fragment:SRD:2:0.1", ("missing_sources",), 2, 4),
    ("spike:4:0.08:2500:2", ("early_saturation",), 2, 4),
    ("beam_off:2", ("beam_off",), 2, 4),
    ("stall:2:0.1:0.4", ("frontend_heartbeat", "eot"), 2, 4),
    ("daq_killed", ("daq_heartbeat",), 2, 4),
    ("frontend_killed", ("frontend_heartbeat",), 2, 4),
]


# ---------------------------------------------------------------- processes
@dataclass
class Chain:
    """mosquitto, the DAQ and the DQM of one benchmark, with their logs in ``work``."""

    work: Path
    monitor_batches: int
    broker_port: int = field(default_factory=free_port)
    endpoint: str = field(default_factory=lambda: f"tcp://127.0.0.1:{free_port()}")
    publish: str = field(default_factory=lambda: f"tcp://127.0.0.1:{free_port()}")
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    dqm_starts: int = 0

    def start_broker(self) -> None:
        conf = self.work / "mosquitto.conf"
        conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        mosquitto = shutil.which("mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
        if mosquitto is None:
            raise SystemExit("bench_dqm_alarms: mosquitto is not installed")
        self.procs["mosquitto"] = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def start_daq(self) -> None:
        log = self.work / "daq.log"
        with log.open("a") as err:
            self.procs["daq"] = subprocess.Popen(
                na64_command(
                    "daq",
                    "--endpoint",
                    self.endpoint,
                    "--publish",
                    self.publish,
                    "--data-dir",
                    str(self.work / "data"),
                    "--set",
                    f"monitor.batches_per_s={self.monitor_batches}",
                ),
                stderr=err,
            )
        wait_daq_listening(self.procs["daq"], log)

    def start_dqm(self, *extra: str) -> None:
        conf = self.work / "dqm.toml"
        conf.write_text(f'[mqtt]\ntopic_prefix = "{PREFIX}"\nstatus_period_s = 2.0\n')
        self.dqm_starts += 1
        with (self.work / f"dqm{self.dqm_starts}.log").open("w") as err:
            proc = subprocess.Popen(
                na64_command(
                    "dqm",
                    "--source",
                    self.publish,
                    "--port",
                    "0",
                    "--mqtt",
                    f"mqtt://127.0.0.1:{self.broker_port}",
                    "--config",
                    str(conf),
                    *extra,
                ),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("DQM at "):
            proc.kill()
            raise SystemExit(f"bench_dqm_alarms: the DQM did not start ({line!r}); see {err.name}")
        self.procs["dqm"] = proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def simulate(self, run: int, spills: int, args: argparse.Namespace, *extra: str) -> subprocess.Popen[Any]:
        with (self.work / f"sim{run}.log").open("w") as err:
            return subprocess.Popen(
                na64_command(
                    "simulate",
                    "--endpoint",
                    self.endpoint,
                    "--run",
                    str(run),
                    "--spills",
                    str(spills),
                    "--rate",
                    str(args.rate),
                    "--spill-length",
                    str(args.spill_length),
                    "--spill-period",
                    str(args.spill_period),
                    "--seed",
                    "1",
                    *extra,
                ),
                stderr=err,
            )

    def close(self) -> None:
        for name in ("dqm", "daq", "mosquitto"):
            self.stop(name)


# ---------------------------------------------------------------- what the DQM published
class Recorder:
    """Every alarm transition and spill summary the DQM publishes (paho, in its own thread)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.events: dict[tuple[str, float, str], dict[str, Any]] = {}
        self.spills: dict[tuple[int, int], dict[str, Any]] = {}
        self.alarms: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        with self.lock:
            if msg.topic.startswith(f"{PREFIX}/alarms/"):
                self.alarms[doc.get("name", "?")] = doc
                for e in doc.get("history", []):
                    self.events.setdefault((e["name"], e["time"], e["event"]), e)
            elif msg.topic == f"{PREFIX}/spill":
                self.spills[(int(doc["run"]), int(doc["spill"]))] = doc

    def raises(self, runs: set[int] | None = None) -> list[dict[str, Any]]:
        """Activations and escalations (what makes an alarm unacknowledged), oldest first."""
        with self.lock:
            out = [e for e in self.events.values() if e["event"] in ("raised", "escalated")]
        return sorted((e for e in out if runs is None or e["run"] in runs), key=lambda e: e["time"])

    def n_spills(self, runs: set[int]) -> int:
        with self.lock:
            return sum(1 for run, _ in self.spills if run in runs)

    def acknowledge_all(self) -> None:
        self.client.publish(f"{PREFIX}/ack", json.dumps({"name": "all", "by": "benchmark"}), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


#: alarms that report what the DAQ itself says about a spill: true when its summary shows it
DATA_ALARMS = {"losses", "missing_sources", "spill_status"}


def is_true(event: dict[str, Any], rec: Recorder) -> bool:
    """The DAQ's spill summary shows what the alarm says (data lost, spill not ok)."""
    if event["name"] not in DATA_ALARMS:
        return False
    with rec.lock:
        s = rec.spills.get((int(event["run"]), int(event["spill"])))
    if s is None:
        return False
    lost = {
        k: v for k, v in (s.get("losses") or {}).items() if v and k not in ("dead_time", "monitor_skipped")
    }
    return bool(lost) or s.get("status") != "ok"


def recorded_spills(chain: Chain, runs: set[int]) -> int:
    """Spill files the DAQ wrote for these runs."""
    return sum(1 for f in (chain.work / "data").glob("run*_spill*.h5") if int(f.name[3:9]) in runs)


def wait_run(sim: subprocess.Popen[Any], timeout: float) -> None:
    try:
        sim.wait(timeout)
    except subprocess.TimeoutExpired:
        sim.kill()
        sim.wait(10)
        print(f"  (simulate did not finish within {timeout:.0f} s)")


# ---------------------------------------------------------------- the two parts
def fault_free(chain: Chain, rec: Recorder, args: argparse.Namespace) -> dict[str, Any]:
    per_run = max(args.spills // args.runs, 3)
    runs = list(range(1, args.runs + 1))
    t0 = time.monotonic()
    budget = per_run * args.spill_period * 3 + 60
    for run in runs:
        sim = chain.simulate(run, per_run, args)
        if run == 2:  # a DQM restart in the middle of a run
            time.sleep(per_run * args.spill_period / 2)
            chain.stop("dqm")
            chain.start_dqm()
            print(f"  DQM restarted during run {run}")
        wait_run(sim, budget)
        time.sleep(2.0 * args.spill_period + 2.0)  # the last spill is checked; the run's end is seen
        print(f"  run {run} done ({time.monotonic() - t0:.0f} s)")
    time.sleep(5.0)  # between runs: heartbeats, suppression of the front-end alarm
    raised = rec.raises(set(runs))
    n = recorded_spills(chain, set(runs))
    checked = rec.n_spills(set(runs))
    false = [e for e in raised if not is_true(e, rec)]
    true = [e for e in raised if is_true(e, rec)]
    table = Counter((e["name"], e["severity"]) for e in false)
    print(
        f"\n[fault-free] {n} spills recorded in {len(runs)} runs ({args.spill_length} s every {args.spill_period} s "
        f"at {args.rate:.3g} Hz, DAQ monitor.batches_per_s {args.monitor_batches}), {checked} checked by the DQM "
        "(the others fell into its restart in run 2):"
    )
    print(f"  {'check':24s} {'WARN':>6s} {'ERROR':>6s}   (alarms raised or escalated; per 100 spills)")
    for name in sorted({k for k, _ in table}):
        w, err = table[(name, "WARN")], table[(name, "ERROR")]
        print(f"  {name:24s} {w:6d} {err:6d}   ({100 * w / max(n, 1):.1f}, {100 * err / max(n, 1):.1f})")
    w_all = sum(v for (_, s), v in table.items() if s == "WARN")
    e_all = sum(v for (_, s), v in table.items() if s == "ERROR")
    print(
        f"  {'all checks':24s} {w_all:6d} {e_all:6d}   ({100 * w_all / max(n, 1):.2f}, {100 * e_all / max(n, 1):.2f})"
    )
    for e in false:
        print(f"  false? run {e['run']} spill {e['spill']} {e['name']} {e['severity']}: {e['message'][:150]}")
    for e in true:
        print(
            f"  true (the DAQ's summary shows it): run {e['run']} spill {e['spill']} {e['name']} {e['severity']}: {e['message'][:120]}"
        )
    return {
        "spills": n,
        "checked": checked,
        "runs": runs,
        "warn": w_all,
        "error": e_all,
        "by_check": {f"{k} {s}": v for (k, s), v in table.items()},
        "false": false,
        "true": true,
    }


def faults(chain: Chain, rec: Recorder, args: argparse.Namespace, wanted: list[str]) -> list[dict[str, Any]]:
    ref = chain.work / "reference.json"
    res = subprocess.run(
        na64_command("dqm-reference", str(chain.work / "data"), "--out", str(ref)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"\n[faults] {res.stdout.strip() or res.stderr.strip()[-300:]}")
    chain.stop("dqm")
    chain.start_dqm("--reference", str(ref))
    time.sleep(3.0)
    out: list[dict[str, Any]] = []
    clean_runs: set[int] = set()
    clean_windows: list[tuple[float, float]] = []  # wall-clock spans of the clean runs' second spill on
    run = 20
    selected = [f for f in FAULTS if wanted == ["all"] or f[0].split(":")[0] in wanted or f[0] in wanted]
    for fault, expected, start, spills in selected:
        run += 1
        clean_runs.add(run)
        between = chain.simulate(run, 2, args)  # a clean run in between: alarms of the previous fault return
        t_clean = time.time()
        wait_run(between, 2 * args.spill_period * 3 + 60)
        time.sleep(2 * args.spill_period + 2)
        clean_windows.append((t_clean, time.time()))
        rec.acknowledge_all()
        time.sleep(1.0)
        run += 1
        t_fault = time.time()
        if fault in ("daq_killed", "frontend_killed"):
            sim = chain.simulate(run, spills, args)
            time.sleep(args.spill_period * (start - 0.5) + 3.0)  # the simulator's start-up, then spill 2
            t_fault = time.time()
            if fault == "daq_killed":
                chain.stop("daq", signal.SIGKILL)
            sim.kill()
            time.sleep(10.0)
            sim.wait(10)
            if fault == "daq_killed":
                chain.start_daq()
            else:  # the DAQ is still in the killed front-end's run: a new run ends it
                time.sleep(2.0)
        else:
            sim = chain.simulate(run, spills, args, "--fault", fault)
            wait_run(sim, spills * args.spill_period * 3 + 60)
        time.sleep(2 * args.spill_period + 4.0)
        hits = [e for e in rec.raises({run}) if e["name"] in expected]
        if fault in ("daq_killed", "frontend_killed"):  # live alarms: after the kill, whatever run they name
            hits = [e for e in rec.raises() if e["name"] in expected and e["time"] >= t_fault]
        others = sorted({(e["name"], e["severity"]) for e in rec.raises({run}) if e["name"] not in expected})
        first = hits[0] if hits else None
        seconds = None if first is None else first["time"] - t_fault
        # a killed process: the latency is the heartbeat timeout, in seconds (the spill a live alarm names
        # is the DAQ's latest, not the one the kill fell into)
        live = fault in ("daq_killed", "frontend_killed")
        latency = None if first is None or live else max(int(first["spill"]) - max(start, 1), 0)
        row = {
            "fault": fault,
            "expected": "|".join(expected),
            "run": run,
            "first_spill": start,
            "raised": first is not None,
            "alarm": None if first is None else first["name"],
            "spill": None if first is None else first["spill"],
            "severity": None if first is None else first["severity"],
            "latency_spills": latency,
            "seconds_after_start": seconds,
            "message": None if first is None else first["message"],
            "others": others,
        }
        out.append(row)
        if first is None:
            status = "NOT RAISED"
        elif live:
            status = f"{first['severity']} {seconds:.1f} s after the kill"
        else:
            status = f"{first['severity']} in spill {first['spill']} (latency {latency} spill(s), {seconds:.1f} s after the start)"
        print(f"  {fault:26s} {first['name'] if first else '|'.join(expected):18s} {status}")
        if first is not None:
            print(f"      {first['message'][:160]}")
        if others:
            print(f"      also: {', '.join(f'{n} {s}' for n, s in others)}")
    # the clean runs between the faults are fault-free spills too, against a reference of many spills;
    # selected by time (a live alarm carries the run the DQM last knew), from their second spill on (the
    # first may still end the previous fault's alarm)
    clean = [
        e
        for e in rec.raises()
        if any(t0 <= e["time"] <= t1 for t0, t1 in clean_windows)
        and not (e["run"] in clean_runs and e["spill"] <= 1)
    ]
    n = recorded_spills(chain, clean_runs)
    print(
        f"  the clean runs between the faults: {n} spills against the reference; alarms raised from their "
        f"second spill on: {len(clean)}"
        + "".join(
            f"\n    run {e['run']} spill {e['spill']} {e['name']} {e['severity']}: {e['message'][:120]}"
            for e in clean
        )
    )
    out.append({"fault": "none (clean runs between the faults)", "spills": n, "alarms": clean})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spills", type=int, default=120, help="fault-free spills in all (default 120)")
    p.add_argument("--runs", type=int, default=3, help="fault-free runs (default 3)")
    p.add_argument("--rate", type=float, default=2e6, help="beam rate, Hz (default 2e6)")
    p.add_argument("--spill-length", type=float, default=0.5)
    p.add_argument("--spill-period", type=float, default=1.0)
    p.add_argument("--monitor-batches", type=int, default=40, help="DAQ monitor.batches_per_s (default 40)")
    p.add_argument("--faults", default="all", help="all, none, or fault names (comma-separated)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, spill files)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_dqm_alarms."))
    chain = Chain(work, args.monitor_batches)
    rec = None
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        chain.start_broker()
        rec = Recorder(chain.broker_port)
        chain.start_daq()
        chain.start_dqm()
        time.sleep(2.0)
        print(f"work directory {work}")
        result["fault_free"] = fault_free(chain, rec, args)
        if args.faults != "none":
            result["faults"] = faults(chain, rec, args, args.faults.split(","))
    finally:
        if rec is not None:
            rec.close()
        chain.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
