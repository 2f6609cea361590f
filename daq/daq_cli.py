"""``na64 daq`` (run the readout) and ``na64 inspect`` (summarise spill files)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from daq.errors import UserError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "daq",
        help="run the DAQ: trigger, readout, event building, HDF5 spill files, DQM feed",
        description="Bind a ROUTER socket for front-ends (na64 simulate, na64 replay or hardware), trigger on "
        "the primitives of every particle, read out the accepted ones, write one HDF5 file per spill and "
        "publish built events and summaries for the DQM. SIGINT/SIGTERM close the current spill file "
        "(marked incomplete) and exit 0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5555",
        help="ZeroMQ endpoint to bind for front-ends (non-loopback only if given explicitly)",
    )
    p.add_argument(
        "--publish", default="tcp://127.0.0.1:5556", help="ZeroMQ endpoint to bind for the DQM feed"
    )
    p.add_argument(
        "--server-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="this DAQ's secret key file (NAME.key_secret from na64 keys generate): CURVE on both sockets "
        "(front-ends and DQM feed), with --allowed-clients (docs/protocol.md, deployment security)",
    )
    p.add_argument(
        "--allowed-clients",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of the public keys (*.key) of the front-ends and DQMs allowed to connect",
    )
    p.add_argument("--data-dir", default="na64-data", type=Path, help="directory of the spill files")
    p.add_argument("--config", type=Path, default=None, help="DAQ configuration file (TOML, see docs/daq.md)")
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration key, e.g. --set trigger.ecal_max_gev=70 (repeatable)",
    )
    p.add_argument(
        "--calibration",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="calibration constants file, or a directory of them (*.json; repeatable): the one valid for "
        "the run is used at RUN_START, and a run with none usable (none valid, ambiguous, unreadable) is "
        "not recorded; 'nominal': record with the nominal constants on purpose (default, without the "
        "option: nominal constants, with a warning)",
    )
    p.add_argument(
        "--stop-after-run",
        action="store_true",
        help="exit 0 once the first run has stopped and its last spill file is closed",
    )
    p.add_argument(
        "--min-free-mb",
        type=float,
        default=None,
        help="do not record a spill when less than this is free (default: storage.min_free_mb = 500)",
    )
    p.add_argument(
        "--fragment-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to wait for the fragments of a readout request "
        "(default: readout.fragment_timeout_s = 5)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics and the health check on /healthz "
        "(docs/operations.md; default: off)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (defaults, --config, --set and the options above) as TOML "
        "that --config accepts, with the software version, and exit",
    )
    p.set_defaults(run=run_daq)

    q = subparsers.add_parser(
        "inspect",
        help="print a readable summary of spill files",
        description="Summarise HDF5 spill files: run, spill, status, EOT, triggers by type, events written, "
        "losses by reason, time range, calibration, compression and size. A bad, partial or non-HDF5 file "
        "gives one line on stderr and exit code 2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("files", nargs="+", type=Path, metavar="FILE", help="spill files or directories of them")
    q.add_argument("--json", action="store_true", help="print one JSON document (a list, one entry per file)")
    q.set_defaults(run=run_inspect)

    r = subparsers.add_parser(
        "recover",
        help="recover spill files a crashed DAQ left unfinished (.partial)",
        description="Make valid spill files of .runNNNNNN_spillNNNNN.h5.partial files that a DAQ left "
        "behind (kill -9, crash, power cut), in the directory they are in: every block of events the "
        "DAQ had written is kept, the file gets status 'recovered' and the loss 'daq_crash', and its "
        "final name (never replacing a file). na64 daq does this by itself for its data directory at "
        "start-up; this command is for a partial file moved elsewhere. Exit code 1 if one could not "
        "be recovered.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("files", nargs="+", type=Path, metavar="FILE", help="partial files or directories of them")
    r.set_defaults(run=run_recover)


def run_daq(args: argparse.Namespace) -> int:
    from calibration.constants import check_sets
    from daq.daq_config import load_config
    from daq.service import DaqService

    overrides: dict[str, Any] = {}
    if args.min_free_mb is not None:
        overrides["storage.min_free_mb"] = args.min_free_mb
    if args.fragment_timeout is not None:
        overrides["readout.fragment_timeout_s"] = args.fragment_timeout
    config = load_config(args.config, args.assignments, overrides)
    if args.print_config:
        print(effective_config_toml(config, args))
        return 0
    from daq.curve import server_keys

    keys = server_keys(args.server_key, args.allowed_clients)  # a wrong key file: one line, exit 2
    check_sets(args.calibration)  # unreadable or ambiguous sets: one clear line now, not at RUN_START
    if not args.calibration:
        log.warning(
            "no --calibration given: runs are recorded with the nominal constants (--calibration nominal "
            "asks for them on purpose)"
        )
    from daq.sdnotify import SystemdNotifier

    observers: list[Any] = []
    ops = None
    if args.metrics_port is not None:
        from daq.daq_metrics import DaqMetrics
        from daq.ops_http import OpsServer

        metrics = DaqMetrics(config.monitor.status_period_s)
        ops = OpsServer(args.metrics_port, metrics.registry, metrics.health).start()
        observers.append(metrics)
    observers.append(SystemdNotifier())  # last: READY=1 once /healthz can say ready
    service = DaqService(
        config,
        endpoint=args.endpoint,
        publish=args.publish,
        data_dir=args.data_dir,
        calibration=args.calibration,
        stop_after_run=args.stop_after_run,
        observers=observers,
        server_keys=keys,
    )
    try:
        return asyncio.run(service.run())
    finally:
        if ops is not None:
            ops.stop()


def effective_config_toml(config: Any, args: argparse.Namespace) -> str:
    """``--print-config``: the configuration as TOML, the service options and software as comments."""
    from daq import config_loader as cfgmod
    from daq.provenance import describe

    header = "\n".join(
        [
            f"na64 daq effective configuration ({describe()})",
            f"service: --endpoint {args.endpoint} --publish {args.publish} --data-dir {args.data_dir}",
            "calibration: " + (" ".join(map(str, args.calibration)) or "nominal (no --calibration given)"),
        ]
    )
    return cfgmod.to_toml(cfgmod.to_dict(config), header).rstrip("\n")


# ---------------------------------------------------------------- inspect
def inspect_file(path: Path) -> dict[str, Any]:
    """Summary document of one spill file (what ``--json`` prints)."""
    from daq.files import SpillFile, SpillFileError
    from daq.summary import DocumentError, SpillSummary

    with SpillFile(path) as f:
        a = f.attrs
        try:
            s = SpillSummary.from_dict({"run": f.run, "spill": f.spill, **f.summary()})
        except DocumentError as e:
            raise SpillFileError(f"{path}: attribute 'summary': {e}") from None
        counters = f.counters
        ev = f.events(["t_ns"])
        t = ev["t_ns"]
        return {
            "file": str(path),
            "run": f.run,
            "spill": f.spill,
            "status": f.status,
            "n_beam": int(a.get("n_beam", 0)),
            "n_particles": int(a.get("n_particles", 0)),
            "triggers": dataclasses.asdict(s.triggers),
            "n_accepted": counters.get("n_accepted", 0),
            "n_events_written": f.n_events,
            "n_events_incomplete": counters.get("n_events_incomplete", 0),
            "dead_time_lost": counters.get("dead_time_lost", 0),
            "dead_time_fraction": s.dead_time_fraction,
            "losses": {k: v for k, v in f.losses.items() if v},
            "frontend": f.frontend,
            "t_start_ns": int(a.get("t_start_ns", 0)),
            "t_end_ns": int(a.get("t_end_ns", 0)),
            "spill_length_s": s.spill_length_s,
            "event_time_range_ns": [int(t.min()), int(t.max())] if t.size else None,
            "calibration_id": a.get("calibration_id", ""),
            "compression": f.compression,
            "size_bytes": path.stat().st_size,
            "format_version": a.get("format_version"),
            "software_version": a.get("software_version", ""),
            "git_hash": a.get("git_hash", ""),
            "git_dirty": {1: True, 0: False}.get(a.get("git_dirty", -1)),
            "software_source": a.get("software_source", ""),
            "created": a.get("created", ""),
        }


def _wall(ns: int) -> str:
    if not ns:
        return "?"
    return (
        dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def format_summary(d: dict[str, Any]) -> str:
    tr = d["triggers"]
    losses = ", ".join(f"{k} {v:,}" for k, v in sorted(d["losses"].items())) or "none"
    fe = d["frontend"]
    fe_text = (
        f"slices {fe.get('n_slices', 0):,}  requests {fe.get('n_requests', 0):,}  fragments "
        f"{fe.get('n_fragments', 0):,}  events read {fe.get('n_events_read', 0):,}  particles "
        f"{fe.get('n_particles', 0):,}"
        if fe
        else "no SPILL_END counters"
    )
    rng = d["event_time_range_ns"]
    events_t = f"{rng[0] / 1e9:.3f}-{rng[1] / 1e9:.3f} s into the spill" if rng else "no events"
    lines = [
        f"{Path(d['file']).name}  ({d['size_bytes'] / 1e6:.1f} MB, {d['compression']}, format v{d['format_version']})",
        f"  run {d['run']}  spill {d['spill']}  status {d['status']}  calibration {d['calibration_id']}",
        f"  time       {_wall(d['t_start_ns'])} .. {_wall(d['t_end_ns'])}  (spill {d['spill_length_s']:.3f} s; "
        f"events {events_t})",
        f"  EOT        {d['n_beam']:,}  (particles {d['n_particles']:,})",
        f"  triggers   physics {tr.get('physics', 0):,}  beam {tr.get('beam', 0):,}  random {tr.get('random', 0):,}"
        f"  accepted {d['n_accepted']:,}  dead-time lost {d['dead_time_lost']:,} "
        f"({100 * d['dead_time_fraction']:.2f}% dead)",
        f"  events     {d['n_events_written']:,} written ({d['n_events_incomplete']:,} incomplete)",
        f"  losses     {losses}",
        f"  front-end  {fe_text}",
        f"  software   na64daq {d['software_version']} ({str(d['git_hash'])[:12]}"
        f"{', dirty' if d.get('git_dirty') else ''}), created {d['created']}",
    ]
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from daq.files import SpillFileError

    paths: list[Path] = []
    for p in args.files:
        if p.is_dir():
            from daq.files import list_spill_files

            paths += list_spill_files(p)
        else:
            paths.append(p)
    docs: list[dict[str, Any]] = []
    failed = 0
    for p in paths:
        try:
            docs.append(inspect_file(p))
        except SpillFileError as e:
            print(f"na64 inspect: error: {e}", file=sys.stderr)
            failed += 1
        except (OSError, KeyError, ValueError) as e:
            print(f"na64 inspect: error: {p}: damaged spill file ({type(e).__name__}: {e})", file=sys.stderr)
            failed += 1
    if args.json:
        print(json.dumps(docs, indent=1))
    else:
        print("\n\n".join(format_summary(d) for d in docs))
    if not paths:
        raise UserError("no spill files found in " + ", ".join(map(str, args.files)))
    return 2 if failed else 0


def run_recover(args: argparse.Namespace) -> int:
    """``na64 recover``: one line per file, what was saved (or why not)."""
    from daq.recovery import parse_partial, recover_partial

    paths: list[Path] = []
    for p in args.files:
        if p.is_dir():
            paths += sorted(q for q in p.glob(".run*_spill*.h5.partial") if parse_partial(q))
        elif not p.exists():
            raise UserError(f"{p}: no such file")
        elif parse_partial(p) is None:
            raise UserError(f"{p}: not a partial spill file (expected .runNNNNNN_spillNNNNN.h5.partial)")
        else:
            paths.append(p)
    if not paths:
        raise UserError("no partial spill files found in " + ", ".join(map(str, args.files)))
    failed = 0
    for p in paths:
        res = recover_partial(p)
        if res.file is None:
            failed += 1
            print(f"na64 recover: error: {res.error}", file=sys.stderr)
        else:
            print(f"{p.parent / res.file}: recovered {res.n_events} events (slices 0-{res.last_slice})")
    return 1 if failed else 0
