"""``na64 dqm`` (live or offline monitoring server) and ``na64 dqm-reference`` (promote a reference)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Any

from dqm.errors import DqmUserError

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "tcp://127.0.0.1:5556"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dqm",
        help="data-quality monitoring: live from the DAQ, or offline from spill files",
        description=(
            "Serve the DQM web page (Bokeh) and run the quality checks. Live: `na64 dqm [--source ENDPOINT]` "
            "subscribes to the DAQ's monitoring feed. Offline: `na64 dqm FILES...` fills the same views from "
            "recorded spill files (files and/or directories). Alarms go to MQTT with --mqtt. Prints "
            "'DQM at http://HOST:PORT/' when serving; SIGINT/SIGTERM stop it cleanly."
        ),
    )
    p.add_argument("files", nargs="*", metavar="FILES", help="spill files or directories (offline mode)")
    p.add_argument(
        "--source",
        default=None,
        metavar="ENDPOINT",
        help=f"DAQ monitoring endpoint (live mode; the default when no FILES: {DEFAULT_SOURCE})",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the web server binds to (default: 127.0.0.1; others only when given)",
    )
    p.add_argument(
        "--port", type=int, default=5006, help="web server port, 0 for any free port (default: 5006)"
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="extra websocket origin allowed to connect (repeatable), e.g. a reverse proxy",
    )
    p.add_argument(
        "--mqtt",
        default=None,
        metavar="URL",
        help="MQTT broker for alarms and status, e.g. mqtt://127.0.0.1:1883, or mqtts://HOST:8883 for TLS "
        "(default: no MQTT); never a user or password in it: see --mqtt-credentials",
    )
    p.add_argument(
        "--mqtt-ca",
        default=None,
        metavar="FILE",
        help="CA certificate (PEM) that signed the broker's certificate, for mqtts:// (default: the "
        "system's CAs)",
    )
    p.add_argument(
        "--mqtt-credentials",
        default=None,
        metavar="FILE",
        help="file whose first line is USERNAME:PASSWORD for the broker (mode 0600); without it, "
        "NA64_MQTT_USERNAME and NA64_MQTT_PASSWORD from the environment, else anonymous",
    )
    p.add_argument(
        "--server-public-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="live mode: the DAQ's public key file, when the DAQ runs with --server-key (CURVE; with "
        "--client-key)",
    )
    p.add_argument(
        "--client-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="live mode: this DQM's secret key file (NAME.key_secret); its NAME.key must be in the DAQ's "
        "--allowed-clients directory",
    )
    p.add_argument(
        "--login-file",
        default=None,
        metavar="FILE",
        help="the page asks for a login: lines USER:PASSWORD (a file only its owner can read); "
        "recommended whenever --host is not a loopback address",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="FILE",
        help="reference file from `na64 dqm-reference` (default: the run's first good spills)",
    )
    p.add_argument(
        "--config", default=None, metavar="FILE", help="TOML file with check thresholds and options"
    )
    p.add_argument(
        "--beam-energy",
        type=float,
        default=None,
        metavar="GEV",
        help="beam energy in GeV (default: config value, 100)",
    )
    p.add_argument("--show", action="store_true", help="open the page in a browser")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics and the health check on /healthz "
        "(docs/operations.md; default: off)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="offline: N dask worker processes on a local cluster (127.0.0.1), 0 = in this process "
        "(default: one per core, at most one per file; a single file, or no dask installed: in this process)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="offline: fill the files on an existing dask cluster (scheduler address, e.g. tcp://head:8786)",
    )
    p.set_defaults(run=run_dqm)

    r = subparsers.add_parser(
        "dqm-reference",
        help="promote spill files of a good run to a DQM reference",
        description="Fill the DQM histograms from spill files (same code as `na64 dqm FILES`) and store them "
        "as a reference for `na64 dqm --reference`. Spills that are not 'ok' or have no beam are skipped.",
    )
    r.add_argument("files", nargs="+", metavar="FILES", help="spill files or directories of a good run")
    r.add_argument("--out", required=True, metavar="REF", help="reference file to write (JSON)")
    r.add_argument(
        "--config", default=None, metavar="FILE", help="TOML file (thresholds, axes) as for `na64 dqm`"
    )
    r.add_argument("--beam-energy", type=float, default=None, metavar="GEV", help="beam energy in GeV")
    r.add_argument(
        "--min-spills", type=int, default=1, help="fail unless at least this many good spills (default: 1)"
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="N dask worker processes on a local cluster (127.0.0.1), 0 = in this process (default: in "
        "this process)",
    )
    r.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="fill the spills in parallel on an existing dask cluster (scheduler address)",
    )
    r.set_defaults(run=run_reference)


def _check_host(host: str) -> str:
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DqmUserError(f"--host {host!r} is not an IP address (or localhost)") from None
    return host


def _check_origin(origin: str) -> str:
    host, _, port = origin.partition(":")
    if (
        not host
        or any(c in origin for c in "/ ")
        or (port and not (port.isdigit() and 0 < int(port) < 65536))
    ):
        raise DqmUserError(f"--allow-origin {origin!r}: expected HOST or HOST:PORT")
    return origin


def run_dqm(args: argparse.Namespace) -> int:
    from daq.extras import require

    require("dqm", "na64 dqm")
    from dqm import reference
    from dqm.config import load_config
    from dqm.server import DqmService
    from dqm.sources import check_endpoint

    if args.files and args.source:
        raise DqmUserError("give either FILES (offline) or --source (live), not both")
    workers, scheduler = _offline_engine(args)
    if not 0 <= args.port < 65536:
        raise DqmUserError(f"--port {args.port} is not in 0..65535")
    config = load_config(args.config, beam_energy_gev=args.beam_energy)
    source = None if args.files else check_endpoint(args.source or DEFAULT_SOURCE)
    from daq.curve import client_keys
    from dqm.login import LoginFile
    from dqm.mqtt import BrokerAddress, credentials

    keys = client_keys(args.server_public_key, args.client_key)
    if keys is not None and source is None:
        raise DqmUserError("--server-public-key/--client-key are for live mode (--source), not for FILES")
    mqtt = (
        BrokerAddress.parse(args.mqtt, args.mqtt_ca, credentials(args.mqtt_credentials))
        if args.mqtt
        else None
    )
    if mqtt is None and (args.mqtt_ca or args.mqtt_credentials):
        raise DqmUserError("--mqtt-ca and --mqtt-credentials need --mqtt URL")
    login = LoginFile.load(args.login_file) if args.login_file else None
    ref = reference.load(args.reference, config) if args.reference else None
    if ref is not None:
        log.info("checks compare with %s", ref.source)
    from daq.sdnotify import notify

    metrics: Any = None
    ops: Any = None

    def on_serving() -> None:
        if metrics is not None:
            metrics.serving = True
        notify("READY=1")

    service = DqmService(
        config,
        source=source,
        files=args.files,
        host=_check_host(args.host),
        port=args.port,
        allow_origins=[_check_origin(o) for o in args.allow_origin],
        mqtt_url=mqtt,
        reference=ref,
        workers=workers,
        scheduler=scheduler,
        on_serving=on_serving,
        client_keys=keys,
        login=login,
    )
    if args.metrics_port is not None:
        from daq.ops_http import OpsServer
        from dqm.ops_metrics import DqmMetrics

        metrics = DqmMetrics(service)
        ops = OpsServer(args.metrics_port, metrics.registry, metrics.health).start()
    if args.show:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(service.url,)).start()
    try:
        return asyncio.run(service.run())
    finally:
        if ops is not None:
            ops.stop()


def _offline_engine(args: argparse.Namespace) -> tuple[int, str | None]:
    """(workers, scheduler) for ``na64 dqm FILES``: 0 workers and no scheduler = read in this process."""
    workers, scheduler = args.workers, args.scheduler
    if not args.files:
        if workers is not None or scheduler:
            raise DqmUserError("--workers/--scheduler are for offline mode (FILES), not for a live --source")
        return 0, None
    if workers is not None and workers < 0:
        raise DqmUserError(f"--workers must be >= 0 (got {workers})")
    if scheduler:
        if workers:
            raise DqmUserError("give either --workers (a local cluster) or --scheduler (an existing one)")
        return 0, scheduler
    if workers is None:
        from daq.offline import collect_spill_files, default_workers

        workers = default_workers(len(collect_spill_files(args.files)[0]))
    return workers, None


def run_reference(args: argparse.Namespace) -> int:
    from daq.config_loader import output_file
    from daq.extras import require

    require("dqm", "na64 dqm-reference", ("boost_histogram",))
    from dqm import reference

    output_file(args.out, "--out")
    from dqm.config import load_config

    config = load_config(args.config, beam_energy_gev=args.beam_energy)
    if getattr(args, "workers", None) is not None or getattr(args, "scheduler", None):
        from dqm import offline  # parallel filling (daq.offline on dask), same reference document

        prov = offline.promote(
            args.files,
            args.out,
            config,
            min_spills=args.min_spills,
            workers=args.workers,
            scheduler=args.scheduler,
        )
    else:
        prov = reference.promote(args.files, args.out, config, min_spills=args.min_spills)
    print(f"reference {args.out}: {prov['n_spills']} spills, {prov['n_events']} events, runs {prov['runs']}")
    if prov["skipped"]:
        print(f"skipped: {', '.join(prov['skipped'])}")
    return 0
