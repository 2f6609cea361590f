"""``na64 daq`` as a real process, driven by a test front-end over real ZeroMQ sockets.

Every test reads the spill files back through ``daq.files`` and the spill summaries from the DAQ's
publish socket, and checks them against what the front-end sent.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daq import detector, protocol
from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_TRIG
from daq.files import SpillFile, list_spill_files, spill_filename
from daq.protocol import NO_PARTICLE
from daq.summary import DaqStatus, SpillSummary
from tests.daq.frontend import FakeFrontEnd, Listener

pytestmark = pytest.mark.integration

DATA_LOSSES = (
    "sequence_gap",
    "duplicate",
    "decode_error",
    "fragment_timeout",
    "empty_fragment",
    "truncated_fragment",
    "unexpected_fragment",
    "spill_counter_mismatch",
    "write_error",
    "request_failed",
    "unexpected_message",
    "spill_end_missing",
)


def only_dead_time(losses: dict[str, int]) -> bool:
    return all(v == 0 for k, v in losses.items() if k not in ("dead_time", "monitor_skipped"))


def test_clean_run_files_match_what_the_frontend_sent(daq_factory: Any, tmp_path: Path) -> None:
    daq = daq_factory(
        "--set", "trigger.beam_prescale=50", "--set", "trigger.random_period_ns=400000", "--stop-after-run"
    )
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=7, seed=3)
    try:
        fe.run_start()
        sent = {1: fe.clean_spill(1, n_slices=4, n=1500), 2: fe.clean_spill(2, n_slices=3, n=1500)}
        counters = {2: fe.counters.__dict__.copy()}
        fe.run_stop(2)
        summaries = {sp: lis.wait_summary(7, sp) for sp in (1, 2)}
        assert daq.proc.wait(30) == 0, daq.output()  # --stop-after-run
        lis.pump(0.3)
    finally:
        fe.close()
        lis.close()
    paths = list_spill_files(daq.data_dir)
    assert [p.name for p in paths] == [spill_filename(7, 1), spill_filename(7, 2)]
    assert not list(daq.data_dir.glob(".*partial"))
    for spill, path in zip((1, 2), paths, strict=True):
        s = summaries[spill]
        SpillSummary.from_dict(s)  # every field of its version, each of its type
        assert s["status"] == "ok", s
        assert s["file"] == path.name
        assert only_dead_time(s["losses"]), s["losses"]
        slices = sent[spill]
        n_particles = sum(x.t_ns.size for x in slices)
        eot = sum(int(np.count_nonzero(x.strig)) for x in slices)
        assert s["n_particles"] == n_particles
        assert s["n_beam"] == eot  # EOT = S_trig count of every particle
        assert s["n_events_written"] == s["n_accepted"] > 0
        assert s["triggers"]["beam"] > 0 and s["triggers"]["random"] > 0 and s["triggers"]["physics"] > 0
        assert s["frontend"]["n_events_read"] == s["n_accepted"]
        hist = s["histograms"]
        assert sum(hist["arrival_time"]["counts"]) == n_particles
        assert sum(hist["ecal_block_gev"]["counts"]) == n_particles
        assert sum(hist["prs_block_gev"]["counts"]) == n_particles
        assert len(hist["arrival_time"]["counts"]) == 100
        with SpillFile(path) as f:
            assert f.run == 7 and f.spill == spill and f.status == "ok"
            assert f.attrs["n_beam"] == eot and f.attrs["n_triggers"] == f.n_events == s["n_accepted"]
            assert f.attrs["calibration_id"] == "nominal-v1"
            assert f.config["trigger"]["beam_prescale"] == 50
            assert f.trigger_config["ecal_max_gev"] == 80.0
            assert f.attrs["trigger_prs_min_gev"] == pytest.approx(0.3)
            assert f.frontend_info["name"] == "test-frontend"
            assert np.array_equal(f.channels, detector.CHANNELS)
            assert f.counters["n_events_written"] == f.n_events
            assert SpillSummary.from_dict(f.summary()).n_beam == eot  # the file's summary is complete
            ev = f.events()
            prim = f.primitives()
            wf = f.waveforms()
            energy = f.energy()
            assert np.all(np.diff(ev["event_id"].astype(np.int64)) > 0)
            # every event's primitives and waveforms are exactly what was sent for that entry
            for i in range(f.n_events):
                sl = slices[int(ev["slice"][i])]
                idx = int(ev["index"][i])
                index, req_t, waves = fe.answered[(spill, int(ev["slice"][i]))]
                pos = np.flatnonzero((index == idx) & (req_t == ev["t_ns"][i]))[0]
                assert np.array_equal(wf[i], waves[pos])
                m = int(ev["trigger_mask"][i])
                if idx == NO_PARTICLE:
                    assert m == RANDOM and not prim["amp"][:, i].any()
                else:
                    assert np.array_equal(prim["amp"][:, i], sl.amp[:, idx])
                    assert prim["t_ns"][i] == sl.t_ns[idx] == ev["t_ns"][i]
                    assert m & S_TRIG and m & (PHYSICS | BEAM)
                    if m & PHYSICS:
                        assert m & S_EC
            # energies: physics events are below 80 GeV in the ECAL block, sums are consistent
            phys = (ev["trigger_mask"] & PHYSICS) != 0
            block = [detector.ecal_id(x, y) for x, y in detector.block_cells()]
            assert np.all(energy[phys][:, block].sum(axis=1) < 80.5)
            assert np.allclose(ev["e_ecal"], energy[:, detector.ECAL_IDS].sum(1) + ev["e_prs"], atol=1e-3)
            assert np.allclose(ev["e_miss"], 100.0 - ev["e_ecal"], atol=1e-3)
            rnd = ev["index"] == NO_PARTICLE
            assert rnd.any() and np.all(ev["e_ecal"][rnd] == 0)  # pedestal-only windows
            hists = f.histograms()
            assert hists["arrival_time"][0].sum() == n_particles
    # the front-end's own counters agree with the DAQ's
    assert summaries[2]["frontend"]["n_slices"] == counters[2]["n_slices"] == 3


def _policy(bad: dict[int, tuple[int, str]]) -> Callable[[protocol.ReadoutRequest, int], str]:
    """Answer policy: ``bad[slice_id] = (group, what)``, everything else ok."""

    def policy(req: protocol.ReadoutRequest, group: int) -> str:
        g, what = bad.get(req.slice_id, (-1, "ok"))
        return what if g == group else "ok"

    return policy


def test_every_fault_is_counted_and_the_daq_goes_on(daq_factory: Any) -> None:
    daq = daq_factory("--fragment-timeout", "0.5", "--set", "trigger.beam_prescale=50")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=3, seed=5)
    try:
        fe.run_start()
        fe.spill_start(1)
        slices = [fe.make_slice(i, 1500) for i in range(8)]
        bad = {4: (2, "empty"), 5: (3, "truncated"), 6: (4, "drop"), 7: (0, "twice")}
        policy = _policy(bad)
        fe.send_slice(slices[0])
        fe.serve(1)
        fe.skip_seq(2)  # two messages "lost"
        fe.send_slice(slices[1])
        fe.serve(1)
        frames = fe.send_slice(slices[2])
        fe.send_raw([bytes(f) for f in frames])  # the same message again: duplicate
        fe.serve(1)
        fe.send_slice(slices[2])  # same slice id, new sequence number: duplicate slice
        # malformed messages: bad magic and bad checksum (each uses a sequence number), a cut header
        hb = fe.frames(protocol.Heartbeat(uptime_ns=5, state=1))
        fe.send_raw([b"XXXX" + bytes(hb[0])[4:]])
        corrupt = bytearray(fe.frames(protocol.Heartbeat(uptime_ns=6, state=1))[0])
        corrupt[-1] ^= 0xFF
        fe.send_raw([bytes(corrupt)])
        fe.send_raw([b"NA64"])
        fe.send_raw([b""])
        for s in slices[3:]:
            fe.send_slice(s)
            fe.answer(fe.recv_request(), policy)
        # a fragment nobody asked for
        fe.send(protocol.Fragment(run=3, spill=1, slice_id=99, source=1))
        reqs = {r.slice_id: r for r in fe.requests}
        k = {i: reqs[i].n_events for i in range(8)}
        assert all(v > 2 for v in k.values())
        n_particles = sum(s.t_ns.size for s in slices)
        fe.spill_end(
            n_slices=8,
            n_requests=8,
            n_fragments=47,
            n_events_read=sum(k.values()),
            n_particles=n_particles + 5,
        )
        s1 = lis.wait_summary(3, 1)
        fe.clean_spill(2, n_slices=2, n=800)  # the DAQ goes on
        s2 = lis.wait_summary(3, 2)
        status = lis.wait_status(lambda d: d["spills_run"] == 2)
    finally:
        fe.close()
        lis.close()
    assert daq.stop() == 1, daq.output()  # data was lost: not a success (issue 16)
    assert "lost: run 3 spill 1: incomplete" in daq.output()
    losses = s1["losses"]
    expected = {
        "sequence_gap": 2,
        "duplicate": 2,
        "decode_error": 4,
        "decode_error.bad_magic": 1,
        "decode_error.checksum": 1,
        "decode_error.length": 2,
        "empty_fragment": 1,
        "truncated_fragment": 1,
        "fragment_timeout": 1,
        "unexpected_fragment": 2,
        "spill_counter_mismatch": 1,
    }
    assert {key: losses.get(key, 0) for key in expected} == expected, losses
    assert s1["status"] == "incomplete"
    assert s1["n_events_written"] == s1["n_accepted"] == sum(k.values())
    assert s1["counters"]["n_events_incomplete"] == k[4] + k[5] + k[6]
    assert s1["n_particles"] == n_particles and s1["frontend"]["n_particles"] == n_particles + 5
    assert s2["status"] == "ok" and only_dead_time(s2["losses"])
    # run totals in the status document
    DaqStatus.from_dict(status)  # every field of its version, each of its type
    assert status["losses_run"]["decode_error"] == 4 and status["spills_run"] == 2
    assert status["state"] == "running" and status["run"] == 3
    # the events with missing groups are flagged and hold zeros for them
    with SpillFile(daq.data_dir / spill_filename(3, 1)) as f:
        assert f.status == "incomplete" and f.losses["empty_fragment"] == 1
        ev = f.events(["slice", "missing_groups"])
        wf = f.waveforms()
        for sl, (g, _what) in list(bad.items())[:3]:
            rows = ev["slice"] == sl
            assert rows.sum() == k[sl]
            assert np.all(ev["missing_groups"][rows] == 1 << g)
            assert not wf[rows][:, detector.GROUP_IDS[g]].any()
            assert wf[rows][:, detector.GROUP_IDS[(g + 1) % 6]].any()
        assert not ev["missing_groups"][ev["slice"] == 7].any()  # a duplicated fragment harms nothing
    out = daq.output()
    assert out.count("loss empty_fragment") == 1  # logged once per spill, not per event
    assert "Traceback" not in out


def test_sigterm_mid_spill_closes_the_file_as_incomplete(daq_factory: Any) -> None:
    daq = daq_factory()
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=4)
    try:
        fe.run_start()
        fe.spill_start(1)
        for i in range(3):
            fe.send_slice(fe.make_slice(i, 1000))
            fe.serve(1)
        n = sum(r.n_events for r in fe.requests)
        lis.pump(0.5)
        assert daq.stop(signal.SIGTERM) == 1, daq.output()  # the spill was cut short: not a success
        s = lis.wait_summary(4, 1, timeout_s=5)
    finally:
        fe.close()
        lis.close()
    assert s["status"] == "incomplete" and s["ended_by"] == "stopped"
    assert not list(daq.data_dir.glob(".*partial"))
    with SpillFile(daq.data_dir / spill_filename(4, 1)) as f:
        assert f.status == "incomplete" and f.n_events == n == s["n_events_written"]
        assert f.counters["n_slices"] == 3


def test_spill_not_recorded_when_the_disk_is_nearly_full(daq_factory: Any) -> None:
    daq = daq_factory("--min-free-mb", "1e12")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=5)
    try:
        fe.run_start()
        fe.clean_spill(1, n_slices=2, n=500)
        s = lis.wait_summary(5, 1)
        status = lis.wait_status(lambda d: d["spills_run"] == 1)
    finally:
        fe.close()
        lis.close()
    assert daq.stop() == 1
    assert s["status"] == "failed" and s["file"] is None and s["n_events_written"] == 0
    assert s["losses"]["write_error"] == s["n_accepted"] > 0
    assert "disk" in status["alarms"]
    assert not list(daq.data_dir.glob("*.h5")) and (daq.data_dir / "run000005_summary.json").exists()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_500_000, 2_500_000))


def test_write_error_closes_the_spill_incomplete_and_the_next_spill_is_recorded(daq_factory: Any) -> None:
    """A real write error: the DAQ process may not write files larger than 2.5 MB (RLIMIT_FSIZE; an
    unfiltered chunked dataset takes its whole first chunk, so even a spill of a few events needs ~1.7 MB)."""
    daq = daq_factory("--set", "trigger.beam_prescale=3", preexec=_limit_file_size)
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=6)
    try:
        fe.run_start()
        fe.clean_spill(1, n_slices=8, n=1000)  # ~1200 events x 7 kB (~2 kB compressed): too large
        s1 = lis.wait_summary(6, 1)
        fe.clean_spill(2, n_slices=1, n=20)  # a few events: fits
        s2 = lis.wait_summary(6, 2)
        status = lis.wait_status(lambda d: d["spills_run"] == 2)
    finally:
        fe.close()
        lis.close()
    assert daq.stop() == 1, daq.output()
    # closed with what was on disk: no whole block of 4096 events, so its records and no events
    assert s1["status"] == "incomplete" and s1["file"] == spill_filename(6, 1)
    assert s1["n_events_written"] == 0 and s1["losses"]["write_error"] == s1["n_accepted"] > 100
    assert "File too large" in s1["failure"] or "No space left" in s1["failure"]
    assert "write" not in status["alarms"]  # cleared by the good spill 2
    assert status["losses_run"]["write_error"] == s1["n_accepted"]
    assert s2["status"] == "ok" and s2["n_events_written"] == s2["n_accepted"] > 0
    assert [p.name for p in list_spill_files(daq.data_dir)] == [spill_filename(6, 1), spill_filename(6, 2)]
    assert not list(daq.data_dir.glob(".*partial"))


def test_monitor_sampling_is_counted_and_never_touches_the_recorded_path(daq_factory: Any) -> None:
    daq = daq_factory("--set", "monitor.max_events_per_batch=7", "--set", "monitor.batches_per_s=50")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=8)
    try:
        fe.run_start()
        fe.clean_spill(1, n_slices=4, n=1000)
        s = lis.wait_summary(8, 1)
        lis.pump(0.5)
    finally:
        fe.close()
        lis.close()
    assert daq.stop() == 0
    assert s["status"] == "ok" and s["n_events_written"] == s["n_accepted"]
    got = sum(m.n_events for m in lis.events)
    skipped = s["losses"]["monitor_skipped"]
    assert got + skipped == s["n_accepted"] and skipped > 0
    assert sum(m.n_skipped for m in lis.events) <= skipped
    last = lis.events[-1]
    assert last.waveforms.shape == (1, detector.N_CHANNELS, detector.N_SAMPLES)
    assert last.energy.shape == (last.n_events, detector.N_CHANNELS) and last.sums.shape == (6, last.n_events)
    with SpillFile(daq.data_dir / spill_filename(8, 1)) as f:
        ev = f.events(["event_id"])
        row = int(np.flatnonzero(ev["event_id"] == last.event_id[-1])[0])
        assert np.array_equal(f.waveforms([row])[0], last.waveforms[0])
        assert np.allclose(f.energy([row])[0], last.energy[-1])


def test_calibration_from_a_directory_is_selected_per_run(daq_factory: Any, tmp_path: Path) -> None:
    """``--calibration DIR`` takes the directory's constants files; the one valid for the run is used."""
    from calibration import constants as cc

    cal = tmp_path / "constants"
    cal.mkdir()
    cc.save(cc.nominal().replace(version="old-v1", run_min=0, run_max=6), cal / "a.json")
    cc.save(cc.nominal().replace(version="run7-v2", run_min=7, run_max=None), cal / "b.json")
    daq = daq_factory("--calibration", str(cal), "--stop-after-run")
    fe = FakeFrontEnd(daq.endpoint, run=7, seed=3)
    try:
        fe.run_start()
        fe.clean_spill(1, n_slices=1, n=300)
        fe.run_stop(1)
        assert daq.proc.wait(30) == 0, daq.output()
    finally:
        fe.close()
    (path,) = list_spill_files(daq.data_dir)
    with SpillFile(path) as f:
        assert f.attrs["calibration_id"] == "run7-v2"


