"""Fixed-size, immutable snapshots of the monitor for the browser sessions (pure).

The service builds one snapshot per update period under the monitor lock (a few ms); every browser
session then reads the same snapshot without locking and sends only its visible part. Sizes do not grow
with the run: histograms have fixed bins, the history is a fixed-length ring.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daq import detector
from daq.contract import LossReason, is_breakdown
from dqm import metrics
from dqm.book import SPECTRUM_BINS, TIME_ROWS, Book, BookSpec
from dqm.checks import State
from dqm.monitor import LOSS_SERIES, Monitor

RANGES = ("spill", "last", "run")
TIME_VIEW_BINS = 100
#: spills shown in the check-history matrix
CHECK_HISTORY = 50


@dataclass(frozen=True, eq=False)
class RangeView:
    """Everything plotted for one range (spill / last N / run)."""

    n_events: int
    n_type: NDArray[np.float64]  # physics, beam, random
    h1: dict[str, NDArray[np.float64]]
    h2: dict[str, NDArray[np.float64]]
    mean_energy: NDArray[np.float64]  # (110,) GeV
    occupancy: NDArray[np.float64]  # (110,)
    spectra: NDArray[np.float64]  # (110, SPECTRUM_BINS)
    ped_mean: NDArray[np.float64]  # (110,) ADC counts
    ped_noise: NDArray[np.float64]  # (110,) ADC counts
    times: NDArray[np.float64]  # (len(TIME_ROWS), TIME_VIEW_BINS)
    time_edges: NDArray[np.float64]  # (TIME_VIEW_BINS + 1,) s
    peak: float
    signal: metrics.SignalRegion


@dataclass(frozen=True, eq=False)
class Axes:
    """Static bin edges of a book spec (sent to a browser once per session)."""

    h1: dict[str, NDArray[np.float64]]
    h2: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    spectrum_max: NDArray[np.float64]

    @classmethod
    def of(cls, spec: BookSpec) -> Axes:
        return cls(
            h1={k: ax.edges for k, ax in spec.axes_1d().items()},
            h2={k: (ax.edges, ay.edges) for k, (ax, ay) in spec.axes_2d().items()},
            spectrum_max=spec.spectrum_max_gev.copy(),
        )

    def spectrum_edges(self, channel: int) -> NDArray[np.float64]:
        return np.linspace(0.0, float(self.spectrum_max[channel]), SPECTRUM_BINS + 1)


@dataclass(frozen=True, eq=False)
class Snapshot:
    version: int
    time: float
    header: dict[str, Any]
    checks: list[dict[str, Any]]
    alarms: list[dict[str, Any]]
    alarm_log: list[dict[str, Any]]
    ranges: dict[str, RangeView]
    history: dict[str, NDArray[np.float64]]
    check_matrix: NDArray[np.int8]  # (checks, CHECK_HISTORY) State values, -1 unknown / no spill
    check_names: list[str]
    waveform: NDArray[np.float64] | None  # (110, samples)
    waveform_info: dict[str, int]
    arrival: tuple[NDArray[np.float64], NDArray[np.float64]] | None  # latest spill (counts, edges [s])
    reference_source: str
    baseline_ped_mean: NDArray[np.float64] | None = None
    baseline_noise: NDArray[np.float64] | None = None
    #: the baseline's 1-D histograms (counts), drawn over the physics histograms scaled to each range
    baseline_h1: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    #: shelved and suppressed alarms (not in ``alarms``), and every alarm's latest events (newest last)
    shelved: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    alarm_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: x positions and "run/spill" labels for the per-spill history axes (runs start at the labelled ticks)
    history_ticks: tuple[list[float], dict[str, str]] = ([], {})


def _rebin_times(book: Book) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Time-in-spill rows rebinned to TIME_VIEW_BINS over [0, last filled bin] (seconds)."""
    v = book.times.values()
    edges = book.times.axes[1].edges
    filled = np.flatnonzero(v.sum(axis=0))
    last = int(filled[-1]) + 1 if filled.size else 1
    group = max(1, math.ceil(last / TIME_VIEW_BINS))
    n = TIME_VIEW_BINS * group
    padded = np.zeros((v.shape[0], max(n, v.shape[1])))
    padded[:, : v.shape[1]] = v
    out = padded[:, :n].reshape(v.shape[0], TIME_VIEW_BINS, group).sum(axis=2)
    width = (edges[1] - edges[0]) * group
    return out, np.arange(TIME_VIEW_BINS + 1) * width / 1e9


