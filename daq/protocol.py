"""Wire protocol v1 between a front-end (simulator, replay or hardware) and the DAQ, and DAQ -> DQM.

A message is one ZeroMQ multipart message: a header frame (fixed 56-byte header, one 16-byte
descriptor per array frame, a fixed type-specific body), then raw little-endian array frames that are
sent and received without copies. No pickle. The byte layout is specified in ``docs/protocol.md``;
this module is its reference implementation:

- :func:`encode` turns a message into a list of buffers for ``send_multipart(..., copy=False)``;
- :func:`decode` turns received frames into a message, or raises a specific :class:`ProtocolError`;
- :class:`SequenceTracker` checks the per-sender sequence numbers.

Decoded arrays are views of the received buffers (read-only for ZeroMQ frames and bytes).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np
from isal.isal_zlib import crc32 as crc32  # same CRC-32 as zlib.crc32, ~4x faster (ISA-L); the replay uses it
from numpy.typing import NDArray

from daq.detector import ADC_MAX, N_GROUPS
from daq.errors import ProtocolError

MAGIC = b"NA64"
VERSION = 1
HEADER = struct.Struct("<4sHHHHIIIQQQII")
HEADER_SIZE = HEADER.size  # 56
DESCRIPTOR = struct.Struct("<BBHIII")
DESCRIPTOR_SIZE = DESCRIPTOR.size  # 16
#: where the header's CRC-32 sits (computed with these 4 bytes zero)
CRC_OFFSET = 48
#: array frames per message at most
MAX_FRAMES = 16
#: largest dimension of an array frame a decoder accepts (a corrupt header cannot ask for terabytes)
MAX_DIM = 1 << 28
#: every u64 field (header and body) must be below this: the spill files and summaries store int64
INT64_LIMIT = 1 << 63
#: slice ids are below this (the spill file's ``slice`` column is u32)
SLICE_LIMIT = 1 << 32
#: samples per readout window a RUN_START may declare (1..MAX_SAMPLES)
MAX_SAMPLES = 4096
#: a forward sequence jump larger than this is a corrupt or reset counter, not that many lost messages:
#: it counts as one sequence gap (a count of 2^64 lost messages would not fit any counter downstream)
MAX_SEQUENCE_GAP = 1 << 20
#: bytes of the optional detail text of a NACK
MAX_NACK_DETAIL = 256

#: dtype codes of array frames (all little-endian)
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    3: np.dtype("<u4"),
    4: np.dtype("<u8"),
    5: np.dtype("<i1"),
    6: np.dtype("<i2"),
    7: np.dtype("<i4"),
    8: np.dtype("<i8"),
    9: np.dtype("<f4"),
    10: np.dtype("<f8"),
}
CODE_OF_DTYPE = {dt: code for code, dt in DTYPE_CODES.items()}

NO_SOURCE = 0xFFFF


# ---------------------------------------------------------------- errors
class BadMagicError(ProtocolError):
    """The header does not start with b'NA64'."""


class BadVersionError(ProtocolError):
    """The protocol version is not one this decoder speaks."""


class UnknownTypeError(ProtocolError):
    """The message type code is not defined."""


class LengthError(ProtocolError):
    """A length (header frame, body, array frame) does not match what the header declares."""


class ChecksumError(ProtocolError):
    """The CRC-32 in the header does not match the message bytes."""


class FrameCountError(ProtocolError):
    """The number of frames differs from the header, or from what the message type allows."""


class ShapeError(ProtocolError):
    """An array frame has the wrong dtype, rank or shape for its message type."""


class FieldError(ProtocolError):
    """A body field holds a value the message type does not allow (e.g. reserved bits set)."""


class SequenceGapError(ProtocolError):
    """Messages are missing: the sequence number jumped forward."""

    def __init__(self, sender: object, expected: int, got: int) -> None:
        jump = got - expected
        #: messages lost; an implausible jump (> MAX_SEQUENCE_GAP) counts as one: a corrupt counter
        self.missing = jump if jump <= MAX_SEQUENCE_GAP else 1
        what = f"{jump} lost" if jump <= MAX_SEQUENCE_GAP else f"a jump of {jump}: corrupt or reset counter"
        super().__init__(f"sequence gap from {sender!r}: expected {expected}, got {got} ({what})")
        self.expected, self.got = expected, got


class SequenceRepeatError(ProtocolError):
    """A message is a duplicate or arrived out of order: the sequence number went backwards."""

    def __init__(self, sender: object, expected: int, got: int) -> None:
        super().__init__(f"duplicate or out-of-order message from {sender!r}: expected {expected}, got {got}")
        self.expected, self.got = expected, got


# ---------------------------------------------------------------- message types
class MessageType(IntEnum):
    RUN_START = 1
    RUN_STOP = 2
    SPILL_START = 3
    SPILL_END = 4
    SLICE = 5
    READOUT_REQUEST = 6
    FRAGMENT = 7
    HEARTBEAT = 8
    EVENTS = 9
    SUMMARY = 10
    RUN_ACK = 11
    ANNOUNCE_REQUEST = 12
    NACK = 13


#: the message types a front-end sends (the others go from the DAQ to a front-end or to the DQM)
FRONTEND_TYPES = frozenset(
    {
        MessageType.RUN_START,
        MessageType.RUN_STOP,
        MessageType.SPILL_START,
        MessageType.SPILL_END,
        MessageType.SLICE,
        MessageType.FRAGMENT,
        MessageType.HEARTBEAT,
    }
)


class NackCode(IntEnum):
    """Why the DAQ refused a front-end's message (the ``code`` of a NACK, docs/protocol.md).

    The DAQ's status document counts refusals of peers outside the run by these names, lower-cased.
    """

    NOT_OWNER = 1  # the run, spill or readout group belongs to another front-end
    NO_RUN = 2  # no run is on, or the message names another run
    NO_SPILL = 3  # no spill is open, or the message names another spill
    ALREADY_DONE = 4  # the spill was already recorded, or the run already stopped (not a retry of it)
    MALFORMED = 5  # the message could not be decoded (the detail says why)
    INVALID = 6  # a field is outside what the DAQ accepts (e.g. n_channels of RUN_START)
    RUN_REFUSED = 7  # the run is not recorded (no usable calibration, primitives unusable)
    NOT_ACCEPTED = 8  # a message type the DAQ does not take from front-ends


class FrontEndState(IntEnum):
    IDLE = 0
    RUNNING = 1
    IN_SPILL = 2
    STALLED = 3


@dataclass(frozen=True)
class FrameSpec:
    """Name, dtype and rank of one array frame of a message type."""

    name: str
    dtype: np.dtype
    ndim: int


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """Common header fields. Subclasses add body fields (``BODY``) and array frames (``FRAMES``)."""

    run: int = 0
    spill: int = 0
    seq: int = 0
    slice_id: int = 0
    source: int = NO_SOURCE
    send_time_ns: int = 0

    TYPE: ClassVar[MessageType]
    BODY: ClassVar[tuple[tuple[str, str], ...]] = ()
    FRAMES: ClassVar[tuple[FrameSpec, ...]] = ()
    MIN_FRAMES: ClassVar[int | None] = None  # None: all FRAMES are required

    def check(self) -> None:
        """Cross-field consistency; raise ShapeError/FieldError. Called by encode and decode."""

    def validate(self) -> None:
        """Value ranges of docs/protocol.md ("Field ranges"); raise FieldError. Called by decode only: an
        encoder can still make an out-of-range message on purpose (test front-ends, the conformance
        suite's broken front-end)."""

    def frames(self) -> list[np.ndarray]:
        return [getattr(self, spec.name) for spec in self.FRAMES if getattr(self, spec.name) is not None]


def _u8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


@dataclass(frozen=True, kw_only=True, eq=False)
class RunStart(Message):
    """A run begins. Declares the waveform format and which channels the primitives carry."""

    TYPE: ClassVar = MessageType.RUN_START
    BODY: ClassVar = (("n_samples", "H"), ("n_channels", "H"), ("sample_period_ps", "I"), ("slice_ns", "Q"))
    FRAMES: ClassVar = (FrameSpec("prim_channels", np.dtype("<u2"), 1), FrameSpec("info", np.dtype("u1"), 1))
    MIN_FRAMES: ClassVar = 1

    n_samples: int = 32
    n_channels: int = 0
    sample_period_ps: int = 12500
    slice_ns: int = 10_000_000
    prim_channels: NDArray[np.uint16] = field(default_factory=lambda: np.zeros(0, np.uint16))
    info: NDArray[np.uint8] | None = None  # optional UTF-8 JSON: front-end name, version, config

    @staticmethod
    def info_bytes(text: str) -> np.ndarray:
        return _u8(text)

    def check(self) -> None:
        prim = np.asarray(self.prim_channels)
        if np.any(prim >= max(self.n_channels, 1)):
            raise ShapeError(f"RUN_START primitive channel id >= n_channels={self.n_channels}")

    def validate(self) -> None:
        if not 1 <= self.n_samples <= MAX_SAMPLES:
            raise FieldError(f"RUN_START: n_samples={self.n_samples} (allowed 1..{MAX_SAMPLES})")
        if self.n_channels < 1:
            raise FieldError("RUN_START: n_channels=0")
        if self.sample_period_ps < 1 or self.slice_ns < 1:
            raise FieldError(
                f"RUN_START: sample_period_ps={self.sample_period_ps}, slice_ns={self.slice_ns} (must be >= 1)"
            )
        prim = np.asarray(self.prim_channels)
        if np.unique(prim).size != prim.size:
            raise FieldError("RUN_START: a primitive channel id is listed twice")


@dataclass(frozen=True, kw_only=True, eq=False)
class RunStop(Message):
    TYPE: ClassVar = MessageType.RUN_STOP
    BODY: ClassVar = (("n_spills", "I"), ("reserved", "I"))
    n_spills: int = 0
    reserved: int = 0

    def check(self) -> None:
        _reserved_zero(self)


@dataclass(frozen=True, kw_only=True, eq=False)
class SpillStart(Message):
    TYPE: ClassVar = MessageType.SPILL_START
    BODY: ClassVar = (("t_start_ns", "Q"),)
    t_start_ns: int = 0  # wall clock, ns since the Unix epoch


@dataclass(frozen=True, kw_only=True, eq=False)
class SpillEnd(Message):
    """A spill ends, with the front-end's own counters for this spill."""

    TYPE: ClassVar = MessageType.SPILL_END
    BODY: ClassVar = (
        ("n_slices", "I"),
        ("n_requests", "I"),
        ("n_fragments", "I"),
        ("n_events_read", "I"),
        ("n_particles", "Q"),
        ("t_end_ns", "Q"),
    )
    n_slices: int = 0  # SLICE messages sent in this spill
    n_requests: int = 0  # READOUT_REQUESTs received for this spill
    n_fragments: int = 0  # FRAGMENT messages sent for this spill
    n_events_read: int = 0  # particles whose waveforms were sent (summed over requests)
    n_particles: int = 0  # particles sent in SLICE messages
    t_end_ns: int = 0  # wall clock, ns since the Unix epoch


@dataclass(frozen=True, kw_only=True, eq=False)
class Slice(Message):
    """Trigger primitives of every beam particle in one time slice of a spill (structure of arrays).

    Optional context frames ``ctx_t_ns`` (M,) and ``ctx_amp`` (C, M): other particles of the beam in the
    slice that are not trigger candidates (a replay sends the recorded events' pile-up neighbours this
    way). The DAQ uses them only to fit pile-up, never to trigger or count (EOT, histograms).
    """

    TYPE: ClassVar = MessageType.SLICE
    BODY: ClassVar = (("t0_ns", "Q"), ("length_ns", "I"), ("n_particles", "I"))
    FRAMES: ClassVar = (
        FrameSpec("t_ns", np.dtype("<i8"), 1),
        FrameSpec("amp", np.dtype("<u2"), 2),
        FrameSpec("ctx_t_ns", np.dtype("<i8"), 1),
        FrameSpec("ctx_amp", np.dtype("<u2"), 2),
    )
    MIN_FRAMES: ClassVar = 2

    t0_ns: int = 0  # slice start, ns since spill start
    length_ns: int = 0
    n_particles: int = 0
    t_ns: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))  # since spill start
    amp: NDArray[np.uint16] = field(default_factory=lambda: np.zeros((0, 0), np.uint16))  # (C, N)
    ctx_t_ns: NDArray[np.int64] | None = None  # (M,) context particles, since spill start
    ctx_amp: NDArray[np.uint16] | None = None  # (C, M)

    @property
    def context(self) -> tuple[NDArray[np.int64], NDArray[np.uint16]] | None:
        if self.ctx_t_ns is None or self.ctx_amp is None:
            return None
        return self.ctx_t_ns, self.ctx_amp

    def check(self) -> None:
        if self.t_ns.shape != (self.n_particles,) or self.amp.shape[1] != self.n_particles:
            raise ShapeError(
                f"SLICE {self.slice_id}: n_particles={self.n_particles} but t_ns{self.t_ns.shape}, "
                f"amp{self.amp.shape}"
            )
        if (self.ctx_t_ns is None) != (self.ctx_amp is None):
            raise FrameCountError(f"SLICE {self.slice_id}: ctx_t_ns and ctx_amp go together")
        if self.ctx_t_ns is not None and self.ctx_amp is not None:
            m = self.ctx_t_ns.shape[0]
            if self.ctx_amp.shape != (self.amp.shape[0], m):
                raise ShapeError(
                    f"SLICE {self.slice_id}: ctx_amp{self.ctx_amp.shape} for {m} context particles of "
                    f"{self.amp.shape[0]} primitive rows"
                )

    def validate(self) -> None:
        if self.length_ns < 1:
            raise FieldError(f"SLICE {self.slice_id}: length_ns=0")
        t = self.t_ns
        if t.size:
            end = self.t0_ns + self.length_ns
            if int(t[0]) < self.t0_ns or int(t[-1]) >= end or (t.size > 1 and bool(np.any(t[1:] < t[:-1]))):
                raise FieldError(
                    f"SLICE {self.slice_id}: t_ns must be non-decreasing within [{self.t0_ns}, {end}) "
                    f"(got {int(t.min())}..{int(t.max())})"
                )
        if self.amp.size and int(self.amp.max()) > ADC_MAX:
            raise FieldError(f"SLICE {self.slice_id}: amplitude {int(self.amp.max())} > {ADC_MAX} (12 bits)")


