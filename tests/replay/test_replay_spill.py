"""RecordedSpill: regrouping recorded particles into their slices and answering readout requests."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daq import detector, protocol
from daq.files import SpillFileError
from daq.trigger import PrimitiveBatch, Trigger, TriggerConfig
from simulator.replay_spill import (
    READ_BLOCK,
    AnswerCounts,
    ArrayWaveforms,
    RecordedSpill,
    ReplayError,
    encode_fragment,
    equivalence_overrides,
    load_spill,
    slice_length_ns,
    spill_end_ns,
    toml_value,
)
from tests.replay.synth import SynthSpill, make_spill


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSpill:
    return make_spill(
        tmp_path_factory.mktemp("synth"),
        n_particles=20_000,
        n_slices=12,
        last_slice_ns=4_000_000,
        missing_group_every=7,
    )


@pytest.fixture(scope="module")
def rs(synth: SynthSpill) -> Iterator[RecordedSpill]:
    with load_spill(synth.path) as spill:
        yield spill


def test_slices_carry_exactly_the_recorded_particles_in_original_order(
    synth: SynthSpill, rs: RecordedSpill
) -> None:
    assert rs.n_slices == synth.n_slices
    assert rs.end_ns == 11 * synth.slice_ns + 4_000_000
    is_p = synth.readout_index != protocol.NO_PARTICLE
    bounds = np.searchsorted(synth.t_ns, np.arange(synth.n_slices) * synth.slice_ns)
    total = 0
    for k in range(rs.n_slices):
        msg = rs.slice_message(k)
        t0, length = rs.slice_window(k)
        assert (msg.t0_ns, msg.length_ns, msg.slice_id) == (t0, length, k)
        assert length == (4_000_000 if k == rs.n_slices - 1 else synth.slice_ns)
        sel = is_p & (synth.readout_slice == k)
        idx = np.sort(synth.readout_index[sel]).astype(np.int64)
        want = bounds[k] + idx
        np.testing.assert_array_equal(msg.t_ns, synth.t_ns[want])
        np.testing.assert_array_equal(msg.amp, synth.amp[:, want])
        assert np.all(np.diff(msg.t_ns) >= 0)
        total += msg.n_particles
        protocol.decode(protocol.encode(msg))  # a valid wire message
    assert total == int(is_p.sum()) == rs.n_particles
    assert rs.n_random == int((~is_p).sum()) > 0


def _request(rs_slice: int, index: list[int], t_ns: list[int] | None = None) -> protocol.ReadoutRequest:
    idx = np.array(index, dtype=np.uint32)
    t = None if t_ns is None else np.array(t_ns, dtype=np.int64)
    return protocol.ReadoutRequest(run=1, spill=1, slice_id=rs_slice, n_events=len(index), index=idx, t_ns=t)


def test_answers_are_the_stored_waveforms_of_the_requested_particles(
    synth: SynthSpill, rs: RecordedSpill
) -> None:
    from daq.files import SpillFile

    with SpillFile(synth.path) as f:
        wf = f.waveforms()
        ev = f.events(["slice", "index", "t_ns", "missing_groups"])
    k = 4
    msg = rs.slice_message(k)
    # every particle of the replayed slice, plus a random window recorded in this slice
    rnd_rows = np.flatnonzero((ev["slice"] == k) & (ev["index"] == protocol.NO_PARTICLE))
    assert rnd_rows.size
    n = msg.n_particles
    req = _request(k, [*range(n), protocol.NO_PARTICLE], [*msg.t_ns.tolist(), int(ev["t_ns"][rnd_rows[0]])])
    counts = AnswerCounts()
    frags = rs.answer(req, counts)
    assert [f.source for f in frags] == list(range(detector.N_GROUPS))
    full = np.zeros((n + 1, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
    for f in frags:
        if f.empty:  # the group was missing in every entry: impossible here (n + 1 entries)
            pytest.fail("unexpected header-only fragment")
        np.testing.assert_array_equal(f.index, req.index)
        full[:, detector.GROUP_IDS[f.source]] = f.waveforms
        protocol.decode(protocol.encode(f))
    # the recorded event of particle j of slice k: same slice, index = j-th smallest recorded index
    part_rows = np.flatnonzero((ev["slice"] == k) & (ev["index"] != protocol.NO_PARTICLE))
    part_rows = part_rows[np.argsort(ev["index"][part_rows])]
    np.testing.assert_array_equal(full[:n], wf[part_rows])
    np.testing.assert_array_equal(full[n], wf[rnd_rows[0]])
    assert counts.as_dict() == {
        "n_requests": 1,
        "n_fragments": 6,
        "n_events_read": n + 1,
        "random_unavailable": 0,
        "bad_index": 0,
        "unknown_slice": 0,
        "empty_groups": 0,
        "read_errors": 0,
    }


def test_missing_groups_of_every_entry_give_header_only_fragments(rs: RecordedSpill) -> None:
    rows = np.flatnonzero(rs.missing_groups)  # VETO missing every 7th event
    pos = np.flatnonzero(np.isin(rs.p_row, rows))[0]
    k = int(rs.p_slice[pos])
    j = pos - rs.particles(k).start
    counts = AnswerCounts()
    frags = rs.answer(_request(k, [j]), counts)
    assert [f.empty for f in frags] == [g == detector.Detector.VETO for g in range(detector.N_GROUPS)]
    assert counts.empty_groups == 1


def test_unavailable_random_windows_bad_indices_and_unknown_slices_are_counted(rs: RecordedSpill) -> None:
    counts = AnswerCounts()
    frags = rs.answer(_request(2, [protocol.NO_PARTICLE], [2_000_001]), counts)
    assert counts.random_unavailable == 1
    assert all(f.n_events == 1 and not f.waveforms.any() for f in frags)  # all-zero window
    frags = rs.answer(_request(2, [10_000]), counts)
    assert counts.bad_index == 1 and all(f.empty for f in frags)
    frags = rs.answer(_request(99, []), counts)
    assert counts.unknown_slice == 1 and all(f.empty for f in frags)
    frags = rs.answer(_request(3, []), counts)  # K = 0 is answered with empty arrays, not header-only
    assert all(not f.empty and f.waveforms.shape[0] == 0 for f in frags)
    assert counts.n_requests == 4 and counts.n_fragments == 24


def test_replaying_into_the_recorded_trigger_settings_reaccepts_every_recorded_event(
    synth: SynthSpill, rs: RecordedSpill
) -> None:
    """The pure core of replay equivalence: the live trigger on the replayed slices, with the settings
    of equivalence_overrides(), reads out exactly the recorded particles and random windows."""
    from daq.config_loader import from_dict

    cfg = from_dict(TriggerConfig, equivalence_overrides(rs.trigger_config))
    assert cfg.beam_prescale == 1
    trig = Trigger(cfg, None, rs.prim_channels)
    trig.new_spill()
    got_t, got_mask = [], []
    for k in range(rs.n_slices):
        msg = rs.slice_message(k)
        d = trig.evaluate(PrimitiveBatch.from_slice(msg))
        got_t.append(d.t_ns)
        got_mask.append(d.trigger_mask)
        # only random triggers can fall in a dead time here, exactly as they did when recording
        assert d.counts["dead_time_lost"] == d.counts["fired_random"] - d.counts["triggers_random"]
    t = np.concatenate(got_t)
    mask = np.concatenate(got_mask)
    order = np.lexsort((synth.readout_mask, synth.readout_t))
    np.testing.assert_array_equal(t, synth.readout_t[order])
    beam = np.uint32(2)
    particle = synth.readout_index[order] != protocol.NO_PARTICLE
    want = np.where(particle, synth.readout_mask[order] | beam, synth.readout_mask[order])
    np.testing.assert_array_equal(mask, want)


def test_slice_length_comes_from_the_file_or_the_front_end_config() -> None:
    assert slice_length_ns({"slice_ns": 5_000_000}, {}, None) == 5_000_000
    assert slice_length_ns({}, {"config": {"readout": {"slice_ms": 20.0}}}, None) == 20_000_000
    assert slice_length_ns({}, {"slice_ns": 7}, None) == 7
    assert slice_length_ns({"slice_ns": 5}, {}, 2.5) == 2_500_000
    with pytest.raises(ReplayError, match="--slice-ms"):
        slice_length_ns({}, {"name": "x"}, None)


def test_spill_end_from_the_arrival_time_histogram() -> None:
    edges = np.linspace(0, 0.123, 101)
    assert spill_end_ns({"arrival_time": (np.zeros(100), edges)}, 99, 10) == 123_000_000
    assert spill_end_ns({}, 13, 10_000_000) == 130_000_000


def test_wrong_slice_length_is_reported(tmp_path: Path) -> None:
    s = make_spill(tmp_path, n_particles=3000, n_slices=4)
    with pytest.raises(ReplayError, match="not inside slice"):
        load_spill(s.path, slice_ms=3.0)


def test_toml_values() -> None:
    assert toml_value(True) == "true"
    assert toml_value(3) == "3" and toml_value(0.5) == "0.5"
    assert toml_value(["ECAL23", 2]) == '["ECAL23",2]'
    assert toml_value((2, 3)) == "[2,3]"


def test_spill_spacing_follows_the_recorded_start_times_within_a_run() -> None:
    from simulator.replay import DEFAULT_GAP_S, SpillTiming, gap_s

    def t(run: int, start_s: float, length_s: float = 4.8) -> SpillTiming:
        return SpillTiming(run, int(start_s * 1e9), int(length_s * 1e9), np.zeros(0), 32, 10_000_000)

    assert gap_s(None, t(1, 100)) == 0.0
    assert gap_s(t(1, 100), t(1, 110.8)) == pytest.approx(10.8)  # the SPS cycle
    # overlapping start times: recorded at max pace
    assert gap_s(t(1, 100), t(1, 102)) == pytest.approx(4.8 + DEFAULT_GAP_S)
    assert gap_s(t(1, 100), t(1, 1000)) == pytest.approx(4.8 + DEFAULT_GAP_S)  # a pause in data taking
    assert gap_s(t(1, 100), t(2, 110.8)) == pytest.approx(4.8 + DEFAULT_GAP_S)  # another run
    assert gap_s(t(1, 0), t(1, 10.8)) == pytest.approx(4.8 + DEFAULT_GAP_S)  # unknown start times


def _requests(rs: RecordedSpill, rng: np.random.Generator) -> list[protocol.ReadoutRequest]:
    """Requests of every kind: whole slices in order (consecutive rows), shuffled and partial ones
    (gathers), random windows found and not found, K = 0, bad indices, unknown slices."""
    out = []
    for k in range(rs.n_slices):
        msg = rs.slice_message(k)
        n = msg.n_particles
        rnd_t = rs.r_t_ns[(rs.r_t_ns >= k * rs.slice_ns) & (rs.r_t_ns < (k + 1) * rs.slice_ns)]
        idx = [*range(n), *[protocol.NO_PARTICLE] * len(rnd_t)]
        t = [*msg.t_ns.tolist(), *rnd_t.tolist()]
        order = np.lexsort((idx, t))
        out.append(_request(k, [idx[i] for i in order], [t[i] for i in order]))
        pick = rng.permutation(n)[: rng.integers(0, min(n, 40) + 1)]
        out.append(
            _request(
                k, [*pick.tolist(), protocol.NO_PARTICLE], [*msg.t_ns[pick].tolist(), k * rs.slice_ns + 1]
            )
        )
    pos = np.flatnonzero(np.isin(rs.p_row, np.flatnonzero(rs.missing_groups)))[0]  # a group missing
    k = int(rs.p_slice[pos])
    out += [_request(k, [int(pos - rs.particles(k).start)])]
    out += [_request(3, []), _request(2, [10_000]), _request(99, [0])]
    return out


def test_encoded_answers_are_the_protocol_encoding_of_the_answers_byte_for_byte(rs: RecordedSpill) -> None:
    """answer_frames (the replay's hot path: no message objects) == protocol.encode(answer(...))."""
    rng = np.random.default_rng(5)
    fast, ref = AnswerCounts(), AnswerCounts()
    n_data = 0
    for i, req in enumerate(_requests(rs, rng)):
        frames = [
            [bytes(f) for f in m] for m in rs.answer_frames(req, fast, first_seq=6 * i, send_time_ns=77 + i)
        ]
        want = [
            [bytes(f) for f in protocol.encode(dataclasses.replace(frag, send_time_ns=77 + i))]
            for frag in rs.answer(req, ref, first_seq=6 * i)
        ]
        assert frames == want, f"request {i} (slice {req.slice_id})"
        n_data += sum(len(m) == 3 for m in frames)
    assert fast == ref
    assert n_data > 100 and fast.random_unavailable > 0 and fast.bad_index == 1 and fast.unknown_slice == 1
    assert fast.empty_groups > 0


def test_encode_fragment_rejects_waveforms_it_cannot_send_as_they_are() -> None:
    idx = np.arange(2, dtype=np.uint32).reshape(-1).view(np.uint8).data
    with pytest.raises(ValueError, match="C-contiguous"):
        encode_fragment(1, 1, 0, 0, 0, 0, idx, np.zeros((2, 3, 4), np.uint16)[:, ::2])
    with pytest.raises(ValueError, match="uint16"):
        encode_fragment(1, 1, 0, 0, 0, 0, idx, np.zeros((2, 3, 4), np.int32))


def test_windows_of_any_rows_including_the_all_zero_row(rs: RecordedSpill, synth: SynthSpill) -> None:
    from daq.files import SpillFile

    with SpillFile(synth.path) as f:
        wf = f.waveforms()
    e = rs.n_events
    rows = np.array([5, 3, 4, e, 3, e - 1, 0, e - 30, e - 31])
    want = np.concatenate([wf, np.zeros((1, *wf.shape[1:]), wf.dtype)])[rows]
    np.testing.assert_array_equal(rs.waveforms(rows), want)
    tail = np.concatenate([wf[e - 2 :], np.zeros((1, *wf.shape[1:]), wf.dtype)])
    np.testing.assert_array_equal(rs.waveforms(slice(e - 2, e + 1)), tail)
    mem = dataclasses.replace(rs, source=ArrayWaveforms(wf))  # the same spill from memory
    np.testing.assert_array_equal(mem.waveforms(rows), want)


def test_a_request_whose_waveforms_cannot_be_read_gets_header_only_fragments(rs: RecordedSpill) -> None:
    class Broken:
        def read_waveforms_into(self, out: np.ndarray, start: int = 0) -> None:
            raise OSError("damaged chunk")

    bad = dataclasses.replace(rs, source=Broken())
    counts = AnswerCounts()
    msgs = bad.answer_frames(_request(1, [0, 1]), counts, send_time_ns=1)
    assert [len(m) for m in msgs] == [1] * detector.N_GROUPS  # header only
    assert counts.read_errors == 1 and counts.n_events_read == 0 and counts.n_fragments == 6


@pytest.mark.parametrize("merge", [1, 3, 12])
def test_large_waveform_frames_are_new_arrays_that_later_answers_leave_alone(
    synth: SynthSpill, merge: int
) -> None:
    """With ``own_from_bytes`` the waveform frames of that size are new arrays (the replay sends them
    zero-copy): still intact after every later answer, and byte for byte the protocol's encoding. Merged
    slices make requests of several read-ahead blocks, split block by block."""
    threshold = 16 << 10
    rng = np.random.default_rng(9)
    with load_spill(synth.path, merge=merge) as big:
        fast, ref = AnswerCounts(), AnswerCounts()
        kept: list[tuple[bytes, memoryview | bytes]] = []
        n_small = 0
        for i, req in enumerate(_requests(big, rng)):
            frames = big.answer_frames(req, fast, first_seq=6 * i, send_time_ns=5, own_from_bytes=threshold)
            want = [
                [bytes(f) for f in protocol.encode(dataclasses.replace(frag, send_time_ns=5))]
                for frag in big.answer(req, ref, first_seq=6 * i)
            ]
            assert [[bytes(f) for f in m] for m in frames] == want, f"request {i} (slice {req.slice_id})"
            for m in frames:
                if len(m) == 3 and len(m[2]) >= threshold:
                    kept.append((bytes(m[2]), m[2]))
                n_small += len(m) == 3 and len(m[2]) < threshold
        assert fast == ref
        assert kept and n_small
        assert all(bytes(view) == copy for copy, view in kept)  # no later answer wrote into them
        if merge == 12:  # one slice: its request spans several read-ahead blocks
            assert big.n_slices == 1 and big.n_events > 2 * READ_BLOCK


def _damage_events_slice(f: Any) -> None:
    data = f["events/slice"][:-5]
    del f["events/slice"]
    f["events/slice"] = data


def _damage_prim_channels(f: Any) -> None:
    ids = f["primitives/channels"][:]
    ids[1] = ids[0]
    f["primitives/channels"][:] = ids


def _damage_arrival_edges(f: Any) -> None:
    edges = f["histograms/arrival_time/edges"][:]
    edges[-1] = 1e9  # s: a billion-second spill
    f["histograms/arrival_time/edges"][:] = edges


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_damage_events_slice, "/events/slice has shape"),
        (_damage_prim_channels, "distinct channel ids"),
        (_damage_arrival_edges, "recorded spill end"),
        (lambda f: f["counters"].attrs.__setitem__("n_slices", "three"), "'n_slices' is not an integer"),
        (lambda f: f.attrs.__setitem__("frontend_info", '{"slice_ns": "abc"}'), "slice length"),
        (lambda f: f.attrs.__setitem__("run", 2**40), "32-bit range"),
        (lambda f: f.attrs.__setitem__("sample_period_ns", np.nan), "not a number"),
    ],
)
def test_a_damaged_file_is_a_clear_spill_file_error(
    synth: SynthSpill, tmp_path: Path, damage: Callable[[Any], None], message: str
) -> None:
    """Files whose datasets disagree or whose recorded numbers are not numbers fail at load with their
    reason (not an IndexError in play, a MemoryError, or events silently misaligned)."""
    import h5py

    path = tmp_path / synth.path.name
    shutil.copy(synth.path, path)
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(SpillFileError, match=message):
        load_spill(path)
