"""Replay equivalence: spills recorded by the real DAQ from the real simulator, replayed by `na64 replay`
into a second real DAQ, give the same events bit for bit (see docs/replay.md for what differs and why).

Processes: na64 daq + na64 simulate (recording), then na64 daq + na64 replay (replay), all over real
ZeroMQ sockets on free loopback ports; files compared through daq.files; DQM histograms filled by the
DQM's own offline path (dqm.sources.file_messages -> dqm.batch.Batch -> dqm.book.Book).
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daq import protocol
from daq.files import SpillFile, list_spill_files
from daq.trigger import BEAM, RANDOM
from tests.conftest import free_port, na64_command
from tests.replay.plugin import record_spills

pytestmark = pytest.mark.integration

SIM = ("--pace", "max", "--spills", "2", "--spill-length", "0.2", "--rate", "2e5", "--seed", "7")
#: recording: a prescale giving ~100 beam triggers per spill, and a random trigger every 5 ms
RECORD_SET = ("--set", "trigger.beam_prescale=400", "--set", "trigger.random_period_ns=5000000")


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
    daq = subprocess.Popen(daq_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes.append(daq)
    fe = subprocess.Popen(fe_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes.append(fe)
    fe_out = fe.communicate(timeout=120)[0].decode()
    daq_out = daq.communicate(timeout=60)[0].decode()
    assert fe.returncode == 0, fe_out
    assert daq.returncode == 0, daq_out
    return fe_out


@pytest.fixture(scope="module")
def recorded_and_replayed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[Path], list[Path], str]]:
    root = tmp_path_factory.mktemp("equivalence")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        recorded = record_spills(root / "recorded", SIM, RECORD_SET)
        settings = subprocess.run(
            na64_command("replay", str(root / "recorded"), "--print-daq-settings"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        set_args = shlex.split(settings.splitlines()[0])
        rep_daq = _daq(root / "replayed", set_args)
        out = _run_pair(
            rep_daq,
            na64_command("replay", str(root / "recorded"), "--pace", "max", "--endpoint", _endpoint(rep_daq)),
            procs,
        )
        yield recorded, list_spill_files(root / "replayed"), out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _read(path: Path) -> dict[str, Any]:
    with SpillFile(path) as f:
        return {
            "events": f.events(),
            "energy": f.energy(),
            "amplitude": f.amplitude(),
            "peak_time": f.peak_time(),
            "pileup": f.pileup(),
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
    recorded_and_replayed: tuple[list[Path], list[Path], str],
) -> None:
    recorded, replayed, out = recorded_and_replayed
    assert len(recorded) == len(replayed) == 2
    assert "replayed 2 spills" in out and "skipped 0 files" in out
    a, b = _read(recorded[0]), _read(replayed[0])
    assert b["trigger"] == {**a["trigger"], "beam_prescale": 1}
    assert a["trigger"]["beam_prescale"] == 400 and a["trigger"]["random_period_ns"] == 5_000_000


@pytest.mark.parametrize("k", [0, 1])
def test_replayed_spill_gives_the_recorded_events_bit_for_bit(
    recorded_and_replayed: tuple[list[Path], list[Path], str], k: int
) -> None:
    recorded, replayed, _ = recorded_and_replayed
    a, b = _read(recorded[k]), _read(replayed[k])
    ea, eb = a["events"], b["events"]
    assert a["status"] == b["status"] == "ok"
    assert sum(v for key, v in b["losses"].items() if key != "dead_time") == 0, b["losses"]
    n = ea["event_id"].size
    mask = ea["trigger_mask"]
    assert n > 100 and np.count_nonzero(mask & 1) > 10 and np.count_nonzero(mask & BEAM) > 10
    assert np.count_nonzero(mask & RANDOM) > 10
    # same events, same order, same ids, same times, same slices
    for col in (
        "event_id",
        "slice",
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
    # trigger masks: identical except the BEAM bit, which every particle event carries after replay
    particle = ea["index"] != protocol.NO_PARTICLE
    np.testing.assert_array_equal(eb["trigger_mask"], np.where(particle, mask | BEAM, mask))
    # reconstruction and raw data, bit for bit
    for name in ("energy", "amplitude", "peak_time", "pileup", "waveforms"):
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    np.testing.assert_array_equal(b["prim"]["t_ns"], a["prim"]["t_ns"])
    np.testing.assert_array_equal(b["prim"]["amp"], a["prim"]["amp"])
    np.testing.assert_array_equal(b["prim"]["channels"], a["prim"]["channels"])
    # index: position among the *recorded* particles of the slice (the others were never recorded)
    for s in np.unique(ea["slice"][particle]):
        sel = particle & (ea["slice"] == s)
        rank = np.argsort(np.argsort(ea["index"][sel]))
        np.testing.assert_array_equal(eb["index"][sel], rank)
    np.testing.assert_array_equal(eb["index"][~particle], ea["index"][~particle])
    # counters: same triggers except beam; EOT and particles count only the recorded particles
    ca, cb = a["counters"], b["counters"]
    for key in ("n_accepted", "n_events_written", "triggers_physics", "triggers_random", "n_slices"):
        assert cb[key] == ca[key], key
    assert cb["triggers_beam"] == int(particle.sum()) >= ca["triggers_beam"]
    assert cb["n_beam"] == cb["n_particles"] == int(particle.sum()) < ca["n_beam"]
    assert b["frontend"]["n_events_read"] == n and b["frontend"]["n_particles"] == int(particle.sum())
    assert b["calibration_id"] == a["calibration_id"]


def _book(path: Path, add_beam_bit: bool = False) -> Any:
    """The DQM histograms of one file through the DQM's own offline path (file_messages -> Book.fill)."""
    from dqm.batch import Batch
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
            book.fill(Batch.from_events(msg))
    return book.to_dict()


@pytest.mark.parametrize("k", [0, 1])
def test_dqm_histograms_of_the_replay_equal_the_recorded_ones(
    recorded_and_replayed: tuple[list[Path], list[Path], str], k: int
) -> None:
    recorded, replayed, _ = recorded_and_replayed
    orig, rep = _book(recorded[k]), _book(replayed[k])
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
    assert rep == _book(recorded[k], add_beam_bit=True)
