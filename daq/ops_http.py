"""The operations endpoint of a long-running service (``--metrics-port``): a small HTTP server in a daemon
thread, on 127.0.0.1 unless told otherwise, answering

- ``GET /metrics``: the Prometheus text exposition format of a ``prometheus_client`` registry;
- ``GET /healthz``: ``200 ready`` or ``503 not ready: <reason>`` (one line of text) from a health
  function, for systemd/Kubernetes probes and load balancers.

It only reads: whatever the service exposes is computed by the caller's registry and health function
(cheap, thread-safe), so a scrape never touches the service's event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from daq.errors import ConfigError

log = logging.getLogger(__name__)

#: health function: (ready, reason); the reason says why not (or what is fine)
Health = Callable[[], tuple[bool, str]]


class OpsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, port: int, registry: Any, health: Health, host: str = "127.0.0.1") -> None:
        if not 0 <= port < 65536:
            raise ConfigError(f"--metrics-port {port} is not in 0..65535")
        import prometheus_client

        prometheus_client.disable_created_metrics()  # no *_created series: noise for every counter
        self.registry = registry
        self.health = health
        handler = type("Handler", (_Handler,), {"ops": self})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on {host}:{port} ({e.strerror or e})"
            ) from None
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="na64-metrics", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("metrics at %s/metrics, health at %s/healthz", self.url, self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    ops: OpsServer
    server_version = "na64-ops/1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

            self._reply(200, generate_latest(self.ops.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            try:
                ready, reason = self.ops.health()
            except Exception as e:  # a broken health function is a not-ready service, not a dead endpoint
                log.exception("health check failed")
                ready, reason = False, f"health check failed: {type(e).__name__}: {e}"
            text = ("ready" if ready else "not ready") + (f": {reason}" if reason else "")
            self._reply(200 if ready else 503, (text + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
