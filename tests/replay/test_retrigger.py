"""Trigger emulation on recorded spills: the pure core against an independent computation, and the CLI."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import detector
from daq.contract import PHYSICS
from daq.errors import ConfigError
from daq.files import SpillFile
from daq.protocol import NO_PARTICLE
from daq.retrigger import parse_overrides, retrigger_arrays, trigger_config
from daq.trigger import TriggerConfig
from tests.conftest import na64_command
from tests.replay.synth import SynthSpill, make_spill


@pytest.fixture(scope="module")
def spills(tmp_path_factory: pytest.TempPathFactory) -> list[SynthSpill]:
    d = tmp_path_factory.mktemp("retrigger")
    return [make_spill(d, spill=s, n_particles=6000, n_slices=6, seed=s) for s in (1, 2, 3)]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with SpillFile(path) as f:
        ev = f.events(["index", "trigger_mask", "e_miss"])
        prim = f.primitives()
        cfg = trigger_config(f.trigger_config)
    return {"amp": prim["amp"], "prim_channels": prim["channels"], "cfg": cfg, **ev}  # type: ignore[dict-item]


def _run(a: dict, new: TriggerConfig) -> dict:
    return retrigger_arrays(
        amp=a["amp"],
        prim_channels=a["prim_channels"],
        index=a["index"],
        trigger_mask=a["trigger_mask"],
        e_miss=a["e_miss"],
        recorded=a["cfg"],
        new=new,
    )


def _ecal_block_gev(a: dict) -> np.ndarray:
    """Independent of daq.trigger: the 3x4 ECAL block sum of each event from the primitive rows."""
    prim = list(a["prim_channels"])
    rows = [prim.index(detector.ecal_id(x, y)) for x, y in detector.block_cells()]
    return a["amp"][rows].astype(np.float64).sum(axis=0) / (
        detector.NOMINAL_GAIN[detector.Detector.ECAL] * 1e3
    )


def test_recorded_settings_give_back_the_recorded_decisions(spills: list[SynthSpill]) -> None:
    a = _arrays(spills[0].path)
    out = _run(a, a["cfg"])
    assert out["mismatch"] == 0
    assert out["new"] == out["recorded"]
    assert out["physics_lost"] == out["physics_gained"] == 0
    np.testing.assert_array_equal(out["hist"]["e_miss_new"][0], out["hist"]["e_miss_recorded"][0])
    assert out["hist"]["e_miss_recorded"][0].sum() == out["recorded"]["physics"] > 0


def test_a_lower_ecal_threshold_loses_exactly_the_events_above_it(spills: list[SynthSpill]) -> None:
    a = _arrays(spills[0].path)
    new = trigger_config({**a["cfg"].thresholds()}, {"ecal_max_gev": 50.0})
    out = _run(a, new)
    phys = (a["trigger_mask"] & PHYSICS) != 0
    e_block = _ecal_block_gev(a)
    want_lost = int(np.count_nonzero(phys & (e_block >= 50.0)))
    assert want_lost > 0
    assert out["physics_lost"] == want_lost
    assert out["new"]["physics"] == out["recorded"]["physics"] - want_lost
    assert out["new"]["random"] == out["recorded"]["random"]
    assert out["new"]["beam"] == out["recorded"]["beam"]  # counters unchanged: every beam trigger stays
    e_miss = a["e_miss"][phys & (e_block < 50.0)]
    assert out["hist"]["e_miss_new"][0].sum() == e_miss.size


def test_a_higher_prs_threshold_and_a_looser_ecal_one(spills: list[SynthSpill]) -> None:
    a = _arrays(spills[1].path)
    out = _run(a, trigger_config(a["cfg"].thresholds(), {"ecal_max_gev": 99.0}))
    # looser: nothing lost; recorded beam triggers below 99 GeV become physics, x prescale estimated
    assert out["physics_lost"] == 0 and out["physics_gained"] > 0
    assert out["physics_gained_estimate"] == out["physics_gained"] * a["cfg"].beam_prescale
    out2 = _run(a, trigger_config(a["cfg"].thresholds(), {"s0_adc": 60_000}))
    assert out2["new"]["physics"] == 0 and out2["new"]["beam"] == 0  # S0 never fires any more
    assert out2["new"]["accepted"] == out2["new"]["random"] == out2["recorded"]["random"]


@pytest.fixture(scope="module")
def arrays(spills: list[SynthSpill]) -> dict:
    return _arrays(spills[2].path)


@given(st.floats(1.0, 120.0), st.floats(0.0, 40.0))
@settings(max_examples=25, deadline=None)
def test_raising_the_ecal_threshold_never_removes_a_physics_event(
    arrays: dict, lo: float, extra: float
) -> None:
    a = arrays
    low = _run(a, trigger_config(a["cfg"].thresholds(), {"ecal_max_gev": lo}))
    high = _run(a, trigger_config(a["cfg"].thresholds(), {"ecal_max_gev": lo + extra}))
    assert high["new"]["physics"] >= low["new"]["physics"]
    assert high["physics_lost"] <= low["physics_lost"]


def test_random_triggers_are_kept_and_have_no_primitives(spills: list[SynthSpill]) -> None:
    a = _arrays(spills[2].path)
    rnd = a["index"] == NO_PARTICLE
    assert rnd.any() and not a["amp"][:, rnd].any()
    out = _run(a, trigger_config(a["cfg"].thresholds(), {"prs_min_gev": 100.0}))
    assert out["new"]["physics"] == 0 and out["new"]["random"] == int(rnd.sum())


def test_overrides_are_validated() -> None:
    assert parse_overrides(["ecal_max_gev=70", "trigger.prs_min_gev=0.5", 'masked_cells=["ECAL23"]']) == {
        "ecal_max_gev": 70,
        "prs_min_gev": 0.5,
        "masked_cells": ["ECAL23"],
    }
    with pytest.raises(ConfigError, match="ecal_maxx_gev: not a trigger setting"):
        parse_overrides(["ecal_maxx_gev=70"])
    with pytest.raises(ConfigError, match="masked_cells"):
        trigger_config({}, {"masked_cells": ["HCAL0_00"]})


# ---------------------------------------------------------------- CLI
def test_cli_table_plot_and_json(spills: list[SynthSpill], tmp_path: Path) -> None:
    d = spills[0].path.parent
    (tmp_path / "junk.h5").write_bytes(b"junk")
    plot, out_json = tmp_path / "emiss.svg", tmp_path / "out.json"
    res = subprocess.run(
        na64_command(
            "retrigger",
            str(d),
            str(tmp_path / "junk.h5"),
            "--set",
            "ecal_max_gev=50",
            "--set",
            "trigger.prs_min_gev=0.5",
            "--plot",
            str(plot),
            "--json",
            str(out_json),
            "--workers",
            "0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "trigger emulation with ecal_max_gev=50, prs_min_gev=0.5" in text
    assert "3 spills in" in text and "1 files skipped" in text and "junk.h5" in text
    total = json.loads(out_json.read_text())
    assert [r["spill"] for r in total["spills"]] == [1, 2, 3]
    assert total["recorded"]["accepted"] == sum(r["recorded"]["accepted"] for r in total["spills"])
    assert total["new"]["physics"] < total["recorded"]["physics"]
    # the total line of the table
    total_line = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert str(total["new"]["physics"]) in total_line.split()
    svg = ET.parse(plot).getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert [p.get("data-label") for p in lines] == ["recorded", "new settings"]
    assert len(lines[0].get("points", "").split()) == 2 * 140


def test_cli_html_plot_on_a_local_cluster(spills: list[SynthSpill], tmp_path: Path) -> None:
    plot = tmp_path / "emiss.html"
    res = subprocess.run(
        na64_command(
            "retrigger",
            *(str(s.path) for s in spills),
            "--set",
            "ecal_max_gev=70",
            "--plot",
            str(plot),
            "--workers",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert "on 2 dask workers" in res.stdout
    page = plot.read_text()
    assert "<html" in page.lower() and "Bokeh" in page and "E_miss" in page


def test_cli_user_errors(spills: list[SynthSpill], tmp_path: Path) -> None:
    res = subprocess.run(
        na64_command("retrigger", str(spills[0].path), "--set", "nope=1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "nope: not a trigger setting" in res.stderr
    res = subprocess.run(
        na64_command("retrigger", str(spills[0].path), "--plot", str(tmp_path / "x.png")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "must end in .svg or .html" in res.stderr
    res = subprocess.run(
        na64_command("retrigger", str(spills[0].path), "--set", "ecal_max_gev=-3", "--workers", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "ecal_max_gev must be > 0" in res.stderr


def test_cli_on_spills_recorded_by_the_real_chain(recorded_spills: list[Path], tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    res = subprocess.run(
        na64_command(
            "retrigger",
            str(recorded_spills[0].parent),
            "--set",
            "ecal_max_gev=60",
            "--json",
            str(out_json),
            "--workers",
            "0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    total = json.loads(out_json.read_text())
    assert total["mismatch"] == 0 and "WARNING" not in res.stdout  # recorded bits reproduced exactly
    assert total["n_spills"] == len(recorded_spills)
    assert 0 < total["new"]["physics"] < total["recorded"]["physics"]
    assert total["new"]["random"] == total["recorded"]["random"] > 0
    assert total["physics_gained"] == 0  # a tighter S_EC gains nothing
