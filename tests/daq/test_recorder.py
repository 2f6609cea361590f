"""The DAQ's run and spill state machine (daq.recorder), in process: messages in, actions out.

A table gives, for every state of the DAQ and every kind of message a front-end can send, the state
after it, the loss it counts and the actions it asks for; a hypothesis state machine then sends random
sequences of messages, timeouts, writer results and failures and checks what must always hold (the
writer's commands come in a valid order, the counters add up, the documents validate). The process
tests (test_service.py, test_backpressure.py) keep what needs real sockets and a real writer thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from calibration.constants import nominal
from daq import detector, protocol
from daq.contract import FRONTEND_COUNTERS, LOSS_REASONS, DaqState, LossReason, SpillStatus, is_breakdown
from daq.daq_config import DaqConfig, StorageConfig
from daq.recorder import (
    Action,
    CalibrationChoice,
    LossCounted,
    PublishEvents,
    PublishStatus,
    PublishSummary,
    Recorder,
    Send,
)
from daq.summary import CalibrationStatus, DaqStatus, SpillSummary
from daq.trigger import make_batch
from daq.writer_commands import AppendEvents, CloseSpill, OpenSpill, WriteResult

FE = b"\x00fe-1"  # the front-end of the run
OTHER = b"\x00fe-2"  # another one
SLICE_NS = 20_000_000  # 20 ms: two random triggers (every 10 ms) in every slice


@dataclass
class FakeEnvironment:
    free: int = 10**12
    problem: str = ""  # why the run's constants cannot be used ("": the nominal ones are asked for)
    files: dict[int, set[int]] = field(default_factory=dict)  # run -> spills with a file on disk

    def calibration(self, run: int) -> CalibrationChoice:
        if self.problem:
            status = CalibrationStatus(run, None, False, "files", f"run {run}: {self.problem}")
            return CalibrationChoice(None, status)
        return CalibrationChoice(nominal(), CalibrationStatus(run, "nominal-v1", True, "nominal (asked for)"))

    def free_bytes(self) -> int:
        return self.free

    def writer_queue(self) -> int:
        return 0

    def existing_spills(self, run: int) -> frozenset[int]:
        return frozenset(self.files.get(run, ()))


@dataclass
class Sender:
    """A front-end's messages, numbered as it would number them."""

    ident: bytes
    run: int = 1
    seq: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))
    #: what it reports in SPILL_END
    counters: dict[str, int] = field(default_factory=dict)

    def stamp(self, msg: protocol.Message) -> protocol.Message:
        out = protocol.with_seq(msg, self.seq)
        self.seq += 1
        return out

    def run_start(self, run: int | None = None) -> protocol.Message:
        return self.stamp(
            protocol.RunStart(
                run=self.run if run is None else run,
                n_channels=detector.N_CHANNELS,
                prim_channels=detector.default_primitive_channels(),
                info=protocol.RunStart.info_bytes('{"name": "test"}'),
            )
        )

    def run_stop(self) -> protocol.Message:
        return self.stamp(protocol.RunStop(run=self.run))

    def spill_start(self, spill: int) -> protocol.Message:
        self.counters = dict.fromkeys(FRONTEND_COUNTERS, 0)
        return self.stamp(protocol.SpillStart(run=self.run, spill=spill, t_start_ns=1_000_000_000))

    def spill_end(self, spill: int) -> protocol.Message:
        c = self.counters
        return self.stamp(protocol.SpillEnd(run=self.run, spill=spill, t_end_ns=1_000_000_000 + 10**9, **c))

    def got_request(self) -> None:
        self.counters["n_requests"] = self.counters.get("n_requests", 0) + 1

    def slice(self, spill: int, slice_id: int, n: int = 0) -> protocol.Message:
        """A slice of ``n`` particles (0: only the two random triggers are read out)."""
        self.counters["n_slices"] = self.counters.get("n_slices", 0) + 1
        self.counters["n_particles"] = self.counters.get("n_particles", 0) + n
        t = np.sort(self.rng.integers(0, SLICE_NS, n)).astype(np.int64)
        b = make_batch(ecal_block_gev=self.rng.uniform(0, 100, n), prs_block_gev=np.full(n, 1.0), t_ns=t)
        return self.stamp(
            protocol.Slice(
                run=self.run,
                spill=spill,
                slice_id=slice_id,
                t0_ns=slice_id * SLICE_NS,
                length_ns=SLICE_NS,
                n_particles=n,
                t_ns=t + slice_id * SLICE_NS,
                amp=b.amp,
            )
        )

    def fragments(self, req: protocol.ReadoutRequest) -> list[protocol.Message]:
        """The six fragments answering a request (counted as sent)."""
        self.counters["n_fragments"] = self.counters.get("n_fragments", 0) + detector.N_GROUPS
        self.counters["n_events_read"] = self.counters.get("n_events_read", 0) + req.n_events
        out = []
        for g, ids in enumerate(detector.GROUP_IDS):
            wf = np.full((req.n_events, ids.size, detector.N_SAMPLES), 200, np.uint16)
            out.append(
                self.stamp(
                    protocol.Fragment(
                        run=req.run,
                        spill=req.spill,
                        slice_id=req.slice_id,
                        source=g,
                        n_events=req.n_events,
                        n_channels=ids.size,
                        n_samples=detector.N_SAMPLES,
                        index=req.index,
                        waveforms=wf,
                    )
                )
            )
        return out

    def heartbeat(self) -> protocol.Message:
        return self.stamp(protocol.Heartbeat(state=protocol.FrontEndState.RUNNING))


