"""Write the golden wire-protocol v1 test vectors (tests/golden/protocol_v1/).

Run from the repository root: ``python tests/golden/make_protocol_vectors.py``. Each vector is one
multipart message stored as ``NAME.frames``: u32 frame count, then per frame u32 length + bytes (all
little-endian). ``vectors.json`` lists, per vector, the message type and the decoded field values, so a
hardware implementation can check its encoder byte for byte and its decoder field by field.
The vectors are committed; tests check that today's encoder still produces the same bytes.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from daq import detector
from daq import protocol as p

OUT = Path(__file__).resolve().parent / "protocol_v1"
T_SEND = 1_780_000_000_000_000_000  # fixed sender time so the bytes are reproducible


def vectors() -> dict[str, p.Message]:
    """The golden messages: one per type, plus edge cases."""
    common = {"run": 42, "spill": 7, "send_time_ns": T_SEND}
    outside = {**common, "spill": 0}  # RUN_START, RUN_STOP, SUMMARY: not in a spill (docs: spill 0)
    n = 4
    prim = detector.default_primitive_channels()
    amp = (np.arange(len(prim) * n, dtype=np.uint16).reshape(len(prim), n) * 13) % 4096
    wf = (200 + np.arange(2 * 30 * 32, dtype=np.uint16) % 97).reshape(2, 30, 32).astype(np.uint16)
    return {
        "run_start": p.RunStart(
            seq=0,
            n_samples=32,
            n_channels=detector.N_CHANNELS,
            slice_ns=10_000_000,
            prim_channels=prim,
            info=p.RunStart.info_bytes('{"frontend":"golden"}'),
            **outside,
        ),
        "run_start_no_info": p.RunStart(  # the optional info frame left out
            seq=0,
            n_samples=32,
            n_channels=detector.N_CHANNELS,
            slice_ns=20_000_000,
            prim_channels=prim,
            **outside,
        ),
        "spill_start": p.SpillStart(seq=1, t_start_ns=T_SEND + 1000, **common),
        "slice": p.Slice(
            seq=2,
            slice_id=3,
            t0_ns=30_000_000,
            length_ns=10_000_000,
            n_particles=n,
            t_ns=np.array([30_000_100, 30_000_700, 30_004_000, 30_009_999], np.int64),
            amp=amp,
            **common,
        ),
        "slice_context": p.Slice(  # with the optional context frames (na64 replay)
            seq=2,
            slice_id=3,
            t0_ns=30_000_000,
            length_ns=10_000_000,
            n_particles=n,
            t_ns=np.array([30_000_100, 30_000_700, 30_004_000, 30_009_999], np.int64),
            amp=amp,
            ctx_t_ns=np.array([29_999_800, 30_000_350], np.int64),
            ctx_amp=(amp[:, :2] // 2).astype(np.uint16),
            **common,
        ),
        "slice_empty": p.Slice(
            seq=3,
            slice_id=4,
            t0_ns=40_000_000,
            length_ns=10_000_000,
            n_particles=0,
            t_ns=np.zeros(0, np.int64),
            amp=np.zeros((len(prim), 0), np.uint16),
            **common,
        ),
        "readout_request": p.ReadoutRequest(
            seq=0,
            slice_id=3,
            n_events=3,
            index=np.array([0, 2, p.NO_PARTICLE], np.uint32),
            t_ns=np.array([30_000_100, 30_004_000, 35_000_000], np.int64),
            **common,
        ),
        "readout_request_particles_only": p.ReadoutRequest(
            seq=1, slice_id=4, n_events=1, index=np.array([1], np.uint32), **common
        ),
        "fragment_ecal": p.Fragment(
            seq=4,
            slice_id=3,
            source=int(detector.Detector.ECAL),
            n_events=2,
            n_channels=30,
            n_samples=32,
            index=np.array([0, 2], np.uint32),
            waveforms=wf,
            **common,
        ),
        "fragment_header_only": p.Fragment(
            seq=5,
            slice_id=3,
            source=int(detector.Detector.HCAL),
            n_events=2,
            n_channels=36,
            n_samples=32,
            **common,
        ),
        "spill_end": p.SpillEnd(
            seq=6,
            n_slices=480,
            n_requests=480,
            n_fragments=2880,
            n_events_read=14_000,
            n_particles=9_600_000,
            t_end_ns=T_SEND + 4_800_000_000,
            **common,
        ),
        "heartbeat": p.Heartbeat(seq=7, uptime_ns=12_345_678_900, state=p.FrontEndState.IN_SPILL, **common),
        "run_stop": p.RunStop(seq=8, n_spills=7, **outside),
        "summary": p.Summary.of(p.Summary.KIND_SPILL, '{"run":42,"spill":7}', seq=0, **outside),
        "run_ack": p.RunAck(seq=1, status=p.RunAck.ACCEPTED, **common),
        "run_ack_refused": p.RunAck(
            seq=2,
            status=p.RunAck.REFUSED,
            reason=np.frombuffer(b"run 42 already has spill files", np.uint8),
            **common,
        ),
        "announce_request": p.AnnounceRequest(seq=3, reason=p.AnnounceRequest.RUN_UNKNOWN, **common),
        **more_vectors(common, outside),
        "nack": p.Nack.about(
            p.RunStop(run=42, spill=7, seq=8),
            p.NackCode.NOT_OWNER,
            "run 42 belongs to front-end 00a1b2c3d4",
            seq=2,
            send_time_ns=T_SEND,
        ),
    }


def more_vectors(common: dict[str, int], outside: dict[str, int]) -> dict[str, p.Message]:
    """Every other kind: a FRAGMENT of each readout group, zero-event REQUEST and FRAGMENT, HEARTBEAT in
    every state, EVENTS, SUMMARY of the status kind (added 2026-12-06: the first vectors are unchanged)."""
    out: dict[str, p.Message] = {}
    index = np.array([0, 2], np.uint32)
    for g in detector.Detector:
        if g == detector.Detector.ECAL:
            continue  # fragment_ecal above
        m = detector.GROUP_IDS[g].size
        wf = (200 + (np.arange(2 * m * 32) * (int(g) + 3)) % 3896).reshape(2, m, 32).astype(np.uint16)
        out[f"fragment_{g.name.lower()}"] = p.Fragment(
            seq=10 + int(g),
            slice_id=3,
            source=int(g),
            n_events=2,
            n_channels=m,
            n_samples=32,
            index=index,
            waveforms=wf,
            **common,
        )
    out["readout_request_zero_events"] = p.ReadoutRequest(
        seq=2, slice_id=4, n_events=0, index=np.zeros(0, np.uint32), t_ns=np.zeros(0, np.int64), **common
    )
    out["fragment_zero_events"] = p.Fragment(  # the answer of one group to it (as na64 simulate sends)
        seq=16,
        slice_id=4,
        source=int(detector.Detector.VETO),
        n_events=0,
        n_channels=6,
        n_samples=32,
        index=np.zeros(0, np.uint32),
        waveforms=np.zeros((0, 6, 32), np.uint16),
        **common,
    )
    for state in p.FrontEndState:
        if state != p.FrontEndState.IN_SPILL:  # heartbeat above
            spill = 0 if state == p.FrontEndState.IDLE else common["spill"]
            out[f"heartbeat_{state.name.lower()}"] = p.Heartbeat(
                seq=20 + int(state),
                uptime_ns=1_000_000_000 * (1 + int(state)),
                state=int(state),
                **{**common, "spill": spill},
            )
    n, ch, w = 2, detector.N_CHANNELS, 1
    out["events"] = p.Events(
        seq=1,
        n_events=n,
        n_skipped=5,
        event_id=np.array([1000, 1001], np.uint64),
        t_ns=np.array([30_000_100, 30_004_000], np.int64),
        trigger_mask=np.array([0x701, 0x302], np.uint32),
        sums=np.array(
            [[0.5, 2.0], [40.0, 99.5], [55.0, 0.25], [0.0, 0.01], [0.07, 0.08], [60.0, 0.5]], np.float32
        ),
        energy=(np.arange(n * ch, dtype=np.float32).reshape(n, ch) / 8),
        peak_time=np.full((n, ch), 125.0, np.float32),
        waveforms=(200 + np.arange(w * ch * 32) % 50).reshape(w, ch, 32).astype(np.uint16),
        **common,
    )
    out["summary_status"] = p.Summary.of(
        p.Summary.KIND_STATUS, '{"state":"running","run":42,"spill":null}', seq=1, **outside
    )
    return out


def write_frames(path: Path, frames: list[bytes | memoryview]) -> None:
    data = bytearray(struct.pack("<I", len(frames)))
    for f in frames:
        b = bytes(f)
        data += struct.pack("<I", len(b)) + b
    path.write_bytes(bytes(data))


def read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    off, frames = 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, off)
        frames.append(data[off + 4 : off + 4 + length])
        off += 4 + length
    if off != len(data):
        raise ValueError(f"{path}: {len(data) - off} trailing bytes")
    return frames


def describe(msg: p.Message) -> dict[str, object]:
    out: dict[str, object] = {"type": msg.TYPE.name}
    for name in ("run", "spill", "seq", "slice_id", "source", "send_time_ns"):
        out[name] = getattr(msg, name)
    for name, _ in msg.BODY:
        out[name] = int(getattr(msg, name))
    for spec in msg.FRAMES:
        value = getattr(msg, spec.name)
        if value is not None:
            out[spec.name] = np.asarray(value).tolist()
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, msg in vectors().items():
        write_frames(OUT / f"{name}.frames", p.encode(msg))
        index[name] = describe(msg)
    (OUT / "vectors.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index)} vectors to {OUT}")


if __name__ == "__main__":
    main()