def test_a_run_without_usable_calibration_is_not_recorded(daq_factory: Any, tmp_path: Path) -> None:
    """Constants valid only for runs 10-20 and a front-end starting run 7: the DAQ records nothing of it (no
    fallback to nominal constants), says why in its status (the DQM's calibration alarm) and exits 2 with
    one line. A later run with usable constants is recorded by a DAQ that keeps running."""
    from calibration import constants as cc

    cc.save(cc.nominal().replace(version="runs10-20", run_min=10, run_max=20), tmp_path / "c.json")
    daq = daq_factory("--calibration", str(tmp_path / "c.json"))
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=7, seed=3)
    try:
        fe.run_start()
        fe.spill_start(1)
        fe.send_slice(fe.make_slice(0, 300))
        status = lis.wait_status(lambda d: (d.get("calibration") or {}).get("run") == 7)
        assert status["calibration"]["usable"] is False and status["calibration"]["id"] is None
        assert "no calibration set is valid for run 7" in status["calibration"]["problem"]
        assert "not recorded" in status["alarms"]["calibration"] and status["state"] == "idle"
        # the DQM's calibration alarm reads this status document
        from dqm.checks import CalibrationCheck, LiveContext, State

        alarm = CalibrationCheck().evaluate(LiveContext(10.0, DaqStatus.from_dict(status), 0.1, None))
        assert alarm.state is State.ERROR and "run 7 has no usable calibration" in alarm.message
        fe.spill_end()
        fe.run_stop(1)
        # the next run has constants: it is recorded with them, and the alarm is gone
        fe.run = 12
        fe.run_start()
        fe.clean_spill(1, n_slices=1, n=300)
        fe.run_stop(1)
        lis.wait_summary(12, 1)
        ok = lis.wait_status(lambda d: (d.get("calibration") or {}).get("run") == 12)
        assert ok["calibration"]["usable"] is True and ok["calibration"]["id"] == "runs10-20"
        assert "calibration" not in ok["alarms"]
    finally:
        fe.close()
        lis.close()
    assert daq.stop() == 2  # a run was not recorded: no success exit
    (path,) = list_spill_files(daq.data_dir)
    with SpillFile(path) as f:
        assert f.run == 12 and f.attrs["calibration_id"] == "runs10-20"
    errors = [ln for ln in daq.output().splitlines() if ln.startswith("na64 daq: error:")]
    assert errors == [
        "na64 daq: error: run 7: no calibration set is valid for run 7 (have c.json (10..20)): not recorded; "
        "--calibration nominal records with nominal constants"
    ]


