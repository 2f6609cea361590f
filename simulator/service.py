"""``na64 simulate`` at run time: a DEALER socket, the pacing schedule, heartbeats and clean shutdown.

One thread, one socket. The schedule is absolute: spill k starts at run start + k x spill period and
its slice i leaves at spill start + (i + 1) x slice length (``realtime``), never drifting; with ``max``
pacing slices leave as fast as the DAQ takes them (at most ``max_inflight_slices`` unrequested). Between
deadlines the loop answers readout requests. Sending never drops: when the DAQ does not read, the send
waits (answering requests meanwhile) and the wait is logged.

The front-end sends SPILL_END once every slice of the spill was requested and answered, or
``request_timeout_s`` after the last slice. A stop request (SIGINT/SIGTERM) ends the current spill the
same way, then RUN_STOP; queued messages get ``linger_s`` to leave.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import zmq

from daq import curve, protocol
from daq.errors import ConfigError, ProtocolError
from daq.process import term_context
from simulator.config import SimConfig
from simulator.faults import Fault
from simulator.frontend import FrontEnd, TruthSink

log = logging.getLogger(__name__)

State = protocol.FrontEndState
#: frames at least this large are sent without a copy
ZERO_COPY_MIN_BYTES = 256 * 1024


def tune_allocator(prefault_mb: int = 400) -> bool:
    """Keep freed memory in the heap (glibc) and pre-touch ``prefault_mb``: the latency buffer allocates
    and frees ~100 MB/s of slice arrays, and first-touch page faults would otherwise cost ~40% more CPU
    during the first seconds of a run. Process-wide; returns False where mallopt is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 * 1024 * 1024) == 1  # M_MMAP_THRESHOLD: arrays up to 32 MB from the heap
        ok = ok and libc.mallopt(-1, 2**31 - 1) == 1  # M_TRIM_THRESHOLD: never give the heap back
    except (OSError, AttributeError):
        return False
    if ok and prefault_mb > 0:
        blocks = [np.ones(1 << 19, np.float32) for _ in range(prefault_mb // 2)]
        del blocks
    return bool(ok)


class RunRefusedError(ConfigError):
    """The DAQ refused the run (e.g. its run number already has spill files): one line, exit code 2."""


class Service:
    """Runs one simulated run over a DEALER socket connected to ``endpoint``."""

    def __init__(
        self,
        config: SimConfig,
        endpoint: str,
        n_spills: int | None = None,
        truth_sink: TruthSink | None = None,
        on_spill_end: Callable[[int, dict[str, float]], None] | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        client_keys: curve.ClientKeys | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.client_keys = client_keys
        #: NACKs received from the DAQ, by code name
        self.nacks: dict[str, int] = {}
        self.n_spills = n_spills
        self.on_spill_end = on_spill_end
        self.fe = FrontEnd(config, truth_sink)
        #: None: the run gets its own context, terminated at its end (see :meth:`run`)
        self._given_ctx = context
        self.ctx = context or zmq.Context.instance()
        self.sock: zmq.Socket[bytes] | None = None
        self.seq = protocol.SequenceCounter()
        self.stop_requested = False
        self.state = State.IDLE
        self.spill = 0
        self.t_start = time.monotonic()
        self.next_heartbeat = self.t_start
        self.requests: deque[protocol.ReadoutRequest] = deque()
        self.n_decode_errors = 0
        self.spills_done = 0
        self.realtime = config.readout.pace == "realtime"
        self._stall_started = 0.0
        self._stall_slices = 0
        #: the DAQ acknowledged the current RUN_START (RUN_ACK accepted); its refusal, if it refused
        self.acked = False
        self.refused = ""
        self.announce_requested = False
        #: what the DAQ did not take, one line each (the run then ends with exit code 1)
        self.lost: list[str] = []

    def request_stop(self) -> None:
        """Ask the run to end cleanly (safe to call from a signal handler)."""
        self.stop_requested = True

    # ------------------------------------------------------------ main
    def run(self) -> int:
        if self._given_ctx is None:
            self.ctx = zmq.Context()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 20000)
        sock.setsockopt(zmq.RCVHWM, 20000)
        sock.setsockopt(zmq.LINGER, int(self.config.readout.linger_s * 1000))
        if self.client_keys is not None:
            curve.secure_client(sock, self.client_keys)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            if self._given_ctx is None:
                self.ctx.term()
            raise ConfigError(f"--endpoint {self.endpoint}: {e}") from None
        self.sock = sock
        log.info(
            "front-end run %d: connected to %s, %.3g Hz, %s pacing, seed %d",
            self.config.run,
            self.endpoint,
            self.config.beam.rate_hz,
            self.config.readout.pace,
            self.config.seed,
        )
        try:
            self.fe.warm_up()
            self._send(self.fe.run_start())
            self._wait_for_ack()  # no spill before the DAQ can take it
            self.state = State.RUNNING
            self._heartbeat_if_due()
            t_run = time.monotonic()
            index = 0
            while not self.stop_requested and (self.n_spills is None or index < self.n_spills):
                t_spill = t_run + index * self.config.beam.spill_period_s
                if self.realtime:
                    self._serve_until(t_spill)
                    if self.stop_requested:
                        break
                if not self.acked and not self._ack_before_spill(index + 1):
                    index += 1
                    continue
                self._spill(index + 1, t_spill if self.realtime else time.monotonic())
                index += 1
            self.state = State.IDLE
            if self.acked or not self.refused:
                self._send(self.fe.run_stop(self.spills_done))
            log.info("front-end run %d: stopped after %d spills", self.config.run, self.spills_done)
        finally:
            sock.close()  # lingers up to linger_s for queued messages
            self.sock = None
            if self._given_ctx is None:
                self._term_context()
        if self.refused:
            raise RunRefusedError(f"the DAQ at {self.endpoint} refused run {self.config.run}: {self.refused}")
        if self.lost:
            log.error("front-end run %d: not all of its data was recorded (exit code 1):", self.config.run)
            for line in self.lost:
                log.error("  lost: %s", line)
            return 1
        if self.nacks:  # messages the DAQ refused (a malformed one, a spill it did not know)
            log.error("the DAQ refused %d messages of this run: %s", sum(self.nacks.values()), self.nacks)
        return 0

    # ------------------------------------------------------------ the DAQ's acknowledgement
    def _wait_for_ack(self) -> None:
        """Wait (answering nothing else) until the DAQ acknowledges the run; say so every 10 s."""
        t0 = next_note = time.monotonic()
        while not self.acked and not self.refused and not self.stop_requested:
            now = time.monotonic()
            if now >= next_note + 10.0:
                next_note = now
                log.warning(
                    "no RUN_ACK from the DAQ at %s for %.0f s: is na64 daq running there? (waiting; "
                    "no spill is sent before it; Ctrl-C stops)",
                    self.endpoint,
                    now - t0,
                )
            self._serve_until(min(now + 0.1, next_note + 10.0))
        if self.acked and time.monotonic() - t0 > 1.0:
            log.info("the DAQ acknowledged run %d after %.1f s", self.config.run, time.monotonic() - t0)

    def _ack_before_spill(self, spill: int) -> bool:
        """The run was re-announced (the DAQ restarted) and not acknowledged yet: in max pacing wait for
        it; in real time the beam does not wait: the spill is not sent, and said so."""
        if not self.realtime:
            self._wait_for_ack()
            return self.acked
        self._serve_nowait()
        if self.acked or self.stop_requested or self.refused:
            return self.acked
        line = (
            f"spill {spill} not sent: the DAQ at {self.endpoint} has not acknowledged run {self.config.run}"
        )
        log.error("%s", line)
        self.lost.append(line)
        return False

    def _reannounce(self) -> None:
        """The DAQ asked for the run (it was restarted and does not know it): RUN_START again, header
        ``spill`` = the spill in progress or last started."""
        self.announce_requested = False
        self.acked = False
        log.warning(
            "the DAQ at %s asks for the run (it was restarted?): announcing run %d again (spill %d)",
            self.endpoint,
            self.config.run,
            self.spill,
        )
        self._send(dataclasses.replace(self.fe.run_start(), spill=self.spill))

    def _term_context(self) -> None:
        """End the run's own context once the queued messages are sent (:func:`daq.process.term_context`;
        large frames go zero-copy), at most ``linger_s``; what is left then is said."""
        linger = self.config.readout.linger_s
        if term_context(self.ctx, linger):
            log.warning(
                "the DAQ at %s did not take the last messages within %.1f s: they were dropped "
                "(the DAQ counts what it misses)",
                self.endpoint,
                linger,
            )

    def _spill(self, spill: int, t_spill: float) -> None:
        fe = self.fe
        self.spill = spill
        self.state = State.IN_SPILL
        cpu0 = time.process_time()
        self._send(fe.begin_spill(spill, time.time_ns()))
        c = fe.counters[spill]
        slice_s = fe.slice_ns / 1e9
        stall = fe.faults.stall(spill)
        stall_lo = stall_hi = -1
        if stall is not None:  # slice range of the stall, in integer ns to avoid rounding at the edges
            stall_lo = math.ceil(round(stall.t_s * 1e9) / fe.slice_ns)
            stall_hi = math.ceil(round((stall.t_s + stall.length_s) * 1e9) / fe.slice_ns)
        fe.prepare(spill, 0)
        last_sent = time.monotonic()
        for i in range(fe.n_slices):
            if self.stop_requested:
                break
            deadline = t_spill + (i + 1) * slice_s
            if stall is not None and stall_lo <= i < stall_hi:
                self._stalled(stall, spill, i, deadline, last=i + 1 == stall_hi)
                continue
            if self.realtime:
                self._serve_until(deadline)
            else:
                self._serve_nowait()
                self._throttle(spill)
            now = time.monotonic()
            self._send(fe.slice_message(spill, i))
            if self.realtime:
                late = (now - deadline) * 1000
                c.max_lateness_ms = max(c.max_lateness_ms, late)
                if late > slice_s * 1000:
                    c.n_late_slices += 1
            last_sent = time.monotonic()
            if i + 1 < fe.n_slices:
                fe.prepare(spill, i + 1)
        sent = c.n_slices + c.n_stalled_slices
        if sent < fe.n_slices:
            line = f"spill {spill} cut short by the stop request: {sent} of {fe.n_slices} slices"
            log.warning("%s", line)
            self.lost.append(line)
        # wait for the requests of this spill's slices, at most request_timeout_s after the last slice
        timeout = last_sent + self.config.readout.request_timeout_s
        while not fe.spill_complete(spill) and time.monotonic() < timeout:
            self._serve_until(min(timeout, time.monotonic() + 0.05))
        missing = c.outstanding
        if missing:
            line = (
                f"spill {spill}: {missing} of {c.n_slices} slices were never requested by the DAQ at "
                f"{self.endpoint} (timeout {self.config.readout.request_timeout_s:.1f} s): it is not "
                "taking this run's data"
            )
            log.error("%s", line)
            self.lost.append(line)
        self._send(fe.end_spill(spill, time.time_ns()))
        c.cpu_s = time.process_time() - cpu0
        self.spills_done += 1
        self.state = State.RUNNING
        self._log_spill(spill)
        if self.on_spill_end is not None:
            self.on_spill_end(spill, c.public())

    def _stalled(self, stall: Fault, spill: int, i: int, deadline: float, last: bool) -> None:
        """One slice period of a front-end stall: nothing sent or answered, heartbeats say STALLED."""
        fe = self.fe
        if self.state != State.STALLED:
            log.warning("spill %d: front-end stalls at slice %d (fault %s)", spill, i, stall.text)
            self._stall_started = time.monotonic()
            self._stall_slices = 0
        self.state = State.STALLED
        fe.skip_slice(spill, i)
        self._stall_slices += 1
        # a stall lasts its length in wall-clock time, also when behind schedule or in max pacing
        end = max(
            deadline if self.realtime else 0.0, self._stall_started + self._stall_slices * fe.slice_ns / 1e9
        )
        while time.monotonic() < end and not self.stop_requested:
            self._heartbeat_if_due()
            time.sleep(min(0.01, max(end - time.monotonic(), 0)))
        if last:
            self.state = State.IN_SPILL
            if stall.restart:
                log.warning("spill %d: front-end restarts (sequence numbers from 0, new RUN_START)", spill)
                self.seq = protocol.SequenceCounter()
                self._send(fe.run_start())
            log.warning(
                "spill %d: front-end resumes after %d stalled slices",
                spill,
                fe.counters[spill].n_stalled_slices,
            )
        if i + 1 < fe.n_slices:
            fe.prepare(spill, i + 1)

    def _throttle(self, spill: int) -> None:
        """max pacing: wait while too many sent slices are unrequested (bounded by the request timeout)."""
        limit = self.config.readout.max_inflight_slices
        if limit <= 0:
            return
        c = self.fe.counters[spill]
        deadline = time.monotonic() + self.config.readout.request_timeout_s
        while c.outstanding >= limit and not self.stop_requested:
            if time.monotonic() > deadline:
                log.warning(
                    "spill %d: DAQ lags by %d slices for %.1f s; going on",
                    spill,
                    c.outstanding,
                    self.config.readout.request_timeout_s,
                )
                return
            self._serve_until(min(deadline, time.monotonic() + 0.05))

    def _log_spill(self, spill: int) -> None:
        c = self.fe.counters[spill]
        extra = {
            k: v
            for k, v in c.public().items()
            if k.startswith("n_")
            and v
            and k not in ("n_slices", "n_requests", "n_fragments", "n_events_read", "n_particles")
        }
        log.info(
            "spill %d done: %d particles in %d slices, %d requests, %d events read, %d fragments; "
            "%.2f CPU s; max lateness %.1f ms%s",
            spill,
            c.n_particles,
            c.n_slices,
            c.n_requests,
            c.n_events_read,
            c.n_fragments,
            c.cpu_s,
            c.max_lateness_ms,
            f"; {extra}" if extra else "",
        )

    # ------------------------------------------------------------ socket
    def _send(self, msg: protocol.Message) -> None:
        assert self.sock is not None
        frames = protocol.encode(self.seq.stamp(msg))
        # zero-copy only pays for large frames (SLICE amplitudes): below that pyzmq's bookkeeping of a
        # zero-copy frame costs more than the memcpy (measured on fragments of ~80 kB)
        copy = all(len(f) < ZERO_COPY_MIN_BYTES for f in frames)
        waited_since: float | None = None
        poller: zmq.Poller | None = None
        while True:
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
                if waited_since is not None:
                    log.info("DAQ reading again after %.1f s", time.monotonic() - waited_since)
                return
            except zmq.Again:
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    log.warning("send queue full (DAQ not reading): waiting")
                if self.stop_requested and now - waited_since > self.config.readout.linger_s:
                    log.error(
                        "DAQ not reading for %.1f s while stopping: %s dropped",
                        now - waited_since,
                        msg.TYPE.name,
                    )
                    return
            if poller is None:  # only when the queue is full (a Poller per message costs ~10 us)
                poller = zmq.Poller()
                poller.register(self.sock, zmq.POLLIN | zmq.POLLOUT)
            events = dict(poller.poll(100))
            if events.get(self.sock, 0) & zmq.POLLIN:
                self._receive_all()
            self._heartbeat_if_due(queue_only=True)

    def _receive_all(self) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = protocol.decode(frames)
            except ProtocolError as e:
                self.n_decode_errors += 1
                log.warning("undecodable message from the DAQ (%d so far): %s", self.n_decode_errors, e)
                continue
            if isinstance(msg, protocol.ReadoutRequest):
                self.requests.append(msg)
            elif isinstance(msg, protocol.RunAck):
                self._on_ack(msg)
            elif isinstance(msg, protocol.AnnounceRequest):
                self.announce_requested = True
            elif isinstance(msg, protocol.Nack):
                self._nacked(msg)
            else:
                log.debug("ignoring %s from the DAQ", msg.TYPE.name)

    def _nacked(self, nack: protocol.Nack) -> None:
        """The DAQ refused a message (docs/protocol.md, NACK): logged once per reason, counted."""
        name = nack.reason.split(":", 1)[0]
        if name not in self.nacks:
            log.warning(
                "the DAQ refused message seq %d (type %d): %s (further refusals of this kind are counted)",
                nack.refused_seq,
                nack.refused_type,
                nack.reason,
            )
        self.nacks[name] = self.nacks.get(name, 0) + 1

    def _on_ack(self, msg: protocol.RunAck) -> None:
        if msg.run != self.config.run:
            log.warning("RUN_ACK for run %d ignored (this front-end runs %d)", msg.run, self.config.run)
        elif msg.status == protocol.RunAck.ACCEPTED:
            self.acked = True
        else:
            self.refused = msg.text or "no reason given"
            log.error("the DAQ refused run %d: %s", msg.run, self.refused)
            self.stop_requested = True

    def _answer_pending(self) -> None:
        while self.requests:
            req = self.requests.popleft()
            for frag in self.fe.answer(req):
                self._send(frag)

    def _serve_nowait(self) -> None:
        self._receive_all()
        if self.announce_requested and not self.refused:
            self._reannounce()
        self._answer_pending()
        self._heartbeat_if_due()

    def _serve_until(self, t: float) -> None:
        """Answer requests and send heartbeats until monotonic time ``t`` (or a stop request)."""
        assert self.sock is not None
        while True:
            self._serve_nowait()
            now = time.monotonic()
            if now >= t or self.stop_requested:
                return
            wait = min(t, self.next_heartbeat) - now
            if wait > 0:
                self.sock.poll(max(1, int(wait * 1000)), zmq.POLLIN)

    def _heartbeat_if_due(self, queue_only: bool = False) -> None:
        now = time.monotonic()
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.config.readout.heartbeat_s
        if queue_only:
            return  # inside a blocked send: the next regular heartbeat follows once the queue moves
        hb = self.fe.heartbeat(self.state, int((now - self.t_start) * 1e9), self.spill)
        self._send(hb)
