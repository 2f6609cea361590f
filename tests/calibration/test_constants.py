"""Constants: validation, the one-line-per-channel JSON layout, load errors, selection by run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration import constants as cc
from calibration.constants import CalibrationError, Constants
from daq import detector


def derived(
    version: str = "test-v1", run_min: int = 0, run_max: int | None = None, seed: int = 0
) -> Constants:
    rng = np.random.default_rng(seed)
    n = detector.N_CHANNELS
    c = cc.nominal().replace(
        version=version,
        run_min=run_min,
        run_max=run_max,
        gain=detector.nominal_gains() * rng.uniform(0.8, 1.2, n),
        pedestal_even=rng.uniform(150, 250, n),
        pedestal_odd=rng.uniform(150, 250, n),
        noise=rng.uniform(1, 3, n),
        time_offset_ns=rng.normal(0, 2, n),
        status=rng.integers(0, 4, n).astype(np.uint8),
        provenance={"method": "test", "steps": [{"step": "gains", "runs": [1, 2]}]},
    )
    return c.updated("gain", detector.ECAL_IDS, c.gain[detector.ECAL_IDS], 0.001 * c.gain[detector.ECAL_IDS])


def test_round_trip_keeps_every_constant_to_7_digits(tmp_path: Path) -> None:
    c = derived()
    back = cc.load(cc.save(c, tmp_path / "c.json"))
    for q in cc.QUANTITIES:
        np.testing.assert_allclose(getattr(back, q), getattr(c, q), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(back.errors[q], c.errors[q], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(back.status, c.status)
    assert (back.version, back.run_min, back.run_max) == (c.version, c.run_min, c.run_max)
    assert back.provenance == c.provenance
    assert np.isnan(back.errors["gain"][detector.HCAL_IDS]).all()
    assert cc.dumps(back) == cc.dumps(c)  # stable text: saving again gives the same file


def test_layout_is_one_line_per_channel(tmp_path: Path) -> None:
    text = cc.dumps(derived())
    lines = text.splitlines()
    for ch in range(detector.N_CHANNELS):
        name = detector.channel_name(ch)
        hits = [ln for ln in lines if ln.lstrip().startswith(f'"{name}":')]
        assert len(hits) == 1, name
        entry = json.loads(hits[0].split(": ", 1)[1].rstrip(","))
        assert set(entry) == {*cc.QUANTITIES, "status", "errors"}
    assert ' "valid_runs": [0, null],' in lines
    assert len(lines) < detector.N_CHANNELS + 40
    assert json.loads(text)["format"] == cc.FORMAT


def test_a_changed_gain_is_a_one_line_diff() -> None:
    c = derived()
    d = c.updated("gain", [detector.ecal_id(2, 3)], [0.05], [0.0002])
    a, b = cc.dumps(c).splitlines(), cc.dumps(d).splitlines()
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert len(changed) == 1 and '"ECAL23"' in changed[0][1]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a calibration file"),
        (lambda d: d.update(format_version=9), "format_version 9"),
        (lambda d: d.pop("version"), "missing 'version'"),
        (lambda d: d.update(valid_runs=[5]), "'valid_runs'"),
        (lambda d: d.update(valid_runs=[7, 3]), "run range 7..3 is empty"),
        (lambda d: d["channels"].pop("HCAL2_11"), "1 channels missing, first HCAL2_11"),
        (lambda d: d["channels"].update(ECAL99={}), "unknown channel 'ECAL99'"),
        (lambda d: d["channels"]["PRS12"].update(gain="x"), "channel PRS12: gain is 'x'"),
        (lambda d: d["channels"]["PRS12"].update(gain=-1.0), "gain of PRS12 is -1.0"),
        (lambda d: d["channels"]["S0"].update(noise=None), "channel S0: noise is None"),
        (lambda d: d["channels"]["S0"].update(noise=-0.5), "noise of S0 is -0.5"),
        (lambda d: d["channels"]["V1"].update(status="broken"), "channel V1: status 'broken'"),
        (lambda d: d["channels"]["V1"]["errors"].update(gain=-1), "channel V1: errors.gain is -1"),
        (lambda d: d["channels"]["V1"]["errors"].update(speed=1), "errors.speed is not a known quantity"),
        (lambda d: d["channels"]["V1"].update(colour=1), "channel V1: unknown key 'colour'"),
        (lambda d: d["channels"]["S0"].update(noise=10**400), "OverflowError"),
    ],
)
def test_bad_file_gives_one_error_naming_the_problem(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = cc.to_json_dict(derived())
    mutate(doc)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError) as e:
        cc.load(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_a_file_nested_beyond_reason_is_one_error(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CalibrationError, match="nested too deeply"):
        cc.load(p)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        cc.load(tmp_path / "nope.json")
    (tmp_path / "t.json").write_text("{ not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        cc.load(tmp_path / "t.json")
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(CalibrationError, match="top level is not an object"):
        cc.load(tmp_path / "l.json")


def test_constructor_validates_shapes_and_values() -> None:
    with pytest.raises(CalibrationError, match="gain has shape"):
        Constants(version="x", gain=np.ones(3))
    with pytest.raises(CalibrationError, match=r"pedestal_even of ECAL00 is nan"):
        Constants(version="x", pedestal_even=np.full(detector.N_CHANNELS, math.nan))
    with pytest.raises(CalibrationError, match="status of ECAL00 is 7"):
        Constants(version="x", status=np.full(detector.N_CHANNELS, 7, np.uint8))
    with pytest.raises(CalibrationError, match="version id"):
        Constants(version=" ")


def test_updated_touches_only_the_given_channels() -> None:
    c = cc.nominal()
    d = c.updated("time_offset_ns", [3, 5], [1.5, -2.0], [0.1, 0.2])
    assert d.time_offset_ns[3] == 1.5 and d.time_offset_ns[5] == -2.0 and d.time_offset_ns[4] == 0
    assert d.errors["time_offset_ns"][3] == 0.1 and np.isnan(d.errors["time_offset_ns"][4])
    assert c.time_offset_ns[3] == 0  # the original is unchanged
    with pytest.raises(ValueError, match="unknown quantity"):
        c.updated("colour", [1], [1])


def test_nominal_and_mev_per_count() -> None:
    c = cc.nominal()
    assert c.valid_for(0) and c.valid_for(10**6)
    np.testing.assert_allclose(c.mev_per_count * c.gain, 1.0)
    assert c.gain[detector.ecal_id(0, 0)] == detector.NOMINAL_GAIN[detector.Detector.ECAL]


def test_select_picks_the_latest_valid_set(tmp_path: Path) -> None:
    cc.save(derived("old", 1, None), tmp_path / "a.json")
    cc.save(derived("new", 10, 19), tmp_path / "b.json")
    cc.save(derived("newer", 20, None), tmp_path / "c.json")
    assert cc.select([tmp_path], 5).version == "old"
    assert cc.select([tmp_path], 10).version == "new"
    assert cc.select([tmp_path / "a.json", tmp_path / "b.json"], 25).version == "old"
    assert cc.select([tmp_path], 25).version == "newer"
    with pytest.raises(
        CalibrationError, match=r"no calibration set is valid for run 0 \(have a.json \(1..\)"
    ):
        cc.select([tmp_path], 0)
    cc.save(derived("rival", 20, 30), tmp_path / "d.json")
    with pytest.raises(CalibrationError, match="ambiguous calibration for run 25"):
        cc.select([tmp_path], 25)
    with pytest.raises(CalibrationError, match="no calibration files"):
        cc.select([], 1)


def test_two_different_sets_under_one_version_name_are_ambiguous(tmp_path: Path) -> None:
    """The spill file records only the version name: two different sets with one name and one start must
    not be chosen between by file order. The same set given twice is no ambiguity."""
    c = derived("v1", 1, None)
    cc.save(c, tmp_path / "a.json")
    assert cc.select([tmp_path, tmp_path / "a.json"], 5).version == "v1"
    other = c.updated("gain", [detector.ecal_id(2, 3)], [99.0], [0.1])
    cc.save(other, tmp_path / "b.json")
    with pytest.raises(CalibrationError, match="both start at run 1 with different contents"):
        cc.select([tmp_path], 5)


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(
    ped=finite,
    gain=st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
    toff=finite,
    run_min=st.integers(0, 10**6),
    span=st.one_of(st.none(), st.integers(0, 10**6)),
    ch=st.integers(0, detector.N_CHANNELS - 1),
)
def test_round_trip_property(
    ped: float, gain: float, toff: float, run_min: int, span: int | None, ch: int
) -> None:
    c = cc.nominal().replace(version="p", run_min=run_min, run_max=None if span is None else run_min + span)
    c = (
        c.updated("pedestal_even", [ch], [ped])
        .updated("gain", [ch], [gain], [gain / 7])
        .updated("time_offset_ns", [ch], [toff])
    )
    back = cc.from_json_dict(json.loads(cc.dumps(c)))
    assert back.pedestal_even[ch] == pytest.approx(ped, rel=1e-6, abs=1e-9)
    assert back.gain[ch] == pytest.approx(gain, rel=1e-6)
    assert back.errors["gain"][ch] == pytest.approx(gain / 7, rel=1e-6)
    assert back.time_offset_ns[ch] == pytest.approx(toff, rel=1e-6, abs=1e-9)
    assert back.valid_for(run_min) and (back.run_max == c.run_max)


def test_ecal_scale_round_trip_default_and_validation(tmp_path: Path) -> None:
    c = cc.nominal().replace(ecal_scale=1.0142, ecal_scale_error=0.0003)
    back = cc.load(cc.save(c, tmp_path / "c.json"))
    assert (back.ecal_scale, back.ecal_scale_error) == (1.0142, 0.0003)
    doc = json.loads((tmp_path / "c.json").read_text())
    del doc["ecal_scale"], doc["ecal_scale_error"]  # a file written before the scale existed
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = cc.load(tmp_path / "old.json")
    assert old.ecal_scale == 1.0 and math.isnan(old.ecal_scale_error)
    doc["ecal_scale"] = 3.0
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match=r"bad\.json: .*ecal_scale 3\.0"):
        cc.load(tmp_path / "bad.json")
    doc["ecal_scale"] = "1"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="'ecal_scale' is '1'"):
        cc.load(tmp_path / "bad.json")
