"""The DAQ's Prometheus metrics and health, computed from what the service already produces: the status
document (every ``monitor.status_period_s``) and each spill summary (docs/daq.md "DQM feed").

:class:`DaqMetrics` is handed to :class:`daq.service.DaqService` as an observer; the service calls
:meth:`~DaqMetrics.status` and :meth:`~DaqMetrics.spill_summary` with the documents it publishes, from its
event loop (cheap: a few dozen numbers set). Counters count over the life of the process (Prometheus
``rate()`` and ``increase()`` expect that); they grow when a spill summary arrives, i.e. once per spill.
Gauges follow the status document. CPU: the process's (``process_cpu_seconds_total``) and each named
thread's (``na64_thread_cpu_seconds_total``: main, the writer, its compressing helpers, ZeroMQ I/O).
Names and meanings: docs/operations.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

#: a status document older than this many status periods (plus 2 s): the service is not answering
STALE_PERIODS = 5


class DaqMetrics:
    """Metrics of one ``na64 daq`` process in their own registry (:attr:`registry`)."""

    def __init__(self, status_period_s: float = 1.0, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.status_period_s = status_period_s
        self._lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None
        self._last_status_at = 0.0  # monotonic
        self._started = time.monotonic()
        self._stopping = ""
        ProcessCollector(registry=r)
        r.register(ThreadCpuCollector())
        ns = "na64_daq"
        self.spills = Counter(
            "spills",
            "spill summaries by spill status (ok, incomplete, failed)",
            ["status"],
            namespace=ns,
            registry=r,
        )
        self.particles = Counter(
            "particles", "particles in the SLICE messages of finished spills", namespace=ns, registry=r
        )
        self.eot = Counter(
            "eot", "electrons on target (S_TRIG particles) of finished spills", namespace=ns, registry=r
        )
        self.triggers = Counter(
            "triggers",
            "accepted triggers by type (physics, beam, random) of finished spills",
            ["type"],
            namespace=ns,
            registry=r,
        )
        self.accepted = Counter(
            "events_accepted",
            "accepted triggers (= events to write) of finished spills",
            namespace=ns,
            registry=r,
        )
        self.written = Counter("events_written", "events written to spill files", namespace=ns, registry=r)
        self.losses = Counter(
            "losses",
            "losses by reason (docs/daq.md; dead_time and monitor_skipped are not data losses)",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.bytes = Counter("bytes_written", "bytes of closed spill files", namespace=ns, registry=r)
        self.write_seconds = Counter(
            "write_seconds", "time the writer spent on spill files", namespace=ns, registry=r
        )
        self.state = Gauge(
            "state", "1 for the current state (idle, running, in_spill)", ["state"], namespace=ns, registry=r
        )
        self.run = Gauge("run", "current run number (-1: no run)", namespace=ns, registry=r)
        self.spill = Gauge("spill", "current spill number, -1 outside a spill", namespace=ns, registry=r)
        self.writer_queue = Gauge(
            "writer_queue_batches", "commands waiting for the writer thread", namespace=ns, registry=r
        )
        self.pending = Gauge(
            "pending_requests", "readout requests waiting for their fragments", namespace=ns, registry=r
        )
        self.free_disk = Gauge(
            "free_disk_bytes", "free bytes in the data directory", namespace=ns, registry=r
        )
        self.frontends = Gauge(
            "frontends", "front-ends heard from in the last hour", namespace=ns, registry=r
        )
        self.frontend_silence = Gauge(
            "frontend_silence_seconds",
            "seconds since the quietest front-end was heard from (0: none)",
            namespace=ns,
            registry=r,
        )
        self.alarms = Gauge(
            "alarm",
            "1 while the DAQ alarm is raised (disk, write, calibration, run)",
            ["name"],
            namespace=ns,
            registry=r,
        )
        self.run_losses = Gauge(
            "run_losses",
            "losses of the current run by reason (resets at RUN_START)",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.run_eot = Gauge("run_eot", "EOT of the current run", namespace=ns, registry=r)
        self.run_events = Gauge("run_events", "events written in the current run", namespace=ns, registry=r)
        self.status_age = Gauge(
            "status_age_seconds", "seconds since the last status document", namespace=ns, registry=r
        )
        self.status_age.set_function(
            lambda: time.monotonic() - self._last_status_at if self._last_status_at else -1
        )
        for state in ("idle", "running", "in_spill"):
            self.state.labels(state).set(0)
        for name in ("disk", "write", "calibration", "run"):
            self.alarms.labels(name).set(0)
        self.run.set(-1)
        self.spill.set(-1)

    # ------------------------------------------------------------ observer (the service's event loop)
    def status(self, doc: Mapping[str, Any]) -> None:
        """A status document (SUMMARY kind 2)."""
        with self._lock:
            self._last_status = dict(doc)
            self._last_status_at = time.monotonic()
        for state in ("idle", "running", "in_spill"):
            self.state.labels(state).set(1 if doc.get("state") == state else 0)
        self.run.set(_num(doc.get("run"), -1))
        self.spill.set(_num(doc.get("spill"), -1))
        self.writer_queue.set(_num(doc.get("writer_queue")))
        self.pending.set(_num(doc.get("pending_requests")))
        self.free_disk.set(_num(doc.get("free_disk_bytes")))
        fes = doc.get("frontends") or {}
        self.frontends.set(len(fes))
        self.frontend_silence.set(max((_num(f.get("last_seen_s")) for f in fes.values()), default=0))
        alarms = doc.get("alarms") or {}
        for name in set(alarms) | {"disk", "write", "calibration", "run"}:
            self.alarms.labels(name).set(1 if name in alarms else 0)
        for reason, n in (doc.get("losses_run") or {}).items():
            if "." not in reason:
                self.run_losses.labels(reason).set(_num(n))
        self.run_eot.set(_num(doc.get("eot_run")))
        self.run_events.set(_num(doc.get("events_run")))

    def spill_summary(self, doc: Mapping[str, Any]) -> None:
        """A spill summary (SUMMARY kind 1), once per spill, after its file is closed (or failed)."""
        self.spills.labels(str(doc.get("status", "unknown"))).inc()
        self.particles.inc(_num(doc.get("n_particles")))
        self.eot.inc(_num(doc.get("n_beam")))
        for kind in ("physics", "beam", "random"):
            self.triggers.labels(kind).inc(_num((doc.get("triggers") or {}).get(kind)))
        self.accepted.inc(_num(doc.get("n_accepted")))
        self.written.inc(_num(doc.get("n_events_written")))
        for reason, n in (doc.get("losses") or {}).items():
            if "." not in reason:  # decode_error.<kind> break decode_error down: not counted twice
                self.losses.labels(reason).inc(_num(n))
        self.bytes.inc(_num(doc.get("write_mb")) * 1e6)
        self.write_seconds.inc(_num(doc.get("write_seconds")))

    def stopping(self, reason: str = "stopping") -> None:
        """The service is shutting down: not ready from now on."""
        self._stopping = reason

    # ------------------------------------------------------------ health (the HTTP thread)
    def health(self) -> tuple[bool, str]:
        """Ready when the DAQ answers (a fresh status document) and no alarm is raised."""
        with self._lock:
            doc, at = self._last_status, self._last_status_at
        if self._stopping:
            return False, self._stopping
        now = time.monotonic()
        if doc is None:
            return (
                False,
                f"starting (no status yet after {now - self._started:.0f} s: loading kernels, binding)",
            )
        age = now - at
        if age > STALE_PERIODS * self.status_period_s + 2:
            return False, f"no status for {age:.0f} s (event loop blocked or stopped)"
        alarms = doc.get("alarms") or {}
        if alarms:
            return False, "; ".join(f"{k}: {v}" for k, v in sorted(alarms.items()))
        state, run, spill = doc.get("state", "?"), doc.get("run"), doc.get("spill")
        where = "" if run is None else f", run {run}" + ("" if spill is None else f" spill {spill}")
        return True, f"{state}{where}"


class ThreadCpuCollector(Collector):
    """CPU seconds of each thread of this process by thread name (Linux ``/proc/self/task``): the
    DAQ's main thread, ``na64-writer``, ``na64-blosc``/``na64-writer-sync`` helpers, ZeroMQ's I/O
    threads. Threads of one name are summed."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "na64_thread_cpu_seconds",
            "CPU (user + system) of this process's threads by name",
            labels=["thread"],
        )
        by_name: dict[str, float] = {}
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return
        for tid in tasks:
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # the thread ended meanwhile
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
            by_name[name] = by_name.get(name, 0.0) + cpu
        for name, cpu in sorted(by_name.items()):
            family.add_metric([name], cpu)
        yield family


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default
