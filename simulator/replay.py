"""Replay front-end: plays recorded spill files to a DAQ over the wire protocol, like a live front-end.

It connects a DEALER to the DAQ's ROUTER and sends, per run, RUN_START (the recorded primitive
channels), then per spill SPILL_START, every slice of the spill with the recorded particles in it
(original slice ids, times and primitive amplitudes; slices without recorded particles are sent empty,
so the DAQ's random-trigger clock sees the whole spill), answers each READOUT_REQUEST from the stored
waveforms (:class:`~simulator.replay_spill.RecordedSpill`), and sends SPILL_END with its counters once
every request of the spill is answered (or when none came for ``request_timeout_s`` after the last
slice), then RUN_STOP.

With ``merge_slices = N`` every N consecutive recorded slices go as one slice (ids 0, 1, ...; N times
longer, the last one cut at the recorded end of the spill; their particles in order): N times fewer
SLICE, READOUT_REQUEST and FRAGMENT messages for the same particles, trigger decisions and events (the
trigger's state carries across slices); only the events' ``slice``/``index`` and the slice counts change.

Pacing: ``speed`` x real time (a slice is sent when its end is due, spills keep their recorded
spacing), or ``speed=None`` for maximum pace with at most ``max_inflight_slices`` slices waiting for
their readout request. Unreadable or partial files are skipped with a message and counted. One thread
runs the socket and reads each request's waveforms from the open file when the request comes
(:class:`~simulator.replay_spill.RecordedSpill`); the next file's event table is read ahead in a helper
thread. Messages are sent by copying their frames into ZeroMQ messages (one memcpy, outside the GIL),
except the waveform frames of at least :data:`ZERO_COPY_BYTES` (fragments of merged slices): those are
split into new arrays and sent zero-copy, the ZeroMQ message keeping its array until it is sent (pyzmq
releases it from its garbage-collector thread). Below that size the copy of a reused, cache-resident
buffer is cheaper than a fresh array and the per-frame release (measured: even at 64 kB-256 kB frames,
``--merge-slices 1``), so smaller waveform frames keep the copy.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zmq

from daq import detector, protocol
from daq.errors import DaqError, ProtocolError, UserError
from daq.files import SpillFileError
from daq.process import term_context
from simulator.replay_spill import (
    AnswerCounts,
    MergeTooLong,
    RecordedSpill,
    ReplayError,
    frontend_info_json,
    load_spill,
)

log = logging.getLogger(__name__)

#: gap assumed between spills whose recorded start times are unknown or implausible (s of beam time)
DEFAULT_GAP_S = 1.0
#: recorded gaps between spills longer than this are shortened to DEFAULT_GAP_S (a pause in data taking)
MAX_GAP_S = 60.0
#: upper bound of ``merge_slices`` (the wire's slice length bounds it further, per file)
MAX_MERGE_SLICES = 10_000
_SNDMORE = int(zmq.SNDMORE)
#: waveform frames of at least this many bytes are sent zero-copy, in new arrays (smaller ones are split
#: into reused, cache-resident buffers and copied into their ZeroMQ messages: cheaper below this size)
ZERO_COPY_BYTES = 256 << 10


def poll_ms(timeout_s: float) -> int:
    """A wait in seconds as ZeroMQ's poll timeout in ms, rounded up: a wait of less than 1 ms rounded
    down to 0 polled without blocking, again and again until the slice was due (a core spinning)."""
    return max(0, math.ceil(timeout_s * 1000))


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of a replay front-end."""

    endpoint: str = "tcp://127.0.0.1:5555"
    #: x real time; None = maximum pace (as fast as the DAQ takes it)
    speed: float | None = 1.0
    #: SPILL_END when no readout request came for this long after the last slice, even if some are missing
    request_timeout_s: float = 2.0
    #: maximum pace: slices sent but not yet requested by the DAQ
    max_inflight_slices: int = 64
    heartbeat_s: float = 1.0
    #: slice length override (ms) for files that do not record it
    slice_ms: float | None = None
    #: bound on the wait for queued messages after RUN_STOP
    linger_s: float = 5.0
    #: SPILL_START/SPILL_END carry the recorded wall-clock times (else the replay's own clock)
    original_times: bool = True
    #: give up when the DAQ takes no message, or sends no readout request while slices wait, this long
    stall_timeout_s: float = 30.0
    #: recorded slices sent as one slice (1: as recorded); see the module doc
    merge_slices: int = 1
    #: CURVE towards a DAQ run with --server-key (daq.curve.ClientKeys), or None
    client_keys: Any = None

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0 (got {self.speed})")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0 (got {self.request_timeout_s})")
        if self.max_inflight_slices < 1:
            raise ValueError(f"max_inflight_slices must be >= 1 (got {self.max_inflight_slices})")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0 (got {self.heartbeat_s})")
        if not self.stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0 (got {self.stall_timeout_s})")
        if self.slice_ms is not None and not 0.001 <= self.slice_ms <= 10_000:
            raise ValueError(f"slice_ms must be in 0.001..10000 (got {self.slice_ms})")
        if not 1 <= self.merge_slices <= MAX_MERGE_SLICES:
            raise ValueError(f"merge_slices must be in 1..{MAX_MERGE_SLICES} (got {self.merge_slices})")