def config(min_free_mb: float = 500.0) -> DaqConfig:
    return DaqConfig(storage=StorageConfig(min_free_mb=min_free_mb))


def state_of(rec: Recorder) -> str:
    return str(rec.status(0.0).state)


def losses_of(actions: list[Action]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in actions:
        if isinstance(a, LossCounted) and not is_breakdown(a.reason):
            out[a.reason] = out.get(a.reason, 0) + a.n
    out.pop(LossReason.DEAD_TIME, None)  # the trigger's, not the message's
    return out


def kinds(actions: list[Action]) -> list[str]:
    """Action types in order, without the log records and loss notices (asserted separately); a Send of
    a NACK is "Nack"."""
    return [
        "Nack" if isinstance(a, Send) and isinstance(a.message, protocol.Nack) else type(a).__name__
        for a in actions
        if type(a).__name__ not in ("Log", "LossCounted")
    ]


# ---------------------------------------------------------------- the states
@dataclass
class Scene:
    rec: Recorder
    fe: Sender
    env: FakeEnvironment
    actions: list[Action] = field(default_factory=list)
    request: protocol.ReadoutRequest | None = None

    def feed(self, msg: protocol.Message, sender: bytes = FE, now: float = 1.0) -> list[Action]:
        out = self.rec.handle(sender, msg, now)
        self.actions += out
        for a in out:
            if isinstance(a, Send) and isinstance(a.message, protocol.ReadoutRequest):
                self.request = a.message
                self.fe.got_request()
        return out


def idle() -> Scene:
    env = FakeEnvironment()
    return Scene(Recorder(config(), env, data_dir="/data"), Sender(FE), env)


def running() -> Scene:
    s = idle()
    s.feed(s.fe.run_start())
    return s


def in_spill() -> Scene:
    s = running()
    s.feed(s.fe.spill_start(1))
    s.feed(s.fe.slice(1, 0))  # one request waits for its fragments
    return s


def in_unrecorded_spill() -> Scene:
    s = running()
    s.env.free = 10**6  # 1 MB free: the spill is not recorded
    s.feed(s.fe.spill_start(1))
    s.feed(s.fe.slice(1, 0))
    return s


STATES: dict[str, Callable[[], Scene]] = {
    "idle": idle,
    "running": running,
    "in_spill": in_spill,
    "in_unrecorded_spill": in_unrecorded_spill,
}


def the_fragment(s: Scene) -> protocol.Message:
    """The first fragment of the waiting request (or of a made-up one: nobody asked)."""
    req = s.request or protocol.ReadoutRequest(run=1, spill=1, slice_id=0)
    return s.fe.fragments(req)[0]


#: message kind -> how to make it in a scene
MESSAGES: dict[str, Callable[[Scene], protocol.Message]] = {
    "RUN_START": lambda s: s.fe.run_start(run=2),
    "RUN_START again": lambda s: s.fe.run_start(),
    "RUN_STOP": lambda s: s.fe.run_stop(),
    "SPILL_START": lambda s: s.fe.spill_start(2),
    "SPILL_END": lambda s: s.fe.spill_end(1),
    "SLICE": lambda s: s.fe.slice(1, 7),
    "FRAGMENT": the_fragment,
    "HEARTBEAT": lambda s: s.fe.heartbeat(),
    "READOUT_REQUEST": lambda s: s.fe.stamp(protocol.ReadoutRequest(run=1, spill=1)),
    "EVENTS": lambda s: s.fe.stamp(protocol.Events(run=1, spill=1)),
    "SUMMARY": lambda s: s.fe.stamp(protocol.Summary.of(1, "{}")),
    "RUN_ACK": lambda s: s.fe.stamp(protocol.RunAck(run=1)),
    "ANNOUNCE_REQUEST": lambda s: s.fe.stamp(protocol.AnnounceRequest(run=1)),
    "NACK": lambda s: s.fe.stamp(protocol.Nack.about(None, protocol.NackCode.INVALID, "no")),
}

UNEXPECTED = {LossReason.UNEXPECTED_MESSAGE: 1}
MISSING_END = {LossReason.SPILL_END_MISSING: 1}
UNKNOWN = {LossReason.RUN_UNKNOWN: 1}
NOT_A_FRONTEND_MESSAGE = ("READOUT_REQUEST", "EVENTS", "SUMMARY", "RUN_ACK", "ANNOUNCE_REQUEST", "NACK")

#: (state, message) -> (state after, losses counted, actions). Actions name their types in order (Log
#: and LossCounted left out); "Send" is the READOUT_REQUEST of a slice, the RUN_ACK of a RUN_START, the
#: ANNOUNCE_REQUEST of data of a run the DAQ does not know.
TABLE: dict[tuple[str, str], tuple[str, dict[str, int], list[str]]] = {
    ("idle", "RUN_START"): ("running", {}, ["Send"]),
    ("idle", "RUN_START again"): ("running", {}, ["Send"]),
    ("idle", "RUN_STOP"): ("idle", {}, ["PublishRunSummary", "RunFinished"]),
    # data of a run the DAQ does not know (it restarted mid-run): counted, the front-end is asked for it
    ("idle", "SPILL_START"): ("idle", UNKNOWN, ["Send"]),
    ("idle", "SPILL_END"): ("idle", UNKNOWN, ["Send"]),
    ("idle", "SLICE"): ("idle", UNKNOWN, ["Send"]),
    ("idle", "FRAGMENT"): ("idle", UNKNOWN, ["Send"]),
    ("idle", "HEARTBEAT"): ("idle", {}, []),
    ("running", "RUN_START"): ("running", {}, ["Send"]),
    ("running", "RUN_START again"): ("running", {}, ["Send"]),  # the sequence goes on: a retry, acked
    ("running", "RUN_STOP"): ("idle", {}, ["PublishRunSummary", "RunFinished"]),
    ("running", "SPILL_START"): ("in_spill", {}, ["OpenSpill"]),
    ("running", "SPILL_END"): ("running", UNKNOWN, []),
    ("running", "SLICE"): ("running", UNKNOWN, []),
    ("running", "FRAGMENT"): ("running", {LossReason.UNEXPECTED_FRAGMENT: 1}, []),
    ("running", "HEARTBEAT"): ("running", {}, []),
    # the open spill ends without SPILL_END: its waiting request expires (all six fragments missing)
    ("in_spill", "RUN_START"): (
        "running",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6},
        ["AppendEvents", "PublishEvents", "CloseSpill", "Send"],
    ),
    ("in_spill", "RUN_START again"): ("in_spill", {}, ["Send"]),  # the sequence goes on: a retry, acked
    ("in_spill", "RUN_STOP"): (
        "idle",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6},
        ["AppendEvents", "PublishEvents", "CloseSpill"],
    ),
    ("in_spill", "SPILL_START"): (
        "in_spill",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6},
        ["AppendEvents", "PublishEvents", "CloseSpill", "OpenSpill"],
    ),
    ("in_spill", "SPILL_END"): (
        "running",
        {LossReason.FRAGMENT_TIMEOUT: 6},
        ["AppendEvents", "PublishEvents", "CloseSpill"],
    ),
    ("in_spill", "SLICE"): ("in_spill", {}, ["Send"]),
    ("in_spill", "FRAGMENT"): ("in_spill", {}, []),
    ("in_spill", "HEARTBEAT"): ("in_spill", {}, []),
    # not recorded (disk full): no file, its events count as write_error, its summary goes out at once
    ("in_unrecorded_spill", "RUN_START"): (
        "running",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6, LossReason.WRITE_ERROR: 2},
        ["PublishEvents", "PublishSummary", "Send"],
    ),
    ("in_unrecorded_spill", "RUN_START again"): ("in_unrecorded_spill", {}, ["Send"]),
    ("in_unrecorded_spill", "RUN_STOP"): (
        "idle",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6, LossReason.WRITE_ERROR: 2},
        ["PublishEvents", "PublishSummary", "PublishRunSummary", "RunFinished"],
    ),
    ("in_unrecorded_spill", "SPILL_START"): (
        "in_unrecorded_spill",
        {**MISSING_END, LossReason.FRAGMENT_TIMEOUT: 6, LossReason.WRITE_ERROR: 2},
        ["PublishEvents", "PublishSummary"],
    ),
    ("in_unrecorded_spill", "SPILL_END"): (
        "running",
        {LossReason.FRAGMENT_TIMEOUT: 6, LossReason.WRITE_ERROR: 2},
        ["PublishEvents", "PublishSummary"],
    ),
    ("in_unrecorded_spill", "SLICE"): ("in_unrecorded_spill", {}, ["Send"]),
    ("in_unrecorded_spill", "FRAGMENT"): ("in_unrecorded_spill", {}, []),
    ("in_unrecorded_spill", "HEARTBEAT"): ("in_unrecorded_spill", {}, []),
}
for _state in STATES:  # DAQ -> front-end or DAQ -> DQM types sent by a front-end: counted, refused
    for _kind in NOT_A_FRONTEND_MESSAGE:
        TABLE[(_state, _kind)] = (_state, UNEXPECTED if _state != "idle" else {}, ["Nack"])
