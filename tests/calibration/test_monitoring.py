"""Per-spill monitoring quantities: a gain drift moves the electron peak, a pedestal jump shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration import constants as cc
from calibration import monitoring
from daq import contract, detector
from tests.calibration import synth


def _calo_gev(truth: synth.Truth, drift: float, rng: np.random.Generator, n: int = 600) -> np.ndarray:
    """ECAL+PRS energy of beam triggers calibrated with the true gains, after the gains drifted by ``drift``."""
    amp, _ = synth.electron_showers(rng, truth, n, radiative_fraction=0.02)
    e = (amp * (1 + drift) / truth.gain[synth.CALO_IDS]).sum(axis=1) / 1000.0
    e[: n // 100] = 0.5  # muons
    return e


def test_electron_peak_follows_a_gain_drift() -> None:
    """-2% per spill (the simulator's default gain_drift), 600 beam triggers per spill."""
    truth = synth.make_truth(1)
    rng = np.random.default_rng(3)
    peaks = [monitoring.electron_peak(_calo_gev(truth, -0.02 * s, rng)) for s in range(4)]
    ratios = np.array([p.ratio for p in peaks])
    assert all(p.ok for p in peaks)
    assert ratios[0] == pytest.approx(synth.containment(detector.BEAM_CELL), abs=0.005)
    steps = np.diff(ratios)
    np.testing.assert_allclose(steps, -0.02 * ratios[0], atol=0.006)
    assert max(p.ratio_error for p in peaks) < 0.003  # the drift per spill is > 6 sigma


def test_pedestal_monitor_sees_a_jump() -> None:
    truth = synth.make_truth(2)
    consts = cc.nominal().replace(
        version="t", pedestal_even=truth.pedestal_even, pedestal_odd=truth.pedestal_odd, noise=truth.noise
    )
    rng = np.random.default_rng(4)
    w = synth.random_windows(rng, truth, 400).astype(np.int32)
    w[:, detector.ECAL_IDS, :] += 15  # the simulator's pedestal_jump default: ECAL +15 counts
    r = monitoring.pedestal_monitor(w.astype(np.uint16), consts)
    shift = 0.5 * (r.pedestal_even + r.pedestal_odd) - 0.5 * (truth.pedestal_even + truth.pedestal_odd)
    np.testing.assert_allclose(shift[detector.ECAL_IDS], 15.0, atol=0.3)
    assert np.max(np.abs(shift[detector.HCAL_IDS])) < 0.3
    np.testing.assert_allclose(r.noise[detector.HCAL_IDS], truth.noise[detector.HCAL_IDS], rtol=0.1)


def test_spill_monitor_is_json_ready() -> None:
    truth = synth.make_truth(2)
    rng = np.random.default_rng(5)
    calo = _calo_gev(truth, 0.0, rng, 300)
    mask = np.full(calo.size + 50, contract.BEAM, np.uint32)
    mask[-50:] = contract.RANDOM
    calo = np.concatenate([calo, np.zeros(50)])
    energy = np.zeros((calo.size, detector.N_CHANNELS))
    energy[:, detector.ecal_id(2, 3)] = calo
    random = synth.random_windows(rng, truth, 50)
    doc = monitoring.spill_monitor(mask, calo, energy, random, cc.nominal(), 100.0)
    text = json.dumps(doc, allow_nan=False)
    back = json.loads(text)
    assert back["electron_peak"]["n"] > 200 and len(back["pedestal_rms"]) == detector.N_CHANNELS
    assert back["cell_response_gev"][detector.ecal_id(2, 3)] == pytest.approx(99.6, rel=0.02)
    assert back["calibration_id"] == "nominal-v1"
    empty = monitoring.spill_monitor(mask[:0], calo[:0], None, None, cc.nominal())
    assert empty["electron_peak"]["n"] == 0 and empty["pedestal_even"] is None
    json.dumps(empty, allow_nan=False)
