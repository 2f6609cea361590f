"""Conformance of a front-end to docs/protocol.md, without sockets: the DAQ's side of one run.

:class:`Conformance` is the core of ``na64 conformance`` (the shell, :mod:`daq.conformance_cli`, owns the
ROUTER socket and the clock). The shell passes every message the front-end sends (``receive``) and the
time (``tick``); the core decodes and checks it against the spec, and answers every SLICE with one
READOUT_REQUEST of its own choosing (returned, already numbered) that exercises the readout: zero-event
requests, particle entries (the first and last particle of a slice included), random-trigger entries
(NO_PARTICLE with ``t_ns``), requests without the optional ``t_ns`` frame, and one repeated request (a
retry). :meth:`Conformance.report` gives one :class:`CheckResult` per check of :data:`CHECKS`.

Pure: no sockets, clocks, files or logging; times come in as ``now`` (monotonic seconds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daq import detector, protocol
from daq.errors import ProtocolError
from daq.waveform import RecoConfig

#: every check of the report, in report order: name -> what it verifies (docs/protocol.md lists them)
CHECKS: dict[str, str] = {
    "decode": "every message decodes: magic, version, known type, header/body/frame lengths, CRC-32, "
    "frame count, dtype codes and shapes",
    "direction": "only front-end message types (RUN_START, RUN_STOP, SPILL_START, SPILL_END, SLICE, FRAGMENT, "
    "HEARTBEAT)",
    "header_fields": "header reserved = 0; source 0..5 in FRAGMENT, 0xFFFF elsewhere; slice 0 outside "
    "SLICE/FRAGMENT/SPILL_END (SPILL_END: the number of slices planned); spill >= 1 in spill messages, 0 in RUN_STOP (RUN_START: 0, or the spill in progress when it re-announces its run to a restarted DAQ); seq, send_time_ns and u64 body "
    "fields < 2^63; run = the run's number",
    "sequence": "sequence numbers 0, 1, 2 ... without gap or repeat (back to 0 only with a RUN_START)",
    "order": "RUN_START before spills; SPILL_START in a run, outside a spill; SLICE and FRAGMENT inside "
    "their spill; SPILL_END closes the open spill; RUN_STOP outside a spill with n_spills = spills sent",
    "run_start": "n_samples 1..4096, n_channels 110, sample_period_ps and slice_ns >= 1, prim_channels "
    "unique, < n_channels, containing the counters and the trigger block; info is a UTF-8 JSON object",
    "spill_numbers": "spill numbers >= 1, increasing within a run (never reused)",
    "slices": "slice ids 0, 1, 2 ... per spill without gap or repeat; slices do not overlap "
    "(t0_ns >= previous t0_ns + length_ns); length_ns >= 1; amp has one row per primitive channel",
    "slice_times": "t_ns non-decreasing within a slice and across slices, inside [t0_ns, t0_ns + length_ns)",
    "primitive_range": "primitive amplitudes 0..4095 (12 bits)",
    "fragments": "per request one FRAGMENT per readout group 0..5, no other; run, spill, slice of the "
    "request; n_events = K, n_channels = the group's, n_samples = RUN_START's, index = the request's",
    "samples": "waveform samples 0..4095 (12 bits)",
    "answered": "every request answered (six FRAGMENTs) before its spill's SPILL_END",
    "zero_event_requests": "a request with K = 0 is answered with six FRAGMENTs of n_events 0",
    "random_triggers": "entries with index NO_PARTICLE (random triggers, t_ns given) are read out",
    "requests_without_t_ns": "requests without the optional t_ns frame are read out",
    "request_retry": "a repeated request is answered again, the same way (same index, six groups)",
    "window_placement": "the in-time pulse of requested beam particles (counters S0 S2 S3, averaged) peaks "
    "at sample expected_peak_ns / period (10) +- 1, with about the height of their primitives (x0.5..2)",
    "spill_end_counters": "SPILL_END's n_slices, n_requests, n_fragments, n_events_read, n_particles "
    "equal what was sent and received",
    "heartbeat": "state 0..3 and consistent (2 or 3 in a spill, not 2 outside), reserved 0, uptime "
    "non-decreasing, no silence longer than 3 s",
    "coverage": "a RUN_START and at least one complete spill (SPILL_START ... SPILL_END) were received",
}

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
#: header fields and u64 body fields are below this (stored as int64 downstream)
INT64_LIMIT = 1 << 63
MAX_SAMPLES = 4096
#: the longest silence between two heartbeats the checker accepts (the DQM alarms at 3.5 s)
HEARTBEAT_MAX_GAP_S = 3.0
#: the in-time peak may sit this many samples from expected_peak_ns / period (phase and time offsets)
PEAK_TOLERANCE_SAMPLES = 1.0
#: beam particles (counters above this in the primitives) whose windows enter window_placement
BEAM_COUNTER_MIN = 150
#: at least this many such entries are needed to judge window_placement
PLACEMENT_MIN_ENTRIES = 8
#: failure examples kept per check
EXAMPLES = 5
FRONTEND_TYPES = protocol.FRONTEND_TYPES
_SPILL_TYPES = frozenset(
    {
        protocol.MessageType.SPILL_START,
        protocol.MessageType.SPILL_END,
        protocol.MessageType.SLICE,
        protocol.MessageType.FRAGMENT,
    }
)
_SLICE_TYPES = frozenset({protocol.MessageType.SLICE, protocol.MessageType.FRAGMENT})
_COUNTERS = [detector.counter_id(n) for n in detector.BEAM_COUNTERS]


@dataclass
class CheckResult:
    """One line of the report: ``status`` PASS, FAIL or SKIP (not exercised); ``n`` times checked."""

    name: str
    status: str
    n: int
    failures: int
    detail: str
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "checked": self.n,
            "failures": self.failures,
            "detail": self.detail,
            "examples": self.examples,
            "verifies": CHECKS[self.name],
        }


@dataclass
class _Tally:
    n: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class _Request:
    """A READOUT_REQUEST sent, and what came back for it."""

    msg: protocol.ReadoutRequest
    kind: str  # zero, mixed, no_t_ns, beam, retry
    groups: dict[int, protocol.Fragment] = field(default_factory=dict)
    prim: np.ndarray | None = None  # (3, K) counter primitives of particle entries (window placement)

    @property
    def answered(self) -> bool:
        return len(self.groups) == detector.N_GROUPS


@dataclass
class _Spill:
    number: int
    n_slices: int = 0
    n_particles: int = 0
    last_slice: int = -1
    last_end_ns: int | None = None
    last_t_ns: int | None = None
    n_fragments: int = 0
    requests: list[_Request] = field(default_factory=list)
    retry_of: _Request | None = None  # the request to repeat before the next slice's
    retried: bool = False


@dataclass
class Report:
    checks: list[CheckResult]
    frontend: str
    messages: int
    stopped: str

    @property
    def passed(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "frontend": self.frontend,
            "messages": self.messages,
            "stopped": self.stopped,
            "checks": [c.as_dict() for c in self.checks],
        }

    def text(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            line = f"{c.status}  {c.name:<{width}}  {c.detail}"
            lines += [line] + [f"      {'':<{width}}  - {e}" for e in c.examples if c.status == FAIL]
        failed = sum(c.status == FAIL for c in self.checks)
        skipped = sum(c.status == SKIP for c in self.checks)
        verdict = "all checks passed" if not failed else f"{failed} of {len(self.checks)} checks failed"
        extra = f", {skipped} not exercised" if skipped else ""
        lines.append(
            f"conformance: {verdict}{extra} ({self.messages} messages from {self.frontend}; {self.stopped})"
        )
        return "\n".join(lines)


class Conformance:
    """The DAQ's side of one run against one front-end: checks every message, plans the requests.

    ``max_spills``: the session is :attr:`done` after this many complete spills (or at RUN_STOP).
    """

    def __init__(self, max_spills: int = 2) -> None:
        self.max_spills = max_spills
        self.tally: dict[str, _Tally] = {name: _Tally() for name in CHECKS}
        self.sender: bytes | None = None
        self.other_senders: set[bytes] = set()
        self.frontend = "front-end"
        self.messages = 0
        self.expected_seq: int | None = None
        self.seq_out = protocol.SequenceCounter()
        self.run: protocol.RunStart | None = None
        self.run_spills = 0
        self.last_spill_number = 0
        self.spill: _Spill | None = None
        self.spills_done = 0
        self.requests: dict[tuple[int, int], list[_Request]] = {}
        self.last_heartbeat: float | None = None
        self.last_uptime = -1
        self.first_seen: float | None = None
        self.run_stopped = False
        self.period_ns = detector.SAMPLE_PERIOD_NS
        self.placement: list[tuple[np.ndarray, np.ndarray]] = []  # (counter windows sum, primitive sum)

    # ------------------------------------------------------------ results
    def _check(self, name: str, ok: bool, example: str = "") -> bool:
        t = self.tally[name]
        t.n += 1
        if not ok:
            t.failures += 1
            if len(t.examples) < EXAMPLES:
                t.examples.append(example)
        return ok

    @property
    def done(self) -> bool:
        return self.run_stopped or self.spills_done >= self.max_spills

    # ------------------------------------------------------------ entry points
    def receive(self, sender: bytes, frames: Sequence[Any], now: float) -> list[protocol.Message]:
        """A message from ``sender`` (frames after the ROUTER's identity). Returns the messages to send
        back: a RUN_ACK for a RUN_START (as the DAQ, which is ready at once), READOUT_REQUESTs."""
        if self.sender is None:
            self.sender = sender
        if sender != self.sender:
            self.other_senders.add(sender)
            return []
        self.messages += 1
        if self.first_seen is None:
            self.first_seen = now
        try:
            msg = protocol.decode(frames, validate=False)  # the ranges are judged by the checks below
        except ProtocolError as e:
            self._check("decode", False, f"message {self.messages}: {type(e).__name__}: {e}")
            self._sequence_of_undecodable(frames)
            return []
        self._check("decode", True)
        self._sequence(msg)  # every message a front-end sends is numbered, whatever its type
        if not self._check(
            "direction",
            msg.TYPE in FRONTEND_TYPES,
            f"{msg.TYPE.name} (seq {msg.seq}) is not a front-end message",
        ):
            return []
        self._header(msg, int(protocol.HEADER.unpack_from(memoryview(frames[0]).cast("B"))[12]))
        self.tick(now)
        match msg:
            case protocol.Heartbeat():
                self._heartbeat(msg, now)
            case protocol.RunStart():
                self._run_start(msg)
                return [protocol.RunAck.of(msg.run, protocol.RunAck.ACCEPTED)]
            case protocol.RunStop():
                self._run_stop(msg)
            case protocol.SpillStart():
                self._spill_start(msg)
            case protocol.SpillEnd():
                self._spill_end(msg)
            case protocol.Slice():
                return list(self._slice(msg))
            case protocol.Fragment():
                self._fragment(msg)
        return []

    def tick(self, now: float) -> None:
        """The time passes: a heartbeat silence longer than HEARTBEAT_MAX_GAP_S is a failure (once)."""
        since = self.last_heartbeat if self.last_heartbeat is not None else self.first_seen
        if since is not None and now - since > HEARTBEAT_MAX_GAP_S:
            self._check("heartbeat", False, f"no HEARTBEAT for {now - since:.1f} s")
            self.last_heartbeat = now  # one failure per silence

    # ------------------------------------------------------------ header and sequence
    def _header(self, msg: protocol.Message, reserved: int) -> None:
        where = f"{msg.TYPE.name} seq {msg.seq}"
        problems = []
        if msg.TYPE == protocol.MessageType.FRAGMENT:
            if not 0 <= msg.source < detector.N_GROUPS:
                problems.append(f"source {msg.source} is not a readout group 0..{detector.N_GROUPS - 1}")
        elif msg.source != protocol.NO_SOURCE:
            problems.append(f"source {msg.source:#x} (must be 0xffff)")
        if msg.TYPE not in _SLICE_TYPES and msg.TYPE != protocol.MessageType.SPILL_END and msg.slice_id != 0:
            problems.append(f"slice {msg.slice_id} (must be 0)")
        if msg.TYPE in _SPILL_TYPES and msg.spill < 1:
            problems.append("spill 0 (spills count from 1)")
        if msg.TYPE == protocol.MessageType.RUN_STOP and msg.spill != 0:
            problems.append(f"spill {msg.spill} (must be 0 outside spills)")
        if msg.seq >= INT64_LIMIT or msg.send_time_ns >= INT64_LIMIT:
            problems.append("seq or send_time_ns >= 2^63")
        for name, code in msg.BODY:
            if code == "Q" and int(getattr(msg, name)) >= INT64_LIMIT:
                problems.append(f"{name} >= 2^63")
        run = self.run.run if self.run is not None else msg.run
        if msg.run != run and msg.TYPE not in (
            protocol.MessageType.HEARTBEAT,
            protocol.MessageType.RUN_START,
        ):
            problems.append(f"run {msg.run} (the run is {run})")
        if reserved:
            problems.append(f"header reserved = {reserved}")
        self._check("header_fields", not problems, f"{where}: {'; '.join(problems)}")

    def _sequence_of_undecodable(self, frames: Sequence[Any]) -> None:
        """An undecodable message still used a sequence number: take it from the header if readable."""
        try:
            head = memoryview(frames[0]).cast("B")
            if len(head) >= protocol.HEADER_SIZE:
                self.expected_seq = int(protocol.HEADER.unpack_from(head)[8]) + 1
        except (TypeError, ValueError, IndexError):
            pass

    def _sequence(self, msg: protocol.Message) -> None:
        exp = self.expected_seq
        restart = msg.seq == 0 and msg.TYPE == protocol.MessageType.RUN_START
        ok = restart or (msg.seq == 0 if exp is None else msg.seq == exp)
        want = 0 if exp is None else exp
        what = "gap" if msg.seq > want else "repeat or backwards"
        self._check("sequence", ok, f"{msg.TYPE.name}: seq {msg.seq}, expected {want} ({what})")
        self.expected_seq = msg.seq + 1

    # ------------------------------------------------------------ run and spill
    def _run_start(self, msg: protocol.RunStart) -> None:
        prim = np.asarray(msg.prim_channels)
        problems = []
        if not 1 <= msg.n_samples <= MAX_SAMPLES:
            problems.append(f"n_samples {msg.n_samples} (1..{MAX_SAMPLES})")
        if msg.n_channels != detector.N_CHANNELS:
            problems.append(f"n_channels {msg.n_channels} (the detector has {detector.N_CHANNELS})")
        if msg.sample_period_ps < 1 or msg.slice_ns < 1:
            problems.append(f"sample_period_ps {msg.sample_period_ps}, slice_ns {msg.slice_ns} (>= 1)")
        if prim.size and int(prim.max()) >= max(msg.n_channels, 1):
            problems.append("a primitive channel id >= n_channels")
        if np.unique(prim).size != prim.size:
            problems.append("a primitive channel listed twice")
        need = set(int(c) for c in detector.default_primitive_channels())
        lacking = sorted(need - set(int(c) for c in prim))
        if lacking:
            names = ", ".join(detector.channel_name(c) for c in lacking[:6])
            problems.append(f"prim_channels lack {len(lacking)} counter/trigger-block channels ({names} ...)")
        if msg.info is not None:
            try:
                doc = json.loads(bytes(msg.info).decode("utf-8"))
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                self.frontend = str(
                    doc.get("name") or doc.get("frontend") or doc.get("program") or "front-end"
                )
                if doc.get("version"):
                    self.frontend += f" {doc['version']}"
            except (UnicodeDecodeError, ValueError) as e:
                problems.append(f"info is not a UTF-8 JSON object ({e})")
        self._check("run_start", not problems, f"RUN_START run {msg.run}: {'; '.join(problems)}")
        restart = self.run is not None and msg.run == self.run.run
        self._check(
            "order",
            self.spill is None or restart,
            f"RUN_START {msg.run} while spill {self.spill.number if self.spill else 0} is open",
        )
        if not restart:
            self.run_spills = 0
            self.last_spill_number = 0
        self.run = msg
        self.run_stopped = False
        if msg.sample_period_ps:
            self.period_ns = msg.sample_period_ps / 1000.0

    def _run_stop(self, msg: protocol.RunStop) -> None:
        if self.run is None:
            problem = f"RUN_STOP run {msg.run} outside a run"
        elif self.spill is not None:
            problem = f"RUN_STOP run {msg.run} while spill {self.spill.number} is open"
        elif msg.n_spills != self.run_spills:
            problem = f"RUN_STOP n_spills {msg.n_spills}, {self.run_spills} spills were sent"
        else:
            problem = ""
        self._check("order", not problem, problem)
        if msg.reserved:
            self._check("header_fields", False, f"RUN_STOP reserved = {msg.reserved}")
        self.run = None
        self.run_stopped = True

    def _spill_start(self, msg: protocol.SpillStart) -> None:
        self._check(
            "order",
            self.run is not None and self.spill is None,
            f"SPILL_START {msg.spill} " + ("outside a run" if self.run is None else "inside an open spill"),
        )
        self._check(
            "spill_numbers",
            msg.spill > self.last_spill_number,
            f"SPILL_START {msg.spill} after spill {self.last_spill_number} of the run (reused or decreasing)",
        )
        self.last_spill_number = max(self.last_spill_number, msg.spill)
        self.run_spills += 1
        self.spill = _Spill(msg.spill)

    def _spill_end(self, msg: protocol.SpillEnd) -> None:
        sp = self.spill
        if not self._check(
            "order",
            sp is not None and sp.number == msg.spill,
            f"SPILL_END {msg.spill} without its SPILL_START",
        ):
            return
        assert sp is not None
        reqs = sp.requests
        for r in reqs:
            self._check(
                "answered",
                r.answered,
                f"spill {sp.number} slice {r.msg.slice_id} ({r.kind} request): groups "
                f"{sorted(r.groups)} answered before SPILL_END",
            )
        read = sum(r.msg.n_events for r in reqs if any(not f.empty for f in r.groups.values()))
        want = {
            "n_slices": sp.n_slices,
            "n_requests": len(reqs),
            "n_fragments": sp.n_fragments,
            "n_events_read": read,
            "n_particles": sp.n_particles,
        }
        bad = {k: (v, getattr(msg, k)) for k, v in want.items() if getattr(msg, k) != v}
        self._check(
            "spill_end_counters",
            not bad,
            f"SPILL_END {sp.number}: " + "; ".join(f"{k} {got} (counted {v})" for k, (v, got) in bad.items()),
        )
        self.spill = None
        self.spills_done += 1

    # ------------------------------------------------------------ slices and requests
    def _slice(self, msg: protocol.Slice) -> list[protocol.ReadoutRequest]:
        sp, r = self.spill, self.run
        where = f"SLICE {msg.slice_id} of spill {msg.spill}"
        if not self._check(
            "order", sp is not None and r is not None and msg.spill == sp.number, f"{where} outside its spill"
        ):
            return []
        assert sp is not None and r is not None
        exp_id = sp.last_slice + 1
        problems = []
        if msg.slice_id != exp_id:
            problems.append(f"slice id {msg.slice_id}, expected {exp_id}")
        if sp.last_end_ns is not None and msg.t0_ns < sp.last_end_ns:
            problems.append(f"t0_ns {msg.t0_ns} before the previous slice's end {sp.last_end_ns}")
        if msg.length_ns < 1:
            problems.append("length_ns 0")
        if msg.amp.shape[0] != np.asarray(r.prim_channels).size:
            problems.append(
                f"{msg.amp.shape[0]} amp rows for {np.asarray(r.prim_channels).size} primitive channels"
            )
        self._check("slices", not problems, f"{where}: {'; '.join(problems)}")
        t = np.asarray(msg.t_ns)
        times = []
        if t.size:
            dec = np.flatnonzero(t[1:] < t[:-1])
            if dec.size:
                i = int(dec[0]) + 1
                times.append(f"t_ns decreases at particle {i} ({int(t[i])} after {int(t[i - 1])})")
            if sp.last_t_ns is not None and int(t[0]) < sp.last_t_ns:
                times.append(f"first t_ns {int(t[0])} before the previous slice's last {sp.last_t_ns}")
            lo, hi = int(t.min()), int(t.max())
            if lo < msg.t0_ns or hi >= msg.t0_ns + msg.length_ns:
                times.append(f"t_ns {lo}..{hi} outside [{msg.t0_ns}, {msg.t0_ns + msg.length_ns})")
            sp.last_t_ns = int(t[-1])
        self._check("slice_times", not times, f"{where}: {'; '.join(times)}")
        if msg.amp.size:
            top = int(msg.amp.max())
            self._check("primitive_range", top <= detector.ADC_MAX, f"{where}: amplitude {top} > 4095")
        sp.n_slices += 1
        sp.n_particles += int(msg.n_particles)
        sp.last_slice = max(sp.last_slice, msg.slice_id)
        sp.last_end_ns = msg.t0_ns + msg.length_ns
        out = []
        if sp.retry_of is not None and not sp.retried:  # the retry goes before the next slice's request
            first = sp.retry_of
            out.append(self._send(sp, first.msg, "retry", first.prim))
            sp.retried = True
        out.append(self._plan(sp, r, msg))
        return out

    def _plan(self, sp: _Spill, r: protocol.RunStart, msg: protocol.Slice) -> protocol.ReadoutRequest:
        """The request for a slice: the n-th slice of a spill gets kind n % 4 (zero, mixed, no_t_ns, beam)."""
        n = int(msg.n_particles)
        t = np.asarray(msg.t_ns, dtype=np.int64)
        kind = ("zero", "mixed", "no_t_ns", "beam")[(sp.n_slices - 1) % 4]
        index = np.zeros(0, np.uint32)
        t_ns: np.ndarray | None = np.zeros(0, np.int64)
        if kind == "mixed":
            parts = np.unique(np.array([0, n // 2, n - 1], np.int64)) if n else np.zeros(0, np.int64)
            rand_t = msg.t0_ns + msg.length_ns // 2
            idx = np.concatenate([parts, [-1]])
            tt = np.concatenate([t[parts], [rand_t]])
            order = np.lexsort(
                (idx == -1, tt)
            )  # time order; particles before a random trigger at equal times
            index = np.where(idx[order] == -1, protocol.NO_PARTICLE, idx[order]).astype(np.uint32)
            t_ns = tt[order].astype(np.int64)
        elif kind == "no_t_ns":
            index = np.unique(np.linspace(0, n - 1, min(n, 3)).astype(np.int64)).astype(np.uint32)
            t_ns = None
        elif kind == "beam" and n:
            rows = _rows_of(r, _COUNTERS)
            beam = np.zeros(0, np.int64)
            if rows is not None:
                beam = np.flatnonzero(np.all(msg.amp[rows] > BEAM_COUNTER_MIN, axis=0))
            pick = beam[:: max(1, beam.size // 8)][:8]
            index = pick.astype(np.uint32)
            t_ns = t[pick].astype(np.int64)
        prim = None
        part = index != protocol.NO_PARTICLE
        rows = _rows_of(r, _COUNTERS)
        if rows is not None and index.size:
            prim = np.zeros((len(rows), index.size), np.float64)
            prim[:, part] = msg.amp[rows][:, index[part].astype(np.int64)]
        req = protocol.ReadoutRequest(
            run=r.run,
            spill=sp.number,
            slice_id=msg.slice_id,
            n_events=int(index.size),
            index=index,
            t_ns=t_ns,
        )
        stamped = self._send(sp, req, kind, prim)
        if kind == "mixed" and index.size > 1 and sp.retry_of is None and not self._retried_before():
            sp.retry_of = sp.requests[-1]
        return stamped

    def _retried_before(self) -> bool:
        return any(r.kind == "retry" for reqs in self.requests.values() for r in reqs)

    def _send(
        self, sp: _Spill, req: protocol.ReadoutRequest, kind: str, prim: np.ndarray | None
    ) -> protocol.ReadoutRequest:
        stamped = self.seq_out.stamp(req)
        assert isinstance(stamped, protocol.ReadoutRequest)
        rec = _Request(stamped, kind, prim=prim)
        sp.requests.append(rec)
        self.requests.setdefault((sp.number, req.slice_id), []).append(rec)
        return stamped

    def _fragment(self, msg: protocol.Fragment) -> None:
        sp, r = self.spill, self.run
        where = f"FRAGMENT spill {msg.spill} slice {msg.slice_id} source {msg.source}"
        if not self._check("order", sp is not None and msg.spill == sp.number, f"{where} outside its spill"):
            return
        assert sp is not None and r is not None
        sp.n_fragments += 1
        open_reqs = [
            q for q in self.requests.get((msg.spill, msg.slice_id), []) if msg.source not in q.groups
        ]
        if not self._check("fragments", bool(open_reqs), f"{where}: no request waits for this group"):
            return
        req = open_reqs[0]
        req.groups[msg.source] = msg
        k = req.msg.n_events
        problems = []
        if msg.run != req.msg.run:
            problems.append(f"run {msg.run}")
        if msg.n_events != k:
            problems.append(f"n_events {msg.n_events}, the request has {k}")
        if 0 <= msg.source < detector.N_GROUPS:
            m = detector.GROUP_IDS[msg.source].size
            if msg.n_channels != m:
                problems.append(f"n_channels {msg.n_channels}, group {msg.source} has {m}")
        if msg.n_samples != r.n_samples:
            problems.append(f"n_samples {msg.n_samples}, RUN_START said {r.n_samples}")
        if not msg.empty:
            assert msg.index is not None and msg.waveforms is not None
            if not np.array_equal(msg.index, req.msg.index):
                problems.append("index differs from the request's")
            if msg.waveforms.size:
                top = int(msg.waveforms.max())
                self._check("samples", top <= detector.ADC_MAX, f"{where}: sample {top} > 4095")
        self._check("fragments", not problems, f"{where} ({req.kind} request): {'; '.join(problems)}")
        if req.answered:
            self._judge_answer(req, r)

    def _judge_answer(self, req: _Request, r: protocol.RunStart) -> None:
        """A request has all six fragments: the checks of its kind."""
        where = f"spill {req.msg.spill} slice {req.msg.slice_id}"
        frags = req.groups.values()
        with_data = all(not f.empty for f in frags)
        if req.kind == "zero":
            self._check("zero_event_requests", all(f.n_events == 0 for f in frags), f"{where}: n_events != 0")
        elif req.msg.n_events:
            name = {"mixed": "random_triggers", "no_t_ns": "requests_without_t_ns", "retry": "request_retry"}
            check = name.get(req.kind)
            if req.kind == "mixed" and not np.any(req.msg.index == protocol.NO_PARTICLE):
                check = None
            if check is not None:
                empty = sorted(g for g, f in req.groups.items() if f.empty)
                self._check(check, with_data, f"{where}: header-only answer from groups {empty}")
        if req.prim is not None and with_data and req.msg.n_events:
            self._collect_placement(req, r)

    def _collect_placement(self, req: _Request, r: protocol.RunStart) -> None:
        frag = req.groups[int(detector.Detector.COUNTER)]
        assert frag.waveforms is not None and req.prim is not None
        beam = np.all(req.prim > BEAM_COUNTER_MIN, axis=0) & (req.msg.index != protocol.NO_PARTICLE)
        if not beam.any():
            return
        first = int(detector.GROUP_IDS[int(detector.Detector.COUNTER)][0])
        rows = [c - first for c in _COUNTERS]
        wf = frag.waveforms[beam][:, rows, :].astype(np.float64)  # (B, 3, S)
        wf -= np.median(wf, axis=2, keepdims=True)  # pedestal: most of a window is baseline
        self.placement.append((wf.sum(axis=1), req.prim[:, beam].sum(axis=0)))

    def _heartbeat(self, msg: protocol.Heartbeat, now: float) -> None:
        problems = []
        if msg.state not in (0, 1, 2, 3):
            problems.append(f"state {msg.state}")
        elif self.spill is not None and msg.state not in (2, 3):
            problems.append(f"state {msg.state} inside spill {self.spill.number} (2 or 3)")
        elif self.spill is None and msg.state == 2:
            problems.append("state 2 (in spill) outside a spill")
        if msg.reserved:
            problems.append(f"reserved {msg.reserved}")
        if msg.uptime_ns < self.last_uptime:
            problems.append(f"uptime_ns {msg.uptime_ns} after {self.last_uptime}")
        self.last_uptime = msg.uptime_ns
        self._check("heartbeat", not problems, f"HEARTBEAT seq {msg.seq}: {'; '.join(problems)}")
        self.last_heartbeat = now

    # ------------------------------------------------------------ report
    def report(self, now: float, stopped: str) -> Report:
        """The result of every check. Requests of a spill still open are not judged."""
        self.tick(now)
        self._judge_placement()
        t = self.tally
        complete = self.spills_done > 0
        self._check(
            "coverage",
            self.messages > 0 and complete,
            "nothing received"
            if not self.messages
            else "no RUN_START"
            if self.run is None and not self.run_stopped and not complete
            else "no complete spill (SPILL_START ... SPILL_END)",
        )
        if self.other_senders:
            t["coverage"].note = f"{len(self.other_senders)} other front-end(s) ignored"
        out = []
        for name in CHECKS:
            c = t[name]
            if c.failures:
                status, detail = FAIL, f"{c.failures} of {c.n} failed"
            elif c.n:
                status, detail = PASS, f"{c.n} checked"
            else:
                status, detail = SKIP, "not exercised"
            if c.note:
                detail += f"; {c.note}"
            out.append(CheckResult(name, status, c.n, c.failures, detail, list(c.examples)))
        return Report(out, self.frontend, self.messages, stopped)

    def _judge_placement(self) -> None:
        if not self.placement:
            return
        wf = np.concatenate([w for w, _ in self.placement])
        prim = np.concatenate([p for _, p in self.placement])
        if len(prim) < PLACEMENT_MIN_ENTRIES:
            self.tally["window_placement"].note = f"only {len(prim)} beam-particle windows"
            return
        mean = wf.mean(axis=0)
        peak = int(np.argmax(mean))
        want = RecoConfig().expected_peak_ns / self.period_ns
        ratio = float(mean[peak] / prim.mean()) if prim.mean() > 0 else 0.0
        ok = abs(peak - want) <= PEAK_TOLERANCE_SAMPLES and 0.5 <= ratio <= 2.0
        self._check(
            "window_placement",
            ok,
            f"{len(prim)} beam-particle windows: the counters' average pulse peaks at sample {peak} "
            f"(expected {want:g}), height {ratio:.2f} x the primitives",
        )
        self.tally["window_placement"].note = f"peak at sample {peak}, height {ratio:.2f} x primitives"


def _rows_of(r: protocol.RunStart, channels: list[int]) -> list[int] | None:
    """Rows of ``channels`` in the run's primitives (None if one is missing)."""
    prim = [int(c) for c in np.asarray(r.prim_channels)]
    try:
        return [prim.index(c) for c in channels]
    except ValueError:
        return None