#: index of a readout window that belongs to no particle (a random trigger): read the window at t_ns
NO_PARTICLE = 0xFFFFFFFF


@dataclass(frozen=True, kw_only=True, eq=False)
class ReadoutRequest(Message):
    """DAQ -> front-end: send the waveforms of these particles (indices into the slice).

    The optional ``t_ns`` frame gives the trigger time of every entry; an entry whose index is
    :data:`NO_PARTICLE` is a random trigger: the front-end reads the window at ``t_ns`` (whatever beam
    particles happen to be in it). ``t_ns`` is required when any index is NO_PARTICLE.
    """

    TYPE: ClassVar = MessageType.READOUT_REQUEST
    BODY: ClassVar = (("n_events", "I"), ("reserved", "I"))
    FRAMES: ClassVar = (FrameSpec("index", np.dtype("<u4"), 1), FrameSpec("t_ns", np.dtype("<i8"), 1))
    MIN_FRAMES: ClassVar = 1
    n_events: int = 0
    reserved: int = 0
    index: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    t_ns: NDArray[np.int64] | None = None  # since spill start

    def check(self) -> None:
        _reserved_zero(self)
        if self.index.shape != (self.n_events,):
            raise ShapeError(f"READOUT_REQUEST: n_events={self.n_events} but index{self.index.shape}")
        if self.t_ns is None:
            if np.any(self.index == NO_PARTICLE):
                raise FrameCountError("READOUT_REQUEST: random-trigger entries need the t_ns frame")
        elif self.t_ns.shape != (self.n_events,):
            raise ShapeError(f"READOUT_REQUEST: n_events={self.n_events} but t_ns{self.t_ns.shape}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Fragment(Message):
    """Front-end -> DAQ: waveforms of one readout group for the particles of one request.

    A fragment with no array frames is a header-only (empty) fragment: the source sent nothing.
    """

    TYPE: ClassVar = MessageType.FRAGMENT
    BODY: ClassVar = (("n_events", "I"), ("n_channels", "H"), ("n_samples", "H"))
    FRAMES: ClassVar = (FrameSpec("index", np.dtype("<u4"), 1), FrameSpec("waveforms", np.dtype("<u2"), 3))
    MIN_FRAMES: ClassVar = 0
    n_events: int = 0
    n_channels: int = 0
    n_samples: int = 0
    index: NDArray[np.uint32] | None = None
    waveforms: NDArray[np.uint16] | None = None  # (n_events, n_channels, n_samples)

    @property
    def empty(self) -> bool:
        return self.index is None

    def check(self) -> None:
        if (self.index is None) != (self.waveforms is None):
            raise FrameCountError("FRAGMENT carries index without waveforms or the reverse")
        if self.index is None or self.waveforms is None:
            return
        want = (self.n_events, self.n_channels, self.n_samples)
        if self.index.shape != (self.n_events,) or self.waveforms.shape != want:
            raise ShapeError(
                f"FRAGMENT slice {self.slice_id} source {self.source}: body says {want}, "
                f"got index{self.index.shape}, waveforms{self.waveforms.shape}"
            )

    def validate(self) -> None:
        if self.waveforms is not None and self.waveforms.size and int(self.waveforms.max()) > ADC_MAX:
            raise FieldError(
                f"FRAGMENT slice {self.slice_id} source {self.source}: sample {int(self.waveforms.max())} "
                f"> {ADC_MAX} (12-bit ADC)"
            )


@dataclass(frozen=True, kw_only=True, eq=False)
class Heartbeat(Message):
    TYPE: ClassVar = MessageType.HEARTBEAT
    BODY: ClassVar = (("uptime_ns", "Q"), ("state", "I"), ("reserved", "I"))
    uptime_ns: int = 0
    state: int = FrontEndState.IDLE
    reserved: int = 0

    def check(self) -> None:
        _reserved_zero(self)

    def validate(self) -> None:
        if self.state not in _FRONTEND_STATES:
            raise FieldError(f"HEARTBEAT: state {self.state} (allowed {sorted(_FRONTEND_STATES)})")


_FRONTEND_STATES = frozenset(int(s) for s in FrontEndState)


@dataclass(frozen=True, kw_only=True, eq=False)
class Events(Message):
    """DAQ -> DQM: a batch of built events (possibly a sample of the recorded ones).

    ``sums`` rows are E_PRS, E_ECAL, E_HCAL, E_VETO, E_SRD, E_miss in GeV; ``energy`` is per channel in
    GeV; ``waveforms`` holds the raw samples of the batch's last event only (1, channels, samples).
    """

    TYPE: ClassVar = MessageType.EVENTS
    BODY: ClassVar = (("n_events", "I"), ("n_skipped", "I"))
    FRAMES: ClassVar = (
        FrameSpec("event_id", np.dtype("<u8"), 1),
        FrameSpec("t_ns", np.dtype("<i8"), 1),
        FrameSpec("trigger_mask", np.dtype("<u4"), 1),
        FrameSpec("sums", np.dtype("<f4"), 2),
        FrameSpec("energy", np.dtype("<f4"), 2),
        FrameSpec("peak_time", np.dtype("<f4"), 2),
        FrameSpec("waveforms", np.dtype("<u2"), 3),
    )
    SUMS: ClassVar = ("e_prs", "e_ecal", "e_hcal", "e_veto", "e_srd", "e_miss")
    n_events: int = 0
    n_skipped: int = 0  # events not sent to monitoring since the previous EVENTS message (sampling)
    event_id: NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    t_ns: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    trigger_mask: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    sums: NDArray[np.float32] = field(default_factory=lambda: np.zeros((6, 0), np.float32))
    energy: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    peak_time: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    waveforms: NDArray[np.uint16] = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint16))

    def check(self) -> None:
        n = self.n_events
        ok = (
            self.event_id.shape == (n,)
            and self.t_ns.shape == (n,)
            and self.trigger_mask.shape == (n,)
            and self.sums.shape == (len(self.SUMS), n)
            and self.energy.shape[0] == n
            and self.peak_time.shape == self.energy.shape
            and self.waveforms.shape[0] <= n
        )
        if not ok:
            raise ShapeError(f"EVENTS: inconsistent shapes for n_events={n}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Summary(Message):
    """DAQ -> DQM (and logs): a JSON document, e.g. the per-spill summary or DAQ status."""

    TYPE: ClassVar = MessageType.SUMMARY
    BODY: ClassVar = (("kind", "I"), ("reserved", "I"))
    FRAMES: ClassVar = (FrameSpec("json", np.dtype("u1"), 1),)
    KIND_SPILL: ClassVar = 1
    KIND_STATUS: ClassVar = 2
    KIND_RUN: ClassVar = 3
    kind: int = 1
    reserved: int = 0
    json: NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))

    @classmethod
    def of(cls, kind: int, text: str, **header: Any) -> Summary:
        return cls(kind=kind, json=_u8(text), **header)

    @property
    def text(self) -> str:
        return bytes(self.json).decode("utf-8", errors="replace")


