"""Wire protocol v1: golden vectors, round trips (hypothesis) and every kind of malformed message."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daq import detector
from daq import protocol as p
from tests.golden.make_protocol_vectors import OUT, read_frames, vectors

GOLDEN = json.loads((OUT / "vectors.json").read_text())


def same(a: p.Message, b: p.Message) -> bool:
    if type(a) is not type(b):
        return False
    for name in ("run", "spill", "seq", "slice_id", "source", *(n for n, _ in a.BODY)):
        if getattr(a, name) != getattr(b, name):
            return False
    for spec in a.FRAMES:
        x, y = getattr(a, spec.name), getattr(b, spec.name)
        if (x is None) != (y is None):
            return False
        if x is not None and not (np.asarray(x).shape == y.shape and np.array_equal(x, y)):
            return False
    return True


def reseal(frames: list[bytes]) -> list[bytes]:
    """Recompute the CRC after a deliberate corruption, so the decoder reaches the later checks."""
    head = bytearray(frames[0])
    struct.pack_into("<I", head, p.CRC_OFFSET, 0)
    crc = zlib.crc32(bytes(head))
    for f in frames[1:]:
        crc = zlib.crc32(f, crc)
    struct.pack_into("<I", head, p.CRC_OFFSET, crc)
    return [bytes(head), *frames[1:]]


def golden(name: str) -> list[bytes]:
    return read_frames(OUT / f"{name}.frames")


# ------------------------------------------------------------------ golden vectors
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_vector_decodes_to_documented_fields(name: str) -> None:
    msg = p.decode(golden(name))
    expected = GOLDEN[name]
    assert msg.TYPE.name == expected["type"]
    for key, value in expected.items():
        if key == "type":
            continue
        got = getattr(msg, key)
        assert (np.asarray(got).tolist() if isinstance(got, np.ndarray) else got) == value, key


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encoder_reproduces_golden_bytes(name: str) -> None:
    frames = [bytes(f) for f in p.encode(vectors()[name])]
    assert frames == golden(name)


def test_golden_header_layout_is_as_documented() -> None:
    head = golden("heartbeat")[0]
    assert head[:4] == b"NA64"
    assert struct.unpack_from("<HHHH", head, 4) == (1, int(p.MessageType.HEARTBEAT), p.NO_SOURCE, 0)
    assert struct.unpack_from("<III", head, 12) == (42, 7, 16)  # run, spill, body length
    assert struct.unpack_from("<Q", head, 24) == (7,)  # sequence number
    assert len(head) == p.HEADER_SIZE + 16


def test_decoded_arrays_are_views_of_received_buffers() -> None:
    frames = golden("slice")
    msg = p.decode(frames)
    assert isinstance(msg, p.Slice)
    assert not msg.amp.flags.writeable  # a view of the (immutable) frame, not a copy
    assert msg.amp.shape == (len(detector.default_primitive_channels()), 4)


# ------------------------------------------------------------------ round trips
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
header = st.fixed_dictionaries(
    {
        "run": u32,
        "spill": u32,
        "seq": u64,
        "slice_id": u64,
        "source": st.integers(0, 0xFFFF),
        "send_time_ns": st.integers(1, 2**64 - 1),
    }
)


@st.composite
def slices(draw: st.DrawFn) -> p.Slice:
    n = draw(st.integers(0, 50))
    c = draw(st.integers(1, 40))
    t = draw(hnp.arrays(np.int64, n, elements=st.integers(-(2**62), 2**62)))
    amp = draw(hnp.arrays(np.uint16, (c, n)))
    return p.Slice(t0_ns=draw(u64), length_ns=draw(u32), n_particles=n, t_ns=t, amp=amp, **draw(header))


@st.composite
def fragments(draw: st.DrawFn) -> p.Fragment:
    k, ch, ns = draw(st.integers(0, 5)), draw(st.integers(0, 40)), draw(st.integers(0, 64))
    if draw(st.booleans()):
        return p.Fragment(n_events=k, n_channels=ch, n_samples=ns, **draw(header))
    return p.Fragment(
        n_events=k,
        n_channels=ch,
        n_samples=ns,
        index=draw(hnp.arrays(np.uint32, k)),
        waveforms=draw(hnp.arrays(np.uint16, (k, ch, ns))),
        **draw(header),
    )


@st.composite
def requests(draw: st.DrawFn) -> p.ReadoutRequest:
    k = draw(st.integers(0, 30))
    index = draw(hnp.arrays(np.uint32, k))
    t = (
        draw(st.one_of(st.none(), hnp.arrays(np.int64, k)))
        if not np.any(index == p.NO_PARTICLE)
        else (draw(hnp.arrays(np.int64, k)))
    )
    return p.ReadoutRequest(n_events=k, index=index, t_ns=t, **draw(header))


@st.composite
def scalars(draw: st.DrawFn) -> p.Message:
    kind = draw(
        st.sampled_from(["run_stop", "spill_start", "spill_end", "heartbeat", "run_start", "summary"])
    )
    h = draw(header)
    if kind == "run_stop":
        return p.RunStop(n_spills=draw(u32), **h)
    if kind == "spill_start":
        return p.SpillStart(t_start_ns=draw(u64), **h)
    if kind == "spill_end":
        return p.SpillEnd(
            n_slices=draw(u32),
            n_requests=draw(u32),
            n_fragments=draw(u32),
            n_events_read=draw(u32),
            n_particles=draw(u64),
            t_end_ns=draw(u64),
            **h,
        )
    if kind == "heartbeat":
        return p.Heartbeat(uptime_ns=draw(u64), state=draw(st.integers(0, 3)), **h)
    if kind == "summary":
        return p.Summary.of(draw(st.integers(1, 2)), json.dumps({"x": draw(st.text(max_size=20))}), **h)
    nch = draw(st.integers(1, 200))
    prim = draw(hnp.arrays(np.uint16, draw(st.integers(0, 30)), elements=st.integers(0, nch - 1)))
    info = draw(st.one_of(st.none(), st.text(max_size=40).map(p.RunStart.info_bytes)))
    return p.RunStart(
        n_samples=draw(st.integers(0, 0xFFFF)),
        n_channels=nch,
        sample_period_ps=draw(u32),
        slice_ns=draw(u64),
        prim_channels=prim,
        info=info,
        **h,
    )


@settings(max_examples=150, deadline=None)
@given(st.one_of(slices(), fragments(), requests(), scalars()))
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    back = p.decode([bytes(f) for f in frames])
    assert same(msg, back)
    assert back.send_time_ns == msg.send_time_ns


@settings(max_examples=150, deadline=None)
@given(st.one_of(slices(), fragments(), requests(), scalars()), st.data())
def test_any_single_bit_flip_is_rejected(msg: p.Message, data: st.DataObject) -> None:
    frames = [bytearray(f) for f in p.encode(msg)]
    total = sum(len(f) for f in frames)
    bit = data.draw(st.integers(0, total * 8 - 1))
    for f in frames:
        if bit < len(f) * 8:
            f[bit // 8] ^= 1 << (bit % 8)
            break
        bit -= len(f) * 8
    with pytest.raises(p.ProtocolError):
        p.decode([bytes(f) for f in frames])


# ------------------------------------------------------------------ malformed messages, one by one
def corrupt_header(name: str, offset: int, fmt: str, value: int | bytes) -> list[bytes]:
    frames = golden(name)
    head = bytearray(frames[0])
    struct.pack_into(fmt, head, offset, value)
    return reseal([bytes(head), *frames[1:]])


def test_wrong_magic() -> None:
    with pytest.raises(p.BadMagicError, match="magic"):
        p.decode(corrupt_header("heartbeat", 0, "<4s", b"NA65"))


def test_wrong_version() -> None:
    with pytest.raises(p.BadVersionError, match="version 2"):
        p.decode(corrupt_header("heartbeat", 4, "<H", 2))


def test_unknown_type() -> None:
    with pytest.raises(p.UnknownTypeError, match="type 99"):
        p.decode(corrupt_header("heartbeat", 6, "<H", 99))


def test_wrong_body_length() -> None:
    with pytest.raises(p.LengthError, match="body length"):
        p.decode(corrupt_header("heartbeat", 20, "<I", 8))


def test_header_frame_too_short_or_too_long() -> None:
    with pytest.raises(p.LengthError, match="shorter"):
        p.decode([b"NA64\x01\x00"])
    frames = golden("heartbeat")
    with pytest.raises(p.LengthError, match="header frame"):
        p.decode(reseal([frames[0] + b"\0"]))


def test_checksum_mismatch_in_payload() -> None:
    frames = golden("slice")
    payload = bytearray(frames[2])
    payload[0] ^= 0xFF
    with pytest.raises(p.ChecksumError, match="CRC-32"):
        p.decode([frames[0], frames[1], bytes(payload)])


def test_frame_count_differs_from_header() -> None:
    frames = golden("slice")
    with pytest.raises(p.FrameCountError, match="declares 2"):
        p.decode(frames[:2])
    with pytest.raises(p.FrameCountError, match="no header"):
        p.decode([])


def test_frame_count_not_allowed_for_type() -> None:
    frames = golden("fragment_ecal")
    head = bytearray(frames[0])
    struct.pack_into("<H", head, 10, 1)  # one array frame only: index without waveforms
    desc_end = p.HEADER_SIZE + p.DESCRIPTOR_SIZE
    head = head[:desc_end] + head[desc_end + p.DESCRIPTOR_SIZE :]
    with pytest.raises(p.FrameCountError, match="allowed"):
        p.decode(reseal([bytes(head), frames[1]]))


def test_array_frame_length_differs_from_shape() -> None:
    frames = golden("slice")
    with pytest.raises(p.LengthError, match="needs"):
        p.decode(reseal([frames[0], frames[1], frames[2][:-2]]))


def test_wrong_dtype_code() -> None:
    with pytest.raises(p.ShapeError, match="dtype code"):
        p.decode(corrupt_header("slice", p.HEADER_SIZE, "<B", 9))


def test_wrong_rank() -> None:
    with pytest.raises(p.ShapeError, match="rank"):
        p.decode(corrupt_header("slice", p.HEADER_SIZE + p.DESCRIPTOR_SIZE + 1, "<B", 3))


def test_inconsistent_shapes_between_frames() -> None:
    # the body says 5 particles, the frames hold 4
    offset = p.HEADER_SIZE + 2 * p.DESCRIPTOR_SIZE + 12
    with pytest.raises(p.ShapeError, match="n_particles=5"):
        p.decode(corrupt_header("slice", offset, "<I", 5))


def test_reserved_field_must_be_zero() -> None:
    offset = p.HEADER_SIZE + 12
    with pytest.raises(p.FieldError, match="reserved"):
        p.decode(corrupt_header("heartbeat", offset, "<I", 1))


def test_random_trigger_entries_need_times() -> None:
    with pytest.raises(p.FrameCountError, match="t_ns"):
        p.encode(p.ReadoutRequest(n_events=1, index=np.array([p.NO_PARTICLE], np.uint32)))


def test_header_only_fragment_is_legal_and_flagged_empty() -> None:
    msg = p.decode(golden("fragment_header_only"))
    assert isinstance(msg, p.Fragment) and msg.empty and msg.n_events == 2


# ------------------------------------------------------------------ sequence numbers
def test_sequence_tracker_gap_repeat_and_restart() -> None:
    tracker = p.SequenceTracker()
    for seq in range(3):
        tracker.check("fe", seq)
    with pytest.raises(p.SequenceGapError) as gap:
        tracker.check("fe", 6)
    assert gap.value.missing == 3
    tracker.check("fe", 7)  # resynchronised after the gap
    with pytest.raises(p.SequenceRepeatError):
        tracker.check("fe", 7)
    tracker.check("other", 100)  # senders are independent
    tracker.check("fe", 0)  # a restarted sender starts again at 0
    assert tracker.restarts == 1
    tracker.check("fe", 1)


def test_sequence_counter_stamps_consecutive_numbers() -> None:
    counter = p.SequenceCounter()
    tracker = p.SequenceTracker()
    for _ in range(5):
        msg = p.decode(p.encode(counter.stamp(p.Heartbeat())))
        tracker.check("fe", msg.seq)
    assert counter.next == 5


def test_vectors_file_is_up_to_date(tmp_path: Path) -> None:
    """The committed vectors.json matches what the generator script writes today."""
    from tests.golden.make_protocol_vectors import describe

    fresh = {name: describe(msg) for name, msg in vectors().items()}
    assert json.loads(json.dumps(fresh)) == GOLDEN


def test_golden_vectors_cover_every_message_kind() -> None:
    """Every message type, every FRAGMENT source, every HEARTBEAT state, both SUMMARY kinds, zero-event
    requests and answers have a golden vector (a new type or state needs one: this fails until added)."""
    msgs = {name: p.decode(golden(name)) for name in GOLDEN}
    assert {m.TYPE for m in msgs.values()} == set(p.MessageType)
    assert {m.source for m in msgs.values() if isinstance(m, p.Fragment) and not m.empty} == set(
        range(detector.N_GROUPS)
    )
    assert {m.state for m in msgs.values() if isinstance(m, p.Heartbeat)} == {int(s) for s in p.FrontEndState}
    assert {m.kind for m in msgs.values() if isinstance(m, p.Summary)} == {
        p.Summary.KIND_SPILL,
        p.Summary.KIND_STATUS,
    }
    assert any(isinstance(m, p.ReadoutRequest) and m.n_events == 0 for m in msgs.values())
    assert any(isinstance(m, p.Fragment) and m.n_events == 0 and not m.empty for m in msgs.values())
    assert any(isinstance(m, p.Fragment) and m.empty for m in msgs.values())
    assert any(isinstance(m, p.RunStart) and m.info is None for m in msgs.values())
    assert any(isinstance(m, p.Slice) and m.context is not None for m in msgs.values())
    for name, m in msgs.items():  # the fragments' shapes are those of their group
        if isinstance(m, p.Fragment):
            assert m.n_channels == detector.GROUP_IDS[m.source].size, name
