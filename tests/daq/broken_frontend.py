"""A front-end that breaks docs/protocol.md in one chosen way, to test ``na64 conformance``.

One short run over a real DEALER socket (:class:`tests.daq.frontend.FakeFrontEnd`): RUN_START, two spills
of four slices, every READOUT_REQUEST answered as it comes (zero-event, random-trigger, without t_ns and
repeated ones alike), heartbeats in and between spills, RUN_STOP. ``fault`` names the one deviation
(:data:`FAULTS`: fault -> the checks that must fail); ``"none"`` is a conforming front-end.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from daq import detector, protocol
from tests.daq.frontend import FakeFrontEnd, SentSlice

#: fault -> the checks of ``na64 conformance`` it must fail
FAULTS: dict[str, set[str]] = {
    "none": set(),
    "bad_crc": {"decode"},
    "delimiter_frame": {"decode"},
    "seq_gap": {"sequence"},
    "spill_field": {"header_fields"},
    "amp_13bit": {"primitive_range"},
    "t_ns_decreasing": {"slice_times"},
    "t_ns_outside_slice": {"slice_times"},
    "samples_13bit": {"samples"},
    "wrong_channels": {"fragments"},
    "missing_group": {"answered"},
    "no_zero_answer": {"answered"},
    "spill_reuse": {"spill_numbers"},
    "bad_counters": {"spill_end_counters"},
    "heartbeat_state": {"heartbeat"},
    "index_not_echoed": {"fragments"},
    "run_start_ranges": {"run_start"},
    "wrong_direction": {"direction"},
    "header_only_randoms": {"random_triggers"},
    "no_retry_answer": {"answered"},
    "window_late": {"window_placement"},
}

SLICE_NS = 1_000_000
N_SLICES = 4
N_PARTICLES = 300


class BrokenFrontEnd(FakeFrontEnd):
    fault: str = "none"
    answered_keys: set[tuple[int, int]]

    def send_heartbeat(self, state: protocol.FrontEndState) -> None:
        if self.fault == "heartbeat_state" and state == protocol.FrontEndState.IN_SPILL:
            state = protocol.FrontEndState.RUNNING
        self.send(
            protocol.Heartbeat(run=self.run, spill=self.spill, uptime_ns=time.monotonic_ns(), state=state)
        )

    def send(self, msg: protocol.Message, seq: int | None = None) -> list[Any]:
        if self.fault == "spill_field" and isinstance(msg, protocol.RunStart | protocol.RunStop):
            msg = dataclasses.replace(msg, spill=7)
        if self.fault == "run_start_ranges" and isinstance(msg, protocol.RunStart):
            msg = dataclasses.replace(msg, n_channels=detector.N_CHANNELS + 1)
        return super().send(msg, seq)

    def broken_slice(self, s: SentSlice, spill: int) -> None:
        """Send slice ``s``, broken in the fault's way when it is the second slice of the first spill."""
        target = spill == 1 and s.slice_id == 1
        if target and self.fault == "amp_13bit":
            s.amp[0, 0] = 5000
        if target and self.fault == "t_ns_decreasing":
            s.t_ns[[10, 11]] = s.t_ns[[11, 10]] + np.array([0, 50])
        if target and self.fault == "t_ns_outside_slice":
            s.t_ns[-1] = (s.slice_id + 1) * SLICE_NS + 10
        if target and self.fault == "bad_crc":
            frames = [bytearray(bytes(f)) for f in self.frames(self._slice_msg(s))]
            frames[0][protocol.CRC_OFFSET] ^= 0xFF
            self.send_raw([bytes(f) for f in frames])
            self.slices[(self.spill, s.slice_id)] = s
            return
        if target and self.fault == "seq_gap":
            self.skip_seq(3)
        self.send_slice(s, slice_ns=SLICE_NS)

    def _slice_msg(self, s: SentSlice) -> protocol.Slice:
        return protocol.Slice(
            run=self.run,
            spill=self.spill,
            slice_id=s.slice_id,
            t0_ns=s.slice_id * SLICE_NS,
            length_ns=SLICE_NS,
            n_particles=s.t_ns.size,
            t_ns=s.t_ns,
            amp=s.amp,
        )

    def answer_any(self, req: protocol.ReadoutRequest) -> None:
        """Answer a request (also one without t_ns, or repeated), broken in the fault's way."""
        self.counters.n_requests += 1
        key = (req.spill, req.slice_id)
        if self.fault == "no_zero_answer" and req.n_events == 0:
            return
        if self.fault == "no_retry_answer" and key in self.answered_keys:
            return
        self.answered_keys.add(key)
        s = self.slices[key]
        index = np.asarray(req.index)
        if self.fault == "header_only_randoms" and np.any(index == protocol.NO_PARTICLE):
            for g in range(detector.N_GROUPS):
                self.send(protocol.Fragment(run=req.run, spill=req.spill, slice_id=req.slice_id, source=g))
                self.counters.n_fragments += 1
            return
        wf = self.waveforms(s, index)
        if self.fault == "samples_13bit" and index.size:
            wf[0, 0, 0] = 5000
        if self.fault == "window_late":  # the in-time pulse 3 samples (37.5 ns) late
            wf = np.ascontiguousarray(np.roll(wf, 3, axis=2))
        for g, ids in enumerate(detector.GROUP_IDS):
            if self.fault == "missing_group" and g == 5 and index.size:
                continue
            m = len(ids) - 1 if self.fault == "wrong_channels" and g == 2 else len(ids)
            echo = index.astype(np.uint32)
            if self.fault == "index_not_echoed" and index.size > 1:
                echo = echo[::-1].copy()
            frag = protocol.Fragment(
                run=req.run,
                spill=req.spill,
                slice_id=req.slice_id,
                source=g,
                n_events=index.size,
                n_channels=m,
                n_samples=self.n_samples,
                index=echo,
                waveforms=np.ascontiguousarray(wf[:, ids[:m]]),
            )
            self.send(frag)
            self.counters.n_fragments += 1
        self.counters.n_events_read += index.size

    def serve_until(self, spill: int, slice_id: int, timeout_s: float = 5.0) -> None:
        """Answer every request that arrives until the one for (spill, slice_id) is answered (a retry of an
        earlier slice comes before it)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000)):
            msg = protocol.decode(self.sock.recv_multipart())
            if isinstance(msg, protocol.ReadoutRequest):
                self.answer_any(msg)
                if (msg.spill, msg.slice_id) == (spill, slice_id):
                    return


def play(endpoint: str, fault: str) -> None:
    """One run of two spills against the checker at ``endpoint``, with ``fault``."""
    fe = BrokenFrontEnd(endpoint, run=5, seed=3)
    fe.fault = fault
    fe.answered_keys = set()
    try:
        if fault == "delimiter_frame":
            fe.send_raw([b"", *fe.frames(protocol.Heartbeat(run=5, uptime_ns=1, state=0))])
        else:
            fe.send_heartbeat(protocol.FrontEndState.IDLE)
        fe.run_start()
        if fault == "wrong_direction":  # a message only the DAQ sends
            fe.send(protocol.ReadoutRequest(run=fe.run, spill=1, n_events=0))
        for spill in (1, 2):
            fe.spill_start(1 if fault == "spill_reuse" else spill)
            fe.send_heartbeat(protocol.FrontEndState.IN_SPILL)
            for i in range(N_SLICES):
                fe.broken_slice(fe.make_slice(i, N_PARTICLES, slice_ns=SLICE_NS), spill)
                if not (fault == "bad_crc" and spill == 1 and i == 1):  # the checker cannot read that one
                    fe.serve_until(fe.spill, i)
            extra = {"n_particles": fe.counters.n_particles + 1} if fault == "bad_counters" else {}
            fe.spill_end(**extra)
            fe.send_heartbeat(protocol.FrontEndState.RUNNING)
        fe.run_stop(n_spills=2)
        fe.send_heartbeat(protocol.FrontEndState.IDLE)
    finally:
        fe.sock.close(linger=300)  # the checker may have stopped at RUN_STOP: the last heartbeat can go
        fe.ctx.term()