@dataclass(frozen=True, kw_only=True, eq=False)
class RunAck(Message):
    """DAQ -> front-end: the answer to a RUN_START. ``status`` ACCEPTED: the DAQ records the run and can
    process its messages now (its kernels are compiled or loaded); a front-end streams no spill before
    it. REFUSED: the run is not recorded (``reason``, UTF-8: e.g. its run number already has files, or no
    usable calibration); the front-end stops and says why."""

    TYPE: ClassVar = MessageType.RUN_ACK
    BODY: ClassVar = (("status", "I"), ("reserved", "I"))
    FRAMES: ClassVar = (FrameSpec("reason", np.dtype("u1"), 1),)
    MIN_FRAMES: ClassVar = 0
    ACCEPTED: ClassVar = 0
    REFUSED: ClassVar = 1
    status: int = 0
    reserved: int = 0
    reason: NDArray[np.uint8] | None = None

    @classmethod
    def of(cls, run: int, status: int, reason: str = "") -> RunAck:
        return cls(run=run, status=status, reason=_u8(reason) if reason else None)

    @property
    def text(self) -> str:
        return "" if self.reason is None else bytes(self.reason).decode("utf-8", errors="replace")

    def check(self) -> None:
        _reserved_zero(self)
        if self.status not in (self.ACCEPTED, self.REFUSED):
            raise FieldError(f"RUN_ACK: status {self.status} (must be 0 accepted or 1 refused)")


