"""Readout bookkeeping and event building, without sockets: fragments matched, faults classified."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.constants import nominal
from daq import detector, protocol
from daq.builder import Readout, SpillHistograms, compare_counters
from daq.contract import LOSS_REASONS, PHYSICS, RANDOM, Losses
from daq.protocol import NO_PARTICLE
from daq.waveform import synthesize

N_PRIM = 29


def request(ro: Readout, slice_id: int = 1, k: int = 3, now: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    index = np.array([*range(k - 1), NO_PARTICLE], np.uint32) if k else np.zeros(0, np.uint32)
    t = np.arange(k, dtype=np.int64) * 100
    mask = np.array([PHYSICS] * (k - 1) + [RANDOM], np.uint32) if k else np.zeros(0, np.uint32)
    prim = np.arange(N_PRIM * 10, dtype=np.uint16).reshape(N_PRIM, 10)
    ro.add_request(1, slice_id, index, t, mask, prim, now)
    amp = np.zeros((k, detector.N_CHANNELS))
    amp[:, detector.ecal_id(2, 3)] = 900.0
    return index, synthesize(amp)


def fragment(index: np.ndarray, wf: np.ndarray, g: int, slice_id: int = 1, **kw: object) -> protocol.Fragment:
    ids = detector.GROUP_IDS[g]
    args: dict[str, object] = {
        "run": 1,
        "spill": 1,
        "slice_id": slice_id,
        "source": g,
        "n_events": index.size,
        "n_channels": len(ids),
        "n_samples": wf.shape[2],
        "index": index,
        "waveforms": np.ascontiguousarray(wf[:, ids]),
    }
    args.update(kw)
    return protocol.Fragment(**args)  # type: ignore[arg-type]


def test_a_complete_request_builds_its_events() -> None:
    ro = Readout(nominal(), n_prim=N_PRIM)
    index, wf = request(ro)
    out = None
    for g in range(detector.N_GROUPS):
        assert out is None
        out, reason = ro.add_fragment(fragment(index, wf, g))
        assert reason is None
    assert out is not None and len(out) == 3 and not ro.pending
    assert np.array_equal(out.waveforms, wf)
    assert out.event_id.tolist() == [0, 1, 2] and not out.missing_groups.any()
    assert out.energy[0, detector.ecal_id(2, 3)] == pytest.approx(20.0, rel=0.01)
    assert out.sums[1, 0] == pytest.approx(20.0, rel=0.01) and out.sums[5, 0] == pytest.approx(80.0, rel=0.01)
    assert np.array_equal(out.prim_amp[:, :2], np.arange(N_PRIM * 10).reshape(N_PRIM, 10)[:, :2])
    assert not out.prim_amp[:, 2].any()  # random trigger: no particle
    assert ro.n_fragments == 6 and ro.n_events_read == 3 and not ro.losses


def test_empty_truncated_duplicate_unexpected_and_timeout() -> None:
    ro = Readout(nominal(), n_prim=N_PRIM)
    index, wf = request(ro, slice_id=1)
    _, reason = ro.add_fragment(protocol.Fragment(run=1, spill=1, slice_id=1, source=1))
    assert reason == "empty_fragment"
    _, reason = ro.add_fragment(fragment(index[:2], wf[:2], 2, n_events=2))
    assert reason == "truncated_fragment"
    _, reason = ro.add_fragment(fragment(index, wf[:, :, :16], 3, n_samples=16))
    assert reason == "truncated_fragment"
    assert ro.add_fragment(fragment(index, wf, 0))[1] is None
    assert ro.add_fragment(fragment(index, wf, 0))[1] == "unexpected_fragment"  # same group twice
    assert ro.add_fragment(fragment(index, wf, 0, slice_id=7))[1] == "unexpected_fragment"  # never requested
    assert ro.add_fragment(fragment(index, wf, 0, source=9))[1] == "unexpected_fragment"  # no such group
    assert ro.expire(now=1.0, timeout_s=5.0) == []
    (out,) = ro.expire(now=10.0, timeout_s=5.0)  # groups 4 and 5 never came
    assert out.missing_groups.tolist() == [0b111110] * 3
    assert dict(ro.losses) == {
        "empty_fragment": 1,
        "truncated_fragment": 2,
        "unexpected_fragment": 3,
        "fragment_timeout": 2,
    }
    assert out.waveforms[:, detector.GROUP_IDS[0]].any()
    for g in range(1, detector.N_GROUPS):  # empty, truncated or timed out: zeros, never stale memory
        assert not out.waveforms[:, detector.GROUP_IDS[g]].any(), g
    assert not out.energy[:, detector.GROUP_IDS[2]].any()
    # a late fragment of the closed request is unexpected
    assert ro.add_fragment(fragment(index, wf, 4))[1] == "unexpected_fragment"


def test_zero_event_requests_complete_without_losses() -> None:
    ro = Readout(nominal(), n_prim=N_PRIM)
    index, wf = request(ro, k=0)
    for g in range(detector.N_GROUPS):
        out, reason = ro.add_fragment(
            fragment(index, wf, g) if g % 2 else protocol.Fragment(run=1, spill=1, slice_id=1, source=g)
        )  # header-only answers of an empty request are fine
        assert reason is None
    assert out is not None and len(out) == 0 and not ro.losses


def test_flush_at_spill_end_closes_everything_pending() -> None:
    ro = Readout(nominal(), n_prim=N_PRIM)
    request(ro, slice_id=1)
    request(ro, slice_id=2)
    outs = ro.flush(spill=1)
    assert [len(b) for b in outs] == [3, 3] and ro.losses["fragment_timeout"] == 12
    assert ro.n_events_read == 0  # nothing arrived


def test_compare_counters_and_losses() -> None:
    daq = {"n_slices": 5, "n_requests": 5, "n_fragments": 30, "n_events_read": 9, "n_particles": 100}
    assert compare_counters(daq, dict(daq)) == {}
    assert compare_counters(daq, {**daq, "n_particles": 99, "t_end_ns": 3}) == {"n_particles": (100, 99)}
    losses = Losses({"dead_time": 4, "monitor_skipped": 2, "frontend_restart": 1})
    assert not losses.data_lost()
    assert set(LOSS_REASONS) <= set(losses.as_dict())
    losses["decode_error.checksum"] += 1
    assert not losses.data_lost()  # a breakdown key is not a loss of its own
    losses["decode_error"] += 1
    assert losses.data_lost()


def test_spill_histograms() -> None:
    h = SpillHistograms(arrival_bins=10, ecal_bins=12, ecal_max_gev=120.0, prs_bins=10, prs_max_gev=10.0)
    t = np.array([0, 999_999, 1_000_000, 45_000_000, 49_999_999], np.int64)
    h.fill(
        t,
        np.array([0.0, 5.0, 119.9, 150.0, 60.0], np.float32),
        np.array([0.1, 0.2, 3.0, 11.0, 9.99], np.float32),
    )
    h.fill(t[:0], t[:0].astype(np.float32), t[:0].astype(np.float32), t_end_ns=50_000_000)
    res = h.result()
    counts, edges, unit = res["arrival_time"]
    assert unit == "s" and counts.sum() == 5 and edges[-1] == pytest.approx(0.05)
    assert counts.tolist() == [3, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    ecal, e_edges, _ = res["ecal_block_gev"]
    assert ecal.tolist() == [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2]  # overflow in the last bin
    assert e_edges[0] == 0 and e_edges[-1] == 120
    assert res["prs_block_gev"][0].tolist() == [2, 0, 0, 1, 0, 0, 0, 0, 0, 2]


def test_the_triggers_neighbours_come_from_the_whole_stream_across_slices() -> None:
    """Two 20 us slices of a dense stream: every trigger's neighbours (what the pile-up fit uses) are those
    find_neighbours picks from the two slices joined, although the readout keeps only the particles a
    window can reach, and triggers near the end of slice 0 wait for slice 1."""
    from daq.waveform import find_neighbours

    rng = np.random.default_rng(11)
    ro = Readout(nominal(), detector.N_SAMPLES, N_PRIM, prim_channels=detector.default_primitive_channels())
    length = 20_000
    slices = []
    for s in range(2):
        t = np.sort(rng.integers(s * length, (s + 1) * length, 400)).astype(np.int64)  # dense: 20 MHz
        amp = rng.integers(0, 3000, (N_PRIM, t.size)).astype(np.uint16)
        # triggers in the slice's second half: its first particles are reachable only from slice 0's end
        index = np.sort(rng.choice(np.arange(t.size // 2, t.size), 6, replace=False)).astype(np.uint32)
        index[-1] = t.size - 1  # a trigger at the very end: its window reaches into the next slice
        trig_t = t[index]
        index = np.append(index, NO_PARTICLE).astype(np.uint32)  # a random trigger mid-slice
        trig_t = np.append(trig_t, s * length + 3 * length // 4)
        order = np.argsort(trig_t, kind="stable")
        index, trig_t = index[order], trig_t[order]
        mask = np.where(index == NO_PARTICLE, RANDOM, PHYSICS).astype(np.uint32)
        ro.add_request(1, s, index, trig_t, mask, amp, 0.0, stream_t_ns=t, t_end_ns=(s + 1) * length)
        slices.append((t, amp, index, trig_t))
    all_t = np.concatenate([x[0] for x in slices])
    all_amp = np.concatenate([x[1] for x in slices], axis=1)
    offset = [0, slices[0][0].size]
    for s, (_, _, index, trig_t) in enumerate(slices[:1]):  # slice 0: complete now that slice 1 came
        own = np.where(index == NO_PARTICLE, -1, index.astype(np.int64) + offset[s])
        want, _ = find_neighbours(trig_t, own, all_t, all_amp, ro.prim_channels, ro.before_ns, ro.after_ns)
        got = ro.pending[(1, s)].neighbours
        assert got is not None and want.count.sum() > 0
        np.testing.assert_array_equal(got.count, want.count)
        np.testing.assert_array_equal(got.dt_ns, want.dt_ns)
        np.testing.assert_array_equal(got.amp, want.amp)
