"""Parallel offline runs (dask.distributed, real local clusters) and merging per-spill results."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boost_histogram as bh
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq.files import partial_filename
from daq.offline import (
    MergeError,
    collect_spill_files,
    map_spills,
    merge,
    merge_all,
    spill_counts,
)
from daq.retrigger import retrigger_file
from tests.replay.synth import make_spill


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("offline")
    for s in (1, 2, 3, 4):
        make_spill(d, spill=s, n_particles=3000, n_slices=4, seed=10 + s)
    (d / "run000001_spill00005.h5").write_bytes(b"garbage, not HDF5")
    (d / partial_filename(1, 6)).write_bytes(b"")
    return d


# ---------------------------------------------------------------- merging
def test_merge_adds_nested_counts_histogram_pairs_arrays_and_lists() -> None:
    edges = np.linspace(0, 1, 4)
    a = {"n": 1, "c": {"x": 2}, "h": (np.array([1, 2, 3]), edges), "arr": np.ones(2), "rows": [1]}
    b = {"n": 2, "c": {"x": 3, "y": 1}, "h": (np.array([0, 1, 0]), edges), "arr": np.ones(2), "rows": [2]}
    m = merge(a, b)
    assert m["n"] == 3 and m["c"] == {"x": 5, "y": 1} and m["rows"] == [1, 2]
    np.testing.assert_array_equal(m["h"][0], [1, 3, 3])
    np.testing.assert_array_equal(m["arr"], [2, 2])
    assert a["n"] == 1 and a["rows"] == [1]  # inputs untouched
    assert merge_all([]) is None
    assert merge_all([a]) is a


def test_merge_adds_boost_histograms() -> None:
    h1 = bh.Histogram(bh.axis.Regular(10, 0, 1))
    h2 = bh.Histogram(bh.axis.Regular(10, 0, 1))
    h1.fill([0.1, 0.2])
    h2.fill([0.1])
    assert merge({"h": h1}, {"h": h2})["h"].values()[1] == 2


def test_merging_different_binnings_or_types_is_an_error_naming_the_entry() -> None:
    with pytest.raises(MergeError, match=r"result\.h: bin edges differ"):
        merge({"h": (np.zeros(3), np.linspace(0, 1, 4))}, {"h": (np.zeros(3), np.linspace(0, 2, 4))})
    with pytest.raises(MergeError, match=r"result\.x"):
        merge({"x": [1]}, {"x": 3})
    with pytest.raises(MergeError, match="shapes"):
        merge(np.zeros(2), np.zeros(3))


counts_dicts = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 10**9), max_size=3)


@given(st.lists(counts_dicts, min_size=1, max_size=6), st.randoms())
@settings(max_examples=50, deadline=None)
def test_merge_result_does_not_depend_on_the_order(items: list[dict[str, int]], rnd: object) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert merge_all(items) == merge_all(shuffled)
    assert merge_all(items) == {k: sum(d.get(k, 0) for d in items) for k in {k for d in items for k in d}}


# ---------------------------------------------------------------- inputs
def test_partial_files_are_reported_not_ignored(data_dir: Path) -> None:
    files, skipped = collect_spill_files([data_dir])
    assert [f.name for f in files][:4] == [f"run000001_spill0000{s}.h5" for s in (1, 2, 3, 4)]
    assert [s.path.name for s in skipped] == [partial_filename(1, 6)]
    assert "partial" in skipped[0].reason


# ---------------------------------------------------------------- running
def test_in_process_run_skips_unreadable_files_with_a_count(data_dir: Path) -> None:
    files, _ = collect_spill_files([data_dir])
    out = map_spills(spill_counts, files, workers=0)
    assert out.n_skipped == 1 and "not an HDF5 file" in out.skipped[0].reason
    assert [p.name for p in out.files] == [f"run000001_spill0000{s}.h5" for s in (1, 2, 3, 4)]
    total = merge_all(out.results)
    assert total["n_spills"] == 4
    assert total["counters"]["n_particles"] == 4 * 3000
    assert total["histograms"]["arrival_time"][0].sum() == 4 * 3000


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # a free port: never the shared default 8787
        scheduler_kwargs={"dashboard": False},
    ) as c:
        yield c.scheduler_address


def test_a_local_cluster_gives_the_same_results_as_one_process(data_dir: Path) -> None:
    files, _ = collect_spill_files([data_dir])
    task = functools.partial(retrigger_file, overrides={"ecal_max_gev": 60.0})
    serial = map_spills(task, files, workers=0)
    parallel = map_spills(task, files, workers=2)  # its own LocalCluster, started and stopped here
    assert parallel.workers == 2
    assert [s.path for s in parallel.skipped] == [s.path for s in serial.skipped]
    a, b = merge_all(serial.results), merge_all(parallel.results)
    assert a["recorded"] == b["recorded"] and a["new"] == b["new"]
    np.testing.assert_array_equal(a["hist"]["e_miss_new"][0], b["hist"]["e_miss_new"][0])
    assert [r["spill"] for r in b["spills"]] == [1, 2, 3, 4]  # input order kept


def test_an_existing_scheduler_is_used_by_address(data_dir: Path, cluster: str) -> None:
    files, _ = collect_spill_files([data_dir])
    out = map_spills(spill_counts, files, scheduler=cluster)
    assert out.workers == 2 and out.n_skipped == 1
    assert merge_all(out.results)["n_spills"] == 4


def test_a_bug_in_the_task_stops_the_run_and_user_errors_pass_through(data_dir: Path, cluster: str) -> None:
    import json

    from daq.errors import ConfigError
    from daq.offline import OfflineError

    files, _ = collect_spill_files([data_dir])
    with pytest.raises(OfflineError, match="TypeError"):
        map_spills(json.loads, files, scheduler=cluster)  # type: ignore[arg-type]
    bad = functools.partial(retrigger_file, overrides={"ecal_max_gev": -1.0})
    with pytest.raises(
        ConfigError, match=r"run000001_spill0000\d\.h5: config error at trigger: ecal_max_gev"
    ):
        map_spills(bad, files, scheduler=cluster)


def test_an_unreachable_scheduler_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from daq import offline
    from daq.errors import UserError

    monkeypatch.setattr(offline, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(UserError, match="cannot connect to the dask scheduler"):
        map_spills(spill_counts, ["x"], scheduler="tcp://127.0.0.1:1")


# ---------------------------------------------------------------- DQM books in parallel (dqm.offline)
def test_dqm_books_merge_without_touching_the_inputs() -> None:
    from dqm.batch import MonitoredEvents as DqmBatch
    from dqm.batch import make_events
    from dqm.book import Book, BookSpec

    rng = np.random.default_rng(1)
    books = []
    for _ in range(2):
        b = Book(BookSpec())
        energy = rng.uniform(0, 1, (20, 110)).astype(np.float32)
        b.fill(
            DqmBatch.from_events(
                make_events(run=1, spill=1, energy=energy, t_ns=np.arange(20), mask=np.ones(20, np.uint32))
            )
        )
        books.append(b)
    total = merge_all(books)
    assert total.n_events == 40 and books[0].n_events == 20
    assert total.to_dict()["h1"]["e_miss"] == (books[0].copy().add(books[1])).to_dict()["h1"]["e_miss"]


def test_dqm_reference_filled_on_a_cluster_equals_the_serial_one(
    recorded_spills: list[Path], cluster: str, tmp_path: Path
) -> None:
    import json

    from dqm import offline as dqm_offline
    from dqm import reference

    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    reference.promote(recorded_spills, serial)
    prov = dqm_offline.promote(recorded_spills, parallel, scheduler=cluster)
    assert prov["n_spills"] == len(recorded_spills)
    a, b = json.loads(serial.read_text()), json.loads(parallel.read_text())
    assert {k: v for k, v in a.items() if k != "created"} == {k: v for k, v in b.items() if k != "created"}


# ---------------------------------------------------------------- `na64 dqm FILES` in parallel
def _monitor_state(mon: object) -> dict[str, object]:
    """Everything the DQM views show, as plain values (the history without its wall-clock times)."""
    import dataclasses

    from dqm.monitor import Monitor

    assert isinstance(mon, Monitor)
    history = []
    for rec in mon.history:
        row = dataclasses.asdict(rec)
        row.pop("time")
        history.append(row)
    assert mon.waveform is not None
    return {
        "run": mon.run_sum.to_dict(),
        "last_n": mon.lastn_sum.to_dict(),
        "last": mon.last_closed.to_dict() if mon.last_closed is not None else None,
        "history": history,
        "counters": dataclasses.asdict(mon.counters),
        "eot_run": mon.eot_run,
        "waveform": mon.waveform.tolist(),
        "waveform_info": mon.waveform_info,
        "results": {k: r.state for k, r in mon.spill_results.items()},
        "alarms": sorted((a.to_json() for a in mon.alarms.open_alarms()), key=lambda a: str(a["name"])),
    }


def test_dqm_files_filled_on_a_cluster_equal_the_serial_views(
    recorded_spills: list[Path], cluster: str, tmp_path: Path
) -> None:
    """``na64 dqm FILES --scheduler`` (dqm.offline.ParallelFileSource) gives the monitor exactly the state
    of the serial FileSource: every book, the spill history and checks, counters and the waveform view."""
    import shutil
    from collections.abc import Callable

    from daq import protocol
    from dqm.monitor import Monitor
    from dqm.offline import ParallelFileSource
    from dqm.sources import FileSource

    data = tmp_path / "data"
    data.mkdir()
    for p in recorded_spills:
        shutil.copy(p, data / p.name)
    (data / "run000001_spill00099.h5").write_bytes(b"not HDF5")  # skipped by the parallel source

    def feeder(mon: Monitor) -> Callable[[protocol.Message], None]:
        def handle(msg: protocol.Message) -> None:
            mon.handle(msg, 0.0)

        return handle

    serial = Monitor(live=False)
    src = FileSource(recorded_spills, feeder(serial))
    src.start()
    assert src.done.wait(60) and src.error is None

    parallel = Monitor(live=False)
    par = ParallelFileSource([data], feeder(parallel), parallel.add_filled, scheduler=cluster)
    par.start()
    assert par.done.wait(120) and par.error is None
    assert [s.path.name for s in par.skipped] == ["run000001_spill00099.h5"]
    assert serial.counters.spills_closed == parallel.counters.spills_closed == len(recorded_spills)
    assert serial.counters.events == sum(n_events_of(p) for p in recorded_spills) > 0
    assert _monitor_state(parallel) == _monitor_state(serial)


def n_events_of(path: Path) -> int:
    from daq.files import SpillFile

    with SpillFile(path) as f:
        return f.n_events


def test_big_offline_messages_sample_the_same_waveforms_and_fill_the_same_counts(
    recorded_spills: list[Path],
) -> None:
    """file_messages with 8000-event messages: the same events and sampled waveforms as 10-event
    messages; every count and pedestal sum of the books is identical, energy sums agree to rounding."""
    from daq import protocol
    from dqm.monitor import Monitor
    from dqm.sources import FILE_BATCH, OFFLINE_MESSAGE_EVENTS, file_messages

    small = list(file_messages(recorded_spills[:1]))
    big = list(file_messages(recorded_spills[:1], events_per_message=OFFLINE_MESSAGE_EVENTS))
    ev_s = [m for m in small if isinstance(m, protocol.Events)]
    ev_b = [m for m in big if isinstance(m, protocol.Events)]
    assert len(ev_b) < len(ev_s) and ev_b[-1].n_events <= FILE_BATCH  # the last group is its own message
    for name in ("event_id", "t_ns", "energy", "waveforms"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(m, name) for m in ev_s]), np.concatenate([getattr(m, name) for m in ev_b])
        )
    books = []
    for msgs in (small, big):
        mon = Monitor(live=False, spill_checks=[], live_checks=[])
        for m in msgs:
            mon.handle(m, 0.0)
        assert mon.last_closed is not None
        books.append(mon.last_closed.to_dict())
    a, b = books
    assert (
        a["h1"] == b["h1"]
        and a["h2"] == b["h2"]
        and a["spectra"] == b["spectra"]
        and a["times"] == b["times"]
    )
    for key, arr in a["arrays"].items():
        if key in ("esum", "rnd_sum", "rnd_sum2"):
            np.testing.assert_allclose(arr, b["arrays"][key], rtol=1e-12)
        else:
            assert arr == b["arrays"][key], key
    assert a["arrays"]["wf_n"][0] == len(ev_s) > 0


def test_pedestals_of_many_waveforms_at_once_equal_one_at_a_time() -> None:
    from dqm.batch import MonitoredEvents as DqmBatch
    from dqm.batch import make_events
    from dqm.book import Book, BookSpec

    rng = np.random.default_rng(3)
    wf = rng.integers(100, 110, (25, 110, 32)).astype(np.uint16)
    wf[3, :30] = 0  # a group without data
    wf[5, 7, 2] = 900  # a pulse in the pre-samples
    one, many = Book(BookSpec()), Book(BookSpec())
    energy = np.zeros((1, 110), np.float32)
    for w in wf:
        one.fill(
            DqmBatch.from_events(
                make_events(run=1, spill=1, energy=energy, t_ns=np.zeros(1), mask=np.full(1, 4), waveform=w)
            )
        )
    msg = make_events(run=1, spill=1, energy=energy, t_ns=np.zeros(1), mask=np.full(1, 4))
    import dataclasses

    batch = dataclasses.replace(DqmBatch.from_events(msg), waveforms=wf)
    many.fill(batch)
    for key in ("wf_n", "wf_zero_group", "ped_piled_up", "ped_n", "ped_sum", "ped_sum2"):
        np.testing.assert_array_equal(one.arrays[key], many.arrays[key], err_msg=key)
    assert many.arrays["wf_n"][0] == 25 and many.arrays["wf_zero_group"][0] == 1
    assert many.arrays["ped_piled_up"][0] == 1


def test_na64_dqm_files_with_workers_serves_the_files_filled_on_a_local_cluster(
    recorded_spills: list[Path], processes: list[subprocess.Popen[bytes]]
) -> None:
    """The real command: ``na64 dqm FILES --workers 2 --port 0`` starts its own LocalCluster, loads
    the files and serves; SIGTERM stops it cleanly (exit 0)."""
    import signal
    import time

    from tests.conftest import na64_command

    cmd = na64_command(
        "--log-level", "INFO", "dqm", *map(str, recorded_spills), "--workers", "2", "--port", "0"
    )
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes.append(p)
    assert p.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    with p.stdout:
        while time.monotonic() < deadline:
            line = p.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if "spill file(s) loaded on 2 dask workers" in line:
                break
        p.send_signal(signal.SIGTERM)
        lines += [b.decode() for b in p.stdout]  # until it exits
    text = "".join(lines)
    assert "DQM at http://127.0.0.1:" in text, text
    assert f"offline: {len(recorded_spills)} spill file(s) loaded on 2 dask workers" in text, text
    assert "closed: EOT" in text  # the spills were checked by the server's monitor
    assert p.wait(60) == 0


def test_results_stream_in_input_order_and_a_stop_ends_the_run_early(data_dir: Path, cluster: str) -> None:
    import threading

    files, _ = collect_spill_files([data_dir])
    seen: list[Path] = []
    out = map_spills(spill_counts, files, scheduler=cluster, on_result=lambda p, _r: seen.append(p))
    assert seen == out.files and len(seen) == 4  # the unreadable file is skipped, the rest in order
    stop = threading.Event()
    got: list[Path] = []

    def first_then_stop(path: Path, _result: object) -> None:
        got.append(path)
        stop.set()

    early = map_spills(spill_counts, files, workers=0, on_result=first_then_stop, stop=stop)
    assert got == [files[0]] and early.files == [files[0]]
