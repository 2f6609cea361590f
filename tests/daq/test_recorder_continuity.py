"""Run continuity in the recorder (issue 16), in process: a restarted DAQ learns the run, reused run numbers
are refused, losses outside spills stay outside spills, a spill cut short is not ok, recovered files are
reported. The same faults with the real processes are in tests/faults/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daq import protocol
from daq.contract import LossReason, SpillStatus
from daq.recorder import PublishRunSummary, PublishStatus, PublishSummary, Send
from daq.summary import DaqStatus
from daq.writer_commands import CloseSpill, OpenSpill, Recovered, WriteResult
from tests.daq.test_recorder import FE, OTHER, Sender, idle, kinds, losses_of, running


def sends(actions: list) -> list[protocol.Message]:
    return [a.message for a in actions if isinstance(a, Send)]


def whole_spill(s, spill: int, n_slices: int = 2) -> list:
    """SPILL_START, slices answered, SPILL_END; the writer's result handed back: the actions."""
    out = s.feed(s.fe.spill_start(spill))
    for i in range(n_slices):
        s.feed(s.fe.slice(spill, i))
        for frag in s.fe.fragments(s.request):
            out += s.feed(frag)
    out += s.feed(s.fe.spill_end(spill))
    for c in [a for a in out if isinstance(a, CloseSpill)]:
        res = WriteResult(c.run, c.spill, Path(f"/data/s{c.spill}.h5"), c.final.status, 4, 0, 1, 0.1)
        out += s.rec.file_closed(res, 2.0)
    return out


def test_a_restarted_daq_asks_for_the_run_and_records_the_next_spill_ok() -> None:
    s = idle()  # a DAQ started (again) in the middle of run 1, spill 3
    s.env.files = {1: {1, 2, 3}}  # spills 1-2 closed, 3 recovered from its partial file
    hb = s.fe.stamp(protocol.Heartbeat(run=1, spill=3, state=protocol.FrontEndState.IN_SPILL))
    [ask] = sends(s.feed(hb, now=1.0))
    assert isinstance(ask, protocol.AnnounceRequest) and ask.run == 1
    out = s.feed(s.fe.slice(3, 10, n=5), now=1.2)  # data of spill 3: counted, not asked again within 1 s
    assert losses_of(out) == {LossReason.RUN_UNKNOWN: 1} and sends(out) == []
    reannounce = protocol.with_seq(protocol.RunStart(**{**_run_start_fields(s), "spill": 3}), s.fe.seq)
    s.fe.seq += 1
    [ack] = sends(s.feed(reannounce, now=1.5))  # files of run 1 exist, but this is the same run going on
    assert isinstance(ack, protocol.RunAck) and ack.status == ack.ACCEPTED
    s.fe.counters = {}
    s.feed(s.fe.slice(3, 11, n=7), now=1.6)  # still spill 3: its SPILL_START came before the DAQ knew
    end = protocol.SpillEnd(run=1, spill=3, n_slices=240, n_particles=9_000_000)
    s.feed(s.fe.stamp(end), now=1.7)
    out = whole_spill(s, 4)
    [summary] = [a.summary for a in out if isinstance(a, PublishSummary)]
    assert summary.spill == 4 and summary.status == SpillStatus.OK
    st = DaqStatus.from_json(s.rec.status(3.0).to_json())
    assert "run 1 spill 3" in st.gaps and "2 slices (12 particles)" in st.gaps["run 1 spill 3"]
    lost = s.rec.lost_report()
    assert (
        "run 1 spill 3: not recorded (run_unknown)" in lost[0] and "the front-end sent 240 slices" in lost[0]
    )
    assert lost[1] == "outside spills: {'run_unknown': 3}"
    out = s.feed(s.fe.run_stop())
    [doc] = [a.document for a in out if isinstance(a, PublishRunSummary)]
    assert doc["gaps"][0]["spill"] == 3 and doc["gaps"][0]["frontend"]["n_particles"] == 9_000_000
    assert [x["spill"] for x in doc["spills"]] == [4] and doc["status_counts"] == {"ok": 1}


def _run_start_fields(s) -> dict:
    msg = s.fe.run_start()
    s.fe.seq -= 1
    return {
        "run": msg.run,
        "n_samples": msg.n_samples,
        "n_channels": msg.n_channels,
        "prim_channels": msg.prim_channels,
        "info": msg.info,
    }


