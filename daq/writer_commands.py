"""What the DAQ asks of its spill writer, as plain data (no h5py, no threads): the records of a spill's start
and end, the commands (:class:`OpenSpill`, :class:`AppendEvents`, :class:`CloseSpill`) and the outcome of a
spill file (:class:`WriteResult`).

:mod:`daq.recorder` emits the commands as actions; :class:`daq.writer.WriterThread` executes them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq import detector
from daq.batch import EventBatch


@dataclass(frozen=True)
class SpillHeader:
    """What is known when a spill starts (becomes root attributes)."""

    run: int
    spill: int
    t_start_ns: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    trigger: Mapping[str, Any] = field(default_factory=dict)
    calibration_id: str = "nominal-v1"
    frontend_info: str = "{}"
    prim_channels: np.ndarray = field(default_factory=detector.default_primitive_channels)
    n_samples: int = detector.N_SAMPLES
    sample_period_ns: float = detector.SAMPLE_PERIOD_NS


@dataclass(frozen=True)
class SpillFinal:
    """What is known when a spill ends (counters, histograms, the summary document)."""

    status: str = "ok"
    t_end_ns: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    losses: Mapping[str, int] = field(default_factory=dict)
    frontend: Mapping[str, int] = field(default_factory=dict)
    histograms: Mapping[str, tuple[np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a spill file: final path (None if failed), size, events, time spent writing."""

    run: int
    spill: int
    path: Path | None
    status: str  # ok | incomplete | failed
    n_events_written: int
    n_events_lost: int
    bytes: int
    write_seconds: float
    error: str = ""
    #: CPU time (user + system) of the writing thread from opening to closing the file: the writer
    #: thread's cost of the spill (its only other work is waiting on the queue)
    cpu_seconds: float = 0.0
    #: wall time the writing thread waited for syncs: the final fsync, and a mid-spill fdatasync still
    #: running at the close (those run in a helper thread while the writer goes on)
    sync_seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class OpenSpill:
    """Create the spill's (partial) file."""

    header: SpillHeader


@dataclass(frozen=True, eq=False)
class AppendEvents:
    """Write a batch of built events into the open spill."""

    batch: EventBatch


@dataclass(frozen=True, eq=False)
class CloseSpill:
    """Write the end-of-spill records, close, make durable and rename the file of spill ``run``/``spill``."""

    run: int
    spill: int
    final: SpillFinal


@dataclass(frozen=True, eq=False)
class RunInWriter:
    """Call ``function`` in the writer thread, in queue order (tests, sync points); its result is the
    command's outcome."""

    function: Callable[[], Any]


#: a command to the writer thread
WriterCommand = OpenSpill | AppendEvents | CloseSpill | RunInWriter


def command_bytes(command: WriterCommand) -> int:
    """Bytes a queued command holds (an append's batch arrays; others count 0). Anything that is not a
    command raises TypeError (a writer that ignored it would lose data silently)."""
    if isinstance(command, AppendEvents):
        return command.batch.nbytes
    if not isinstance(command, OpenSpill | CloseSpill | RunInWriter):
        raise TypeError(f"not a writer command: {command!r}")
    return 0


@dataclass(frozen=True)
class Recovered:
    """A spill file the DAQ found unfinished (``.partial``: the DAQ that wrote it crashed or was killed)
    and what recovering it gave (:mod:`daq.recovery`): the final file's name (None if it could not be
    recovered), the events saved, the last slice among them, the error if any."""

    run: int
    spill: int
    file: str | None
    n_events: int
    last_slice: int = -1
    error: str = ""
