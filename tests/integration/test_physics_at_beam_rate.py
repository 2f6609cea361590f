"""The reconstruction against the simulator's truth at the nominal 2 MHz, through the real programs.

A short version of ``benchmarks/validate_physics.py`` (same code: ``run_chain`` runs ``na64 daq`` and
``na64 simulate --pace max --truth`` as separate processes over real sockets, ``measure`` matches the
spill files to the truth): one 0.25 s spill at 2 MHz (~4.8e5 electrons on target), beam triggers
prescaled by 200 for statistics, the B-L Z' injected. The limits are the issue's targets with the
statistical margin of this sample; the full figures (0.2-4 MHz, 4e6 EOT per rate) are in docs/daq.md.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _validate_physics() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "validate_physics", ROOT / "benchmarks" / "validate_physics.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    vp = _validate_physics()
    args = argparse.Namespace(
        spill_length=0.25,
        seed=7,
        signal="B-L:232:1e-4",
        signal_per_eot=2.5e-4,
        constants="nominal",
        daq_arg=["--set", "trigger.beam_prescale=200"],
    )
    work = tmp_path_factory.mktemp("physics")
    data, truth, _ = vp.run_chain(2e6, 4e5, args, work)
    m = vp.measure(data, truth, "nominal")
    print(m)
    return m


@pytest.mark.timeout(900)
def test_energies_at_2mhz_are_those_of_the_truth(figures: dict) -> None:
    """Beam electrons: resolution within 0.6% of the true deposits' (issue: 13.5% before, truth ~4.2%),
    90 < E_ECAL + E_HCAL < 110 GeV for > 90% (60% before)."""
    m = figures
    assert not m["not_ok"], m["not_ok"]  # no spill lost data
    assert m["spills"] == 1 and m["eot"] > 3e5 and m["n_beam_e"] > 1000
    assert m["res68"] < m["res68_truth"] + 0.006, m
    assert m["sum_window"] > 0.9, m


@pytest.mark.timeout(900)
def test_physics_triggers_agree_with_their_own_trigger(figures: dict) -> None:
    """PHYSICS events: stored block energy above 85 GeV (the trigger said < 80) for < 1% (45.5% before);
    differing from the trigger's block sum by > 5 GeV for < 2% (58% before)."""
    m = figures
    assert m["n_physics"] > 500
    assert m["blk_gt85"] < 0.01, m
    assert m["blk_vs_trigger"] < 0.02, m


@pytest.mark.timeout(900)
def test_no_standard_model_electron_in_the_signal_box_and_the_signal_where_it_belongs(figures: dict) -> None:
    """0 SM electrons (true deposit > 60 GeV) stored in the signal box (91 in 3.9e6 EOT before); the
    injected Z' within 5 GeV of E0 - E_Z' for > 85% (46% before)."""
    m = figures
    assert m["box_leak"] == 0, m
    assert m["n_signal"] >= 40 and m["signal_ok"] > 0.85, m
