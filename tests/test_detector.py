"""Invariants of the detector model."""

from __future__ import annotations

import numpy as np
import pytest

from daq import detector as d


def test_ids_are_unique_and_dense() -> None:
    ids = d.CHANNELS["id"]
    assert np.array_equal(ids, np.arange(d.N_CHANNELS))
    assert d.N_CHANNELS == 30 + 30 + 36 + 6 + 3 + 5


def test_every_detector_is_present_with_its_size() -> None:
    sizes = {det: int(np.sum(d.CHANNELS["detector"] == det)) for det in d.Detector}
    assert sizes == {
        d.Detector.ECAL: 30,
        d.Detector.PRS: 30,
        d.Detector.HCAL: 36,
        d.Detector.VETO: 6,
        d.Detector.SRD: 3,
        d.Detector.COUNTER: 5,
    }
    assert [d.channel_name(i) for i in d.COUNTER_IDS] == ["S0", "S2", "S3", "V1", "V2"]


def test_names_are_unique_and_invertible() -> None:
    names = [d.channel_name(i) for i in range(d.N_CHANNELS)]
    assert len(set(names)) == d.N_CHANNELS
    assert all(d.channel_id(n) == i for i, n in enumerate(names))
    with pytest.raises(KeyError):
        d.channel_id("ECAL99")


def test_cell_accessors_agree_with_the_map() -> None:
    for y in range(d.ECAL_NY):
        for x in range(d.ECAL_NX):
            for cid, det in ((d.ecal_id(x, y), d.Detector.ECAL), (d.prs_id(x, y), d.Detector.PRS)):
                row = d.CHANNELS[cid]
                assert (row["detector"], row["x"], row["y"]) == (det, x, y)
    for m in range(4):
        for y in range(3):
            for x in range(3):
                row = d.CHANNELS[d.hcal_id(m, x, y)]
                assert (row["detector"], row["module"], row["x"], row["y"]) == (d.Detector.HCAL, m, x, y)
    assert d.CHANNELS[d.veto_id(2, 1)]["name"] == b"VETO2_1"
    assert d.CHANNELS[d.srd_id(1)]["detector"] == d.Detector.SRD
    with pytest.raises(ValueError):
        d.ecal_id(5, 0)
    with pytest.raises(ValueError):
        d.counter_id("S1")


def test_readout_groups_partition_the_channels() -> None:
    together = np.concatenate(d.GROUP_IDS)
    assert np.array_equal(np.sort(together), np.arange(d.N_CHANNELS))
    for g, ids in enumerate(d.GROUP_IDS):
        assert np.all(d.CHANNELS["group"][ids] == g)


def test_default_block_is_3x4_inside_the_grid_and_contains_the_beam_cell() -> None:
    cells = d.block_cells()
    assert len(cells) == 12 and len(set(cells)) == 12
    assert d.BEAM_CELL in cells
    xs, ys = zip(*cells, strict=True)
    assert (min(xs), max(xs), min(ys), max(ys)) == (1, 3, 1, 4)
    assert all(0 <= x < d.ECAL_NX and 0 <= y < d.ECAL_NY for x, y in cells)


@pytest.mark.parametrize("beam_cell", [(x, y) for x in range(5) for y in range(6)])
def test_block_either_fits_or_is_refused(beam_cell: tuple[int, int]) -> None:
    try:
        cells = d.block_cells(beam_cell)
    except ValueError as e:
        assert "leaves" in str(e)
        return
    assert beam_cell in cells
    assert all(0 <= x < d.ECAL_NX and 0 <= y < d.ECAL_NY for x, y in cells)


def test_primitive_channels_are_counters_then_ecal_then_prs_block() -> None:
    prim = d.default_primitive_channels()
    assert len(prim) == 5 + 12 + 12
    assert list(prim[:5]) == list(d.COUNTER_IDS)
    assert all(d.CHANNELS["detector"][c] == d.Detector.ECAL for c in prim[5:17])
    assert all(d.CHANNELS["detector"][c] == d.Detector.PRS for c in prim[17:])


def test_geometry_and_nominal_electronics() -> None:
    assert pytest.approx(38.2) == d.ECAL_PITCH_MM
    x, y = d.cell_center_mm(4, 5)
    assert (float(x), float(y)) == pytest.approx((4 * 38.2, 5 * 38.2))
    gains = d.nominal_gains()
    assert gains.shape == (d.N_CHANNELS,) and np.all(gains > 0)
    # 80 GeV in one ECAL cell must stay on scale
    assert 80_000 * d.NOMINAL_GAIN[d.Detector.ECAL] < d.ADC_MAX - d.NOMINAL_PEDESTAL


def test_channel_map_is_read_only() -> None:
    with pytest.raises(ValueError):
        d.CHANNELS["x"][0] = 3