#: rows whose refusal is counted in ``rejected`` (not a run's loss): outside a run
REJECTED: dict[tuple[str, str], dict[str, int]] = {
    ("idle", m): {"not_accepted": 1} for m in NOT_A_FRONTEND_MESSAGE
}


def test_the_table_covers_every_state_and_every_message_kind() -> None:
    assert set(TABLE) == {(s, m) for s in STATES for m in MESSAGES}
    assert {t.name for t in protocol.MessageType} == {m.split()[0] for m in MESSAGES}


def _state_name(scene: Scene, name: str) -> str:
    st_ = state_of(scene.rec)
    if st_ == DaqState.IN_SPILL and scene.rec.spill is not None and not scene.rec.spill.record:
        return "in_unrecorded_spill"
    return st_


@pytest.mark.parametrize(("state", "message"), sorted(TABLE))
def test_every_message_kind_in_every_state(state: str, message: str) -> None:
    scene = STATES[state]()
    assert _state_name(scene, state) == state
    before = dict(scene.rec.losses_run)
    out = scene.feed(MESSAGES[message](scene))
    after_state, losses, actions = TABLE[(state, message)]
    assert _state_name(scene, after_state) == after_state
    assert losses_of(out) == losses
    assert kinds(out) == actions
    assert dict(scene.rec.rejected) == REJECTED.get((state, message), {})
    for a in out:  # a refusal goes back to its sender and names the refused message
        if isinstance(a, Send) and isinstance(a.message, protocol.Nack):
            assert a.to == FE and a.message.refused_type == protocol.MessageType[message.split()[0]]
    if message != "RUN_START":  # a new run starts its run counters from zero
        run = {k: v - before.get(k, 0) for k, v in scene.rec.losses_run.items() if v != before.get(k, 0)}
        run.pop(LossReason.DEAD_TIME, None)
        assert {k: v for k, v in run.items() if not is_breakdown(k)} == losses
    for a in out:  # whatever goes out is a valid document
        if isinstance(a, PublishSummary):
            assert SpillSummary.from_json(a.summary.to_json()) == a.summary
            assert a.summary.status == (
                SpillStatus.FAILED if "unrecorded" in state else SpillStatus.INCOMPLETE
            )


