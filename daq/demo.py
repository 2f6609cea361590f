"""``na64 demo``: simulator -> DAQ -> HDF5 -> live DQM on localhost, as three real processes.

The demo is a small process supervisor. It starts ``na64 daq`` (binding free loopback ports), then
``na64 dqm`` attached to the DAQ's feed (prints its URL), then ``na64 simulate``. It stops by itself after
``--spills N``, or on Ctrl-C / SIGTERM: the simulator is asked to stop first (it closes the spill with
SPILL_END and RUN_STOP, so the DAQ closes the spill file properly), then the DAQ, then the DQM. Children
run in their own sessions with a parent-death signal, so even a killed demo leaves no orphans.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from daq.errors import DaqError, UserError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
URL_LINE = re.compile(r"DQM at (http://\S+)")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run simulator -> DAQ -> HDF5 -> live DQM on this machine",
        description="Start a simulated front-end, the DAQ and the DQM web page as three processes on "
        "localhost; spill files go to --data-dir. Stops after --spills N, or on Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--spills", type=int, default=None, help="stop cleanly after N spills (default: run until Ctrl-C)"
    )
    p.add_argument("--data-dir", type=Path, default=Path("na64-data"), help="where spill files are written")
    p.add_argument("--rate", type=float, default=2e6, help="beam rate in Hz")
    p.add_argument("--spill-length", type=float, default=4.8, help="spill length in s")
    p.add_argument("--spill-period", type=float, default=10.8, help="spill period in s")
    p.add_argument("--port", type=int, default=5006, help="DQM web page port (on 127.0.0.1)")
    p.add_argument(
        "--run",
        dest="run_number",
        type=int,
        default=None,
        help="run number (default: the next one free in --data-dir, so the same command can run again: "
        "recorded runs are never overwritten)",
    )
    p.add_argument("--seed", type=int, default=None, help="simulator random seed")
    p.add_argument(
        "--signal",
        default=None,
        metavar="MODEL:MASS_MEV:COUPLING",
        help="inject a Z' signal (yield from the model, mass and coupling; see na64 simulate --help)",
    )
    p.add_argument(
        "--signal-boost",
        type=float,
        default=None,
        metavar="X",
        help="multiply the Z' yield by X so that a short run shows signal (na64 simulate --signal-boost)",
    )
    p.add_argument("--fault", action="append", default=[], help="simulator fault NAME[:ARGS] (repeatable)")
    p.add_argument("--linger", type=float, default=3.0, help="seconds the DQM stays up after the last spill")
    p.set_defaults(run=run)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: own session (no terminal Ctrl-C), SIGTERM when the demo dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised ``na64`` subprocess."""

    def __init__(self, name: str, args: list[str], stdout: int | None = None) -> None:
        self.name = name
        cmd = [sys.executable, "-m", "daq", *args]
        log.debug("starting %s: %s", name, " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=stdout, preexec_fn=_die_with_parent, text=stdout is not None)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s: killing it", self.name, timeout)
            self.proc.kill()
            return self.proc.wait()


def _wait_for_url(child: Child, timeout: float) -> str:
    """Read the DQM's stdout until it prints its URL; forward everything else it prints."""
    assert child.proc.stdout is not None
    stream: IO[str] = child.proc.stdout
    deadline = time.monotonic() + timeout
    found: list[str] = []

    def pump() -> None:
        for line in stream:
            m = URL_LINE.search(line)
            if m and not found:
                found.append(m.group(1))
                continue  # the demo prints the URL itself, once
            sys.stdout.write(line)
            sys.stdout.flush()

    threading.Thread(target=pump, name="dqm-stdout", daemon=True).start()
    while not found:
        if not child.running():
            raise DaqError(f"the DQM exited with code {child.proc.returncode} before serving its page")
        if time.monotonic() > deadline:
            raise DaqError(f"the DQM did not report its URL within {timeout:.0f} s")
        time.sleep(0.05)
    return found[0]


def _validate(args: argparse.Namespace) -> None:
    if args.spills is not None and args.spills < 1:
        raise UserError(f"--spills must be >= 1 (got {args.spills})")
    if not args.rate > 0:
        raise UserError(f"--rate must be > 0 Hz (got {args.rate})")
    if not 0 < args.spill_length <= args.spill_period:
        raise UserError(
            f"need 0 < --spill-length <= --spill-period (got {args.spill_length} and {args.spill_period})"
        )
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be a TCP port (got {args.port})")
    try:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --data-dir {args.data_dir}: {e.strerror}") from None


