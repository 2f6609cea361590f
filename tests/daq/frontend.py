"""A small, controllable front-end for DAQ tests: a real DEALER socket sending real protocol messages.

It makes primitives by hand (:func:`daq.trigger.make_batch`), answers readout requests with synthetic
waveforms whose pulse heights equal the primitives, keeps the counters a real front-end reports in
SPILL_END, and can break the stream on purpose (skip or repeat sequence numbers, malformed frames, empty,
truncated or missing fragments, wrong counters).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from daq import detector, protocol
from daq.protocol import NO_PARTICLE
from daq.trigger import make_batch
from daq.waveform import synthesize

#: answer policy for one readout group of one request: "ok", "empty", "truncated", "drop", "twice"
Policy = Callable[[protocol.ReadoutRequest, int], str]


def always_ok(req: protocol.ReadoutRequest, group: int) -> str:
    return "ok"


@dataclass
class Counters:
    n_slices: int = 0
    n_requests: int = 0
    n_fragments: int = 0
    n_events_read: int = 0
    n_particles: int = 0


@dataclass
class SentSlice:
    slice_id: int
    t_ns: np.ndarray
    amp: np.ndarray  # (C, N)
    #: per-particle full-channel amplitudes (N, 110) used for the waveforms
    full_amp: np.ndarray
    strig: np.ndarray  # truth: particle passes S_trig by construction


@dataclass
class FakeFrontEnd:
    endpoint: str
    run: int = 1
    seed: int = 0
    n_samples: int = detector.N_SAMPLES
    prim_channels: np.ndarray = field(default_factory=detector.default_primitive_channels)
    ctx: zmq.Context[Any] = field(default_factory=zmq.Context)
    #: CURVE client keys (daq.curve.ClientKeys) towards a DAQ run with --server-key
    keys: Any = None

    def __post_init__(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        if self.keys is not None:
            from daq.curve import secure_client

            secure_client(self.sock, self.keys)
        self.sock.connect(self.endpoint)
        #: NACKs received from the DAQ
        self.nacks: list[protocol.Nack] = []
        self.seq = 0
        self.rng = np.random.default_rng(self.seed)
        self.slices: dict[tuple[int, int], SentSlice] = {}
        self.counters = Counters()
        self.requests: list[protocol.ReadoutRequest] = []
        self.control: list[protocol.Message] = []  # RUN_ACK and ANNOUNCE_REQUEST received
        #: (spill, slice) -> (index, t_ns, waveforms (K, 110, S)) answered
        self.answered: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.spill = 0

    def close(self) -> None:
        self.sock.close(linger=2000)
        self.ctx.term()

    # ------------------------------------------------------------ sending
    def frames(self, msg: protocol.Message, seq: int | None = None) -> list[Any]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        return protocol.encode(protocol.with_seq(msg, seq))

    def send(self, msg: protocol.Message, seq: int | None = None) -> list[Any]:
        frames = self.frames(msg, seq)
        self.sock.send_multipart(frames, copy=False)
        return frames

    def send_raw(self, frames: list[Any]) -> None:
        self.sock.send_multipart(frames)

    def skip_seq(self, n: int = 1) -> None:
        """The next message jumps n sequence numbers (as if n messages were lost)."""
        self.seq += n

    def run_start(self) -> None:
        info = json.dumps({"name": "test-frontend", "seed": self.seed})
        self.send(
            protocol.RunStart(
                run=self.run,
                n_samples=self.n_samples,
                n_channels=detector.N_CHANNELS,
                prim_channels=self.prim_channels,
                info=protocol.RunStart.info_bytes(info),
            )
        )

    def spill_start(self, spill: int) -> None:
        self.spill = spill
        self.counters = Counters()
        self.send(protocol.SpillStart(run=self.run, spill=spill, t_start_ns=time.time_ns()))

    def make_slice(
        self, slice_id: int, n: int, slice_ns: int = 1_000_000, low_fraction: float = 0.2
    ) -> SentSlice:
        """n particles: mostly 100 GeV electrons (ECAL block ~95 GeV), ``low_fraction`` with a low ECAL
        energy (physics candidates), 10% failing S_trig (V1 fires)."""
        rng = self.rng
        t0 = slice_id * slice_ns
        t = np.sort(rng.integers(t0, t0 + slice_ns, n)).astype(np.int64)
        e_ecal = rng.normal(95.0, 2.0, n)
        low = rng.random(n) < low_fraction
        e_ecal[low] = rng.uniform(5.0, 70.0, low.sum())
        e_prs = np.clip(rng.normal(3.0, 1.0, n), 0.05, None)
        v1 = np.where(rng.random(n) < 0.1, 2000, 0)
        batch = make_batch(
            counters={"V1": v1},
            ecal_block_gev=e_ecal * 0.8,
            ecal_cells_gev={(1, 3): e_ecal * 0.1, (3, 3): e_ecal * 0.1},
            prs_block_gev=e_prs,
            t_ns=t,
        )
        full = np.zeros((n, detector.N_CHANNELS), np.float64)
        full[:, self.prim_channels.astype(np.intp)] = batch.amp.T
        hc = detector.hcal_id(3, 1, 1)
        full[:, hc] = np.rint(
            np.clip(100.0 - e_ecal, 0, None) * 1000 * detector.NOMINAL_GAIN[detector.Detector.HCAL]
        )
        full[:, detector.SRD_IDS] = 1200.0
        full = np.clip(full, 0, detector.ADC_MAX - 300)  # keep pulses inside the 12-bit range
        amp = np.minimum(batch.amp, detector.ADC_MAX - 300).astype(np.uint16)
        full[:, self.prim_channels.astype(np.intp)] = amp.T
        return SentSlice(slice_id, t, np.ascontiguousarray(amp), full, v1 == 0)

    def send_slice(self, s: SentSlice, seq: int | None = None, slice_ns: int = 1_000_000) -> list[Any]:
        self.slices[(self.spill, s.slice_id)] = s
        self.counters.n_slices += 1
        self.counters.n_particles += s.t_ns.size
        return self.send(
            protocol.Slice(
                run=self.run,
                spill=self.spill,
                slice_id=s.slice_id,
                t0_ns=s.slice_id * slice_ns,
                length_ns=slice_ns,
                n_particles=s.t_ns.size,
                t_ns=s.t_ns,
                amp=s.amp,
            ),
            seq,
        )

    def waveforms(self, s: SentSlice, index: np.ndarray) -> np.ndarray:
        """Waveforms (K, 110, S) of the requested entries; random triggers get pedestals only."""
        amp = np.zeros((index.size, detector.N_CHANNELS))
        part = index != NO_PARTICLE
        amp[part] = s.full_amp[index[part].astype(np.intp)]
        return synthesize(
            amp,
            peak_ns=125.0,
            pedestal_even=200,
            pedestal_odd=203,
            noise=1.0,
            n_samples=self.n_samples,
            rng=self.rng,
        )

    def recv_request(self, timeout_s: float = 10.0) -> protocol.ReadoutRequest:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError("no READOUT_REQUEST from the DAQ")
            msg = protocol.decode(self.sock.recv_multipart())
            if isinstance(msg, protocol.Nack):
                self.nacks.append(msg)  # a refusal of an earlier message: kept, the request still comes
            elif not isinstance(msg, protocol.RunAck | protocol.AnnounceRequest):
                break
            else:
                self.control.append(msg)  # the DAQ's answers to RUN_START, requests to re-announce
        assert isinstance(msg, protocol.ReadoutRequest), msg
        assert msg.t_ns is not None, "the DAQ must always send the t_ns frame"
        self.requests.append(msg)
        self.counters.n_requests += 1
        return msg

    def answer(self, req: protocol.ReadoutRequest, policy: Policy = always_ok) -> None:
        s = self.slices[(req.spill, req.slice_id)]
        index = np.asarray(req.index)
        wf = self.waveforms(s, index)
        sent_any = False
        for g, ids in enumerate(detector.GROUP_IDS):
            what = policy(req, g)
            if what == "drop":
                continue
            base: dict[str, Any] = {"run": req.run, "spill": req.spill, "slice_id": req.slice_id, "source": g}
            if what == "empty":
                frag = protocol.Fragment(**base)
            elif what == "truncated":
                k = max(index.size - 1, 0)
                frag = protocol.Fragment(
                    **base,
                    n_events=k,
                    n_channels=len(ids),
                    n_samples=self.n_samples,
                    index=index[:k].astype(np.uint32),
                    waveforms=np.ascontiguousarray(wf[:k][:, ids]),
                )
            else:
                frag = protocol.Fragment(
                    **base,
                    n_events=index.size,
                    n_channels=len(ids),
                    n_samples=self.n_samples,
                    index=index.astype(np.uint32),
                    waveforms=np.ascontiguousarray(wf[:, ids]),
                )
                sent_any = True
            self.send(frag)
            self.counters.n_fragments += 1
            if what == "twice":
                self.send(frag)
                self.counters.n_fragments += 1
        if sent_any:
            self.counters.n_events_read += index.size
        self.answered[(req.spill, req.slice_id)] = (index.copy(), np.asarray(req.t_ns).copy(), wf)

    def serve(
        self, n: int, policy: Policy = always_ok, timeout_s: float = 10.0
    ) -> list[protocol.ReadoutRequest]:
        out = []
        for _ in range(n):
            req = self.recv_request(timeout_s)
            self.answer(req, policy)
            out.append(req)
        return out

    def recv_nacks(self, timeout_s: float = 1.0) -> list[protocol.Nack]:
        """Every NACK that arrives within ``timeout_s`` (READOUT_REQUESTs meanwhile are kept as unanswered)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000)):
            msg = protocol.decode(self.sock.recv_multipart())
            if isinstance(msg, protocol.Nack):
                self.nacks.append(msg)
            elif isinstance(msg, protocol.RunAck | protocol.AnnounceRequest):
                self.control.append(msg)
            else:
                self.requests.append(msg)  # type: ignore[arg-type]
        return self.nacks

    def spill_end(self, **override: int) -> None:
        c = {**self.counters.__dict__, **override}
        self.send(protocol.SpillEnd(run=self.run, spill=self.spill, t_end_ns=time.time_ns(), **c))

    def run_stop(self, n_spills: int = 0) -> None:
        self.send(protocol.RunStop(run=self.run, n_spills=n_spills))

    def heartbeat(self, state: int = protocol.FrontEndState.RUNNING) -> None:
        self.send(protocol.Heartbeat(uptime_ns=1, state=state))

    def clean_spill(self, spill: int, n_slices: int = 5, n: int = 2000) -> list[SentSlice]:
        """A whole clean spill: start, slices answered one by one, end."""
        self.spill_start(spill)
        out = []
        for i in range(n_slices):
            s = self.make_slice(i, n)
            self.send_slice(s)
            self.serve(1)
            out.append(s)
        self.spill_end()
        return out


