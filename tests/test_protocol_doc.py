"""docs/protocol.md for an implementer: its generated tables match the code, and the edges it states
(trigger thresholds in ADC counts, prescale, dead time, the readout window, the spill field) are what
the DAQ and the simulator do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.constants import nominal
from daq import conformance, detector, protocol
from daq.contract import BEAM, PHYSICS, S_PRS
from daq.trigger import Trigger, TriggerConfig, make_batch
from daq.waveform import RecoConfig, window_phase
from tests.golden.make_protocol_vectors import OUT

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
TOOL = [sys.executable, str(ROOT / "tools" / "gen_protocol_tables.py")]


def test_generated_tables_are_up_to_date() -> None:
    proc = subprocess.run([*TOOL, "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_drifted_table_is_caught(tmp_path: Path) -> None:
    """Edit one generated row of a copy of the page: --check names the block and exits 1."""
    text = DOC.read_text()
    row = "| 17 | ECAL23 | ECAL | 0 |  | 2 | 3 | EM |"
    assert row in text  # the channel map has the beam cell's row as documented
    copy = tmp_path / "protocol.md"
    copy.write_text(text.replace(row, "| 17 | ECAL23 | ECAL | 0 |  | 3 | 2 | EM |"))
    proc = subprocess.run([*TOOL, "--check", "--doc", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "channel-map" in proc.stderr
    subprocess.run([*TOOL, "--doc", str(copy)], check=True, capture_output=True, timeout=60)
    assert copy.read_text() == text  # the tool rewrites it back
    copy.write_text(text.replace("<!-- END GENERATED: constants -->", ""))
    proc = subprocess.run([*TOOL, "--check", "--doc", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "missing ['constants']" in proc.stderr


def test_every_conformance_check_is_documented() -> None:
    text = DOC.read_text()
    for name in conformance.CHECKS:
        assert f"| `{name}` |" in text


# ------------------------------------------------------------------ trigger edges as documented
def trig(compiled: bool, **settings: object) -> Trigger:
    cfg = TriggerConfig(**{"random_period_ns": 0, "beam_prescale": 0, **settings})  # type: ignore[arg-type]
    return Trigger(cfg, nominal(), detector.default_primitive_channels(), compiled=compiled)


@pytest.mark.parametrize("compiled", [True, False])
def test_thresholds_in_adc_counts_as_documented(compiled: bool) -> None:
    """S_PRS: PRS block sum > 135 counts; S_EC: ECAL block sum < 3600 counts (nominal gains)."""
    g_prs = detector.NOMINAL_GAIN[detector.Detector.PRS] * 1000
    g_ecal = detector.NOMINAL_GAIN[detector.Detector.ECAL] * 1000
    b = make_batch(
        prs_block_gev=np.array([135, 136, 300, 300]) / g_prs,
        ecal_block_gev=np.array([10, 10, 3599, 3600]) / g_ecal,
        t_ns=[0, 10_000, 20_000, 30_000],
    )
    assert b.amp[detector.default_primitive_channels().tolist().index(detector.prs_id(2, 3))].tolist() == [
        135,
        136,
        300,
        300,
    ]
    d = trig(compiled).evaluate(b)
    assert [bool(m & S_PRS) for m in d.mask] == [False, True, True, True]
    assert d.index.tolist() == [1, 2]  # 3600 counts is not below the S_EC threshold


@pytest.mark.parametrize("compiled", [True, False])
def test_dead_time_boundary_is_accepted(compiled: bool) -> None:
    """A candidate exactly dead_time_ns after an accepted trigger is accepted; 1 ns earlier it is not."""
    t = [1_000, 6_000, 10_999, 11_000]
    d = trig(compiled).evaluate(make_batch(ecal_block_gev=50.0, prs_block_gev=1.0, t_ns=t))
    assert d.index.tolist() == [0, 1, 3]
    assert np.all(d.trigger_mask & PHYSICS)
    assert d.counts["dead_time_lost"] == 1


@pytest.mark.parametrize("compiled", [True, False])
def test_prescale_takes_the_nth_particle_of_the_run(compiled: bool) -> None:
    """beam_prescale = 3: the 3rd, 6th, ... S_TRIG particle, counted across batches (spills)."""
    tr = trig(compiled, beam_prescale=3)
    t = np.arange(5) * 10_000
    first = tr.evaluate(make_batch(ecal_block_gev=100.0, prs_block_gev=1.0, t_ns=t))  # S_TRIG, not PHYSICS
    assert first.index.tolist() == [2] and np.all(first.trigger_mask & BEAM)
    tr.new_spill()
    second = tr.evaluate(make_batch(ecal_block_gev=100.0, prs_block_gev=1.0, t_ns=t))
    assert second.index.tolist() == [0, 3]  # the 6th and the 9th of the run


# ------------------------------------------------------------------ the readout window
def test_window_phase_as_documented() -> None:
    """Sample 0 at ceil(t / 12.5) x 12.5 - 125 ns: the in-time pulse peaks 112.5-125 ns after it."""
    period, peak = detector.SAMPLE_PERIOD_NS, RecoConfig().expected_peak_ns
    t = np.array([30_000_100, 30_000_107, 30_000_101, 0])
    assert window_phase(t, peak, period).tolist() == [125.0, 119.5, 113.5, 125.0]
    from simulator.electronics import _noise_and_phase

    _, sim_phase = _noise_and_phase(len(t), t, np.random.default_rng(0), peak / period, None, 32)
    assert np.allclose(sim_phase, window_phase(t, peak, period))  # the front-end side places it the same


def test_golden_run_messages_carry_spill_0_as_the_header_table_says() -> None:
    vectors = json.loads((OUT / "vectors.json").read_text())
    for name, v in vectors.items():
        if v["type"] in ("RUN_START", "RUN_STOP", "SUMMARY"):
            assert v["spill"] == 0, name
        if v["type"] in ("SPILL_START", "SPILL_END", "SLICE", "FRAGMENT", "READOUT_REQUEST"):
            assert v["spill"] >= 1, name
        assert (v["source"] == protocol.NO_SOURCE) == (v["type"] != "FRAGMENT"), name
