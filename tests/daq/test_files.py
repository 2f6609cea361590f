"""HDF5 spill files: writer -> file -> reader API round trips, file errors, ``na64 inspect``."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from daq import detector
from daq.batch import SUM_NAMES, EventBatch
from daq.errors import UserError
from daq.files import (
    FORMAT_VERSION,
    SpillFile,
    SpillFileError,
    list_spill_files,
    parse_filename,
    partial_filename,
    spill_filename,
)
from daq.protocol import NO_PARTICLE
from daq.waveform import MAX_NEIGHBOURS
from daq.writer import CODECS, SpillWriter, WriterConfig, WriterThread
from daq.writer_commands import AppendEvents, CloseSpill, OpenSpill, SpillFinal, SpillHeader
from tests.conftest import na64_command, require_program

N_PRIM = 29


def batch(n: int, first_id: int = 0, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    index = np.arange(n, dtype=np.uint32)
    index[::5] = NO_PARTICLE
    return EventBatch(
        event_id=np.arange(first_id, first_id + n, dtype=np.uint64),
        slice=np.full(n, 3, np.uint32),
        index=index,
        t_ns=np.arange(n, dtype=np.int64) * 1000 + first_id,
        trigger_mask=rng.integers(0, 2048, n).astype(np.uint32),
        missing_groups=(np.arange(n) % 3 == 0).astype(np.uint8),
        sums=rng.random((6, n)).astype(np.float32),
        energy=rng.random((n, 110)).astype(np.float32),
        amplitude=rng.random((n, 110)).astype(np.float32),
        peak_time=rng.random((n, 110)).astype(np.float32),
        pileup=rng.random((n, 110)) > 0.8,
        waveforms=rng.integers(190, 260, (n, 110, 32)).astype(np.uint16),
        prim_amp=rng.integers(0, 4000, (N_PRIM, n)).astype(np.uint16),
        chi2=rng.random((n, 110)).astype(np.float32),
        n_pulses=rng.integers(0, 4, (n, 110)).astype(np.uint8),
        nb_count=rng.integers(0, 4, n).astype(np.uint8),
        nb_dt_ns=rng.integers(-400, 330, (n, MAX_NEIGHBOURS)).astype(np.int32),
        nb_amp=rng.integers(0, 4000, (n, MAX_NEIGHBOURS, N_PRIM)).astype(np.uint16),
    )


def write(tmp: Path, batches: list[EventBatch], run: int = 2, spill: int = 9, **cfg: object) -> Path:
    header = SpillHeader(
        run=run,
        spill=spill,
        t_start_ns=1_700_000_000_000_000_000,
        config={"trigger": {"x": 1}},
        trigger={
            "prs_min_gev": 0.3,
            "ecal_max_gev": 80.0,
            "beam_prescale": 2000,
            "dead_time_ns": 5000,
            "random_period_ns": 10_000_000,
        },
        calibration_id="cal-7",
        frontend_info='{"name": "fe"}',
    )
    w = SpillWriter(tmp, header, WriterConfig(fsync=False, **cfg))  # type: ignore[arg-type]
    assert w.partial_path.exists() and not w.final_path.exists()
    for b in batches:
        w.append(b)
    n = sum(len(b) for b in batches)
    final = SpillFinal(
        status="ok",
        t_end_ns=1_700_000_004_800_000_000,
        counters={"n_beam": 12345, "n_particles": 13000, "n_accepted": n, "triggers_physics": 4},
        losses={"duplicate": 0, "dead_time": 3},
        frontend={"n_slices": 480},
        histograms={"ecal_block_gev": (np.arange(4), np.linspace(0, 120, 5), "GeV")},
        summary={"run": run, "spill": spill, "n_beam": 12345, "triggers": {"physics": 4}},
    )
    res = w.close(final)
    assert res.path == w.final_path and res.n_events_written == n and not w.partial_path.exists()
    return res.path


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_every_field(tmp_path: Path, codec: str) -> None:
    bs = [batch(70, 0, 1), batch(1, 70, 2), batch(200, 71, 3)]  # not multiples of the chunk size
    path = write(tmp_path, bs, compression=codec)
    whole = EventBatch.concat(bs)
    with SpillFile(path) as f:
        assert (f.run, f.spill, f.n_events, f.status) == (2, 9, 271, "ok")
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["n_beam"] == 12345
        assert f.attrs["calibration_id"] == "cal-7" and f.attrs["n_triggers"] == 271
        assert f.compression.startswith(codec)
        assert f.config == {"trigger": {"x": 1}} and f.trigger_config["beam_prescale"] == 2000
        assert f.frontend_info == {"name": "fe"}
        assert f.counters["n_events_written"] == 271 and f.losses == {"duplicate": 0, "dead_time": 3}
        assert f.frontend == {"n_slices": 480}
        assert np.array_equal(f.channels, detector.CHANNELS)
        ev = f.events()
        for name in ("event_id", "slice", "index", "t_ns", "trigger_mask", "missing_groups"):
            assert np.array_equal(ev[name], getattr(whole, name)), name
        for i, name in enumerate(SUM_NAMES):
            assert np.array_equal(ev[name], whole.sums[i])
        assert np.array_equal(f.energy(), whole.energy)
        assert np.array_equal(f.amplitude(), whole.amplitude)
        assert np.array_equal(f.peak_time(), whole.peak_time)
        assert np.array_equal(f.pileup(), whole.pileup) and f.pileup().dtype == bool
        assert np.array_equal(f.waveforms(), whole.waveforms)
        prim = f.primitives()
        assert np.array_equal(prim["amp"], whole.prim_amp) and np.array_equal(prim["t_ns"], whole.t_ns)
        assert np.array_equal(prim["channels"], detector.default_primitive_channels())
        counts, edges = f.histograms()["ecal_block_gev"]
        assert counts.tolist() == [0, 1, 2, 3] and edges.tolist() == [0, 30, 60, 90, 120]
        s = f.summary()
        assert s["file"] == path.name and s["n_beam"] == 12345 and s["status"] == "ok"
        assert s["histograms"]["ecal_block_gev"]["counts"] == [0, 1, 2, 3] and s["losses"]["dead_time"] == 3


def test_selections(tmp_path: Path) -> None:
    whole = batch(100)
    path = write(tmp_path, [whole])
    with SpillFile(path) as f:
        assert np.array_equal(f.waveforms(slice(10, 20)), whole.waveforms[10:20])
        assert np.array_equal(f.energy([42, 3, 7]), whole.energy[[42, 3, 7]])
        sel = whole.index == NO_PARTICLE
        assert np.array_equal(f.events(["t_ns"], sel=sel)["t_ns"], whole.t_ns[sel])
        assert np.array_equal(f.waveforms(sel), whole.waveforms[sel])
        assert f.energy(np.zeros(0, int)).shape == (0, 110)
        with pytest.raises(KeyError, match="unknown event field"):
            f.events(["nope"])
        with pytest.raises(IndexError):
            f.energy([100])


def test_empty_spill(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    with SpillFile(path) as f:
        assert f.n_events == 0 and f.waveforms().shape == (0, 110, 32) and f.events()["t_ns"].size == 0


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    assert issubclass(SpillFileError, UserError)
    with pytest.raises(SpillFileError, match="no such file"):
        SpillFile(tmp_path / "run000001_spill00001.h5")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(SpillFileError, match=r"notes\.h5: not an HDF5 file"):
        SpillFile(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(SpillFileError, match="not a spill file"):
        SpillFile(other)
    good = write(tmp_path, [batch(3)])
    future = tmp_path / "future.h5"
    future.write_bytes(good.read_bytes())
    with h5py.File(future, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(SpillFileError, match="format_version 99 is not supported"):
        SpillFile(future)
    partial = tmp_path / partial_filename(2, 10)
    partial.write_bytes(good.read_bytes())
    with pytest.raises(SpillFileError, match="partial file"):
        SpillFile(partial)


def test_names_and_listing(tmp_path: Path) -> None:
    assert spill_filename(12, 3) == "run000012_spill00003.h5"
    assert parse_filename("run000012_spill00003.h5") == (12, 3) and parse_filename("x.h5") is None
    with pytest.raises(ValueError):
        spill_filename(10**7, 1)
    for run, spill in ((2, 10), (1, 2), (2, 1), (1, 10)):
        (tmp_path / spill_filename(run, spill)).write_bytes(b"")
    (tmp_path / partial_filename(3, 1)).write_bytes(b"")
    (tmp_path / "readme.txt").write_text("x")
    names = [p.name for p in list_spill_files(tmp_path)]
    assert names == [spill_filename(1, 2), spill_filename(1, 10), spill_filename(2, 1), spill_filename(2, 10)]
    assert list_spill_files([tmp_path / spill_filename(2, 1)]) == [tmp_path / spill_filename(2, 1)]
    with pytest.raises(SpillFileError, match="no such file or directory"):
        list_spill_files([tmp_path / "missing"])


def test_writer_thread_open_append_close_and_failure(tmp_path: Path) -> None:
    wt = WriterThread(tmp_path / "data", WriterConfig(fsync=True))
    try:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        assert wt.try_put(OpenSpill(SpillHeader(run=1, spill=1)))
        assert wt.try_put(AppendEvents(batch(10)))
        assert wt.try_put(CloseSpill(1, 1, SpillFinal()), done=fut)
        res = fut.result(30)
        assert (
            res.status == "ok" and res.n_events_written == 10 and res.path is not None and res.path.exists()
        )
        # a spill whose file cannot be created fails, and the thread goes on
        blocker = tmp_path / "data" / partial_filename(1, 2)
        blocker.mkdir()
        fut2: concurrent.futures.Future = concurrent.futures.Future()
        assert wt.try_put(OpenSpill(SpillHeader(run=1, spill=2)))
        assert wt.try_put(AppendEvents(batch(4)))
        assert wt.try_put(CloseSpill(1, 2, SpillFinal()), done=fut2)
        res2 = fut2.result(30)
        assert res2.status == "failed" and res2.path is None and res2.n_events_lost == 4
        assert "cannot create" in res2.error
        fut3: concurrent.futures.Future = concurrent.futures.Future()
        assert wt.try_put(OpenSpill(SpillHeader(run=1, spill=3)))
        assert wt.try_put(AppendEvents(batch(2)))
        assert wt.try_put(CloseSpill(1, 3, SpillFinal()), done=fut3)
        assert fut3.result(30).status == "ok"
    finally:
        wt.stop()


def test_h5dump_reads_the_header(tmp_path: Path) -> None:
    h5dump = require_program("h5dump")
    path = write(tmp_path, [batch(5)])
    out = subprocess.run([h5dump, "-H", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("format_version", "n_beam", "waveforms", "channels", "e_miss", "histograms"):
        assert name in out.stdout


@pytest.mark.integration
def test_inspect_cli(tmp_path: Path) -> None:
    path = write(tmp_path, [batch(5)])
    out = subprocess.run(na64_command("inspect", str(path)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "run 2  spill 9  status ok" in out.stdout and "EOT        12,345" in out.stdout
    assert "lz4" in out.stdout and "physics 4" in out.stdout
    js = subprocess.run(
        na64_command("inspect", "--json", str(tmp_path)), capture_output=True, text=True, timeout=60
    )
    assert js.returncode == 0
    (doc,) = json.loads(js.stdout)
    assert doc["n_beam"] == 12345 and doc["n_events_written"] == 5 and doc["calibration_id"] == "cal-7"
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    partial = tmp_path / partial_filename(2, 11)
    partial.write_bytes(path.read_bytes())
    for p in (bad, partial, tmp_path / "missing.h5"):
        r = subprocess.run(na64_command("inspect", str(p)), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r
        assert len(r.stderr.strip().splitlines()) == 1 and p.name in r.stderr and "Traceback" not in r.stderr


def datasets_of(path: Path) -> dict[str, tuple[object, object]]:
    """Every dataset of a file: name -> (units attribute, description attribute)."""
    found: dict[str, tuple[object, object]] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = (obj.attrs.get("units"), obj.attrs.get("description"))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


@pytest.mark.parametrize("tables", ["none", "gzip"])
def test_every_dataset_has_units_and_a_description(tmp_path: Path, tables: str) -> None:
    path = write(tmp_path, [batch(5)], table_compression=tables)
    found = datasets_of(path)
    assert len(found) >= 23 and "histograms/ecal_block_gev/edges" in found
    for name, (units, description) in found.items():
        assert isinstance(units, str) and units, name
        assert isinstance(description, str) and len(description) > 10, name
    assert found["events/e_ecal"][0] == "GeV" and "do not add e_prs" in str(found["events/e_ecal"][1])
    assert found["histograms/ecal_block_gev/edges"][0] == "GeV"  # the histogram's own unit
    assert found["reco/amplitude"][0] == "ADC counts" and found["events/t_ns"][0] == "ns"


@pytest.mark.parametrize("tables", ["none", "gzip"])
def test_only_the_waveforms_need_a_filter_plugin(tmp_path: Path, tables: str) -> None:
    """Everything but the raw data (/waveforms, and the padded neighbour lists of the pile-up fit) has no
    filter or HDF5's built-in shuffle + deflate (ids 2, 1)."""
    path = write(tmp_path, [batch(300)], table_compression=tables)
    with h5py.File(path, "r") as f:
        for name in datasets_of(path):
            plist = f[name].id.get_create_plist()
            ids = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
            chunked = f[name].chunks is not None
            raw = name in ("waveforms", "neighbours/dt_ns", "neighbours/amp")
            want = {32001} if raw else {1, 2} if tables == "gzip" and chunked else set()
            assert ids == want, name  # blosc; HDF5's shuffle + deflate; none
        assert f.attrs["compression"] == "blosc-lz4" and f.attrs["table_compression"] == tables


