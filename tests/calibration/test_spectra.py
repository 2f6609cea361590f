"""MIP peaks (HCAL, VETO, counters), the SRD electron spectrum, and the muon selections."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import spectra
from calibration.fitting import sample_moyal
from daq import detector
from tests.calibration import synth

N_MUONS = 2000  # muons through the crossed HCAL cell of each module (simulator: the central cell)


def test_hcal_mip_gains_within_3_percent() -> None:
    truth = synth.make_truth(6)
    rng = np.random.default_rng(2)
    ids = detector.HCAL_IDS
    amp = synth.mip_amplitudes(rng, truth, ids, 2500.0, N_MUONS)
    r = spectra.peak_gains(amp, np.ones_like(amp, bool), ids, 2500.0)
    assert r.determined.all()
    rel = r.gain / truth.gain[ids] - 1
    assert np.max(np.abs(rel)) < 0.03 and np.sqrt(np.mean(rel**2)) < 0.015
    assert np.all(r.gain_error / r.gain < 0.01)


def test_channels_without_enough_entries_are_not_determined() -> None:
    truth = synth.make_truth(6)
    ids = detector.VETO_IDS
    amp = synth.mip_amplitudes(np.random.default_rng(3), truth, ids, 10.0, 500)
    hit = np.ones_like(amp, bool)
    hit[50:, 2] = False  # 50 entries only
    r = spectra.peak_gains(amp, hit, ids, 10.0, min_entries=100)
    assert r.determined.sum() == 5 and not r.determined[2] and np.isnan(r.gain[2])
    assert any("VETO1_0: 50 entries < 100" in m for m in r.messages)


def test_srd_median_and_counter_peaks() -> None:
    truth = synth.make_truth(7)
    rng = np.random.default_rng(4)
    srd_dep = rng.gamma(3.0, 10.0, (3000, 3))  # simulator: Gamma(shape 3, mean 30 MeV) per module
    amp = srd_dep * truth.gain[detector.SRD_IDS]
    r = spectra.peak_gains(amp, np.ones_like(amp, bool), detector.SRD_IDS, 26.74, "median")
    np.testing.assert_allclose(r.gain, truth.gain[detector.SRD_IDS], rtol=0.03)
    cnt = detector.COUNTER_IDS[:3]
    amp = sample_moyal(rng, 0.3, 0.036, (3000, 3)) * truth.gain[cnt] + rng.normal(0, 2.0, (3000, 3))
    r = spectra.peak_gains(amp, spectra.above(amp, np.full(3, 2.0)), cnt, 0.3)
    np.testing.assert_allclose(r.gain, truth.gain[cnt], rtol=0.02)


def _events(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 110) GeV: first half muons (central HCAL cell per module, all VETO slabs), second half electrons."""
    e = np.zeros((n, detector.N_CHANNELS))
    m = n // 2
    for mod in range(detector.HCAL_MODULES):
        e[:m, detector.hcal_id(mod, 1, 1)] = sample_moyal(rng, 2.5, 0.375, m)
        e[:m, detector.hcal_id(mod, 0, 1)] = 0.01
    e[:m, detector.ecal_id(2, 3)] = 0.5
    e[:m, detector.prs_id(2, 3)] = 0.045
    e[:m, detector.VETO_IDS] = 0.010
    e[m:, detector.ecal_id(2, 3)] = 80.0
    e[m:, detector.prs_id(2, 3)] = 4.0
    return e


def test_muon_selection_and_crossed_cells() -> None:
    e = _events(400, np.random.default_rng(5))
    mu = spectra.muon_like(e)
    assert mu[:200].mean() > 0.95 and not mu[200:].any()
    hits = spectra.hcal_cell_hits(e, mu)
    crossed = [list(detector.HCAL_IDS).index(detector.hcal_id(m, 1, 1)) for m in range(4)]
    assert hits[:, crossed].sum() == 4 * mu.sum()
    assert hits.sum() == 4 * mu.sum()
    veto = spectra.veto_slab_hits(e, mu)
    assert veto[mu].all() and not veto[~mu].any()
    el = spectra.electron_like(e, 100.0, 0.2)
    assert el[200:].all() and not el[:200].any()


def test_selection_config_is_validated() -> None:
    with pytest.raises(ValueError):
        spectra.MuonSelection(hcal_module_min_gev=5.0, hcal_module_max_gev=1.0)
    with pytest.raises(ValueError, match="amp"):
        spectra.peak_gains(np.zeros((5, 2)), np.zeros((5, 3), bool), np.arange(2), 1.0)


def test_prs_cell_in_front_of_the_crossed_ecal_cell() -> None:
    e = np.zeros((3, detector.N_CHANNELS))
    e[0, detector.ecal_id(1, 4)] = 0.5  # muon through ECAL14
    e[1, detector.ecal_id(3, 0)] = 0.5  # selected, but its energy is shared: left out
    e[1, detector.ecal_id(3, 1)] = 0.6
    e[2, detector.ecal_id(0, 0)] = 0.5  # not a selected event
    hits = spectra.prs_cell_hits(e, np.array([True, True, False]), min_share=0.6)
    assert hits.shape == (3, 30)
    assert np.flatnonzero(hits[0]).tolist() == [
        int(np.flatnonzero(detector.prs_id(1, 4) == detector.PRS_IDS)[0])
    ]
    assert not hits[1].any() and not hits[2].any()
