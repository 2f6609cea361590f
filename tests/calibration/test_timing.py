"""Time offsets relative to the beam counters, from peak-time distributions."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import timing
from daq import detector
from tests.calibration import synth


def test_offsets_relative_to_the_counters_are_recovered() -> None:
    truth = synth.make_truth(9)
    rng = np.random.default_rng(1)
    n = 3000
    t0 = rng.uniform(120.0, 130.0, n)  # arrival within the window (sub-sample phase)
    t = t0[:, None] + truth.time_offset_ns[None, :] + rng.normal(0, 0.8, (n, detector.N_CHANNELS))
    amp = np.full((n, detector.N_CHANNELS), 500.0)
    silent = detector.HCAL_IDS[5:]  # never see a pulse
    amp[:, silent] = rng.normal(0, 2.0, (n, silent.size))
    pile = rng.random((n, detector.N_CHANNELS)) < 0.05
    t[pile] += rng.uniform(-100, 200, pile.sum())  # pile-up times, flagged
    r = timing.time_offsets(t, amp, 20.0, pile, min_entries=30)
    ref = truth.time_offset_ns[[detector.counter_id(c) for c in detector.BEAM_COUNTERS]].mean()
    expect = truth.time_offset_ns - ref
    ok = r.determined
    assert not ok[silent].any() and ok.sum() == detector.N_CHANNELS - silent.size
    np.testing.assert_allclose(r.offset_ns[ok], expect[ok], atol=0.1)
    assert np.all(r.error_ns[ok] < 0.05)
    assert r.n_reference == n


def test_reference_time_skips_counters_that_did_not_fire() -> None:
    t = np.zeros((2, detector.N_CHANNELS))
    ids = [detector.counter_id(c) for c in detector.BEAM_COUNTERS]
    t[:, ids] = [10.0, 20.0, 30.0]
    fired = np.zeros_like(t, bool)
    fired[0, ids] = True
    fired[1, ids[0]] = True
    ref = timing.reference_time(t, fired)
    assert ref[0] == pytest.approx(20.0) and ref[1] == pytest.approx(10.0)
    assert np.isnan(timing.reference_time(t, np.zeros_like(fired))).all()
