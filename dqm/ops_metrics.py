"""The DQM's Prometheus metrics and health (``na64 dqm --metrics-port``), read from the running
:class:`dqm.server.DqmService` when Prometheus scrapes (under its lock, a copy of a few counters): no hook
in the DQM's loops. Names and meanings: docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from daq.daq_metrics import ThreadCpuCollector

#: live mode: no message from the DAQ (its status comes every second) for this long is "not ready"
SILENT_S = 10.0


class DqmCollector(Collector):
    """Counters and gauges of one DQM service, collected at scrape time."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def _read(self) -> dict[str, Any]:
        s = self.service
        with s.lock:
            m = s.monitor
            c = m.counters
            return {
                "counters": {k: v for k, v in vars(c).items() if isinstance(v, int)},
                "decode_errors": dict(c.decode_errors),
                "alarms": [(a.name, a.severity.name) for a in m.alarms.open_alarms()],
                "status_time": m.status_time,
                "run": m.run,
                "spill": m.current_spill,
                "open_spills": len(m.open),
                "pending": len(m.pending),
            }

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s, d = self.service, self._read()
        help_of = {
            "messages": "messages handled (from the DAQ's feed or the files)",
            "events": "events filled into the histograms",
            "batches": "EVENTS batches handled",
            "skipped_by_daq": "events the DAQ did not send to the DQM (sampling; they are recorded)",
            "bad_batches": "EVENTS batches that could not be used",
            "bad_summaries": "SUMMARY documents that could not be used",
            "ignored_messages": "messages of no use to the DQM",
            "summaries_missing": "spills closed without their spill summary",
            "spills_closed": "spills checked and closed",
            "late_events": "events that arrived after their spill was closed",
            "unattributed_batches": "batches that could not be given to a spill",
        }
        for name, value in sorted(d["counters"].items()):
            yield CounterMetricFamily(
                f"na64_dqm_{name}", help_of.get(name, name.replace("_", " ")), value=value
            )
        de = CounterMetricFamily("na64_dqm_decode_errors", "undecodable messages by kind", labels=["kind"])
        for kind, n in sorted(d["decode_errors"].items()):
            de.add_metric([kind], n)
        yield de
        alarms = GaugeMetricFamily(
            "na64_dqm_alarm", "1 per open DQM alarm (by check and severity)", labels=["name", "severity"]
        )
        for name, severity in d["alarms"]:
            alarms.add_metric([name, severity], 1)
        yield alarms
        yield GaugeMetricFamily("na64_dqm_alarms_open", "open DQM alarms", value=len(d["alarms"]))
        age = -1.0 if d["status_time"] is None else time.time() - d["status_time"]
        yield GaugeMetricFamily(
            "na64_dqm_daq_status_age_seconds", "seconds since the DAQ's last status (-1: none yet)", value=age
        )
        yield GaugeMetricFamily(
            "na64_dqm_run", "run being monitored (-1: none)", value=-1 if d["run"] is None else d["run"]
        )
        yield GaugeMetricFamily("na64_dqm_open_spills", "spills being filled", value=d["open_spills"])
        yield GaugeMetricFamily(
            "na64_dqm_pending_summaries", "spill summaries waiting for late events", value=d["pending"]
        )
        yield CounterMetricFamily("na64_dqm_snapshots", "page snapshots built", value=s.snapshots)
        errors = CounterMetricFamily(
            "na64_dqm_task_errors", "unexpected errors of the periodic tasks", labels=["task"]
        )
        for task, n in sorted(dict(s.loop_errors).items()):
            errors.add_metric([task], n)
        yield errors
        if s.mqtt is not None:
            yield GaugeMetricFamily(
                "na64_dqm_mqtt_connected", "1 while connected to the MQTT broker", value=int(s.mqtt.connected)
            )
            yield CounterMetricFamily(
                "na64_dqm_mqtt_published", "MQTT messages published", value=s.mqtt.published
            )
            yield CounterMetricFamily(
                "na64_dqm_mqtt_dropped", "MQTT messages dropped (queue full)", value=s.mqtt.dropped
            )


class DqmMetrics:
    """The DQM's registry (process CPU and memory, threads, :class:`DqmCollector`) and health."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(ThreadCpuCollector())
        self.registry.register(DqmCollector(service))
        self.serving = False

    def health(self) -> tuple[bool, str]:
        """Ready once the page is served; live, also while the DAQ's feed is heard from."""
        s = self.service
        if not self.serving:
            return False, "starting (the page is not served yet)"
        if s.mode != "live":
            return True, f"offline, {s.source_name}"
        with s.lock:
            t = s.monitor.status_time
        if t is None:
            return False, f"no status from the DAQ at {s.source_name} yet"
        age = time.time() - t
        if age > SILENT_S:
            return False, f"no status from the DAQ at {s.source_name} for {age:.0f} s"
        return True, f"live, DAQ heard {age:.1f} s ago"
