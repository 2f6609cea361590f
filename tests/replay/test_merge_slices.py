"""``--merge-slices N``: replayed slices of N recorded slices (boundaries, the cut last slice, empty
slices, N beyond the spill), their readout answers, the trigger's independence of slice boundaries,
the validation, and the real `na64 replay` process pacing merged slices over a real socket."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daq import detector, protocol
from daq.config_loader import from_dict
from daq.errors import UserError
from daq.trigger import Decisions, PrimitiveBatch, Trigger, TriggerConfig
from simulator.replay import ReplayConfig, Replayer
from simulator.replay_spill import (
    MAX_SLICE_NS,
    AnswerCounts,
    ArrayWaveforms,
    MergeTooLong,
    RecordedSpill,
    build_spill,
    equivalence_overrides,
    load_spill,
)
from tests.conftest import free_port, na64_command
from tests.replay.synth import SynthSpill, make_spill
from tests.replay.test_replay_frontend import RecordingRouter, replay_into

MERGES = [1, 2, 4, 5, 12, 13, 100]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSpill:
    """12 recorded slices of 10 ms, the last one 4 ms long (114 ms of beam)."""
    return make_spill(
        tmp_path_factory.mktemp("merge"), n_particles=8000, n_slices=12, last_slice_ns=4_000_000
    )


@pytest.fixture(scope="module")
def plain(synth: SynthSpill) -> Iterator[RecordedSpill]:
    with load_spill(synth.path) as spill:
        yield spill


@pytest.mark.parametrize("n", MERGES)
def test_merged_slices_are_n_recorded_slices_back_to_back_the_last_one_cut(
    synth: SynthSpill, plain: RecordedSpill, n: int
) -> None:
    with load_spill(synth.path, merge=n) as m:
        assert (m.merge, m.slice_ns, m.recorded_slice_ns) == (n, n * synth.slice_ns, synth.slice_ns)
        assert m.end_ns == plain.end_ns == 11 * synth.slice_ns + 4_000_000
        assert m.n_slices == -(-synth.n_slices // n)
        t_end = 0
        for k in range(m.n_slices):
            msg = m.slice_message(k)
            assert (msg.slice_id, msg.t0_ns) == (k, t_end)  # ids 0, 1, ...; windows tile the spill
            assert msg.length_ns == min(n * synth.slice_ns, plain.end_ns - msg.t0_ns)
            t_end = msg.t0_ns + msg.length_ns
            parts = [plain.slice_message(j) for j in range(k * n, min((k + 1) * n, plain.n_slices))]
            np.testing.assert_array_equal(msg.t_ns, np.concatenate([p.t_ns for p in parts]))
            np.testing.assert_array_equal(msg.amp, np.concatenate([p.amp for p in parts], axis=1))
            assert np.all((msg.t_ns >= msg.t0_ns) & (msg.t_ns < t_end))
            protocol.decode(protocol.encode(msg))  # a valid wire message
        assert t_end == plain.end_ns
        last = m.slice_window(m.n_slices - 1)
        assert last[1] == plain.end_ns - (m.n_slices - 1) * n * synth.slice_ns  # cut at the end
        assert last[1] < n * synth.slice_ns or n in (1, 2, 4)  # 114 ms: cut unless the end falls on it
        assert sum(m.slice_message(k).n_particles for k in range(m.n_slices)) == plain.n_particles


def _tiny_spill(merge: int, end_ns: int = 9_500) -> RecordedSpill:
    """10 recorded slices of 1 us (the last one 500 ns), particles only in slices 1, 2 and 7, and two
    random windows; waveforms: every sample of event row r is r."""
    slices = np.array([2, 1, 7, 1, 2, 7], np.uint32)  # file (event) order is not slice order
    index = np.array([0, 3, 5, 0, 1, 2], np.uint32)
    t_ns = slices.astype(np.int64) * 1000 + index * 10
    r_slice, r_t = np.array([4, 9], np.uint32), np.array([4_500, 9_200], np.int64)
    events = {
        "slice": np.concatenate([slices, r_slice]),
        "index": np.concatenate([index, np.full(2, protocol.NO_PARTICLE, np.uint32)]),
        "t_ns": np.concatenate([t_ns, r_t]),
        "missing_groups": np.zeros(8, np.uint8),
    }
    amp = np.tile(np.arange(8, dtype=np.uint16), (29, 1))  # amplitudes = event row
    wf = np.broadcast_to(np.arange(8, dtype=np.uint16)[:, None, None], (8, detector.N_CHANNELS, 4)).copy()
    return build_spill(
        path=Path("tiny.h5"),
        run=1,
        spill=1,
        events=events,
        primitives={"t_ns": np.concatenate([t_ns, r_t]), "amp": amp},
        source=ArrayWaveforms(wf),
        slice_ns=1000,
        end_ns=end_ns,
        merge=merge,
        prim_channels=detector.default_primitive_channels().astype(np.uint16),
        n_samples=4,
        sample_period_ps=12_500,
        t_start_ns=0,
        t_end_ns=0,
    )


def test_empty_recorded_slices_make_empty_or_partly_filled_merged_slices() -> None:
    s = _tiny_spill(merge=3)
    assert s.n_slices == 4  # 0-2, 3-5, 6-8, 9 (cut: 500 ns)
    msgs = [s.slice_message(k) for k in range(4)]
    assert [(m.t0_ns, m.length_ns) for m in msgs] == [(0, 3000), (3000, 3000), (6000, 3000), (9000, 500)]
    assert [m.n_particles for m in msgs] == [4, 0, 2, 0]
    # slice 0: recorded slice 1 (indices 0, 3), then slice 2 (indices 0, 1): event rows 3, 1, 0, 4
    np.testing.assert_array_equal(msgs[0].t_ns, [1000, 1030, 2000, 2010])
    np.testing.assert_array_equal(msgs[0].amp[0], [3, 1, 0, 4])
    np.testing.assert_array_equal(msgs[2].amp[0], [5, 2])
    for m in msgs:
        protocol.decode(protocol.encode(m))
    # index = position in the merged slice -> the recorded rows; random windows by time
    counts = AnswerCounts()
    req = protocol.ReadoutRequest(
        run=1,
        spill=1,
        slice_id=0,
        n_events=3,
        index=np.array([3, 0, 1], np.uint32),
        t_ns=np.array([2010, 1000, 1030], np.int64),
    )
    wf = s.answer(req, counts)[0].waveforms
    assert wf is not None
    np.testing.assert_array_equal(wf[:, 0, 0], [4, 3, 1])
    rnd = protocol.ReadoutRequest(
        run=1,
        spill=1,
        slice_id=1,
        n_events=1,
        index=np.array([protocol.NO_PARTICLE], np.uint32),
        t_ns=np.array([4_500], np.int64),
    )
    wf = s.answer(rnd, counts)[0].waveforms
    assert wf is not None
    np.testing.assert_array_equal(wf[:, 0, 0], [6])
    # an index beyond the merged slice, a slice beyond the spill: header-only, counted
    bad = protocol.ReadoutRequest(run=1, spill=1, slice_id=2, n_events=1, index=np.array([2], np.uint32))
    assert all(f.empty for f in s.answer(bad, counts))
    gone = protocol.ReadoutRequest(run=1, spill=1, slice_id=4, n_events=0, index=np.zeros(0, np.uint32))
    assert all(f.empty for f in s.answer(gone, counts))
    assert (counts.n_requests, counts.bad_index, counts.unknown_slice, counts.n_events_read) == (4, 1, 1, 4)


def test_n_beyond_the_spill_gives_one_slice_of_the_whole_spill() -> None:
    for n in (10, 11, 1000):
        s = _tiny_spill(merge=n)
        assert s.n_slices == 1 and s.slice_window(0) == (0, 9_500) and s.slice_ns == 1000 * n
        msg = s.slice_message(0)
        assert msg.n_particles == 6 and msg.length_ns == 9_500
        np.testing.assert_array_equal(msg.amp[0], [3, 1, 0, 4, 5, 2])  # slices 1, 2, 7 in order
    assert _tiny_spill(merge=1).n_slices == 10
    assert _tiny_spill(merge=4, end_ns=8_000).n_slices == 2  # ends on a boundary: no empty extra slice


def test_trigger_decisions_do_not_depend_on_slice_boundaries(synth: SynthSpill) -> None:
    """What makes merging exact: prescale counter, random clock and dead time carry across batches
    (daq.trigger.TriggerState), so the readout list of the full stream is the same in slices of any
    length (with a prescale > 1 and a long dead time, both paths)."""
    cfg = TriggerConfig(beam_prescale=7, random_period_ns=1_000_000, dead_time_ns=200_000)
    end = 11 * synth.slice_ns + 4_000_000

    def run(slice_ns: int, compiled: bool) -> tuple[list[Decisions], dict[str, int]]:
        trig = Trigger(cfg, None, detector.default_primitive_channels(), compiled=compiled)
        trig.new_spill()
        out, totals = (
            [],
            dict.fromkeys(("n_accepted", "dead_time_lost", "triggers_beam", "triggers_random"), 0),
        )
        for t0 in range(0, end, slice_ns):
            lo, hi = np.searchsorted(synth.t_ns, [t0, t0 + slice_ns])
            d = trig.evaluate(
                PrimitiveBatch(
                    synth.t_ns[lo:hi], synth.amp[:, lo:hi], t0_ns=t0, length_ns=min(slice_ns, end - t0)
                )
            )
            out.append(d)
            for key in totals:
                totals[key] += d.counts[key]
        return out, totals

    for compiled in (True, False):
        ref, ref_totals = run(synth.slice_ns, compiled)
        assert ref_totals["dead_time_lost"] > 10 and ref_totals["triggers_beam"] > 10
        assert ref_totals["triggers_random"] > 30
        for n in (4, 5, 12):
            got, totals = run(n * synth.slice_ns, compiled)
            assert totals == ref_totals
            for name in ("t_ns", "trigger_mask"):
                np.testing.assert_array_equal(
                    np.concatenate([getattr(d, name) for d in got]),
                    np.concatenate([getattr(d, name) for d in ref]),
                )


def test_replaying_merged_slices_into_the_recorded_settings_reaccepts_every_recorded_event(
    synth: SynthSpill,
) -> None:
    with load_spill(synth.path, merge=5) as m, load_spill(synth.path) as plain:
        ts = []
        for spill in (plain, m):
            trig = Trigger(from_dict(TriggerConfig, equivalence_overrides(spill.trigger_config)), None)
            trig.new_spill()
            got = [
                trig.evaluate(PrimitiveBatch.from_slice(spill.slice_message(k)))
                for k in range(spill.n_slices)
            ]
            ts.append(np.concatenate([d.t_ns for d in got]))
        np.testing.assert_array_equal(ts[1], ts[0])
        assert ts[0].size == synth.readout_t.size


def test_merge_is_validated() -> None:
    for bad in (0, -1, 10_001):
        with pytest.raises(ValueError, match="merge_slices"):
            ReplayConfig(merge_slices=bad)
    ReplayConfig(merge_slices=10_000)
    with pytest.raises(MergeTooLong, match=r"tiny\.h5.*--merge-slices 4294967 or less"):
        _tiny_spill(merge=MAX_SLICE_NS // 1000 + 1)
    assert issubclass(MergeTooLong, UserError)


def test_merged_slices_longer_than_the_protocol_allows_stop_the_replay_with_one_error(
    synth: SynthSpill,
) -> None:
    cfg = ReplayConfig(endpoint=f"tcp://127.0.0.1:{free_port()}", merge_slices=430, linger_s=0.1)
    with pytest.raises(MergeTooLong, match=r"430 merged slices of 10 ms would last 4\.3 s"):
        Replayer(cfg).run([synth.path])
    res = subprocess.run(
        na64_command("replay", str(synth.path), "--merge-slices", "0"), capture_output=True, timeout=60
    )
    assert res.returncode == 2 and b"merge_slices must be in 1..10000 (got 0)" in res.stderr


def test_the_replay_process_sends_merged_slices_when_their_end_is_due(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    s = make_spill(
        tmp_path / "d", n_particles=3000, n_slices=12, slice_ns=20_000_000, last_slice_ns=5_000_000
    )
    rnd = s.readout_index == protocol.NO_PARTICLE
    random_t = {(1, k): s.readout_t[rnd & (s.readout_slice // 5 == k)] for k in range(3)}
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = RecordingRouter(endpoint, random_t)
    proc, _, err = replay_into(router, [str(s.path), "--speed", "1", "--merge-slices", "5"], processes)
    assert proc.returncode == 0, err.decode()
    run_start = next(m for m in router.messages if isinstance(m, protocol.RunStart))
    assert run_start.slice_ns == 100_000_000
    assert run_start.info is not None
    info = json.loads(run_start.info.tobytes())
    assert (info["merge_slices"], info["slice_ns"]) == (5, 100_000_000)  # replayed files say so
    slices = [m for m in router.messages if isinstance(m, protocol.Slice)]
    assert [(m.slice_id, m.t0_ns, m.length_ns) for m in slices] == [
        (0, 0, 100_000_000),
        (1, 100_000_000, 100_000_000),
        (2, 200_000_000, 25_000_000),
    ]
    # paced by the end of each merged slice: 100 ms, then 25 ms apart at real time
    gaps = np.diff(router.slice_arrival)
    assert 0.04 < gaps[0] < 0.3 and gaps[1] < 0.15, gaps
    end = next(m for m in router.messages if isinstance(m, protocol.SpillEnd))
    assert (end.n_slices, end.n_requests, end.n_fragments) == (3, 3, 3 * detector.N_GROUPS)
    assert end.n_events_read == s.readout_index.size and end.n_particles == int((~rnd).sum())
    # every answer is the stored waveforms of the merged slice's particles, then its random windows
    from daq.files import SpillFile

    with SpillFile(s.path) as f:
        wf = f.waveforms()
    order = np.lexsort((s.readout_index, s.readout_slice))
    for k in range(3):
        req = router.requests[(1, k)]
        got = np.zeros((req.n_events, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        for frag in router.fragments[(1, k)]:
            assert frag.waveforms is not None
            got[:, detector.GROUP_IDS[frag.source]] = frag.waveforms
        rows = order[(s.readout_slice[order] // 5 == k) & ~rnd[order]]
        r_rows = np.flatnonzero(rnd & (s.readout_slice // 5 == k))
        r_rows = r_rows[np.argsort(s.readout_t[r_rows], kind="stable")]
        np.testing.assert_array_equal(got, wf[np.concatenate([rows, r_rows])])