def range_view(book: Book, baseline: Book | None = None, box: tuple[float, float] = (50.0, 1.0)) -> RangeView:
    """What one range shows; pedestal and noise are the robust medians the checks use."""
    times, t_edges = _rebin_times(book)
    h = book.h1["ecal_sum_beam"]
    peak = metrics.find_peak(h.values(), h.axes[0].edges, 10)
    return RangeView(
        n_events=book.n_events,
        n_type=book.arrays["n_type"].copy(),
        h1={k: v.values().copy() for k, v in book.h1.items()},
        h2={k: v.values().copy() for k, v in book.h2.items()},
        mean_energy=metrics.mean_energy(book),
        occupancy=metrics.occupancy(book),
        spectra=book.spectra.values().copy(),
        ped_mean=metrics.waveform_means(book).median() + detector.NOMINAL_PEDESTAL,
        ped_noise=metrics.waveform_rms(book).median(),
        times=times,
        time_edges=t_edges,
        peak=math.nan if peak is None else peak.mean,
        signal=metrics.signal_region(book, baseline, *box),
    )


def _history(mon: Monitor) -> dict[str, NDArray[np.float64]]:
    recs = list(mon.history)
    n = mon.config.history_spills
    out: dict[str, NDArray[np.float64]] = {}

    def col(values: list[float]) -> NDArray[np.float64]:
        arr = np.full(n, np.nan)
        if values:
            arr[-len(values) :] = values
        return arr

    out["index"] = np.arange(n, dtype=np.float64)  # position, oldest first (labels: history_ticks)
    out["run"] = col([r.run for r in recs])
    out["spill"] = col([r.spill for r in recs])
    out["n_beam"] = col([r.n_beam for r in recs])
    out["eot_cumulative"] = col([float(r.eot_run) if r.run == mon.run else math.nan for r in recs])
    out["physics"] = col([r.physics for r in recs])
    out["beam"] = col([r.beam for r in recs])
    out["random"] = col([r.random for r in recs])
    out["dead_time"] = col([r.dead_time_fraction for r in recs])
    out["write_mb_s"] = col(
        [r.write_mb / r.spill_length_s if r.spill_length_s > 0 else math.nan for r in recs]
    )
    out["free_disk_gb"] = col([r.free_disk_bytes / 1e9 for r in recs])
    out["peak_gev"] = col([r.peak_gev for r in recs])
    for reason in LOSS_SERIES:
        out[f"loss_{reason}"] = col([float(r.losses.get(reason, 0)) for r in recs])
    out["loss_other"] = col(
        [
            float(
                sum(
                    v
                    for k, v in r.losses.items()
                    if k not in LOSS_SERIES and not is_breakdown(k) and k != LossReason.DEAD_TIME
                )
            )
            for r in recs
        ]
    )
    return out


