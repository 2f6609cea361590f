"""systemd's service notification (``sd_notify``) for ``Type=notify`` units, without a dependency: one
datagram to the socket named by ``$NOTIFY_SOCKET`` (nothing happens when it is not set, e.g. outside
systemd). Used by ``na64 daq`` (``READY=1`` once its sockets are bound and the first status is out,
then ``STATUS=...`` lines) and ``na64 dqm`` (``READY=1`` once the page is served)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not under systemd or on failure."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        log.debug("sd_notify %r to %s failed: %s", message, address, e)
        return False
    return True


class SystemdNotifier:
    """A DAQ observer (:class:`daq.service.Observer`): ``READY=1`` with the first status document, then
    the state as ``STATUS=`` (shown by ``systemctl status``) when it changes."""

    def __init__(self) -> None:
        self.ready = False
        self._last = ""

    def status(self, doc: dict[str, Any]) -> None:
        text = f"{doc.get('state')}, run {doc.get('run')}, spill {doc.get('spill')}"
        alarms = doc.get("alarms") or {}
        if alarms:
            text += "; alarms: " + ", ".join(sorted(alarms))
        if not self.ready:
            self.ready = True
            notify(f"READY=1\nSTATUS={text}")
        elif text != self._last:
            notify(f"STATUS={text}")
        self._last = text

    def spill_summary(self, doc: dict[str, Any]) -> None:
        pass