@dataclass(frozen=True, kw_only=True, eq=False)
class AnnounceRequest(Message):
    """DAQ -> front-end: "send your RUN_START again". The DAQ got data of a run it does not know (it was
    restarted mid-run); the front-end answers with RUN_START for its current run, header ``spill`` = the
    spill it is in or last started (a *re-announce*), and waits for RUN_ACK again."""

    TYPE: ClassVar = MessageType.ANNOUNCE_REQUEST
    BODY: ClassVar = (("reason", "I"), ("reserved", "I"))
    RUN_UNKNOWN: ClassVar = 1
    reason: int = 1
    reserved: int = 0

    def check(self) -> None:
        _reserved_zero(self)


@dataclass(frozen=True, kw_only=True, eq=False)
class Nack(Message):
    """DAQ -> front-end: your message was refused (``code``, :class:`NackCode`), and why (``detail``).

    The header's run, spill and slice are those of the refused message; ``refused_type`` and
    ``refused_seq`` name it. A front-end logs it; the DAQ sends at most a few per second per front-end.
    """

    TYPE: ClassVar = MessageType.NACK
    BODY: ClassVar = (("code", "H"), ("refused_type", "H"), ("reserved", "I"), ("refused_seq", "Q"))
    FRAMES: ClassVar = (FrameSpec("detail", np.dtype("u1"), 1),)
    MIN_FRAMES: ClassVar = 0
    code: int = NackCode.NOT_ACCEPTED
    refused_type: int = 0
    reserved: int = 0
    refused_seq: int = 0
    detail: NDArray[np.uint8] | None = None  # UTF-8 text, at most MAX_NACK_DETAIL bytes

    @classmethod
    def about(cls, refused: Message | None, code: NackCode, text: str, **header: Any) -> Nack:
        """A NACK refusing ``refused`` (None: a message that could not be decoded)."""
        data = text.encode()[:MAX_NACK_DETAIL]
        if refused is not None:
            header = {
                "run": refused.run,
                "spill": refused.spill,
                "slice_id": refused.slice_id,
                "refused_type": int(refused.TYPE),
                "refused_seq": refused.seq,
                **header,
            }
        return cls(code=int(code), detail=np.frombuffer(data, np.uint8), **header)

    @property
    def reason(self) -> str:
        """``not_owner: run 1 belongs to front-end ...``: the code's name and the detail."""
        try:
            name = NackCode(self.code).name.lower()
        except ValueError:
            name = f"code {self.code}"
        text = bytes(self.detail).decode("utf-8", errors="replace") if self.detail is not None else ""
        return f"{name}: {text}" if text else name

    def check(self) -> None:
        _reserved_zero(self)
        if self.detail is not None and self.detail.size > MAX_NACK_DETAIL:
            raise LengthError(f"NACK: detail of {self.detail.size} bytes (max {MAX_NACK_DETAIL})")


