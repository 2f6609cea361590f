"""The Bokeh session without a browser: URL view parsing, tab building, flow control, fixed payloads."""

from __future__ import annotations

import time

import pytest
from bokeh.document import Document

from dqm import snapshot
from dqm.app import MAX_IN_FLIGHT, TABS, SessionView, SnapshotHub, View, parse_cell, parse_view
from dqm.config import DqmConfig
from dqm.monitor import Monitor
from dqm.synthetic import SynthConfig, SyntheticDaq


class Controller:
    def __init__(self) -> None:
        self.acks: list[str] = []
        self.shelves: list[tuple[str, str, float]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def acknowledge(self, name: str, by: str) -> None:
        self.acks.append(name)

    def shelve(self, name: str, reason: str, minutes: float, by: str) -> None:
        self.shelves.append((name, reason, minutes))


@pytest.fixture
def hub() -> SnapshotHub:
    mon = Monitor(live=False)
    daq = SyntheticDaq(SynthConfig(events_per_spill=300, batch_size=30))
    for spill in (1, 2, 3):
        for msg in daq.spill_messages(1, spill):
            mon.handle(msg, time.time())
    h = SnapshotHub(snapshot.Axes.of(mon.spec), mon.check_names())
    h.latest = snapshot.build(mon)
    return h


def test_parse_view_and_cells() -> None:
    assert parse_view(None) == View()
    v = parse_view({"tab": [b"ecal"], "range": [b"run"], "cell": [b"1,2"]})
    assert v == View(tab=TABS.index("ecal"), range=2, cell="ECAL12")
    assert parse_view({"tab": [b"nonsense"], "cell": [b"9,9"]}) == View()  # bad values: defaults
    assert parse_cell("hcal0_11") == "HCAL0_11" and parse_cell("S0") == "S0"
    with pytest.raises(ValueError):
        parse_cell("XYZ")


def test_every_tab_builds_and_updates_and_only_one_tab_is_held(hub: SnapshotHub) -> None:
    doc = Document()
    s = SessionView(doc, hub, Controller(), DqmConfig(), View())
    for i in range(len(TABS)):
        s.tabs.active = i
        for r in range(3):
            s.range.active = r
            s.update(force=True)
        held = [
            h for h in s.holders if h.children and "loading" not in str(getattr(h.children[0], "text", ""))
        ]
        assert len(held) == 1 and s.built == i
    assert s.sent_seq >= 3 * len(TABS)


def test_flow_control_waits_for_the_browser(hub: SnapshotHub) -> None:
    s = SessionView(Document(), hub, Controller(), DqmConfig(), View())
    assert hub.latest is not None
    for k in range(10):
        hub.latest = snapshot.Snapshot(**{**hub.latest.__dict__, "version": 1000 + k})
        s.update()
    assert s.sent_seq == MAX_IN_FLIGHT and s.deferred and s.skipped > 0  # nothing acknowledged yet
    s._on_ack("text", "0", str(s.sent_seq))  # the browser drew them: the deferred update goes out
    assert s.sent_seq == MAX_IN_FLIGHT + 1 and not s.deferred


def test_buttons_call_the_controller(hub: SnapshotHub) -> None:
    c = Controller()
    s = SessionView(Document(), hub, c, DqmConfig(), View())
    s._on_reset()
    s._on_acknowledge("dead_channels")
    s._on_acknowledge("")
    assert c.resets == 1 and c.acks == ["dead_channels"]