@pytest.mark.parametrize(("state", "message"), sorted(TABLE))
def test_a_second_front_end_changes_nothing_in_any_state(state: str, message: str) -> None:
    """Issue 17: every kind of message from a peer that does not own the run, in every state: the run,
    the spill and their losses are untouched; the refusal is counted in ``rejected`` and NACKed to it.
    (Outside a run there is nothing to take over: a RUN_START starts one, whoever comes first owns it,
    and data of an unknown run is run recovery's business, issue 16.)"""
    if state == "idle":
        return
    scene = STATES[state]()
    other = Sender(OTHER, rng=np.random.default_rng(7))
    if message == "FRAGMENT":  # the right indices for the waiting request
        msg = other.fragments(scene.request or protocol.ReadoutRequest(run=1, spill=1))[0]
    else:
        scene.fe, saved = other, scene.fe
        msg = MESSAGES[message](scene)
        scene.fe = saved
    rec = scene.rec
    before = (state_of(rec), rec.spill.number if rec.spill else None, dict(rec.losses_run))
    spill_losses = dict(rec.spill.losses) if rec.spill else None
    out = rec.handle(OTHER, msg, 2.0)
    assert (state_of(rec), rec.spill.number if rec.spill else None, dict(rec.losses_run)) == before
    assert (dict(rec.spill.losses) if rec.spill else None) == spill_losses
    assert not [a for a in out if not isinstance(a, Send | LossCounted) and type(a).__name__ != "Log"]
    nacks = [a for a in out if isinstance(a, Send)]
    if message == "HEARTBEAT":
        assert not nacks and not rec.rejected
    else:
        # a refused RUN_START is answered by RUN_ACK refused, anything else by a NACK
        want = protocol.RunAck if message.startswith("RUN_START") else protocol.Nack
        assert [a.to for a in nacks] == [OTHER] and isinstance(nacks[0].message, want)
        assert sum(rec.rejected.values()) == 1


def test_malformed_frames_repeats_and_gaps_are_counted_in_every_state() -> None:
    """The run's front-end's are the run's losses; outside a run (nobody's run) they are ``rejected``."""
    for state, make in STATES.items():
        s = make()
        s.feed(s.fe.heartbeat())  # (a repeated 0 would be a restart of the front-end, not a repeat)
        good = protocol.encode(s.fe.heartbeat())
        head = bytearray(good[0])
        head[protocol.CRC_OFFSET] ^= 0xFF
        bad = [bytes(head), *good[1:]]
        out = s.rec.receive(FE, bad, 1.0)
        nacks = [a.message for a in out if isinstance(a, Send) and isinstance(a.message, protocol.Nack)]
        assert [n.code for n in nacks] == [protocol.NackCode.MALFORMED] and "CRC-32" in nacks[0].reason
        s.fe.seq -= 1  # the lost heartbeat's number is used again: no gap (the decode error counted it)
        out2 = s.feed(s.fe.heartbeat())
        s.fe.seq -= 1
        out3 = s.feed(s.fe.heartbeat())
        s.fe.seq += 3
        out4 = s.feed(s.fe.heartbeat())
        if state == "idle":
            assert not any(losses_of(o) for o in (out, out2, out3, out4))
            assert dict(s.rec.rejected) == {"malformed": 1, "duplicate": 1, "sequence_gap": 1}
            continue
        assert losses_of(out) == {LossReason.DECODE_ERROR: 1}
        assert s.rec.losses_run["decode_error.checksum"] == 1
        assert losses_of(out2) == {}
        assert losses_of(out3) == {LossReason.DUPLICATE: 1}
        assert losses_of(out4) == {LossReason.SEQUENCE_GAP: 3}
        assert not s.rec.rejected


