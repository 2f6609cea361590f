"""``na64 conformance``: check a front-end against docs/protocol.md by playing the DAQ's side.

The shell around :class:`daq.conformance.Conformance`: it binds a ROUTER socket on ``--endpoint`` (as
``na64 daq`` does; the front-end connects to it), passes every received message and the time to the core,
sends the requests the core plans, and prints the report (text or ``--json``). Exit code 0 when every
check passed, 1 when one failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import zmq

from daq import protocol
from daq.conformance import Conformance, Report
from daq.errors import UserError

log = logging.getLogger(__name__)

#: how long to wait for one more message once the session is done (answers to the last requests)
DRAIN_S = 0.3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "conformance",
        help="check a front-end against the wire protocol (plays the DAQ)",
        description="Check a front-end (hardware or software) against docs/protocol.md. Binds a ROUTER "
        "socket on --endpoint like na64 daq (point the front-end at it as at the DAQ), checks every "
        "message it sends (header, CRC, sequence numbers, ranges, shapes, t_ns order, 12-bit samples, "
        "SLICE/REQUEST/FRAGMENT consistency, heartbeats, SPILL_END counters), answers each SLICE with a "
        "READOUT_REQUEST that exercises the readout (zero-event requests, random-trigger entries, requests "
        "without t_ns, a repeated request) and prints PASS/FAIL per check. Stops at RUN_STOP, after "
        "--spills complete spills, or after --timeout seconds. Exit code 0: every check passed; 1: a check "
        "failed; 2: usage error. Example: na64 simulate --spills 2 --spill-length 0.2 & "
        "na64 conformance --endpoint tcp://127.0.0.1:5555",
    )
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5555",
        help="where to bind the DAQ's ROUTER socket (the front-end connects here)",
    )
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds")
    p.add_argument(
        "--spills",
        type=int,
        default=2,
        metavar="N",
        help="stop after N complete spills (or at the front-end's RUN_STOP)",
    )
    p.add_argument("--json", dest="json_out", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout}: must be > 0 seconds")
    if args.spills < 1:
        raise UserError(f"--spills {args.spills}: must be >= 1")
    report = check_frontend(args.endpoint, args.timeout, args.spills)
    if args.json_out:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(report.text())
    return 0 if report.passed else 1


def check_frontend(endpoint: str, timeout_s: float, spills: int) -> Report:
    """Bind ``endpoint``, run a session until done or ``timeout_s``, and return the report."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 500)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        ctx.term()
        raise UserError(f"--endpoint {endpoint}: {e}") from None
    log.info("conformance: listening on %s (timeout %.0f s, %d spills)", endpoint, timeout_s, spills)
    core = Conformance(max_spills=spills)
    start = time.monotonic()
    deadline = start + timeout_s
    stopped = f"timeout after {timeout_s:g} s"
    try:
        while True:
            now = time.monotonic()
            if core.done:
                if not core.run_stopped:
                    _drain(sock, core)
                stopped = "RUN_STOP received" if core.run_stopped else f"{core.spills_done} spills checked"
                break
            if now >= deadline:
                break
            if sock.poll(int(min(100, (deadline - now) * 1000) + 1), zmq.POLLIN):
                _receive_all(sock, core)
            core.tick(time.monotonic())
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        sock.close()
        ctx.term()
    return core.report(time.monotonic(), stopped)


def _receive_all(sock: zmq.Socket[bytes], core: Conformance) -> None:
    while True:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        ident = frames[0].bytes
        for req in core.receive(ident, frames[1:], time.monotonic()):
            sock.send_multipart([ident, *protocol.encode(req)], copy=False)


def _drain(sock: zmq.Socket[bytes], core: Conformance) -> None:
    """Take what is still arriving (heartbeats, a RUN_STOP) for a moment."""
    end = time.monotonic() + DRAIN_S
    while time.monotonic() < end and not core.run_stopped:
        if sock.poll(50, zmq.POLLIN):
            _receive_all(sock, core)


if __name__ == "__main__":  # pragma: no cover
    from daq.cli import main

    sys.exit(main(["conformance", *sys.argv[1:]]))
