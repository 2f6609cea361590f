"""Where the DQM's messages come from: the DAQ's live PUB feed, or recorded spill files.

Both deliver ``daq.protocol`` messages to one handler, so the monitor cannot tell them apart:

- :class:`LiveSource` runs a thread with a ZeroMQ SUB socket connected to the DAQ's XPUB endpoint;
  malformed messages are counted by kind and logged (first one, then every 1000th), never fatal. A slow
  DQM only fills its own receive queue; the DAQ skips (and counts) what it cannot send.
- :func:`file_messages` turns spill files (through the reader API ``daq.files``) into the same EVENTS
  batches and SPILL summaries the DAQ publishes; :class:`FileSource` feeds them from a thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from daq import detector, protocol
from daq.errors import ProtocolError
from dqm.errors import DqmUserError

log = logging.getLogger(__name__)

Handler = Callable[[protocol.Message], None]
ErrorHandler = Callable[[str], None]

#: files: one waveform (the last event's) is sampled per this many events, like a live batch
FILE_BATCH = 10
#: events per EVENTS message for the offline consumers (reference, parallel books, ``na64 dqm FILES``):
#: big messages carry one sampled waveform per FILE_BATCH events, so the books get the same pedestal
#: samples as with FILE_BATCH-event messages, with a thousand times fewer fills
OFFLINE_MESSAGE_EVENTS = 8000
#: waveforms are read (decompressed) in blocks of this many events
READ_BLOCK = 1024


def check_endpoint(endpoint: str) -> str:
    """Validate a ZeroMQ endpoint given by a person (tcp://host:port or ipc://path)."""
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[6:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DqmUserError(f"bad --source endpoint {endpoint!r}: expected tcp://HOST:PORT")
        return endpoint
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint
    raise DqmUserError(f"bad --source endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")


class LiveSource:
    """Subscribes to the DAQ's monitoring feed in a background thread."""

    def __init__(
        self,
        endpoint: str,
        handler: Handler,
        on_error: ErrorHandler | None = None,
        rcvhwm: int = 2000,
        context: zmq.Context | None = None,
        client_keys: Any = None,
    ) -> None:
        self.endpoint = check_endpoint(endpoint)
        #: CURVE towards a DAQ run with --server-key (daq.curve.ClientKeys), or None
        self.client_keys = client_keys
        self.handler = handler
        self.on_error = on_error
        self.rcvhwm = rcvhwm
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0
        self.errors: dict[str, int] = {}
        self.handler_errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dqm-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.client_keys is not None:
            from daq.curve import secure_client

            secure_client(sock, self.client_keys)
        sock.connect(self.endpoint)
        log.info("subscribed to %s", self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                for _ in range(1000):  # drain what is there, then look at the stop flag again
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._deliver(frames)
        finally:
            sock.close(0)

    def _deliver(self, frames: list[zmq.Frame]) -> None:
        self.received += 1
        try:
            msg = protocol.decode(frames)
        except ProtocolError as e:
            kind = type(e).__name__
            n = self.errors[kind] = self.errors.get(kind, 0) + 1
            if n == 1 or n % 1000 == 0:
                log.warning("bad message from %s (%s, %d so far): %s", self.endpoint, kind, n, e)
            if self.on_error is not None:
                self.on_error(kind)
            return
        try:
            self.handler(msg)
        except Exception:  # the monitor must survive any single message
            self.handler_errors += 1
            if self.handler_errors == 1 or self.handler_errors % 1000 == 0:
                log.exception("error handling %s (%d so far)", type(msg).__name__, self.handler_errors)


def sampled_waveforms(f: Any, batch_size: int) -> np.ndarray:
    """(ceil(E / batch_size), 110, S) waveforms of the last event of every ``batch_size`` events of an
    open :class:`daq.files.SpillFile`, decompressed block by block (never the whole spill at once)."""
    n = f.n_events
    lasts = np.minimum(np.arange(batch_size, n + batch_size, batch_size, dtype=np.int64), n) - 1
    out = np.empty((lasts.size, detector.N_CHANNELS, f.n_samples), np.uint16)
    step = max(READ_BLOCK // batch_size, 1) * batch_size  # blocks hold whole sampling groups
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        k0, k1 = lo // batch_size, -(-hi // batch_size)
        out[k0:k1] = f.waveforms(slice(lo, hi))[lasts[k0:k1] - lo]
    return out


def message_bounds(n: int, batch_size: int, per_msg: int) -> list[tuple[int, int]]:
    """(start, stop) event ranges of the EVENTS messages of an ``n``-event spill.

    Every bound is a multiple of ``batch_size`` (a message holds whole sampling groups). With
    ``per_msg > batch_size`` the spill's last sampling group is a message of its own, so a consumer can
    fill everything before it elsewhere (:mod:`dqm.offline`) and still end the spill with the same
    message, and the same last event and waveform, as a serial reader.
    """
    if n <= 0:
        return []
    tail = (n - 1) // batch_size * batch_size if per_msg > batch_size else n
    starts = list(range(0, tail, per_msg))
    out = list(zip(starts, [*starts[1:], tail], strict=True)) if starts else []
    if tail < n:
        out.append((tail, n))
    return out


def file_messages(
    paths: Iterable[str | Path],
    beam_energy_gev: float = 100.0,
    batch_size: int = FILE_BATCH,
    events_per_message: int | None = None,
) -> Iterator[protocol.Message]:
    """EVENTS batches and the SPILL summary of every spill file, as the DAQ would have published them.

    The waveforms of the last event of every ``batch_size`` events are sampled, like the live feed
    does per batch. A message holds ``events_per_message`` events, rounded down to a multiple of
    ``batch_size`` (default ``batch_size``: one waveform per message, exactly like live batches; more, e.g.
    :data:`OFFLINE_MESSAGE_EVENTS`, gives the same books with far fewer messages: every count and
    pedestal sum is identical, float sums of energies agree to rounding; the last sampling group of a
    spill is always a message of its own, see :func:`message_bounds`). Files are read through
    :class:`daq.files.SpillFile`; a bad file raises its ``SpillFileError`` (a UserError).
    """
    from daq.files import SpillFile, list_spill_files  # h5py only when files are read

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    # whole sampling groups per message: rounded down to a multiple of batch_size
    per_msg = (
        batch_size if events_per_message is None else max(events_per_message // batch_size, 1) * batch_size
    )
    seq = 0
    for path in list_spill_files(list(paths)):
        with SpillFile(path) as f:
            run, spill = f.run, f.spill
            cols = f.events(
                ["event_id", "t_ns", "trigger_mask", "e_prs", "e_ecal", "e_hcal", "e_veto", "e_srd", "e_miss"]
            )
            energy = f.energy()
            peak_time = f.peak_time()
            n = f.n_events
            if energy.shape[1:] != (detector.N_CHANNELS,):
                raise DqmUserError(
                    f"{path}: energy has {energy.shape[1:]} channels, expected {detector.N_CHANNELS}"
                )
            waveforms = sampled_waveforms(f, batch_size)
            sums = np.stack([cols[name] for name in protocol.Events.SUMS]).astype(np.float32)
            for i, j in message_bounds(n, batch_size, per_msg):
                yield protocol.Events(
                    run=run,
                    spill=spill,
                    seq=seq,
                    n_events=j - i,
                    n_skipped=0,
                    event_id=cols["event_id"][i:j],
                    t_ns=cols["t_ns"][i:j],
                    trigger_mask=cols["trigger_mask"][i:j],
                    sums=np.ascontiguousarray(sums[:, i:j]),
                    energy=energy[i:j],
                    peak_time=peak_time[i:j],
                    waveforms=waveforms[i // batch_size : -(-j // batch_size)],
                )
                seq += 1
            summary = f.summary()
            summary.setdefault("run", run)
            summary.setdefault("spill", spill)
        yield protocol.Summary.of(
            protocol.Summary.KIND_SPILL,
            json.dumps(summary, default=_json_default),
            run=summary["run"],
            spill=summary["spill"],
            seq=seq,
        )
        seq += 1
        log.info("read %s: %d events", path, n)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class FileSource:
    """Feeds recorded spill files to the handler from a background thread (the server stays responsive)."""

    def __init__(self, paths: Iterable[str | Path], handler: Handler, beam_energy_gev: float = 100.0) -> None:
        from daq.files import list_spill_files

        self.paths = list_spill_files(list(paths))  # validates the paths now (UserError on a missing one)
        if not self.paths:
            raise DqmUserError("no spill files found in " + ", ".join(map(str, paths)))
        self.handler = handler
        self.beam_energy_gev = beam_energy_gev
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dqm-files", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            for msg in file_messages(
                self.paths, self.beam_energy_gev, events_per_message=OFFLINE_MESSAGE_EVENTS
            ):
                if self._stop.is_set():
                    return
                self.handler(msg)
            log.info("offline: %d spill file(s) loaded", len(self.paths))
        except Exception as e:
            self.error = e
            log.error("offline: reading spill files failed: %s", e)
        finally:
            self.done.set()