def next_free_run(data_dir: Path) -> int:
    """1 + the highest run number of any file the DAQ left in ``data_dir`` (spill files, partial files,
    run summaries), 1 for an empty or new directory."""
    runs = [int(m.group(1)) for f in _names(data_dir) if (m := re.match(r"\.?run(\d{6})_", f))]
    return max(runs, default=0) + 1


def _names(data_dir: Path) -> list[str]:
    try:
        return [f.name for f in Path(data_dir).iterdir()]
    except OSError:  # no directory yet (or not readable: the DAQ then says so)
        return []


def run(args: argparse.Namespace) -> int:
    from daq.extras import require

    require("dqm", "na64 demo (it starts na64 dqm)")
    _validate(args)
    if args.run_number is None:
        args.run_number = next_free_run(args.data_dir)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    publish = f"tcp://127.0.0.1:{free_port()}"
    level = ["--log-level", args.log_level, "--log-format", args.log_format]
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: stopping the demo", signal.Signals(signum).name)
        stop_requested.set()

    previous: dict[int, Callable[..., Any] | int | None] = {
        s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    children: list[Child] = []
    try:
        daq = Child(
            "daq",
            [
                *level,
                "daq",
                "--endpoint",
                endpoint,
                "--publish",
                publish,
                "--data-dir",
                str(args.data_dir),
                "--calibration",
                "nominal",  # the simulator's detector is the nominal one: on purpose, no warning
                "--stop-after-run",
            ],
        )
        children.append(daq)
        dqm = Child(
            "dqm", [*level, "dqm", "--source", publish, "--port", str(args.port)], stdout=subprocess.PIPE
        )
        children.append(dqm)
        url = _wait_for_url(dqm, timeout=60)
        print(
            f"na64 demo: DQM live at {url}  (run {args.run_number}, spill files in {args.data_dir.resolve()}; "
            "Ctrl-C stops)",
            flush=True,
        )
        sim_args = [
            *level,
            "simulate",
            "--endpoint",
            endpoint,
            "--rate",
            repr(args.rate),
            "--run",
            str(args.run_number),
            "--spill-length",
            repr(args.spill_length),
            "--spill-period",
            repr(args.spill_period),
        ]
        if args.spills is not None:
            sim_args += ["--spills", str(args.spills)]
        if args.seed is not None:
            sim_args += ["--seed", str(args.seed)]
        if args.signal:
            sim_args += ["--signal", args.signal]
        if args.signal_boost is not None:
            sim_args += ["--signal-boost", repr(args.signal_boost)]
        for fault in args.fault:
            sim_args += ["--fault", fault]
        sim = Child("simulate", sim_args)
        children.append(sim)
        return _supervise(sim, daq, dqm, stop_requested, args.linger)
    finally:
        for child in reversed(children):
            if child.running():
                child.stop(timeout=10)
        for s, h in previous.items():
            signal.signal(s, h)


def _supervise(sim: Child, daq: Child, dqm: Child, stop_requested: threading.Event, linger: float) -> int:
    """Wait for the run to end (or a stop request / a child failure) and stop everything in order."""
    while sim.running() and daq.running() and dqm.running() and not stop_requested.is_set():
        time.sleep(0.1)
    # the DAQ exits 0 by itself once the run is over (--stop-after-run); only an error exit is a failure
    failed = [c.name for c in (daq, dqm) if not c.running() and c.proc.returncode != 0]
    if failed:
        log.error(
            "%s exited unexpectedly (code %s): stopping the demo",
            failed[0],
            {"daq": daq, "dqm": dqm}[failed[0]].proc.returncode,
        )
    sim_code = sim.stop(timeout=30)  # ends the current spill with SPILL_END and the run with RUN_STOP
    try:
        daq_code = daq.proc.wait(timeout=30)  # --stop-after-run: exits once the last spill file is closed
    except subprocess.TimeoutExpired:
        daq_code = daq.stop(timeout=15)
    if not stop_requested.is_set() and not failed:
        time.sleep(linger)  # let the page show the last spill before it goes away
    dqm_code = dqm.stop(timeout=15)
    codes = {"simulate": sim_code, "daq": daq_code, "dqm": dqm_code}
    bad = {k: v for k, v in codes.items() if v not in (0, -signal.SIGTERM)}
    if bad or failed:
        log.error(
            "demo ended with %s: exit codes %s (the lines 'lost:' above say what was not recorded)",
            "losses after the stop request" if stop_requested.is_set() else "losses or errors",
            codes,
        )
        return 1
    log.info("demo finished: all processes stopped cleanly")
    return 0