def _history_ticks(mon: Monitor) -> tuple[list[float], dict[str, str]]:
    """Ticks of the history axes: the first spill of every run, and about every tenth spill."""
    recs = list(mon.history)
    n = mon.config.history_spills
    first = n - len(recs)
    step = max(1, len(recs) // 8)
    ticks: list[float] = []
    labels: dict[str, str] = {}
    for j, r in enumerate(recs):
        new_run = j == 0 or recs[j - 1].run != r.run
        if new_run or j % step == 0 or j == len(recs) - 1:
            pos = float(first + j)
            ticks.append(pos)
            labels[str(int(pos))] = f"{r.run}/{r.spill}" if new_run or j == len(recs) - 1 else str(r.spill)
    return ticks, labels


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else max(0.0, now - t)


def build(mon: Monitor, now: float | None = None, mode: str = "live", source: str = "") -> Snapshot:
    """Copy what the browser shows out of the monitor (call with the monitor lock held)."""
    now = time.time() if now is None else now
    results = mon.results()
    status, last = mon.status, mon.last_summary
    book = mon.alarms
    alarms = book.open_alarms()
    status_age = _age(now, mon.status_time)
    stale = status_age is None or status_age > mon.config.checks.heartbeat.daq_timeout_s
    if mode != "live":
        daq_state = "offline (files)"
    elif status is None:
        daq_state = "unknown: no status yet"
    elif stale:
        daq_state = f"unknown: last status {status_age:.0f} s ago (was {status.state})"
    else:
        daq_state = str(status.state)
    header = {
        "mode": mode,
        "source": source,
        "run": mon.run if mon.run is not None else -1,
        "spill": mon.current_spill if mon.current_spill is not None else -1,
        "daq_state": daq_state,
        "daq_stale": bool(mode == "live" and stale),
        "status_age_s": status_age,
        "event_age_s": _age(now, mon.last_event_time),
        "spill_age_s": _age(now, mon.last_summary_time),
        "eot_run": mon.eot_total(),
        "eot_last_spill": last.n_beam if last is not None else 0,
        "events": mon.counters.events,
        "skipped_by_daq": mon.counters.skipped_by_daq,
        "decode_errors": sum(mon.counters.decode_errors.values()),
        "bad_messages": mon.counters.bad_batches + mon.counters.bad_summaries,
        "spills": mon.counters.spills_closed,
        "worst": book.worst_open().name,
        "worst_check": max((r.state for r in results), default=State.UNKNOWN).name,
        "open_alarms": len(alarms),
        "unacknowledged": book.unacknowledged(),
        "shelved": len(book.shelved()),
        "suppressed": len(book.suppressed()),
        "last_send_ms": mon.last_send_ns / 1e6,
        "last_event_id": mon.last_event_id,
        "last_spill_triggers": dataclasses.asdict(last.triggers) if last is not None else {},
        "last_spill_dead_time": last.dead_time_fraction if last is not None else None,
        "last_spill_losses": {k: v for k, v in last.losses.items() if not is_breakdown(k)} if last else {},
        "last_spill_status": str(last.status) if last is not None else "-",
        "last_spill_length_s": last.spill_length_s if last is not None else None,
        "free_disk_bytes": status.free_disk_bytes if status else last.free_disk_bytes if last else None,
    }
    names = mon.check_names()
    recs = list(mon.history)[-CHECK_HISTORY:]
    matrix = np.full((len(names), CHECK_HISTORY), -1, np.int8)
    for j, rec in enumerate(recs):
        col = CHECK_HISTORY - len(recs) + j
        for i, name in enumerate(names):
            st = rec.results.get(name)
            if st is not None:
                matrix[i, col] = int(st)
    arrival = None
    hist = metrics.arrival_histogram(last)
    if hist is not None and hist[0].size <= 10000:
        arrival = (hist[0], hist[1] / 1e9)
    wf = None if mon.waveform is None else mon.waveform.astype(np.float64)
    base = mon.baseline
    cfg = mon.config
    box = (cfg.signal_ecal_max_gev, cfg.signal_hcal_max_gev)
    base_book = None if base is None else base.book
    return Snapshot(
        version=mon.version,
        time=now,
        header=header,
        checks=[r.to_json() for r in results],
        alarms=[a.to_json() for a in alarms],
        alarm_log=[e.to_json() for e in list(book.log)[-50:]][::-1],
        ranges={r: range_view(mon.range_book(r), base_book, box) for r in RANGES},
        history=_history(mon),
        check_matrix=matrix,
        check_names=names,
        waveform=wf,
        waveform_info=dict(mon.waveform_info),
        arrival=arrival,
        reference_source=base.source if base is not None else "none yet",
        baseline_ped_mean=None
        if base_book is None
        else metrics.waveform_means(base_book).median() + detector.NOMINAL_PEDESTAL,
        baseline_noise=None if base_book is None else metrics.waveform_rms(base_book).median(),
        baseline_h1={} if base_book is None else {k: h.values().copy() for k, h in base_book.h1.items()},
        shelved=[a.to_json() for a in book.shelved()],
        suppressed=[a.to_json() for a in book.suppressed()],
        alarm_history={n: [e.to_json() for e in book.events(n)] for n in book.history},
        history_ticks=_history_ticks(mon),
    )


CHANNEL_NAMES = [detector.channel_name(i) for i in range(detector.N_CHANNELS)]
TIME_ROW_NAMES = TIME_ROWS