MESSAGE_CLASSES: dict[int, type[Message]] = {
    int(c.TYPE): c
    for c in (
        RunStart,
        RunStop,
        SpillStart,
        SpillEnd,
        Slice,
        ReadoutRequest,
        Fragment,
        Heartbeat,
        Events,
        Summary,
        RunAck,
        AnnounceRequest,
        Nack,
    )
}
_BODY_STRUCTS: dict[int, struct.Struct] = {
    t: struct.Struct("<" + "".join(code for _, code in c.BODY)) for t, c in MESSAGE_CLASSES.items()
}


def _reserved_zero(msg: Message) -> None:
    if getattr(msg, "reserved", 0) != 0:
        raise FieldError(f"{msg.TYPE.name}: reserved field is {msg.reserved} (must be 0)")  # type: ignore[attr-defined]


# ---------------------------------------------------------------- encode / decode
@dataclass(frozen=True)
class _Layout:
    """What decode needs of one message type, computed once (enum and tuple lookups cost per message)."""

    cls: type[Message]
    name: str
    body: struct.Struct
    body_names: tuple[str, ...]
    frames: tuple[tuple[str, int, int, np.dtype], ...]  # (name, dtype code, ndim, dtype)
    min_frames: int
    u64_fields: tuple[int, ...]  # positions of the body's u64 fields (each < INT64_LIMIT)
    in_spill: bool  # the header's spill must be >= 1
    slice_limit: int  # the header's slice must be below this (1: always 0)
    fragment: bool  # the header's source is a readout group (else NO_SOURCE)