def test_a_whole_spill_writes_its_events_and_publishes_its_summary_after_the_file_is_closed() -> None:
    s = running()
    s.feed(s.fe.spill_start(1))
    appended = 0
    for i in range(3):
        s.feed(s.fe.slice(1, i))
        assert s.request is not None and s.request.n_events >= 2  # the random triggers at least
        for frag in s.fe.fragments(s.request):
            appended += sum(len(a.batch) for a in s.feed(frag) if isinstance(a, AppendEvents))
    out = s.feed(s.fe.spill_end(1))
    close = [a for a in out if isinstance(a, CloseSpill)]
    assert kinds(out) == ["PublishEvents", "CloseSpill"] and not any(
        isinstance(a, PublishSummary) for a in out
    )
    assert close[0].final.counters["n_accepted"] == appended > 0 and close[0].final.status == "ok"
    result = WriteResult(1, 1, Path("/data/run000001_spill00001.h5"), "ok", appended, 0, 12_000_000, 0.2)
    out = s.rec.file_closed(result, 2.0)
    [summary] = [a.summary for a in out if isinstance(a, PublishSummary)]
    assert summary.status == SpillStatus.OK and summary.file == "run000001_spill00001.h5"
    assert summary.n_events_written == summary.n_accepted == appended and summary.write_mb == 12.0
    assert sum(summary.losses.values()) == summary.losses[LossReason.DEAD_TIME]
    out = s.feed(s.fe.run_stop())
    assert kinds(out) == ["PublishRunSummary", "RunFinished"]


def test_the_run_is_finished_only_when_its_last_file_is_closed() -> None:
    s = in_spill()
    out = s.feed(s.fe.run_stop())  # the spill is closed as incomplete: its file is still closing
    assert "CloseSpill" in kinds(out) and "RunFinished" not in kinds(out)
    result = WriteResult(1, 1, None, "failed", 0, 2, 0, 0.0, "No space left on device (errno 28)")
    out = s.rec.file_closed(result, 2.0)
    [summary] = [a.summary for a in out if isinstance(a, PublishSummary)]
    assert summary.status == SpillStatus.FAILED and summary.failure.startswith("No space")
    assert summary.losses[LossReason.WRITE_ERROR] == 2 and "write" in s.rec.alarms
    assert kinds(out) == ["PublishSummary", "PublishRunSummary", "RunFinished"]


def answer_all(s: Scene) -> None:
    assert s.request is not None
    for frag in s.fe.fragments(s.request):
        s.feed(frag)


def test_a_frontend_restart_within_the_run_keeps_the_spill() -> None:
    s = running()
    s.feed(s.fe.spill_start(1))
    s.feed(s.fe.slice(1, 0, n=50))
    answer_all(s)
    s.fe.seq = 0  # the front-end process restarts: numbers from 0, RUN_START again
    assert losses_of(s.feed(s.fe.run_start())) == {LossReason.FRONTEND_RESTART: 1}
    s.feed(s.fe.slice(1, 1, n=50))
    answer_all(s)
    out = s.feed(s.fe.spill_end(1))
    [close] = [a for a in out if isinstance(a, CloseSpill)]
    losses = close.final.losses
    assert losses["frontend_restart"] == 1 and losses["sequence_gap"] == 0 and losses["duplicate"] == 0
    assert close.final.status == "ok" and close.final.counters["n_slices"] == 2
    assert close.final.counters["n_events_built"] == close.final.counters["n_accepted"] > 0


def test_messages_outside_a_run_are_counted_and_the_status_says_idle() -> None:
    s = idle()
    s.fe.run = 9
    s.feed(s.fe.spill_start(1))  # no RUN_START
    s.feed(s.fe.slice(1, 0, n=10))
    s.feed(s.fe.heartbeat())
    [status] = [a.status for a in s.rec.tick(2.0) if isinstance(a, PublishStatus)]
    assert status.losses_run["run_unknown"] == 2 and status.state == DaqState.IDLE
    assert status.losses_outside_spills["run_unknown"] == 2  # the run's, not a spill's
    assert status.frontends[FE.hex()].state == "running"


def test_timeouts_stop_and_failures() -> None:
    s = in_spill()
    cfg = s.rec.config.readout
    out = s.rec.tick(1.0 + cfg.fragment_timeout_s + 0.1)  # the request expires
    assert losses_of(out) == {LossReason.FRAGMENT_TIMEOUT: 6} and "AppendEvents" in kinds(out)
    out = s.rec.tick(1.0 + cfg.spill_timeout_s + 0.1)  # the spill is silent: closed
    assert losses_of(out) == MISSING_END and "CloseSpill" in kinds(out) and s.rec.spill is None
    s = in_spill()
    send = Send(FE, s.request) if s.request is not None else None
    assert send is not None
    assert losses_of(s.rec.send_failed(send, 2.0)) == {LossReason.REQUEST_FAILED: 1}
    assert s.rec.run is not None and not s.rec.run.readout.pending  # nothing waits for its fragments
    out = s.rec.stop(3.0)
    assert kinds(out) == ["CloseSpill"] and s.rec.spill is None
    [status] = [a.status for a in s.rec.flush(3.0) if isinstance(a, PublishStatus)]
    assert status.state == DaqState.RUNNING


