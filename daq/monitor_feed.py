"""The sample of built events the DAQ sends to the DQM (pure: callers pass ``now``).

Built events are buffered and sent as one EVENTS message at most ``batches_per_s`` times a second, with
at most ``max_events_per_batch`` events; the rest are skipped and counted (``monitor_skipped``, and the
next message's ``n_skipped``). One message never mixes two spills. The recorded path never waits for it.
"""

from __future__ import annotations

import numpy as np

from daq import protocol
from daq.batch import EventBatch


class MonitorFeed:
    """Buffer of built events waiting to be sent to the DQM."""

    def __init__(self, max_events_per_batch: int, batches_per_s: float) -> None:
        self.max_events = max_events_per_batch
        self.period_s = 1.0 / batches_per_s
        self._parts: list[EventBatch] = []
        self._n = 0
        self._spill = 0  # spill of the buffered events (EVENTS carry their own spill)
        self._next_send = 0.0
        #: events not sent to the DQM since the last EVENTS message that went out
        self.skipped_since = 0

    def add(self, batch: EventBatch, run: int, spill: int, now: float) -> tuple[list[protocol.Events], int]:
        """Buffer a spill's events. Returns the message of the buffered events of another spill (sent
        first: one message never mixes spills) and how many of ``batch`` were skipped (no room)."""
        out = []
        if self._parts and spill != self._spill:
            msg = self.flush(now, run, force=True)
            if msg is not None:
                out.append(msg)
        self._spill = spill
        room = self.max_events - self._n
        skipped = 0
        if room <= 0:
            skipped = len(batch)
        else:
            if len(batch) > room:
                skipped = len(batch) - room
                batch = batch.take(slice(0, room))
            self._parts.append(batch)
            self._n += len(batch)
        self.skipped_since += skipped
        return out, skipped

    def flush(self, now: float, run: int, force: bool = False) -> protocol.Events | None:
        """The EVENTS message of the buffered events if one is due (or ``force``), else None."""
        if not self._parts or (now < self._next_send and not force):
            return None
        self._next_send = now + self.period_s
        parts = [b for b in self._parts if len(b)]
        self._parts, self._n = [], 0
        if not parts:
            return None
        n = sum(len(b) for b in parts)

        def cat(name: str, axis: int = 0) -> np.ndarray:  # only what the DQM gets (not the waveforms)
            return np.concatenate([getattr(b, name) for b in parts], axis=axis)

        msg = protocol.Events(
            run=run,
            spill=self._spill,
            n_events=n,
            n_skipped=self.skipped_since,
            event_id=cat("event_id"),
            t_ns=cat("t_ns"),
            trigger_mask=cat("trigger_mask"),
            sums=cat("sums", axis=1),
            energy=cat("energy"),
            peak_time=cat("peak_time"),
            waveforms=parts[-1].waveforms[-1:],
        )
        self.skipped_since = 0
        return msg

    def not_sent(self, msg: protocol.Events) -> None:
        """A message could not be sent: its events and the ones it reported count as skipped."""
        self.skipped_since += msg.n_skipped + msg.n_events