@dataclass
class SpillReport:
    """What was replayed of one spill."""

    path: Path
    run: int
    spill: int
    n_slices: int
    n_particles: int
    answers: AnswerCounts
    complete: bool  # every request answered before SPILL_END
    beam_s: float  # recorded spill duration (end of the last slice)
    wall_s: float


@dataclass
class ReplayReport:
    """Totals of a replay run."""

    spills: list[SpillReport] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    runs: int = 0
    late_requests: int = 0  # requests for a spill already closed (answered header-only)
    decode_errors: int = 0
    unexpected: int = 0  # messages from the DAQ that are not READOUT_REQUESTs or NACKs
    #: NACKs from the DAQ by code name
    nacks: dict[str, int] = field(default_factory=dict)
    beam_s: float = 0.0  # beam time covered: spill durations plus the recorded gaps between spills
    wall_s: float = 0.0
    stopped: bool = False  # ended early by a stop request
    unsent_at_exit: bool = False  # messages still queued when linger_s ran out (dropped)

    @property
    def n_spills(self) -> int:
        return len(self.spills)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def total(self, name: str) -> int:
        """Sum of an AnswerCounts field (or n_slices / n_particles) over the spills."""
        if name in ("n_slices", "n_particles"):
            return sum(int(getattr(s, name)) for s in self.spills)
        return sum(int(getattr(s.answers, name)) for s in self.spills)

    def summary_line(self) -> str:
        speed = self.beam_s / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"replayed {self.n_spills} spills in {self.runs} runs ({self.total('n_particles')} particles, "
            f"{self.total('n_events_read')} events read out) in {self.wall_s:.2f} s = {speed:.1f} x real time "
            f"({self.beam_s:.1f} s of beam); skipped {self.n_skipped} files"
            + (
                "; the last messages were not taken by the DAQ (dropped at exit)"
                if self.unsent_at_exit
                else ""
            )
        )


class SpillTiming(NamedTuple):
    """What pacing and run bookkeeping keep of a spill once it is replayed (not its data)."""

    run: int
    t_start_ns: int
    end_ns: int
    prim_channels: np.ndarray
    n_samples: int
    slice_ns: int

    @classmethod
    def of(cls, s: RecordedSpill) -> SpillTiming:
        return cls(s.run, s.t_start_ns, s.end_ns, s.prim_channels, s.n_samples, s.slice_ns)


def gap_s(prev: SpillTiming | None, cur: SpillTiming) -> float:
    """Beam time between the start of ``prev`` and the start of ``cur`` (pure scheduling rule).

    The recorded SPILL_START times give the spacing within a run; across runs, with unknown times or
    with a recorded gap above :data:`MAX_GAP_S` the previous spill's length plus :data:`DEFAULT_GAP_S`
    is used.
    """
    if prev is None:
        return 0.0
    length = prev.end_ns / 1e9
    if prev.run == cur.run and prev.t_start_ns > 0 and cur.t_start_ns > prev.t_start_ns:
        recorded = (cur.t_start_ns - prev.t_start_ns) / 1e9
        if length <= recorded <= MAX_GAP_S:
            return recorded
    return length + DEFAULT_GAP_S