def h5dump_values(h5dump: str, path: Path, name: str, env: dict[str, str]) -> list[float]:
    """The values ``h5dump -d NAME`` prints (its ``(i,j): v, v, ...`` lines before the attributes)."""
    out = subprocess.run(
        [h5dump, "-m", "%.9g", "-d", name, str(path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    data = out.stdout.split("DATA {", 1)[1].split("}", 1)[0]
    values: list[float] = []
    for m in re.finditer(r"^\s*\([\d,]+\): (.*)$", data, re.MULTILINE):
        values += [float(v) for v in m.group(1).split(",") if v.strip()]
    return values


@pytest.mark.parametrize("tables", ["none", "gzip"])
def test_h5dump_prints_the_event_columns_without_a_plugin_path(tmp_path: Path, tables: str) -> None:
    """What a physicist types first: plain h5dump, no HDF5_PLUGIN_PATH, and the values are printed
    (the waveforms alone need the blosc plugin: docs/hdf5-format.md)."""
    h5dump = require_program("h5dump")
    b = batch(7)
    path = write(tmp_path, [b], table_compression=tables)
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    np.testing.assert_allclose(h5dump_values(h5dump, path, "/events/e_ecal", env), b.sums[1], rtol=1e-7)
    np.testing.assert_allclose(h5dump_values(h5dump, path, "/reco/energy", env), b.energy.ravel(), rtol=1e-7)
    assert h5dump_values(h5dump, path, "/events/event_id", env) == list(range(7))
