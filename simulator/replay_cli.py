"""``na64 replay``: play recorded spill files to a DAQ as a front-end over the wire protocol."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daq.curve import add_client_options, client_keys_of
from daq.errors import ConfigError, UserError
from daq.files import PARTIAL_SUFFIX, SpillFile, list_spill_files
from daq.process import tune_gc, tune_malloc
from simulator.replay import MAX_MERGE_SLICES, ReplayConfig, Replayer
from simulator.replay_spill import equivalence_overrides, toml_value

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="replay recorded spill files to a DAQ, as a front-end",
        description="Play recorded spill files (or directories of them, in run/spill order) to a running "
        "`na64 daq` over the wire protocol: the recorded particles' primitives with their original timing, "
        "readout answered from the stored waveforms, spill and run markers. Unreadable or partial files are "
        "skipped with a message and counted. See docs/replay.md for what a replay reproduces exactly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILES", help="spill files or directories")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=1.0, help="x real time (slices and spill spacing scaled)"
    )
    pace.add_argument("--pace", choices=["max"], default=None, help="'max': as fast as the DAQ takes it")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the DAQ's front-end endpoint (ROUTER)")
    add_client_options(p, "front-end")
    p.add_argument(
        "--slice-ms", type=float, default=None, help="slice length for files that do not record it"
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=2.0,
        help="SPILL_END when no readout request came for this many s after the last slice",
    )
    p.add_argument("--max-inflight", type=int, default=64, help="max pace: slices waiting for their request")
    p.add_argument(
        "--merge-slices",
        type=int,
        default=1,
        metavar="N",
        help=f"send every N consecutive recorded slices as one slice N times longer (1..{MAX_MERGE_SLICES}, at most "
        "4.29 s per slice): N times fewer slice, request and fragment messages for fast replays; the "
        "same particles, triggers and events, only their `slice` and `index` columns and the slice, "
        "request and fragment counts change (docs/replay.md). Larger N: larger messages and "
        "buffers (a request holds up to N slices of waveforms)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="s without the DAQ taking messages or requesting readouts before giving up (exit 1)",
    )
    p.add_argument(
        "--own-times",
        action="store_true",
        help="SPILL_START/END carry the replay's clock, not the recorded times",
    )
    p.add_argument(
        "--print-daq-settings",
        action="store_true",
        help="print the `na64 daq --set` options that make a DAQ keep every recorded event, and exit",
    )
    p.set_defaults(run=run)


def collect(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Spill files in (run, spill) order, plus the partial files found (reported, not replayed)."""
    partial: list[tuple[Path, str]] = []
    for p in paths:
        for c in sorted(p.iterdir()) if p.is_dir() else [p]:
            if c.name.endswith(PARTIAL_SUFFIX) and c.is_file():
                partial.append((c, f"{c}: partial file (still being written, or left by a crash)"))
    return list_spill_files(paths), partial


def run(args: argparse.Namespace) -> int:
    files, partial = collect(args.files)
    if args.print_daq_settings:
        return _print_settings(files)
    try:
        config = ReplayConfig(
            endpoint=args.endpoint,
            speed=None if args.pace == "max" else args.speed,
            request_timeout_s=args.request_timeout,
            max_inflight_slices=args.max_inflight,
            slice_ms=args.slice_ms,
            original_times=not args.own_times,
            stall_timeout_s=args.stall_timeout,
            merge_slices=args.merge_slices,
            client_keys=client_keys_of(args),
        )
    except ValueError as e:
        raise ConfigError(f"replay: {e}") from None
    for _path, reason in partial:
        log.warning("skipping %s", reason)
    if not files:
        raise UserError(f"no spill files to replay in {', '.join(map(str, args.files))}")
    stop = threading.Event()
    previous = _install_handlers(stop)
    tune_malloc()
    tune_gc()
    try:
        report = Replayer(config, stop=stop).run(files)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    report.skipped[:0] = partial
    print(f"na64 replay: {report.summary_line()}", flush=True)
    if report.nacks:
        print(
            f"na64 replay: the DAQ refused {sum(report.nacks.values())} messages: {report.nacks}", flush=True
        )

    for path, reason in report.skipped:
        print(f"  skipped {path.name}: {reason}", flush=True)
    if report.n_spills == 0 and not report.stopped:
        raise UserError(f"none of the {len(files) + len(partial)} files could be replayed")
    return 0


def _print_settings(files: list[Path]) -> int:
    if not files:
        raise UserError("--print-daq-settings needs at least one readable spill file")
    with SpillFile(files[0]) as f:
        trigger = f.trigger_config
        calibration = f.attrs.get("calibration_id", "")
    args = [
        a
        for k, v in equivalence_overrides(trigger).items()
        for a in ("--set", f"trigger.{k}={toml_value(v)}")
    ]
    print(shlex.join(args))
    print(
        f"# recorded with calibration {calibration!r}: give the DAQ the same constants (--calibration FILE)"
    )
    return 0


def _install_handlers(stop: threading.Event) -> dict[int, Callable[..., Any] | int | None]:
    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: finishing the current spill and stopping", signal.Signals(signum).name)
        stop.set()

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