def test_with_stop_after_run_a_refused_run_ends_the_daq_at_once(daq_factory: Any, tmp_path: Path) -> None:
    """The constants file became unreadable after start-up: the run is refused and the DAQ, started for that
    one run, exits 2 at its RUN_START without a spill file."""
    from calibration import constants as cc

    cal = tmp_path / "c.json"
    cc.save(cc.nominal().replace(version="v1", run_min=0), cal)
    daq = daq_factory("--calibration", str(cal), "--stop-after-run")
    cal.write_text("{ not json")
    fe = FakeFrontEnd(daq.endpoint, run=3, seed=3)
    try:
        fe.run_start()
        assert daq.proc.wait(30) == 2, daq.output()
    finally:
        fe.close()
    assert not list_spill_files(daq.data_dir) if daq.data_dir.exists() else True
    (line,) = [ln for ln in daq.output().splitlines() if ln.startswith("na64 daq: error:")]
    assert line.startswith(f"na64 daq: error: run 3: calibration file {cal} is not valid JSON")


def test_nominal_constants_are_recorded_only_when_asked_for(daq_factory: Any, tmp_path: Path) -> None:
    """``--calibration nominal``: recorded with nominal-v1, and the status says they were asked for."""
    daq = daq_factory("--calibration", "nominal", "--stop-after-run")
    lis = Listener(daq.publish)
    fe = FakeFrontEnd(daq.endpoint, run=5, seed=3)
    try:
        fe.run_start()
        fe.clean_spill(1, n_slices=1, n=300)
        status = lis.wait_status(lambda d: (d.get("calibration") or {}).get("run") == 5)
        fe.run_stop(1)
        assert daq.proc.wait(30) == 0, daq.output()
    finally:
        fe.close()
        lis.close()
    assert status["calibration"]["source"] == "nominal (asked for)" and status["calibration"]["usable"]
    (path,) = list_spill_files(daq.data_dir)
    with SpillFile(path) as f:
        assert f.attrs["calibration_id"] == "nominal-v1"