#: message types that belong to a spill (header spill >= 1)
_SPILL_TYPES = frozenset(
    {MessageType.SPILL_START, MessageType.SPILL_END, MessageType.SLICE, MessageType.FRAGMENT}
)
#: message types with a slice id in the header (< SLICE_LIMIT; SPILL_END: the slices planned); others carry 0
_SLICE_TYPES = frozenset(
    {
        MessageType.SLICE,
        MessageType.READOUT_REQUEST,
        MessageType.FRAGMENT,
        MessageType.NACK,
        MessageType.SPILL_END,
    }
)


_LAYOUTS: dict[int, _Layout] = {
    t: _Layout(
        cls=c,
        name=c.TYPE.name,
        body=_BODY_STRUCTS[t],
        body_names=tuple(n for n, _ in c.BODY),
        frames=tuple((f.name, CODE_OF_DTYPE[f.dtype], f.ndim, f.dtype) for f in c.FRAMES),
        min_frames=len(c.FRAMES) if c.MIN_FRAMES is None else c.MIN_FRAMES,
        u64_fields=tuple(i for i, (_, code) in enumerate(c.BODY) if code == "Q"),
        in_spill=c.TYPE in _SPILL_TYPES,
        slice_limit=SLICE_LIMIT if c.TYPE in _SLICE_TYPES else 1,
        fragment=c.TYPE == MessageType.FRAGMENT,
    )
    for t, c in MESSAGE_CLASSES.items()
}


