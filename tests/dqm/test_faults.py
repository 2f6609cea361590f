"""Faults injected by the real simulator raise the right alarm (integration: simulate -> daq -> files -> DQM).

A good run is recorded and promoted to a reference with the real ``na64 dqm-reference`` command; then
each fault run is checked against it through the offline path (the same code as live monitoring).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from dqm import reference
from dqm.baseline import Baseline
from dqm.checks import State
from dqm.monitor import AlarmChanged, Monitor
from dqm.sources import file_messages
from tests.conftest import na64_command
from tests.dqm.runs import record_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    base = tmp_path_factory.mktemp("good")
    record_run(base / "data", spills=4)
    out = base / "ref.json"
    res = subprocess.run(
        na64_command("dqm-reference", str(base / "data"), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "4 spills" in res.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "na64-dqm-reference" and doc["provenance"]["n_spills"] == 4
    return reference.load(out)


def alarms_of(files_dir: Path, ref: Baseline) -> list[tuple[int, str, State, str]]:
    mon = Monitor(live=False, reference=ref)
    out = []
    for msg in file_messages([files_dir]):
        for n in mon.handle(msg, time.time()):
            # an activation or an escalation (what makes an alarm unacknowledged)
            if isinstance(n, AlarmChanged) and {"raised", "escalated"} & set(n.events):
                out.append((n.alarm.spill, n.alarm.name, n.alarm.severity, n.alarm.message))
    return out


def test_good_run_raises_no_alarm(ref: Baseline, tmp_path: Path) -> None:
    # same detector (the simulator draws its electronics from seed and run), other beam: 20% less intensity
    record_run(tmp_path / "data", "--rate", "4e5", spills=2)
    assert alarms_of(tmp_path / "data", ref) == []


@pytest.mark.parametrize(
    ("fault", "spill", "alarm", "text", "starts", "state"),
    [
        ("dead:ECAL22", 1, "dead_channels", "ECAL22", 1, State.ERROR),
        # -4% per spill of beam time from the start: the peak is > 5% off in spill 2
        ("gain_drift:ECAL:-4", 2, "electron_peak", "ECAL electron peak", 1, State.ERROR),
        ("beam_off:2", 2, "beam_off", "0 EOT", 2, State.ERROR),
        ("no_answer:HCAL:2", 2, "missing_sources", "no data from HCAL", 2, State.ERROR),
        ("no_answer:HCAL:2", 2, "losses", "fragment_timeout", 2, State.ERROR),
        ("hot:ECAL00:0.3", 1, "hot_channels", "ECAL00", 1, State.ERROR),
        # a 4x intensity spike early in the spill: the trigger rate and the references go to ERROR; the
        # spike itself is a WARN since the reconstruction fits the pile-up out (it made ~27 fake
        # signal-like events early in the spill before, an ERROR of its own)
        ("spike:4:0.08", 1, "trigger_rate", "physics triggers", 1, State.ERROR),
        ("spike:4:0.08", 1, "early_saturation", "early-spill intensity spike", 1, State.WARN),
    ],
)
def test_fault_raises_its_alarm(
    ref: Baseline,
    tmp_path: Path,
    fault: str,
    spill: int,
    alarm: str,
    text: str,
    starts: int,
    state: State,
) -> None:
    record_run(tmp_path / "data", "--fault", fault, spills=spill)
    raised = alarms_of(tmp_path / "data", ref)
    hits = [a for a in raised if a[1] == alarm and a[2] is state]  # (a drift may WARN first)
    assert hits, f"{fault}: no {alarm} {state.name} alarm; raised: {raised}"
    first = hits[0]
    assert first[0] == spill, f"{fault}: {alarm} {state.name} in spill {first[0]}, expected {spill}"
    assert text in first[3]
    assert not [a for a in raised if a[0] < starts], f"alarms before the fault started: {raised}"
