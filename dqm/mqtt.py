"""Alarms, spill summaries and service status to MQTT (aiomqtt), with its own reconnect loop.

Topics (``P`` = ``mqtt.topic_prefix``, default ``na64/dqm``; payloads are JSON; see docs/mqtt.md):

- ``P/status``         retained: service status; the last will sets ``{"state": "offline", ...}``
- ``P/alarms/<check>`` retained: the alarm of one check (ISA-18.2 states: normal, unacknowledged, ...)
- ``P/checks``         retained: all traffic lights
- ``P/spill``          retained, one message per spill: the spill's summary and check results
- ``P/ack``            subscribed: payload ``<check>`` or ``all`` (or JSON ``{"name", "by"}``) acknowledges
- ``P/shelve``         subscribed: JSON ``{"name", "reason", "minutes", "by"}`` shelves, ``{"name",
  "unshelve": true}`` unshelves

Nothing here ever blocks the DQM: callers only update in-memory state (:meth:`MqttPublisher.retain`,
:meth:`MqttPublisher.queue`); one task publishes it whenever a broker is reachable. Retained topics are
coalesced (the latest state wins) and all re-published after every reconnect; queued messages are
bounded (oldest dropped and counted).

The DQM owns ``P/alarms/#``: after every connect it subscribes to it, and a retained alarm it does not
publish itself (left by an earlier DQM, e.g. of a check that no longer exists) is cleared (an empty
retained message deletes it); its own alarms are re-published from its state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from dqm.config import MqttConfig
from dqm.errors import DqmUserError

log = logging.getLogger(__name__)

AckHandler = Callable[[str, str], None]
#: shelve request: (name, reason, minutes, by); minutes <= 0 unshelves
ShelveHandler = Callable[[str, str, float, str], None]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in: ``mqtts://`` is TLS (the server's certificate checked
    against ``ca_file``, else the system's CAs); a username and password come from a file or the
    environment (:func:`credentials`), never from the URL (a command line is visible to every user)."""

    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls, url: str, ca_file: str | None = None, login: tuple[str, str] | None = None
    ) -> BrokerAddress:
        """``mqtt://host[:port]`` (or ``tcp://``; 1883) or ``mqtts://host[:port]`` (8883) -> address; a bad
        URL, a password in it or a CA file without TLS is a user error."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
            raise DqmUserError(f"bad --mqtt URL {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if parts.username is not None or parts.password is not None:
            raise DqmUserError(
                "--mqtt: no user or password in the URL (every user of the machine can read a command "
                "line); give them in a file (--mqtt-credentials FILE) or in NA64_MQTT_USERNAME and "
                "NA64_MQTT_PASSWORD"
            )
        tls = parts.scheme == "mqtts"
        if ca_file is not None and not tls:
            raise DqmUserError("--mqtt-ca is for TLS: use an mqtts:// URL")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise DqmUserError(f"--mqtt-ca {ca_file}: no such file")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise DqmUserError(f"bad --mqtt URL {url!r}: port is not a number in 1..65535") from None
        user, password = login if login is not None else (None, None)
        return cls(parts.hostname, port, tls, ca_file, user, password)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``mqtts://`` broker (certificate and host name checked), else None."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def __str__(self) -> str:
        login = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{login}{self.host}:{self.port}"


def credentials(path: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """The broker login: the first line ``USERNAME:PASSWORD`` of ``path`` (a file only its owner can
    read), else ``NA64_MQTT_USERNAME`` and ``NA64_MQTT_PASSWORD``, else None (anonymous)."""
    if path is not None:
        try:
            st = os.stat(path)
            with open(path, encoding="utf-8") as f:
                line = f.readline().rstrip("\r\n")
        except OSError as e:
            raise DqmUserError(f"--mqtt-credentials {path}: cannot read it ({e.strerror or e})") from None
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise DqmUserError(f"--mqtt-credentials {path}: the first line must be USERNAME:PASSWORD")
        if st.st_mode & 0o077:
            log.warning("--mqtt-credentials %s is readable by other users: chmod 600 it", path)
        return user, password
    env_user = environ.get("NA64_MQTT_USERNAME")
    if env_user:
        return env_user, environ.get("NA64_MQTT_PASSWORD", "")
    if environ.get("NA64_MQTT_PASSWORD"):
        raise DqmUserError("NA64_MQTT_PASSWORD is set without NA64_MQTT_USERNAME")
    return None


class MqttPublisher:
    """Owns the MQTT connection. Use from the event loop thread only."""

    def __init__(
        self,
        address: BrokerAddress,
        config: MqttConfig | None = None,
        on_ack: AckHandler | None = None,
        on_shelve: ShelveHandler | None = None,
    ) -> None:
        self.address = address
        self.config = config or MqttConfig()
        self.prefix = self.config.topic_prefix.rstrip("/")
        self.on_ack = on_ack
        self.on_shelve = on_shelve
        #: retained alarm topics of earlier publishers cleared at a connect
        self.cleared_foreign = 0
        self.client_id = self.config.client_id or f"na64-dqm-{socket.gethostname()}-{os.getpid()}"
        self._retained: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self.connected = False
        self.connects = 0
        self.published = 0
        self.dropped = 0
        self.status: dict[str, Any] = {"state": "starting"}

    # ------------------------------------------------------------ topics
    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def will_payload(self) -> bytes:
        return _dumps({"state": "offline", "reason": "connection lost", "client_id": self.client_id})

    # ------------------------------------------------------------ state (never blocks)
    def retain(self, topic: str, payload: dict[str, Any]) -> None:
        """Set the latest retained state of a topic; published now or on the next connect."""
        data = _dumps(payload)
        if self._retained.get(topic) != data:
            self._retained[topic] = data
            self._dirty.add(topic)
            self._wake.set()

    def queue(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue a (retained) message that must not be coalesced, e.g. one spill summary."""
        if len(self._queue) >= self.config.max_queued:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("MQTT queue full: %d message(s) dropped so far", self.dropped)
        self._queue.append((topic, _dumps(payload)))
        self._wake.set()

    def set_status(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["updated_at"] = time.time()
        self.retain(self.topic("status"), self.status)

    # ------------------------------------------------------------ connection loop
    async def run(self) -> None:
        """Connect, publish, reconnect with exponential backoff (with jitter) until :meth:`stop`."""
        cfg = self.config
        backoff = cfg.backoff_min_s
        failures = 0
        while not self._stopping:
            try:
                async with aiomqtt.Client(
                    self.address.host,
                    self.address.port,
                    identifier=self.client_id,
                    username=self.address.username,
                    password=self.address.password,
                    tls_context=self.address.tls_context(),
                    will=aiomqtt.Will(self.topic("status"), self.will_payload, qos=1, retain=True),
                    keepalive=cfg.keepalive_s,
                    timeout=5.0,
                ) as client:
                    self.connected = True
                    self.connects += 1
                    failures, backoff = 0, cfg.backoff_min_s
                    log.info("MQTT connected to %s as %s", self.address, self.client_id)
                    self._dirty.update(self._retained)  # the broker may have lost or missed anything
                    await client.subscribe(self.topic("ack"), qos=1)
                    await client.subscribe(self.topic("shelve"), qos=1)
                    await client.subscribe(self.topic("alarms", "+"), qos=1)  # to own them, see _listen
                    pump = asyncio.create_task(self._pump(client))
                    listen = asyncio.create_task(self._listen(client))
                    try:
                        done, _ = await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            task.result()  # re-raise MqttError from either side
                    finally:
                        for task in (pump, listen):
                            task.cancel()
                        await asyncio.gather(pump, listen, return_exceptions=True)
            except aiomqtt.MqttError as e:
                failures += 1
                if self.connected or failures == 1:
                    log.warning("MQTT broker %s unreachable (%s); retrying with backoff", self.address, e)
            finally:
                self.connected = False
            if self._stopping:
                break
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, cfg.backoff_max_s)

    async def _pump(self, client: aiomqtt.Client) -> None:
        period = self.config.status_period_s
        while True:
            while self._dirty:
                topic = next(iter(self._dirty))
                data = self._retained[topic]
                await client.publish(topic, data, qos=1, retain=True)
                if self._retained.get(topic) == data:
                    self._dirty.discard(topic)
                self.published += 1
            while self._queue:
                topic, data = self._queue[0]
                await client.publish(topic, data, qos=1, retain=True)
                self._queue.popleft()
                self.published += 1
            self._wake.clear()
            if self._stopping:
                return
            if self._dirty or self._queue:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            except TimeoutError:
                self.set_status()  # refresh updated_at so consumers can see the service is alive

    async def _listen(self, client: aiomqtt.Client) -> None:
        alarms = self.topic("alarms") + "/"
        async for message in client.messages:
            topic = str(message.topic)
            raw = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            if topic.startswith(alarms):
                if message.retain and raw and topic not in self._retained:
                    # an alarm this DQM does not have, left retained by an earlier one: delete it
                    await client.publish(topic, b"", qos=1, retain=True)
                    self.cleared_foreign += 1
                    log.info("cleared the retained %s left by an earlier DQM", topic)
                continue
            if topic == self.topic("shelve"):
                request = _parse_shelve(raw)
                if request is None:
                    log.warning("ignored MQTT shelve with bad payload %r", raw[:200])
                elif self.on_shelve is not None:
                    self.on_shelve(*request)
                continue
            name, by = _parse_ack(raw)
            if name is None:
                log.warning("ignored MQTT ack with bad payload %r", raw[:100])
                continue
            if self.on_ack is not None:
                self.on_ack(name, by)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything is published (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected and not self._dirty and not self._queue:
                return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self, reason: str = "shutdown", timeout: float = 2.0) -> None:
        """Publish the offline status (if a broker is reachable within ``timeout``), then disconnect."""
        self.set_status(state="offline", reason=reason)
        await self.flush(timeout)
        self._stopping = True
        self._wake.set()


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(_clean(payload), separators=(",", ":"), allow_nan=False, default=_default).encode()


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _default(value: object) -> object:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _parse_ack(raw: bytes) -> tuple[str | None, str]:
    """Ack payload: ``name`` or ``{"name": ..., "by": ...}``; names are [A-Za-z0-9_]+ or ``all``."""
    text = raw.decode("utf-8", errors="replace").strip()
    name, by = text, "mqtt"
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None, ""
        if not isinstance(doc, dict):
            return None, ""
        name, by = str(doc.get("name", "")), str(doc.get("by", "mqtt"))[:64]
    if not name or len(name) > 64 or not all(c.isalnum() or c == "_" for c in name):
        return None, ""
    return name, by


#: longest shelve that can be asked for over MQTT (the DQM caps it further: alarms.max_shelve_minutes)
MAX_SHELVE_MINUTES = 7 * 24 * 60


def _parse_shelve(raw: bytes) -> tuple[str, str, float, str] | None:
    """Shelve payload ``{"name", "reason", "minutes", "by"}`` or ``{"name", "unshelve": true, "by"}``
    -> (name, reason, minutes, by), minutes 0 for an unshelve; None if malformed."""
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    name, by = str(doc.get("name", "")), str(doc.get("by", "mqtt"))[:64]
    if not name or len(name) > 64 or not all(c.isalnum() or c == "_" for c in name):
        return None
    if doc.get("unshelve") is True:
        return name, "", 0.0, by
    reason = str(doc.get("reason", "")).strip()[:200]
    minutes = doc.get("minutes")
    if not reason or isinstance(minutes, bool) or not isinstance(minutes, int | float):
        return None
    if not 0 < float(minutes) <= MAX_SHELVE_MINUTES:
        return None
    return name, reason, float(minutes), by
