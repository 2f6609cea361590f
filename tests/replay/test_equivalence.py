"""Replay equivalence: spills recorded by the real DAQ from the real simulator, replayed by `na64 replay`
into a second real DAQ, give the same events bit for bit (see docs/replay.md for what differs and why).

Processes: na64 daq + na64 simulate (recording), then na64 daq + na64 replay (replay, once as recorded
and once with --merge-slices 4, which must change only the slice and index columns and the slice
counts), all over real ZeroMQ sockets on free loopback ports; files compared through daq.files; DQM histograms filled by the
DQM's own offline path (dqm.sources.file_messages -> dqm.batch.MonitoredEvents -> dqm.book.Book).
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from daq import detector, protocol
from daq.contract import BEAM, RANDOM
from daq.files import SpillFile, list_spill_files
from simulator.replay_spill import load_spill
from tests.conftest import free_port, na64_command, wait_daq_listening
from tests.replay.plugin import record_spills

pytestmark = pytest.mark.integration

SIM = ("--pace", "max", "--spills", "2", "--spill-length", "0.2", "--rate", "2e5", "--seed", "7")
#: recording: a prescale giving ~100 beam triggers per spill, and a random trigger every 5 ms
RECORD_SET = ("--set", "trigger.beam_prescale=400", "--set", "trigger.random_period_ns=5000000")
#: --merge-slices of the merged replay: 10 recorded slices -> 4 + 4 + 2 (the last one cut at the end)
MERGE = 4


def _daq(data: Path, extra: Sequence[str]) -> list[str]:
    return na64_command(
        "daq",
        "--endpoint",
        f"tcp://127.0.0.1:{free_port()}",
        "--publish",
        f"tcp://127.0.0.1:{free_port()}",
        "--data-dir",
        str(data),
        "--stop-after-run",
        *extra,
    )


def _endpoint(cmd: list[str]) -> str:
    return cmd[cmd.index("--endpoint") + 1]


def _run_pair(daq_cmd: list[str], fe_cmd: list[str], processes: list[subprocess.Popen[bytes]]) -> str:
    """The DAQ, and once it listens the replay (a replay at --pace max that starts first can be done with a
    spill before a slow-starting DAQ reads its first slice)."""
    log = Path(tempfile.mkstemp(suffix=".daq.log")[1])
    with log.open("wb") as out:
        daq = subprocess.Popen(daq_cmd, stdout=out, stderr=subprocess.STDOUT)
    processes.append(daq)
    wait_daq_listening(daq, log)
    fe = subprocess.Popen(fe_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes.append(fe)
    fe_out = fe.communicate(timeout=120)[0].decode()
    daq.wait(timeout=60)
    daq_out = log.read_text()
    log.unlink()
    assert fe.returncode == 0, fe_out
    assert daq.returncode == 0, daq_out
    return fe_out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    """Two spills recorded by the real chain, and the DAQ settings for replaying them."""
    root = tmp_path_factory.mktemp("equivalence")
    recorded = record_spills(root / "recorded", SIM, RECORD_SET)
    settings = subprocess.run(
        na64_command("replay", str(root / "recorded"), "--print-daq-settings"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return root, recorded, shlex.split(settings.splitlines()[0])


class Replay(NamedTuple):
    recorded: list[Path]
    replayed: list[Path]
    out: str  # the replay's output
    merge: int  # --merge-slices


def _replay(recording: tuple[Path, list[Path], list[str]], merge: int) -> Replay:
    """Replay the recording with ``--pace max --merge-slices merge`` into a fresh DAQ."""
    root, recorded, set_args = recording
    out_dir = root / f"replayed-merge{merge}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rep_daq = _daq(out_dir, set_args)
        merge_args = ("--merge-slices", str(merge)) if merge != 1 else ()  # 1: the default, not given
        fe = na64_command(
            "replay", str(root / "recorded"), "--pace", "max", "--endpoint", _endpoint(rep_daq), *merge_args
        )
        out = _run_pair(rep_daq, fe, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return Replay(recorded, list_spill_files(out_dir), out, merge)


@pytest.fixture(scope="module")
def plain_replay(recording: tuple[Path, list[Path], list[str]]) -> Replay:
    return _replay(recording, 1)


@pytest.fixture(scope="module")
def merged_replay(recording: tuple[Path, list[Path], list[str]]) -> Replay:
    return _replay(recording, MERGE)


@pytest.fixture(scope="module", params=[1, MERGE], ids=["merge1", f"merge{MERGE}"])
def replay(request: pytest.FixtureRequest) -> Replay:
    """The plain replay and the one with --merge-slices MERGE (each test runs on both)."""
    name = "plain_replay" if request.param == 1 else "merged_replay"
    result: Replay = request.getfixturevalue(name)
    return result


#: what the DAQ reconstructed (the pulse fit, with the pile-up neighbours it used) and the raw data
RECO = (
    "energy",
    "amplitude",
    "peak_time",
    "pileup",
    "chi2",
    "n_pulses",
    "nb_count",
    "nb_dt_ns",
    "nb_amp",
    "waveforms",
)


def _read(path: Path) -> dict[str, Any]:
    with SpillFile(path) as f:
        return {
            "events": f.events(),
            "energy": f.energy(),
            "amplitude": f.amplitude(),
            "peak_time": f.peak_time(),
            "pileup": f.pileup(),
            "chi2": f.chi2(),
            "n_pulses": f.n_pulses(),
            **{f"nb_{k}": v for k, v in (f.neighbours() or {}).items()},
            "waveforms": f.waveforms(),
            "prim": f.primitives(),
            "counters": f.counters,
            "losses": f.losses,
            "frontend": f.frontend,
            "status": f.status,
            "trigger": f.trigger_config,
            "calibration_id": f.attrs["calibration_id"],
        }


def test_the_replay_settings_are_the_recorded_ones_with_every_s_trig_particle_a_beam_trigger(
    replay: Replay,
) -> None:
    assert len(replay.recorded) == len(replay.replayed) == 2
    assert "replayed 2 spills" in replay.out and "skipped 0 files" in replay.out
    a, b = _read(replay.recorded[0]), _read(replay.replayed[0])
    assert b["trigger"] == {**a["trigger"], "beam_prescale": 1}
    assert a["trigger"]["beam_prescale"] == 400 and a["trigger"]["random_period_ns"] == 5_000_000


#: what --merge-slices changes (the counts of slices and of their requests and fragments)
SLICE_COUNTS = ("n_slices", "n_requests", "n_fragments")


@pytest.mark.parametrize("k", [0, 1])
def test_replayed_spill_gives_the_recorded_events_bit_for_bit(replay: Replay, k: int) -> None:
    a, b = _read(replay.recorded[k]), _read(replay.replayed[k])
    merge = replay.merge
    ea, eb = a["events"], b["events"]
    assert a["status"] == b["status"] == "ok"
    assert sum(v for key, v in b["losses"].items() if key != "dead_time") == 0, b["losses"]
    n = ea["event_id"].size
    mask = ea["trigger_mask"]
    assert n > 100 and np.count_nonzero(mask & 1) > 10 and np.count_nonzero(mask & BEAM) > 10
    assert np.count_nonzero(mask & RANDOM) > 10
    # same events, same order, same ids, same times; slices: the recorded one (merged: its merged slice)
    for col in (
        "event_id",
        "t_ns",
        "missing_groups",
        "e_prs",
        "e_ecal",
        "e_hcal",
        "e_veto",
        "e_srd",
        "e_miss",
    ):
        np.testing.assert_array_equal(eb[col], ea[col], err_msg=col)
    np.testing.assert_array_equal(eb["slice"], ea["slice"] // merge)
    # trigger masks: identical except the BEAM bit, which every particle event carries after replay
    particle = ea["index"] != protocol.NO_PARTICLE
    np.testing.assert_array_equal(eb["trigger_mask"], np.where(particle, mask | BEAM, mask))
    # reconstruction and raw data, bit for bit
    for name in RECO:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    np.testing.assert_array_equal(b["prim"]["t_ns"], a["prim"]["t_ns"])
    np.testing.assert_array_equal(b["prim"]["amp"], a["prim"]["amp"])
    np.testing.assert_array_equal(b["prim"]["channels"], a["prim"]["channels"])
    # index: position among the *recorded* particles of the replayed slice (the others were never
    # recorded), in (recorded slice, index) order
    merged = ea["slice"] // merge
    for s in np.unique(merged[particle]):
        sel = particle & (merged == s)
        rank = np.argsort(np.lexsort((ea["index"][sel], ea["slice"][sel])))
        np.testing.assert_array_equal(eb["index"][sel], rank)
    np.testing.assert_array_equal(eb["index"][~particle], ea["index"][~particle])
    assert merge == 1 or np.unique(eb["slice"]).size < np.unique(ea["slice"]).size  # slices were merged
    # counters: same triggers except beam; EOT and particles count only the recorded particles
    ca, cb = a["counters"], b["counters"]
    for key in ("n_accepted", "n_events_written", "triggers_physics", "triggers_random"):
        assert cb[key] == ca[key], key
    assert cb["triggers_beam"] == int(particle.sum()) >= ca["triggers_beam"]
    assert cb["n_beam"] == cb["n_particles"] == int(particle.sum()) < ca["n_beam"]
    assert b["frontend"]["n_events_read"] == n and b["frontend"]["n_particles"] == int(particle.sum())
    assert b["calibration_id"] == a["calibration_id"]
    # slice counts: one slice per `merge` recorded ones (the last one shorter), a request per slice,
    # a fragment per readout group and request, on both sides of the wire
    n_slices = -(-ca["n_slices"] // merge)
    assert (
        ca["n_requests"] == ca["n_slices"] > merge and ca["n_fragments"] == ca["n_slices"] * detector.N_GROUPS
    )
    assert merge == 1 or ca["n_slices"] % merge  # the last merged slice is cut at the end of the spill
    for counts in (cb, b["frontend"]):
        assert (counts["n_slices"], counts["n_requests"], counts["n_fragments"]) == (
            n_slices,
            n_slices,
            n_slices * detector.N_GROUPS,
        )


@pytest.mark.parametrize("k", [0, 1])
def test_a_merged_replay_differs_from_the_plain_one_only_in_slice_index_and_slice_counts(
    plain_replay: Replay, merged_replay: Replay, k: int
) -> None:
    a, b = _read(plain_replay.replayed[k]), _read(merged_replay.replayed[k])
    assert a["events"].keys() == b["events"].keys() and a.keys() == b.keys()
    for col in a["events"].keys() - {"slice", "index"}:
        np.testing.assert_array_equal(b["events"][col], a["events"][col], err_msg=col)
    for name in RECO:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    for key in a["prim"]:
        np.testing.assert_array_equal(b["prim"][key], a["prim"][key], err_msg=key)
    for group in ("counters", "frontend"):
        assert {k: v for k, v in b[group].items() if k not in SLICE_COUNTS} == {
            k: v for k, v in a[group].items() if k not in SLICE_COUNTS
        }, group
        assert b[group]["n_slices"] < a[group]["n_slices"]
    for name in ("losses", "status", "trigger", "calibration_id"):
        assert b[name] == a[name], name
    assert _book(merged_replay.replayed[k]) == _book(plain_replay.replayed[k])
    # the replayed file records its slice length (the replay's RUN_START info): it replays as it was made
    with load_spill(plain_replay.recorded[k]) as rec, load_spill(merged_replay.replayed[k]) as rep:
        assert (rep.slice_ns, rep.n_slices) == (MERGE * rec.slice_ns, b["counters"]["n_slices"])


def _book(path: Path, add_beam_bit: bool = False) -> Any:
    """The DQM histograms of one file through the DQM's own offline path (file_messages -> Book.fill)."""
    from dqm.batch import MonitoredEvents
    from dqm.book import Book, BookSpec
    from dqm.sources import file_messages

    book = Book(BookSpec())
    for msg in file_messages([path]):
        if isinstance(msg, protocol.Events):
            if add_beam_bit:  # the original events as the replay DAQ labels them
                m = msg.trigger_mask
                msg = dataclasses.replace(
                    msg, trigger_mask=np.where((m & RANDOM) == 0, m | BEAM, m).astype(np.uint32)
                )
            book.fill(MonitoredEvents.from_events(msg))
    return book.to_dict()


@pytest.mark.parametrize("k", [0, 1])
def test_dqm_histograms_of_the_replay_equal_the_recorded_ones(replay: Replay, k: int) -> None:
    orig, rep = _book(replay.recorded[k]), _book(replay.replayed[k])
    # everything that does not select on the BEAM bit is identical bit for bit
    for name in ("e_miss", "ecal_sum_phys", "hcal_sum_phys", "veto_mip_phys"):
        assert rep["h1"][name] == orig["h1"][name], name
    assert rep["h2"] == orig["h2"] and rep["spectra"] == orig["spectra"]
    by_type = {"n_type", "hits", "esum"}  # physics / beam (/ random) rows
    for name in rep["arrays"].keys() - by_type:
        assert rep["arrays"][name] == orig["arrays"][name], name
    for name in by_type:
        assert rep["arrays"][name][0] == orig["arrays"][name][0], name  # the physics row
    assert sum(map(sum, orig["h1"].values())) > 0
    # and with the BEAM bit set on every recorded particle, the original fills exactly the replay's book
    assert rep == _book(replay.recorded[k], add_beam_bit=True)
