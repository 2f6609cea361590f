"""Spill files a DAQ did not close: recovered into valid spill files, never overwritten.

The writer flushes HDF5's metadata after every block of events and keeps it in memory in between
(:func:`daq.writer.hold_metadata`), so the ``.partial`` file of a DAQ killed at any moment is a valid
HDF5 file holding every block written before its last flush. :func:`recover_partial` trims its datasets
to the events every one of them holds, writes the end records (status ``recovered``, what is missing)
and gives it its final name; :func:`recover_directory` does it for a data directory (``na64 daq`` at
start-up), ``na64 recover FILE`` for a partial file moved elsewhere. :func:`publish` gives a closed
file its final name without ever replacing a file (the writer's rename too).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from daq.contract import LOSS_REASONS, LossReason, SpillStatus
from daq.errors import UserError
from daq.files import EVENT_COLUMNS, PARTIAL_SUFFIX, RECO_DATASETS, dataset_info, spill_filename
from daq.summary import SpillSummary
from daq.writer_commands import Recovered, SpillFinal

log = logging.getLogger(__name__)

_PARTIAL_RE = re.compile(r"^\.?run(\d{6})_spill(\d{5})\.h5" + re.escape(PARTIAL_SUFFIX) + "$")
#: suffix given to a partial file that could not be recovered (so that a restart does not retry it)
UNRECOVERABLE_SUFFIX = ".unrecoverable"
CRASH_NOTE = (
    "the DAQ stopped without closing this spill (crash, kill -9, power cut): the events after its last "
    "block on disk, the spill's counters, histograms and front-end counters are lost"
)


class RecoveryError(UserError):
    """A partial spill file cannot be recovered (the message names the file and why)."""


def parse_partial(path: Path) -> tuple[int, int] | None:
    """(run, spill) of a partial spill file's name (``.run000001_spill00003.h5.partial``), else None."""
    m = _PARTIAL_RE.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def recover_directory(data_dir: Path) -> list[Recovered]:
    """Recover every partial spill file in ``data_dir`` (the DAQ at start-up, before it records). One
    that cannot be recovered is renamed ``*.unrecoverable`` (kept, not retried) and reported."""
    out = []
    for path in sorted(data_dir.glob(".run*_spill*.h5" + PARTIAL_SUFFIX)):
        if parse_partial(path) is None or not path.is_file():
            continue
        res = recover_partial(path)
        if res.file is None:
            with contextlib.suppress(OSError):
                path.rename(path.with_name(path.name + UNRECOVERABLE_SUFFIX))
        out.append(res)
    return out


def recover_partial(path: Path) -> Recovered:
    """Recover one partial spill file next to itself (final name, status ``recovered``)."""
    key = parse_partial(path)
    if key is None:
        raise RecoveryError(f"{path}: not a partial spill file (expected .runNNNNNN_spillNNNNN.h5.partial)")
    run, spill = key
    final = path.with_name(spill_filename(run, spill))
    try:
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(path, final):  # crashed between the final link and the unlink
                path.unlink()
                return Recovered(run, spill, final.name, _n_events(final), -1, "")
        n, last_slice = finish(path, status=str(SpillStatus.RECOVERED), final=None, note=CRASH_NOTE)
        done = publish(path, final)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else f"{e.strerror or e}"
        return Recovered(run, spill, None, 0, -1, f"{path.name}: {reason}")
    log.warning("recovered %s from %s: %d events (%s)", done.name, path.name, n, _slices(last_slice))
    return Recovered(run, spill, done.name, n, last_slice, "")


def _slices(last: int) -> str:
    return f"slices 0-{last}" if last >= 0 else "no block of events was on disk"