def test_a_reused_run_number_is_refused_and_nothing_is_overwritten() -> None:
    s = idle()
    s.env.files = {1: {1, 2, 3}}
    out = s.feed(s.fe.run_start())  # a front-end restarted with the same --run
    [ack] = sends(out)
    assert isinstance(ack, protocol.RunAck) and ack.status == ack.REFUSED
    assert "run 1 already has 3 spill file(s)" in ack.text and "spills 1-3" in ack.text
    assert losses_of(out) == {LossReason.RUN_REJECTED: 1} and s.rec.run is None
    assert "refused" in s.rec.alarms["run"]
    out = s.feed(s.fe.spill_start(1)) + s.feed(s.fe.slice(1, 0, n=3))
    assert not any(isinstance(a, OpenSpill) for a in out) and sends(out) == []  # not asked again
    assert any("run 1 refused" in line for line in s.rec.lost_report())
    # another run number is recorded
    s.fe.run = 2
    [ack] = sends(s.feed(s.fe.run_start()))
    assert ack.status == ack.ACCEPTED and s.rec.run is not None


def test_a_spill_whose_file_exists_is_not_recorded() -> None:
    s = running()
    s.env.files = {1: {1}}
    s.rec.run.existing = frozenset({1})  # as if found at RUN_START
    out = s.feed(s.fe.spill_start(1))
    assert not any(isinstance(a, OpenSpill) for a in out) and "not overwritten" in s.rec.alarms["run"]


def test_losses_between_spills_are_the_runs_not_the_next_spills() -> None:
    s = running()
    s.rec.receive(FE, [b"garbage between spills"], 1.0)  # a malformed message between spills
    s.feed(Sender(OTHER).slice(9, 0))  # and a late slice of no open spill, from someone else
    out = whole_spill(s, 1)
    [summary] = [a.summary for a in out if isinstance(a, PublishSummary)]
    assert summary.status == SpillStatus.OK
    assert summary.losses[LossReason.DECODE_ERROR] == 0 and summary.losses[LossReason.RUN_UNKNOWN] == 0
    [status] = [a.status for a in s.rec.tick(5.0) if isinstance(a, PublishStatus)]
    assert status.losses_outside_spills[LossReason.DECODE_ERROR] == 1
    assert status.losses_outside_spills[LossReason.RUN_UNKNOWN] == 1
    [doc] = [a.document for a in s.feed(s.fe.run_stop()) if isinstance(a, PublishRunSummary)]
    assert doc["losses_outside_spills"]["decode_error"] == 1 and doc["finished"]
    assert any("outside spills" in line for line in s.rec.lost_report())


def test_a_spill_cut_short_by_the_front_end_is_incomplete() -> None:
    s = running()
    s.feed(s.fe.spill_start(1))
    s.feed(s.fe.slice(1, 0))
    for frag in s.fe.fragments(s.request):
        s.feed(frag)
    end = protocol.SpillEnd(run=1, spill=1, slice_id=240, t_end_ns=2 * 10**9, **s.fe.counters)
    out = s.feed(s.fe.stamp(end))  # 1 of 240 slices: the user stopped the front-end
    [close] = [a for a in out if isinstance(a, CloseSpill)]
    assert close.final.status == "incomplete" and close.final.losses[LossReason.SPILL_CUT_SHORT] == 1
    assert "cut short" in close.final.summary["ended_by"]


def test_files_recovered_at_start_are_reported() -> None:
    s = idle()
    out = s.rec.recovered_at_start([Recovered(1, 3, "run000001_spill00003.h5", 4096, 99)], 0.5)
    [summary] = [a.summary for a in out if isinstance(a, PublishSummary)]
    assert summary.status == SpillStatus.RECOVERED and summary.n_events_written == 4096
    assert summary.losses[LossReason.DAQ_CRASH] == 1 and "recovered" in s.rec.alarms
    assert any("spill 3: recovered" in line for line in s.rec.lost_report())
    st = DaqStatus.from_json(s.rec.status(1.0).to_json())
    assert "4096 events (slices 0-99) recovered" in st.gaps["run 1 spill 3"]
    assert kinds(out) == ["PublishSummary"]
    assert np.isfinite(st.uptime_s)