def test_status_calibration_and_run_rejection() -> None:
    s = idle()
    s.env.problem = "no calibration set is valid"  # nothing of the run is recorded: no fallback
    out = s.feed(s.fe.run_start())
    assert losses_of(out) == {LossReason.RUN_REJECTED: 1} and kinds(out) == ["RunRefused", "Send"]
    [ack] = [a.message for a in out if isinstance(a, Send)]
    assert isinstance(ack, protocol.RunAck) and ack.status == ack.REFUSED and "no calibration" in ack.text
    assert state_of(s.rec) == DaqState.IDLE and s.rec.refused == ["run 1: no calibration set is valid"]
    assert s.rec.alarms["calibration"] == "run 1: no calibration set is valid: not recorded"
    assert losses_of(s.feed(s.fe.spill_start(1))) == UNKNOWN  # its spills are not recorded
    st_ = DaqStatus.from_json(s.rec.status(5.0).to_json())
    assert st_.calibration == CalibrationStatus(1, None, False, "files", "run 1: no calibration set is valid")
    s.env.problem = ""  # the next run has usable constants: recorded, the alarm goes
    s.fe.run = 2
    assert kinds(s.feed(s.fe.run_start())) == ["Send"] and "calibration" not in s.rec.alarms
    st_ = DaqStatus.from_json(s.rec.status(5.0).to_json())
    assert st_.run == 2 and st_.calibration_id == "nominal-v1" and st_.frontends[FE.hex()].name == "test"
    assert st_.calibration.usable and st_.calibration.id == "nominal-v1"
    # a front-end whose primitives lack the trigger block: the run is rejected, its slices unexpected
    s.feed(s.fe.run_stop())
    bad = Sender(OTHER, run=3)
    msg = protocol.RunStart(
        run=3, n_channels=detector.N_CHANNELS, prim_channels=detector.default_primitive_channels()[:20]
    )
    out = s.rec.handle(OTHER, bad.stamp(msg), 6.0)
    assert losses_of(out) == {LossReason.RUN_REJECTED: 1} and s.rec.run is None
    assert "PRS" in s.rec.alarms["run"]  # the PRS block cells are missing