def finish(path: Path, *, status: str, final: SpillFinal | None, note: str) -> tuple[int, int]:
    """Make a spill file of the HDF5 file at ``path`` as it is on disk: its datasets trimmed to the
    events all of them hold, the end records written (``final``'s, else those of a crash: loss
    ``daq_crash``), ``status`` and the ``recovered`` note. Returns (events, last slice id or -1)."""
    import h5py

    from daq import h5filters

    h5filters.load()
    with h5py.File(path, "r+", locking=False) as f:
        if "events" not in f or "waveforms" not in f:
            raise RecoveryError(f"{path.name}: no event tables (the DAQ died before its first block)")
        n = _trim(f)
        last_slice = int(f["events/slice"][n - 1]) if n else -1
        a = f.attrs
        losses: dict[str, int]
        if final is not None:
            counters = dict(final.counters)
            losses = dict(final.losses)
            frontend = dict(final.frontend)
            summary = dict(final.summary)
            t_end_ns = final.t_end_ns
        else:
            counters, frontend, t_end_ns = {}, {}, 0
            losses = {r: 0 for r in LOSS_REASONS}
            losses[LossReason.DAQ_CRASH] = 1
            summary = SpillSummary(
                run=int(a.get("run", 0)),
                spill=int(a.get("spill", 0)),
                status=SpillStatus(status),
                t_start_ns=int(a.get("t_start_ns", 0)),
                calibration_id=str(a.get("calibration_id", "")),
                ended_by="DAQ crash (recovered)",
            ).to_dict()
        counters["n_events_written"] = n
        for group, values in (("counters", counters), ("losses", losses), ("frontend", frontend)):
            g = f.require_group(group)
            for k, v in values.items():
                g.attrs[k] = np.int64(v)
        if final is not None:
            hg = f.require_group("histograms")
            for name, (counts, edges, unit) in final.histograms.items():
                if name in hg:
                    del hg[name]
                g = hg.create_group(name)
                for key, array in (
                    ("counts", np.asarray(counts, "<i8")),
                    ("edges", np.asarray(edges, "<f8")),
                ):
                    ds = g.create_dataset(key, data=array)
                    ds.attrs["units"], ds.attrs["description"] = dataset_info(ds.name, unit)
                g.attrs["unit"] = unit
        a["status"] = status
        a["t_end_ns"] = np.int64(t_end_ns)
        a["n_events"] = np.int64(n)
        for key, name in (("n_beam", "n_beam"), ("n_particles", "n_particles"), ("n_triggers", "n_accepted")):
            a[key] = np.int64(counters.get(name, 0))
        a["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        a["recovered"] = json.dumps(
            {"from": path.name, "n_events": n, "last_slice": last_slice, "note": note}, sort_keys=True
        )
        summary.pop("histograms", None)
        summary.update(
            status=status,
            file=spill_filename(int(a["run"]), int(a["spill"])),
            n_events_written=n,
            losses=losses,
            failure=note,
        )
        a["summary"] = json.dumps(summary, sort_keys=True, default=str)
    return n, last_slice


def _event_datasets(f: Any) -> list[tuple[Any, int]]:
    """Every dataset with one entry per event, and its event axis."""
    out = [(f["events"][k], 0) for k in EVENT_COLUMNS if k in f["events"]]
    out += [(f["reco"][k], 0) for k in RECO_DATASETS if "reco" in f and k in f["reco"]]
    out.append((f["waveforms"], 0))
    if "primitives" in f:
        out += [(f["primitives/t_ns"], 0), (f["primitives/amp"], 1)]
    return out


def _trim(f: Any) -> int:
    """Resize every event dataset to the events all of them hold and can be read back; returns that."""
    datasets = _event_datasets(f)
    n = min(ds.shape[axis] for ds, axis in datasets)
    while n > 0:
        try:
            for ds, axis in datasets:
                ds[n - 1] if axis == 0 else ds[:, n - 1]
            break
        except Exception:  # a chunk past the last flush: step back one block of events
            n = max(0, n - 4096)
    for ds, axis in datasets:
        if ds.shape[axis] != n:
            shape = list(ds.shape)
            shape[axis] = n
            ds.resize(tuple(shape))
    return n


def _n_events(path: Path) -> int:
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        return int(f.attrs.get("n_events", 0))


def publish(src: Path, dst: Path, fsync: bool = True) -> Path:
    """Give the closed file ``src`` its final name ``dst`` without ever replacing a file: when ``dst``
    exists the file becomes ``<stem>.duplicateK.h5`` (logged; the caller reports it). Returns the name."""
    target, k = dst, 0
    while True:
        try:
            os.link(src, target)
            break
        except FileExistsError:
            if os.path.samefile(src, target):
                break
            k += 1
            target = dst.with_name(f"{dst.stem}.duplicate{k}{dst.suffix}")
        except OSError as e:  # no hard links on this file system: a rename after checking
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if target.exists():
                k += 1
                target = dst.with_name(f"{dst.stem}.duplicate{k}{dst.suffix}")
                continue
            os.rename(src, target)
            break
    with contextlib.suppress(FileNotFoundError):
        os.unlink(src)
    if fsync:
        _fsync_dir(dst.parent)
    if target != dst:
        log.error("%s exists: not overwritten; this spill's file is %s", dst.name, target.name)
    return target


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