class Listener:
    """A SUB socket on the DAQ's publish endpoint collecting spill summaries, status and event batches."""

    def __init__(
        self, endpoint: str, ctx: zmq.Context[Any] | None = None, rcvhwm: int = 0, keys: Any = None
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        if rcvhwm:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if keys is not None:  # daq.curve.ClientKeys: a DAQ run with --server-key
            from daq.curve import secure_client

            secure_client(self.sock, keys)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.subscribe(b"")
        self.summaries: dict[tuple[int, int], dict[str, Any]] = {}
        self.status: list[dict[str, Any]] = []
        self.events: list[protocol.Events] = []
        self.others: list[dict[str, Any]] = []

    def pump(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return
            msg = protocol.decode(self.sock.recv_multipart())
            if isinstance(msg, protocol.Summary):
                doc = json.loads(msg.text)
                if msg.kind == protocol.Summary.KIND_SPILL:
                    self.summaries[(doc["run"], doc["spill"])] = doc
                elif msg.kind == protocol.Summary.KIND_STATUS:
                    self.status.append(doc)
                else:
                    self.others.append(doc)  # e.g. run summaries
            elif isinstance(msg, protocol.Events):
                self.events.append(msg)

    def wait_summary(self, run: int, spill: int, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (run, spill) not in self.summaries:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no spill summary for run {run} spill {spill}")
            self.pump(0.2)
        return self.summaries[(run, spill)]

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for doc in reversed(self.status):
                if pred(doc):
                    return doc
            if time.monotonic() > deadline:
                raise TimeoutError("no matching status document")
            self.pump(0.2)

    def close(self) -> None:
        self.sock.close(0)