def _check_header(
    lay: _Layout, source: int, spill: int, seq: int, slice_id: int, send_ns: int, reserved: int
) -> None:
    """The header's fields against docs/protocol.md (after the checksum: a corrupt message is a checksum
    error, a wrong value from a correct sender a field error)."""
    name = lay.name
    if reserved:
        raise FieldError(f"{name}: header reserved field is {reserved} (must be 0)")
    if lay.fragment:
        if source >= N_GROUPS:
            raise FieldError(f"{name}: source {source} is not a readout group (0..{N_GROUPS - 1})")
    elif source != NO_SOURCE:
        raise FieldError(f"{name}: source {source} (must be {NO_SOURCE:#x}: not applicable)")
    if lay.in_spill and spill < 1:
        raise FieldError(f"{name}: spill 0 (spills are numbered from 1)")
    if slice_id >= lay.slice_limit:
        raise FieldError(f"{name}: slice {slice_id} (allowed 0..{lay.slice_limit - 1})")
    if seq >= INT64_LIMIT or send_ns >= INT64_LIMIT:
        raise FieldError(f"{name}: seq {seq} or send_time_ns {send_ns} >= 2^63")


def decode(frames: Sequence[Any], validate: bool = True) -> Message:
    """Decode ZeroMQ frames (bytes, memoryviews or zmq.Frame) into a message.

    Raises a specific :class:`ProtocolError` subclass for every malformed input. ``validate=False``
    skips the value ranges ("Field ranges" of docs/protocol.md: header fields, u64 body fields, sample
    and time ranges) for a caller that judges them itself (``na64 conformance``); lengths, shapes and the
    checksum are always checked.
    """
    if not frames:
        raise FrameCountError("empty message: no header frame")
    if len(frames) > MAX_FRAMES + 1:  # before touching them: a message of 100 000 frames costs nothing more
        raise FrameCountError(f"message of {len(frames)} frames (at most {MAX_FRAMES + 1})")
    bufs = [memoryview(f).cast("B") for f in frames]
    head = bufs[0]
    if len(head) < HEADER_SIZE:
        raise LengthError(f"header frame is {len(head)} bytes, shorter than the {HEADER_SIZE}-byte header")
    (
        magic,
        version,
        mtype,
        source,
        n_frames,
        run,
        spill,
        body_len,
        seq,
        slice_id,
        send_ns,
        crc,
        reserved,
    ) = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise BadVersionError(f"protocol version {version} is not supported (this decoder speaks {VERSION})")
    lay = _LAYOUTS.get(mtype)
    if lay is None:
        raise UnknownTypeError(f"unknown message type {mtype}")
    name = lay.name
    if n_frames > MAX_FRAMES:
        raise FrameCountError(f"{name}: header declares {n_frames} frames (max {MAX_FRAMES})")
    if len(bufs) - 1 != n_frames:
        raise FrameCountError(f"{name}: header declares {n_frames} array frames, message has {len(bufs) - 1}")
    if body_len != lay.body.size:
        raise LengthError(f"{name}: body length {body_len}, expected {lay.body.size}")
    expected_head = HEADER_SIZE + DESCRIPTOR_SIZE * n_frames + body_len
    if len(head) != expected_head:
        raise LengthError(f"{name}: header frame is {len(head)} bytes, expected {expected_head}")
    if not (lay.min_frames <= n_frames <= len(lay.frames)) or (lay.cls is Fragment and n_frames == 1):
        raise FrameCountError(
            f"{name}: {n_frames} array frames (allowed {lay.min_frames}..{len(lay.frames)})"
        )
    got_crc = crc32(head[:CRC_OFFSET])
    got_crc = crc32(b"\0\0\0\0", got_crc)
    got_crc = crc32(head[CRC_OFFSET + 4 :], got_crc)
    for b in bufs[1:]:
        got_crc = crc32(b, got_crc)
    if got_crc != crc:
        raise ChecksumError(
            f"{name} seq {seq}: CRC-32 mismatch (header {crc:#010x}, computed {got_crc:#010x})"
        )
    body = lay.body.unpack_from(head, HEADER_SIZE + DESCRIPTOR_SIZE * n_frames)
    if validate:
        _check_header(lay, source, spill, seq, slice_id, send_ns, reserved)
        for i in lay.u64_fields:
            if body[i] >= INT64_LIMIT:
                raise FieldError(f"{name}: {lay.body_names[i]} = {body[i]} >= 2^63")
    values: dict[str, Any] = dict(zip(lay.body_names, body, strict=True))
    for i in range(n_frames):
        fname, want_code, want_ndim, dt = lay.frames[i]
        code, ndim, reserved, d0, d1, d2 = DESCRIPTOR.unpack_from(head, HEADER_SIZE + i * DESCRIPTOR_SIZE)
        if code != want_code:
            raise ShapeError(f"{name}.{fname}: dtype code {code}, expected {want_code}")
        dims = (d0, d1, d2)
        if ndim != want_ndim or reserved != 0 or any(dims[ndim:]):
            raise ShapeError(f"{name}.{fname}: rank {ndim} dims {dims}, expected rank {want_ndim}")
        shape = dims[:ndim]
        if d0 > MAX_DIM or d1 > MAX_DIM or d2 > MAX_DIM:
            raise ShapeError(f"{name}.{fname}: dimension too large {shape}")
        nbytes = math.prod(shape) * dt.itemsize
        buf = bufs[1 + i]
        if len(buf) != nbytes:
            raise LengthError(f"{name}.{fname}: frame is {len(buf)} bytes, shape {shape} needs {nbytes}")
        values[fname] = np.frombuffer(buf, dtype=dt).reshape(shape)
    msg = lay.cls(
        run=run, spill=spill, seq=seq, slice_id=slice_id, source=source, send_time_ns=send_ns, **values
    )
    msg.check()
    if validate:
        msg.validate()
    return msg