def test_a_bug_while_handling_a_message_is_counted_and_the_recorder_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = running()

    def boom(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(s.rec, "_on_spill_start", boom)
    out = s.feed(s.fe.spill_start(1))
    assert losses_of(out) == {LossReason.INTERNAL_ERROR: 1}
    monkeypatch.undo()
    assert kinds(s.feed(s.fe.spill_start(2))) == ["OpenSpill"]


# ---------------------------------------------------------------- random sequences
class RecorderMachine(RuleBasedStateMachine):
    """Random front-end behaviour (including a second front-end and nonsense) against one recorder."""

    def __init__(self) -> None:
        super().__init__()
        self.env = FakeEnvironment()
        self.rec = Recorder(DaqConfig(), self.env, data_dir="/data")
        self.fe = Sender(FE)
        self.other = Sender(OTHER)
        self.now = 0.0
        self.spill = 0
        self.slice_id = 0
        self.requests: list[protocol.ReadoutRequest] = []
        self.open: tuple[int, int] | None = None  # the spill open in the writer
        self.closing: list[CloseSpill] = []
        self.appended = 0
        self.opened = 0
        self.summaries: list[SpillSummary] = []

    def apply(self, out: list[Action]) -> None:
        for a in out:
            match a:
                case OpenSpill(header=h):
                    assert self.open is None, "a spill opened before the last one was closed"
                    self.open = (h.run, h.spill)
                    self.opened += 1
                case AppendEvents(batch=b):
                    assert self.open is not None, "events for no open spill"
                    self.appended += len(b)
                case CloseSpill():
                    assert self.open == (a.run, a.spill), "closing another spill than the open one"
                    self.open = None
                    self.closing.append(a)
                case Send(message=protocol.RunAck() | protocol.AnnounceRequest() | protocol.Nack()):
                    pass
                case Send(to=to, message=msg):
                    # requests go only to the run's front-end: another one never owns the run
                    assert isinstance(msg, protocol.ReadoutRequest) and to == FE
                    self.fe.got_request()
                    self.requests.append(msg)
                case PublishSummary(summary=s):
                    self.summaries.append(SpillSummary.from_json(s.to_json()))
                case PublishStatus(status=status):
                    DaqStatus.from_json(status.to_json())
                case PublishEvents(message=m):
                    assert m.n_events > 0
                case LossCounted(reason=r):
                    assert r in LOSS_REASONS or r.startswith("decode_error.")

    def step(self, dt: float = 0.01) -> float:
        self.now += dt
        return self.now

    @rule()
    def run_start(self) -> None:
        self.apply(self.rec.handle(FE, self.fe.run_start(), self.step()))

    @rule()
    def next_run(self) -> None:
        self.fe.run += 1
        self.apply(self.rec.handle(FE, self.fe.run_start(), self.step()))

    @rule()
    def spill_start(self) -> None:
        self.spill += 1
        self.apply(self.rec.handle(FE, self.fe.spill_start(self.spill), self.step()))

    @rule(n=st.integers(0, 40))
    def slice(self, n: int) -> None:
        self.slice_id += 1
        self.apply(self.rec.handle(FE, self.fe.slice(self.spill, self.slice_id, n), self.step()))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        req = self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))
        frags = self.fe.fragments(req)
        drop = data.draw(st.sets(st.integers(0, len(frags) - 1), max_size=2))
        for i, f in enumerate(frags):
            if i not in drop:
                self.apply(self.rec.handle(FE, f, self.step(0.001)))

    @rule()
    def spill_end(self) -> None:
        self.apply(self.rec.handle(FE, self.fe.spill_end(self.spill), self.step()))

    @rule()
    def run_stop(self) -> None:
        self.apply(self.rec.handle(FE, self.fe.run_stop(), self.step()))

    @rule()
    def heartbeat_of_another_front_end(self) -> None:
        self.apply(self.rec.handle(OTHER, self.other.heartbeat(), self.step()))

    @rule()
    def slice_from_another_front_end(self) -> None:
        self.apply(self.rec.handle(OTHER, self.other.slice(self.spill, 999), self.step()))

    @rule(kind=st.sampled_from(["run_start", "run_stop", "spill_start", "spill_end", "fragment", "junk"]))
    def another_front_end_meddles(self, kind: str) -> None:
        """Issue 17: a second peer's control messages and fragments change nothing of the run or spill."""
        rec = self.rec
        if rec.run is None:
            return  # no run: nothing to take over (data of an unknown run is run recovery's, issue 16)
        # the owner is alive (a silent one may be taken over: test_a_silent_owner_is_taken_over...)
        self.apply(rec.handle(FE, self.fe.heartbeat(), self.step()))
        before = (
            rec.run.number if rec.run else None,
            rec.spill.number if rec.spill else None,
            dict(rec.spill.losses) if rec.spill else None,
            dict(rec.losses_run),
            len(self.requests),
        )
        o = self.other
        o.run = self.fe.run
        match kind:
            case "run_start":
                msg = o.run_start()
            case "run_stop":
                msg = o.run_stop()
            case "spill_start":
                msg = o.spill_start(self.spill + 1)
            case "spill_end":
                msg = o.spill_end(self.spill)
            case "fragment":
                req = self.requests[0] if self.requests else protocol.ReadoutRequest(run=o.run, spill=1)
                msg = o.fragments(req)[0]
            case _:
                self.apply(rec.receive(OTHER, [b"junk"], self.step()))
                msg = None
        if msg is not None:
            out = rec.handle(OTHER, msg, self.step())
            self.apply(out)
            assert all(isinstance(a, Send | LossCounted) or type(a).__name__ == "Log" for a in out)
        after = (
            rec.run.number if rec.run else None,
            rec.spill.number if rec.spill else None,
            dict(rec.spill.losses) if rec.spill else None,
            dict(rec.losses_run),
            len(self.requests),
        )
        assert after == before

    @rule(junk=st.binary(max_size=80))
    def junk(self, junk: bytes) -> None:
        self.apply(self.rec.receive(FE, [junk], self.step()))

    @rule(dt=st.sampled_from([0.06, 1.0, 6.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self.apply(self.rec.tick(self.step(dt)))

    @precondition(lambda self: self.closing)
    @rule(ok=st.booleans())
    def writer_finishes(self, ok: bool) -> None:
        c = self.closing.pop(0)
        path = Path(f"/data/run{c.run:06d}_spill{c.spill:05d}.h5") if ok else None
        res = WriteResult(c.run, c.spill, path, c.final.status if ok else "failed", 0, 0, 0, 0.0)
        self.apply(self.rec.file_closed(res, self.step()))

    @invariant()
    def counters_add_up(self) -> None:
        rec = self.rec
        assert all(v >= 0 for v in rec.losses_run.values())
        assert set(rec.closing) == {(c.run, c.spill) for c in self.closing}
        assert (rec.spill is not None and rec.spill.record) == (self.open is not None)
        if rec.spill is not None:
            assert rec.run is not None and rec.spill.run == rec.run.number

    def teardown(self) -> None:
        self.apply(self.rec.stop(self.step()))
        while self.closing:
            self.writer_finishes(True)
        assert self.open is None and not self.rec.closing
        # every spill opened in the writer was closed and has had exactly one summary
        assert len(self.summaries) == self.opened
        assert len({(s.run, s.spill) for s in self.summaries}) == self.opened


TestRecorderMachine = RecorderMachine.TestCase
TestRecorderMachine.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------- ownership (issue 17)
def _run_start_with(sender: Sender, info: str) -> protocol.Message:
    return sender.stamp(
        protocol.RunStart(
            run=sender.run,
            n_channels=detector.N_CHANNELS,
            prim_channels=detector.default_primitive_channels(),
            info=protocol.RunStart.info_bytes(info),
        )
    )


def test_a_second_front_end_joins_for_the_groups_the_owner_leaves_and_only_for_them() -> None:
    s = idle()
    s.feed(_run_start_with(s.fe, '{"name": "main", "groups": [0, 1, 2, 3]}'))  # SRD and COUNTER left open
    other = Sender(OTHER)
    s.rec.handle(OTHER, _run_start_with(other, '{"name": "srd", "groups": [4, 5]}'), 1.0)
    assert s.rec.run is not None and s.rec.run.members == {FE: 0b1111, OTHER: 0b110000}
    assert set(s.rec.status(1.0).run_frontends) == {FE.hex(), OTHER.hex()}
    s.feed(s.fe.spill_start(1))
    out = s.feed(s.fe.slice(1, 0, n=20))
    assert [a.to for a in out if isinstance(a, Send)] == [FE, OTHER]  # both are asked
    req = s.request
    assert req is not None
    mine, theirs = s.fe.fragments(req), other.fragments(req)
    for f in mine[:4] + theirs[4:]:  # each its own groups
        out = s.feed(f, sender=OTHER if f in theirs else FE)
    assert any(isinstance(a, AppendEvents) for a in out) and not s.rec.rejected
    out = s.rec.handle(OTHER, other.fragments(req)[0], 1.0)  # a group it does not own: refused
    assert s.rec.rejected == {"not_owner": 1}
    third = Sender(b"\x00fe-3")  # no group left to claim
    s.rec.handle(third.ident, _run_start_with(third, '{"groups": [5]}'), 1.0)
    assert s.rec.rejected["not_owner"] == 2 and third.ident not in s.rec.run.members


def test_a_silent_owner_is_taken_over_and_a_live_one_is_not() -> None:
    s = running()
    other = Sender(OTHER)
    s.rec.handle(OTHER, other.run_start(), 5.0)  # the owner spoke at 1.0: 4 s ago
    assert s.rec.run is not None and s.rec.run.owner == FE and s.rec.rejected == {"not_owner": 1}
    timeout = s.rec.config.readout.owner_timeout_s
    out = s.rec.handle(OTHER, other.run_start(), 1.0 + timeout + 0.5)  # a restarted front-end: new identity
    assert s.rec.run.owner == OTHER and any("takes it over" in getattr(a, "message", "") for a in out)
    assert losses_of(out) == {LossReason.FRONTEND_RESTART: 1}  # same run, same numbers: it goes on
    out = s.feed(s.fe.spill_start(1), now=20.0)  # the old identity is no longer the run's
    assert kinds(out) == ["Nack"] and s.rec.spill is None


def test_with_curve_the_owner_key_on_a_new_identity_is_the_owner() -> None:
    s = idle()
    s.rec.handle(FE, s.fe.run_start(), 1.0, key="KEY-A")
    s.rec.handle(FE, s.fe.spill_start(1), 1.1, key="KEY-A")
    reconnected = Sender(OTHER)
    reconnected.seq = s.fe.seq
    out = s.rec.handle(OTHER, reconnected.slice(1, 0, n=10), 1.2, key="KEY-A")
    assert [a.to for a in out if isinstance(a, Send)] == [OTHER] and s.rec.run is not None
    assert s.rec.run.owner == OTHER and s.rec.spill is not None and s.rec.spill.owner == OTHER
    stranger = Sender(b"\x00fe-3")
    s.rec.handle(stranger.ident, stranger.slice(1, 1, n=10), 1.3, key="KEY-B")
    assert s.rec.rejected == {"not_owner": 1}


def test_frontends_remembered_nacks_and_log_lines_are_bounded() -> None:
    from daq import recorder

    s = running()
    for i in range(recorder.MAX_FRONTENDS * 3):
        s.rec.receive(b"peer-%d" % i, [b"junk"], 2.0 + i * 1e-3)
    assert len(s.rec.frontends) == recorder.MAX_FRONTENDS and FE in s.rec.frontends  # the run's is kept
    assert s.rec.rejected["frontends_evicted"] == 2 * recorder.MAX_FRONTENDS + 1
    out: list[Action] = []
    for i in range(1000):  # one peer, 1000 refusals in 1 s
        out += s.rec.receive(b"flood", [b"junk"], 10.0 + i * 1e-3)
    nacks = [a for a in out if isinstance(a, Send)]
    logs = [a for a in out if type(a).__name__ == "Log" and "refused" in a.message]
    assert len(nacks) <= recorder.NACK_BURST + recorder.NACK_RATE_PER_S * 1.0 + 1
    assert s.rec.rejected["nack_suppressed"] == 1000 - len(nacks)
    assert len(logs) <= 1  # one line per reason per LOG_INTERVAL_S, with the count held back
    later = s.rec.receive(b"flood", [b"junk"], 10.0 + recorder.LOG_INTERVAL_S + 1)
    [line] = [a for a in later if type(a).__name__ == "Log" and "refused" in a.message]
    assert "more since the last such line" in line.message % line.args