class ReplayStalled(DaqError):
    """The DAQ stopped taking messages or answering with readout requests (not running, or stuck)."""


class Replayer:
    """The replay front-end (one DEALER connection, one thread). ``stop`` ends the replay early, cleanly."""

    def __init__(
        self,
        config: ReplayConfig | None = None,
        context: zmq.Context[Any] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config or ReplayConfig()
        #: None: each run has its own context, terminated at its end (queued messages get linger_s)
        self._given_ctx = context
        self._ctx: zmq.Context[Any] = context or zmq.Context.instance()
        self.stop = stop or threading.Event()
        self._seq = protocol.SequenceCounter()
        self._sock: zmq.Socket[Any] | None = None
        self._send_part: Any = None  # the socket's send
        self._t_start = time.monotonic()
        self._next_heartbeat = 0.0
        self._state = protocol.FrontEndState.IDLE
        self._spill: RecordedSpill | None = None
        self._counts = AnswerCounts()
        self._run = 0
        self._run_start_msg: protocol.RunStart | None = None  # re-sent when the DAQ asks (it restarted)
        self.report = ReplayReport()
        self._logged: set[str] = set()

    # ------------------------------------------------------------ public
    def run(self, files: Sequence[str | Path]) -> ReplayReport:
        """Replay ``files`` in the given order; returns the report (also kept in ``self.report``)."""
        cfg = self.config
        if self._given_ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, int(cfg.linger_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(cfg.stall_timeout_s * 1000))
        if cfg.client_keys is not None:
            from daq.curve import secure_client

            secure_client(sock, cfg.client_keys)
        try:
            sock.connect(cfg.endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            raise UserError(f"cannot connect to the DAQ at {cfg.endpoint}: {e}") from None
        self._sock = sock
        self._send_part = sock.send
        sock.copy_threshold = ZERO_COPY_BYTES  # send(copy=False) still copies smaller frames
        t0 = time.monotonic()
        self._t_start = t0
        self._state = protocol.FrontEndState.RUNNING
        self._heartbeat(force=True)
        paths = [Path(f) for f in files]
        started: SpillTiming | None = None  # the first spill of the run in force (its RUN_START)
        prev: SpillTiming | None = None
        n_spills_run = 0
        beam_clock = 0.0  # beam time of the current spill's start, s since the first spill
        pace0: float | None = None  # wall time of the first spill's start
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-read")
        pending: concurrent.futures.Future[RecordedSpill] | None = None
        try:
            merge = cfg.merge_slices
            pending = pool.submit(load_spill, paths[0], cfg.slice_ms, merge) if paths else None
            for i, path in enumerate(paths):
                if self.stop.is_set():
                    break
                assert pending is not None
                try:
                    spill = pending.result()
                except MergeTooLong:
                    raise  # the user's --merge-slices, not the file: one error line
                except (SpillFileError, ReplayError) as e:
                    self._skip(path, str(e))
                    spill = None
                pending = (
                    pool.submit(load_spill, paths[i + 1], cfg.slice_ms, merge) if i + 1 < len(paths) else None
                )
                if spill is None:
                    continue
                try:
                    if spill.status != "ok":
                        log.warning(
                            "%s: spill recorded with status %r (see its losses); replaying it",
                            path,
                            spill.status,
                        )
                    timing = SpillTiming.of(spill)
                    if started is not None and spill.run == started.run:
                        why = _incompatible(started, timing)
                        if why:
                            self._skip(path, f"{path}: cannot join run {spill.run} as replayed so far: {why}")
                            continue
                    if started is None or spill.run != started.run:
                        if started is not None:
                            self._send(protocol.RunStop(run=started.run, n_spills=n_spills_run))
                        self._run_start(spill, paths)
                        started, n_spills_run = timing, 0
                    beam_clock += gap_s(prev, timing)
                    if pace0 is None:  # the pacing clock starts with the first spill, not with reading it
                        pace0 = time.monotonic()
                    self._play(spill, pace0, beam_clock)
                    self.report.beam_s = beam_clock + spill.end_ns / 1e9
                    n_spills_run += 1
                    prev = timing
                finally:
                    spill.close()
                    spill = None  # at most this spill and the next one open
            if started is not None:
                self._send(protocol.RunStop(run=started.run, n_spills=n_spills_run))
            self._state = protocol.FrontEndState.IDLE
            self._heartbeat(force=True)
        finally:
            if pending is not None:
                pending.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            if (
                pending is not None
                and pending.done()
                and not pending.cancelled()
                and pending.exception() is None
            ):
                pending.result().close()  # read ahead but not replayed (stopped or failed)
            sock.close()  # linger: queued messages still go out, bounded by linger_s
            self._sock = None
            if self._given_ctx is None:
                self._term_context()
        self.report.wall_s = time.monotonic() - t0
        self.report.stopped = self.stop.is_set()
        return self.report

    def _term_context(self) -> None:
        """End the run's own context once the queued messages are sent (:func:`daq.process.term_context`;
        the large waveform frames go zero-copy), at most ``linger_s``; what is left then is said."""
        if term_context(self._ctx, self.config.linger_s):
            self.report.unsent_at_exit = True
            log.warning(
                "the DAQ at %s did not take the last messages within %.1f s: they were dropped "
                "(the DAQ counts what it misses: fragments, SPILL_END, RUN_STOP)",
                self.config.endpoint,
                self.config.linger_s,
            )

    # ------------------------------------------------------------ run and spill markers
    def _skip(self, path: Path, reason: str) -> None:
        log.warning("skipping %s", reason)
        self.report.skipped.append((path, reason))

    def _run_start(self, spill: RecordedSpill, paths: list[Path]) -> None:
        info = frontend_info_json([str(p) for p in paths], spill.frontend_info, spill.slice_ns, spill.merge)
        self._run = spill.run
        self.report.runs += 1
        self._run_start_msg = protocol.RunStart(
            run=spill.run,
            n_samples=spill.n_samples,
            n_channels=detector.N_CHANNELS,
            sample_period_ps=spill.sample_period_ps,
            slice_ns=spill.slice_ns,
            prim_channels=spill.prim_channels,
            info=protocol.RunStart.info_bytes(info),
        )
        self._send(self._run_start_msg)
        log.info(
            "run %d: replay started (%d primitive channels, %d ns slices%s)",
            spill.run,
            len(spill.prim_channels),
            spill.slice_ns,
            f": {spill.merge} recorded slices of {spill.recorded_slice_ns} ns each"
            if spill.merge > 1
            else "",
        )

    def _play(self, spill: RecordedSpill, t0: float, beam_start_s: float) -> None:
        cfg = self.config
        wall0 = time.monotonic()
        self._spill, self._counts = spill, AnswerCounts()
        self._state = protocol.FrontEndState.IN_SPILL
        t_start = spill.t_start_ns if cfg.original_times and spill.t_start_ns else time.time_ns()
        self._send(protocol.SpillStart(run=spill.run, spill=spill.spill, t_start_ns=t_start))
        n_sent = n_particles = 0
        for k in range(spill.n_slices):
            t_slice0, length = spill.slice_window(k)
            due = None if cfg.speed is None else t0 + (beam_start_s + (t_slice0 + length) / 1e9) / cfg.speed
            if not self._wait_to_send(due, n_sent):
                break
            msg = spill.slice_message(k)
            self._send(msg)
            n_sent += 1
            n_particles += msg.n_particles
        # every request answered, or no new request for request_timeout_s after the last slice (a busy
        # DAQ still working through the slices in flight keeps asking, so it is waited for)
        deadline = time.monotonic() + cfg.request_timeout_s
        while self._counts.n_requests < n_sent and time.monotonic() < deadline:
            before = self._counts.n_requests
            self._service(min(0.05, max(0.0, deadline - time.monotonic())))
            if self._counts.n_requests > before:
                deadline = time.monotonic() + cfg.request_timeout_s
        complete = self._counts.n_requests >= n_sent
        if not complete:
            log.warning(
                "run %d spill %d: %d of %d readout requests never came; SPILL_END after the %.1f s timeout",
                spill.run,
                spill.spill,
                n_sent - self._counts.n_requests,
                n_sent,
                cfg.request_timeout_s,
            )
        c = self._counts
        t_end = spill.t_end_ns if cfg.original_times and spill.t_end_ns else time.time_ns()
        self._send(
            protocol.SpillEnd(
                run=spill.run,
                spill=spill.spill,
                n_slices=n_sent,
                n_requests=c.n_requests,
                n_fragments=c.n_fragments,
                n_events_read=c.n_events_read,
                n_particles=n_particles,
                t_end_ns=t_end,
            )
        )
        self._state = protocol.FrontEndState.RUNNING
        self._spill = None
        if c.random_unavailable:
            log.warning(
                "run %d spill %d: %d random-trigger windows asked for are not in the file (different random "
                "period?): sent as all-zero waveforms",
                spill.run,
                spill.spill,
                c.random_unavailable,
            )
        if c.read_errors:
            log.warning(
                "run %d spill %d: the waveforms of %d requests could not be read from %s: header-only fragments",
                spill.run,
                spill.spill,
                c.read_errors,
                spill.path,
            )
        for name in ("bad_index", "unknown_slice"):
            if getattr(c, name):
                log.warning(
                    "run %d spill %d: %d requests with %s: header-only fragments",
                    spill.run,
                    spill.spill,
                    getattr(c, name),
                    name,
                )
        wall = time.monotonic() - wall0
        self.report.spills.append(
            SpillReport(
                spill.path, spill.run, spill.spill, n_sent, n_particles, c, complete, spill.end_ns / 1e9, wall
            )
        )
        log.info(
            "run %d spill %d replayed: %d slices, %d particles, %d events read out in %.2f s",
            spill.run,
            spill.spill,
            n_sent,
            n_particles,
            c.n_events_read,
            wall,
        )

    # ------------------------------------------------------------ socket
    def _wait_to_send(self, due: float | None, n_sent: int) -> bool:
        """Serve requests until the next slice may go (its time, or room in flight); False on stop."""
        since = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if due is None:
                if n_sent - self._counts.n_requests < self.config.max_inflight_slices:
                    self._service(0.0)
                    return True
                if now - since > self.config.stall_timeout_s:
                    raise ReplayStalled(
                        f"the DAQ at {self.config.endpoint} sent no readout request for "
                        f"{self.config.stall_timeout_s:.0f} s ({n_sent - self._counts.n_requests} slices waiting)"
                    )
                self._service(0.05)
            elif now >= due:
                self._service(0.0)
                return True
            else:
                self._service(min(due - now, 0.05))
        return False

    def _service(self, timeout_s: float) -> None:
        """Answer every message waiting (waiting at most ``timeout_s`` for the first); heartbeats."""
        sock = self._sock
        assert sock is not None
        wait_ms = poll_ms(timeout_s)
        while sock.poll(wait_ms, zmq.POLLIN):
            wait_ms = 0
            frames = sock.recv_multipart(copy=False)
            try:
                msg = protocol.decode(frames)
            except ProtocolError as e:
                self.report.decode_errors += 1
                self._log_once("decode", "undecodable message from the DAQ (%s); counted, going on", e)
                continue
            if isinstance(msg, protocol.RunAck | protocol.AnnounceRequest):
                self._control(msg)
                continue
            if isinstance(msg, protocol.Nack):
                self._nacked(msg)
                continue
            if not isinstance(msg, protocol.ReadoutRequest):
                self.report.unexpected += 1
                self._log_once("unexpected", "unexpected %s from the DAQ; ignored", msg.TYPE.name)
                continue
            self._answer(msg)
        self._heartbeat()

    def _control(self, msg: protocol.RunAck | protocol.AnnounceRequest) -> None:
        """The DAQ's RUN_ACK (a refusal ends the replay, said) and ANNOUNCE_REQUEST (it was restarted:
        RUN_START again, header ``spill`` = the spill being replayed)."""
        if isinstance(msg, protocol.RunAck):
            if msg.status == protocol.RunAck.REFUSED:
                log.error("the DAQ refused run %d: %s; stopping the replay", msg.run, msg.text)
                self.stop.set()
            return
        if self._run_start_msg is not None:
            spill = self._spill.spill if self._spill is not None else 0
            log.warning("the DAQ asks for the run (it was restarted?): announcing run %d again", self._run)
            self._send(dataclasses.replace(self._run_start_msg, spill=spill))

    def _answer(self, req: protocol.ReadoutRequest) -> None:
        spill = self._spill
        if spill is None or req.run != spill.run or req.spill != spill.spill:
            self.report.late_requests += 1
            self._log_once(
                "late",
                "readout request for run %d spill %d slice %d after its SPILL_END: header-only fragments",
                req.run,
                req.spill,
                req.slice_id,
            )
            for g in range(detector.N_GROUPS):
                self._send(protocol.Fragment(run=req.run, spill=req.spill, slice_id=req.slice_id, source=g))
            return
        # encoded and numbered; the large waveform frames in new arrays that their ZeroMQ messages keep
        frags = spill.answer_frames(
            req, self._counts, first_seq=self._seq.next, own_from_bytes=ZERO_COPY_BYTES
        )
        self._seq.next += len(frags)
        for frames in frags:  # no heartbeat in between: it would take a number before the fragments'
            self._send_frames(frames, copy=False)
        self._heartbeat()

    def _heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_s
            spill = self._spill.spill if self._spill is not None else 0
            self._send(
                protocol.Heartbeat(
                    run=self._run,
                    spill=spill,
                    uptime_ns=int((now - self._t_start) * 1e9),
                    state=int(self._state),
                ),
                beat=False,
            )

    def _send(self, msg: protocol.Message, beat: bool = True) -> None:
        """Number (next sequence number), encode and send a message; then a heartbeat if one is due."""
        self._send_frames(protocol.encode(self._seq.stamp(msg)))
        if beat:
            self._heartbeat()

    def _send_frames(self, frames: list[bytes | memoryview], copy: bool = True) -> None:
        """Send an encoded message. With ``copy`` every frame is copied into its ZeroMQ message; without,
        frames of at least the socket's ``copy_threshold`` bytes are sent zero-copy (the message keeps
        the frame's buffer until ZeroMQ has sent it: it must not be reused) and smaller ones copied."""
        send = self._send_part
        try:
            for frame in frames[:-1]:
                send(frame, _SNDMORE, copy=copy)  # plain int flags: zmq.SNDMORE | 0 is enum arithmetic
            send(frames[-1], 0, copy=copy)
        except zmq.Again:
            raise ReplayStalled(
                f"the DAQ at {self.config.endpoint} has taken no message for {self.config.stall_timeout_s:.0f} s"
            ) from None

    def _nacked(self, nack: protocol.Nack) -> None:
        """The DAQ refused a message: counted by code, logged once per code."""
        code = nack.reason.split(":", 1)[0]
        self.report.nacks[code] = self.report.nacks.get(code, 0) + 1
        self._log_once(
            f"nack-{code}", "the DAQ refused a message (seq %d): %s", nack.refused_seq, nack.reason
        )

    def _log_once(self, key: str, fmt: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, *args)


def _incompatible(first: SpillTiming, spill: SpillTiming) -> str:
    """Why a spill cannot join the RUN_START of an earlier spill of its run ('' if it can)."""
    if not np.array_equal(first.prim_channels, spill.prim_channels):
        return "its primitive channels differ"
    if first.n_samples != spill.n_samples:
        return f"{spill.n_samples} samples per channel instead of {first.n_samples}"
    if first.slice_ns != spill.slice_ns:
        return f"slices of {spill.slice_ns} ns instead of {first.slice_ns} ns"
    return ""