def encode(msg: Message) -> list[bytes | memoryview]:
    """Encode a message into ZeroMQ frames: header frame first, then one buffer per array (no copy
    unless an array is not C-contiguous little-endian of the declared dtype)."""
    msg.check()
    lay = _LAYOUTS[msg.TYPE]
    views: list[memoryview] = []
    descriptors = bytearray()
    for fname, code, ndim, dt in lay.frames:
        value = getattr(msg, fname)
        if value is None:
            continue
        a = value if type(value) is np.ndarray and value.dtype == dt else np.asarray(value, dtype=dt)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if a.ndim != ndim:
            raise ShapeError(f"{lay.name}.{fname}: rank {a.ndim}, expected {ndim}")
        dims = [*a.shape, 0, 0, 0][:3]
        descriptors += DESCRIPTOR.pack(code, ndim, 0, *dims)
        views.append(a.reshape(-1).view(np.uint8).data)
    body = lay.body.pack(*[getattr(msg, name) for name in lay.body_names])
    send_ns = msg.send_time_ns or time.time_ns()
    header = bytearray(
        HEADER.pack(
            MAGIC,
            VERSION,
            int(msg.TYPE),
            msg.source,
            len(views),
            msg.run,
            msg.spill,
            len(body),
            msg.seq,
            msg.slice_id,
            send_ns,
            0,
            0,
        )
    )
    header += descriptors
    header += body
    crc = crc32(header)
    for v in views:
        crc = crc32(v, crc)
    struct.pack_into("<I", header, CRC_OFFSET, crc)
    return [bytes(header), *views]


def with_seq(msg: Message, seq: int) -> Message:
    """A copy of ``msg`` with another sequence number (arrays are shared, not copied)."""
    return dataclasses.replace(msg, seq=seq)


class SequenceTracker:
    """Checks per-sender sequence numbers: each sender numbers its messages 0, 1, 2, ...

    ``check`` returns normally for the expected number, raises :class:`SequenceGapError` for a jump
    forward or :class:`SequenceRepeatError` for a number already seen; either way it resynchronises
    so the stream goes on. A message numbered 0 restarts the sender (counted in ``restarts``).
    """

    def __init__(self) -> None:
        self._next: dict[object, int] = {}
        self.restarts = 0

    def check(self, sender: object, seq: int) -> None:
        expected = self._next.get(sender)
        if seq == 0 and expected not in (None, 0):
            self.restarts += 1
            expected = 0
        if expected is None or seq == expected:
            self._next[sender] = seq + 1
            return
        self._next[sender] = seq + 1  # resynchronise on the received number, forward or backward
        if seq > expected:
            raise SequenceGapError(sender, expected, seq)
        raise SequenceRepeatError(sender, expected, seq)

    def forget(self, sender: object) -> None:
        """Drop a sender's number (one gone for good); its next message starts it afresh."""
        self._next.pop(sender, None)


class SequenceCounter:
    """Numbers outgoing messages of one sender: ``stamp(msg)`` returns it with the next number."""

    def __init__(self) -> None:
        self.next = 0

    def stamp(self, msg: Message) -> Message:
        out = with_seq(msg, self.next)
        self.next += 1
        return out
