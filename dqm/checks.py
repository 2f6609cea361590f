"""Quality checks: pure rules that turn a spill (or the live status) into OK / WARN / ERROR.

Two kinds, both pluggable (anything with ``name`` and ``evaluate``):

- a :class:`SpillCheck` runs once per spill summary on a :class:`SpillContext` (the spill's book, the
  DAQ summary, the baseline);
- a :class:`LiveCheck` runs every second on a :class:`LiveContext` (DAQ status and heartbeats).

:func:`default_spill_checks` and :func:`default_live_checks` build the standard set from the config.
Check names are alarm names (and MQTT topics): keep them stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import numpy as np

from daq import detector
from daq.contract import SpillStatus, is_breakdown
from daq.summary import DaqStatus, SpillSummary
from dqm import channels, metrics, stats
from dqm.baseline import Baseline
from dqm.book import TIME_ROWS, Book
from dqm.config import DqmConfig


class State(IntEnum):
    """Traffic-light state; order is severity (UNKNOWN: not evaluated, e.g. too few events)."""

    UNKNOWN = -1
    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class CheckResult:
    name: str
    state: State
    message: str
    value: float | None = None
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else self.value
        return {
            "name": self.name,
            "state": self.state.name,
            "message": self.message,
            "value": value,
            "details": list(self.details),
        }


@dataclass(frozen=True, eq=False)
class SpillContext:
    run: int
    spill: int
    summary: SpillSummary
    book: Book
    baseline: Baseline | None
    config: DqmConfig
    #: computations shared by the checks of this spill (see _cached)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveContext:
    #: seconds since the DQM started
    uptime_s: float
    #: latest DAQ status and its age (s); None if never received
    status: DaqStatus | None
    status_age_s: float | None
    #: age of the latest spill summary (s), None if none yet; age of the DAQ's current run start
    summary_age_s: float | None
    config: DqmConfig = field(default_factory=DqmConfig)


class SpillCheck(Protocol):
    @property
    def name(self) -> str: ...

    def evaluate(self, ctx: SpillContext) -> CheckResult: ...


class LiveCheck(Protocol):
    @property
    def name(self) -> str: ...

    def evaluate(self, ctx: LiveContext) -> CheckResult: ...


def _level(value: float, warn: float, error: float) -> State:
    if not math.isfinite(value):
        return State.UNKNOWN
    return State.ERROR if value >= error else State.WARN if value >= warn else State.OK


def _names(ids: Sequence[int] | np.ndarray, limit: int = 8) -> str:
    names = [detector.channel_name(int(i)) for i in ids]
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


# ---------------------------------------------------------------- spill checks
#: the reference check groups bins to expect at least this many of the spill's entries (chi2 validity)
CHI2_MIN_EXPECTED = 5.0


def _alpha(ctx: SpillContext, state: State) -> float:
    c = ctx.config.checks
    return c.alarm_error if state is State.ERROR else c.alarm_warn


def _comparison(ctx: SpillContext) -> channels.Comparison:
    b = ctx.baseline
    if b is None:
        return channels.Comparison(None)
    return channels.Comparison(b.book, b.masked, b.source)


def _cached(ctx: SpillContext, key: str, make: Callable[[], Any]) -> Any:
    """One computation shared by the checks of a spill (dead and hot channels use the same tests)."""
    if key not in ctx.cache:
        ctx.cache[key] = make()
    return ctx.cache[key]


def _describe(findings: Sequence[channels.Finding], limit: int = 6) -> str:
    parts = []
    for f in sorted(findings, key=lambda f: f.p)[:limit]:
        exp = f" (expected {f.expected:.3g})" if f.kind in ("dead", "hot") else ""
        parts.append(f"{f.name} {f.observed:.3g}{exp} {f.test}, p={f.p:.1e}")
    more = len(findings) - limit
    return "; ".join(parts) + (f"; +{more} more" if more > 0 else "")


def _by_channel(findings: Sequence[channels.Finding]) -> list[channels.Finding]:
    """The most significant finding of each channel."""
    best: dict[int, channels.Finding] = {}
    for f in findings:
        if f.channel not in best or f.p < best[f.channel].p:
            best[f.channel] = f
    return sorted(best.values(), key=lambda f: f.channel)


def _family_result(
    name: str, ctx: SpillContext, families: Sequence[channels.Family], kinds: str, ok_text: str
) -> CheckResult:
    """ERROR/WARN when a family has findings significant at alarm_error/alarm_warn; UNKNOWN if none judged."""
    tests = sum(f.tests for f in families)
    if tests == 0:
        return CheckResult(name, State.UNKNOWN, "not judged: too few events or waveforms in this spill")
    for state in (State.ERROR, State.WARN):
        found = _by_channel([x for fam in families for x in channels.significant(fam, _alpha(ctx, state))])
        if found:
            return CheckResult(
                name,
                state,
                f"{len(found)} {kinds}: {_describe(found)}",
                float(len(found)),
                tuple(f.name for f in found),
            )
    judged = len(set().union(*(f.judged for f in families)))
    return CheckResult(name, State.OK, f"{ok_text} ({judged} channels judged, {tests} tests)", 0.0)


@dataclass(frozen=True)
class ReferenceCheck:
    """Shape of a per-spill histogram vs the baseline's: chi2 with its p-value (or the KS distance)."""

    hist: str

    @property
    def name(self) -> str:
        return f"reference_{self.hist}"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.reference
        if ctx.baseline is None:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no reference or run baseline yet")
        observed = ctx.book.h1[self.hist].values()
        expected = ctx.baseline.book.h1[self.hist].values()
        if observed.sum() < cfg.min_entries or expected.sum() < cfg.min_entries:
            return CheckResult(
                self.name,
                State.UNKNOWN,
                f"not judged: {self.hist} has {observed.sum():.0f} entries, need {cfg.min_entries}",
            )
        if cfg.method == "ks":
            dist, p = metrics.ks_distance(observed, expected)
            text = f"{self.hist}: KS {dist:.2f} (p={p:.2g}) vs {ctx.baseline.source}"
        else:
            ratio, ndf = metrics.chi2_ndf(observed, expected, CHI2_MIN_EXPECTED)
            dist, p = ratio, stats.chi2_sf(ratio * ndf, ndf)
            text = f"{self.hist}: chi2/ndf {ratio:.2f} (ndf {ndf}, p={p:.2g}) vs {ctx.baseline.source}"
        state = State.OK
        for level, limit in ((State.ERROR, cfg.error), (State.WARN, cfg.warn)):
            if dist >= limit and p < _alpha(ctx, level):
                state = level
                break
        return CheckResult(self.name, state, text, dist)


@dataclass(frozen=True)
class DeadChannelCheck:
    name: str = "dead_channels"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.channels
        dead, _ = _cached(ctx, "hits", lambda: channels.hits_tests(ctx.book, _comparison(ctx), cfg))
        flat, _ = _cached(ctx, "noise", lambda: channels.noise_tests(ctx.book, _comparison(ctx), cfg))
        return _family_result(self.name, ctx, (dead, flat), "dead", "no dead channel")


@dataclass(frozen=True)
class HotChannelCheck:
    name: str = "hot_channels"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.channels
        _, hot = _cached(ctx, "hits", lambda: channels.hits_tests(ctx.book, _comparison(ctx), cfg))
        _, noisy = _cached(ctx, "noise", lambda: channels.noise_tests(ctx.book, _comparison(ctx), cfg))
        return _family_result(self.name, ctx, (hot, noisy), "hot/noisy", "no hot or noisy channel")


@dataclass(frozen=True)
class PedestalCheck:
    name: str = "pedestals"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.pedestals
        if ctx.baseline is None:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no reference or run baseline yet")
        warn, error, shift = channels.pedestal_tests(ctx.book, ctx.baseline.book, cfg)
        if warn.tests == 0:
            n = int(ctx.book.arrays["wf_n"][0])
            return CheckResult(
                self.name,
                State.UNKNOWN,
                f"not judged: {n} waveforms in this spill, need {cfg.min_waveforms} per channel",
            )
        worst = int(np.nanargmax(np.abs(shift)))
        m = int(metrics.waveform_means(ctx.book).n[worst])
        largest = (
            f"largest median shift {detector.channel_name(worst)} {shift[worst]:+.1f} ADC of {m} waveforms"
        )
        for state, fam, step in ((State.ERROR, error, cfg.error), (State.WARN, warn, cfg.warn)):
            found = _by_channel(channels.significant(fam, _alpha(ctx, state)))
            if found:
                return CheckResult(
                    self.name,
                    state,
                    f"pedestal shift >= {step:g} ADC in {len(found)} channels: {_names([f.channel for f in found])}; "
                    f"{largest} (vs {ctx.baseline.source})",
                    float(shift[worst]),
                    tuple(f.name for f in found),
                )
        return CheckResult(
            self.name,
            State.OK,
            f"pedestals stable ({len(warn.judged)} channels judged; {largest}, within its spread)",
            float(shift[worst]),
        )


@dataclass(frozen=True)
class ElectronPeakCheck:
    name: str = "electron_peak"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.electron_peak
        h = ctx.book.h1["ecal_sum_beam"]
        edges = h.axes[0].edges
        peak = metrics.find_peak(h.values(), edges, cfg.min_events)
        if peak is None:
            return CheckResult(
                self.name, State.UNKNOWN, f"not judged: fewer than {cfg.min_events} beam triggers"
            )
        err = metrics.peak_error(h.values(), edges, cfg.min_events)
        if ctx.baseline is not None and ctx.baseline.peak is not None:
            expected, source = ctx.baseline.peak.mean, ctx.baseline.source
            err_ref = ctx.baseline.peak_error
        else:
            expected, source, err_ref = ctx.config.beam_energy_gev * cfg.expected_fraction, "beam energy", 0.0
        rel = peak.mean / expected - 1.0
        total = math.hypot(err, err_ref) if math.isfinite(err) and math.isfinite(err_ref) else math.nan
        # two-sided p of the shift; NaN error (too few resamplings worked): not significant
        p = 2 * stats.p_of_z(abs(peak.mean - expected) / total) if total > 0 else 1.0
        state = State.OK
        for level, limit in ((State.ERROR, cfg.error), (State.WARN, cfg.warn)):
            if abs(rel) >= limit and p < _alpha(ctx, level):
                state = level
                break
        return CheckResult(
            self.name,
            state,
            f"ECAL electron peak {peak.mean:.2f} +- {err:.2f} GeV, {100 * rel:+.1f}% vs {expected:.2f} "
            f"({source}; p={p:.1g})",
            rel,
        )


def _spill_numbers(summary: SpillSummary) -> tuple[int, int]:
    return summary.n_beam, summary.triggers.physics


@dataclass(frozen=True)
class TriggerRateCheck:
    name: str = "trigger_rate"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.rates
        n_beam, physics = _spill_numbers(ctx.summary)
        if n_beam < cfg.beam_off_eot:
            return CheckResult(self.name, State.UNKNOWN, "no beam in this spill")
        acc = physics / n_beam
        if ctx.baseline is not None and ctx.baseline.acceptance:
            rel = acc / ctx.baseline.acceptance - 1.0
            state = _level(abs(rel), cfg.warn, cfg.error)
            return CheckResult(
                self.name,
                state,
                f"physics triggers {physics} = {acc:.2e}/EOT, {100 * rel:+.0f}% vs {ctx.baseline.source}",
                acc,
            )
        ok = cfg.acceptance_min <= acc <= cfg.acceptance_max
        return CheckResult(
            self.name,
            State.OK if ok else State.ERROR,
            f"physics triggers {physics} = {acc:.2e}/EOT (allowed {cfg.acceptance_min:g}..{cfg.acceptance_max:g})",
            acc,
        )


@dataclass(frozen=True)
class EotCheck:
    name: str = "eot"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.rates
        n_beam, _ = _spill_numbers(ctx.summary)
        if ctx.baseline is None or not ctx.baseline.eot_per_spill:
            return CheckResult(self.name, State.UNKNOWN, f"EOT {n_beam} (no baseline yet)", float(n_beam))
        if n_beam < cfg.beam_off_eot:
            return CheckResult(self.name, State.UNKNOWN, f"EOT {n_beam}: beam off", float(n_beam))
        rel = n_beam / ctx.baseline.eot_per_spill - 1.0
        return CheckResult(
            self.name,
            _level(abs(rel), cfg.warn, cfg.error),
            f"EOT {n_beam}, {100 * rel:+.0f}% vs {ctx.baseline.eot_per_spill:.3g} ({ctx.baseline.source})",
            float(n_beam),
        )


@dataclass(frozen=True)
class BeamOffCheck:
    name: str = "beam_off"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.rates
        n_beam, _ = _spill_numbers(ctx.summary)
        if n_beam < cfg.beam_off_eot:
            return CheckResult(
                self.name, State.ERROR, f"beam off: {n_beam} EOT in spill {ctx.spill}", float(n_beam)
            )
        return CheckResult(self.name, State.OK, f"beam on: {n_beam} EOT", float(n_beam))


@dataclass(frozen=True)
class LossCheck:
    name: str = "losses"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.losses
        raw = ctx.summary.losses
        # "reason.kind" keys break a reason down (decode_error.<kind>): count the reason once
        losses = {k: v for k, v in raw.items() if k not in cfg.ignore and not is_breakdown(k) and v}
        total = sum(losses.values())
        if not total:
            return CheckResult(self.name, State.OK, "no losses", 0.0)
        accepted = max(ctx.summary.n_accepted, 1)
        state = State.ERROR if total > cfg.error_fraction * accepted else State.WARN
        text = ", ".join(f"{k} {v}" for k, v in sorted(losses.items()))
        return CheckResult(
            self.name,
            state,
            f"{total} lost ({text}) of {accepted} accepted",
            float(total),
            tuple(sorted(losses)),
        )


@dataclass(frozen=True)
class MissingSourceCheck:
    name: str = "missing_sources"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.sources
        losses = ctx.summary.losses  # cfg.reasons are checked against daq.contract.LOSS_REASONS
        problems = [f"{r} {losses[r]}" for r in cfg.reasons if losses.get(r, 0) > 0]
        n = ctx.book.arrays["wf_n"][0]
        missing: list[str] = []
        if n >= cfg.min_waveforms:
            frac = ctx.book.arrays["wf_zero_group"] / n
            missing = [detector.Detector(int(g)).name for g in np.flatnonzero(frac >= cfg.zero_fraction)]
        if missing:
            problems.append(f"no data from {', '.join(missing)}")
        if problems:
            return CheckResult(
                self.name, State.ERROR, "; ".join(problems), float(len(problems)), tuple(missing)
            )
        return CheckResult(self.name, State.OK, "all sources present", 0.0)


@dataclass(frozen=True)
class SaturationCheck:
    name: str = "early_saturation"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.saturation
        length_ns = ctx.summary.spill_length_s * 1e9
        spike = math.nan
        arrival = metrics.arrival_histogram(ctx.summary)
        if arrival is not None:
            counts, edges_ns = arrival
            filled = np.flatnonzero(counts)
            if filled.size:
                length_ns = float(edges_ns[filled[-1] + 1])  # beam time, without the readout tail
                spike = metrics.early_spike(counts, edges_ns, length_ns, cfg.early_fraction)
        if length_ns <= 0:
            return CheckResult(self.name, State.UNKNOWN, "not judged: spill length unknown")
        sat = metrics.early_excess(
            ctx.book, TIME_ROWS.index("saturated"), length_ns, cfg.early_fraction, arrival
        )
        sig = metrics.early_excess(
            ctx.book, TIME_ROWS.index("signal_like"), length_ns, cfg.early_fraction, arrival
        )
        spiking = math.isfinite(spike) and spike >= cfg.spike_factor
        text = (
            f"early/median intensity {spike:.2f}; first {100 * cfg.early_fraction:.0f}% of the spill: "
            f"{sat.observed:.0f} saturated events (expected {sat.expected:.1f}), {sig.observed:.0f} signal-like "
            f"(expected {sig.expected:.1f})"
        )
        # two tests (saturated, signal-like): each at half the false-alarm probability
        alpha = ctx.config.checks.alarm_error / 2
        if sat.significant(cfg.spike_factor, alpha) or sig.significant(cfg.spike_factor, alpha):
            return CheckResult(
                self.name,
                State.ERROR,
                "early-spill saturation pattern: " + text,
                max(sat.observed, sig.observed),
            )
        if spiking:
            return CheckResult(self.name, State.WARN, "early-spill intensity spike: " + text, spike)
        if sat.n_early < cfg.min_events:  # the events' part cannot be judged: not OK either
            return CheckResult(
                self.name, State.UNKNOWN, f"not judged: {sat.n_early:.0f} monitored events early; " + text
            )
        return CheckResult(self.name, State.OK, text, spike)


@dataclass(frozen=True)
class DeadTimeCheck:
    name: str = "dead_time"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.run_state
        f = ctx.summary.dead_time_fraction
        return CheckResult(
            self.name, _level(f, cfg.dead_time_warn, cfg.dead_time_error), f"dead time {100 * f:.2f}%", f
        )


@dataclass(frozen=True)
class SpillStatusCheck:
    name: str = "spill_status"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        status = ctx.summary.status
        state = {
            SpillStatus.OK: State.OK,
            SpillStatus.INCOMPLETE: State.WARN,
            SpillStatus.RECOVERED: State.WARN,
        }.get(status, State.ERROR)
        file = ctx.summary.file or "-"
        return CheckResult(self.name, state, f"spill {ctx.spill} {status} ({file})")


@dataclass(frozen=True)
class DiskCheck:
    name: str = "disk"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.run_state
        free = ctx.summary.free_disk_bytes
        if free is None:
            return CheckResult(self.name, State.UNKNOWN, "free disk unknown")
        gb = float(free) / 1e9
        state = State.ERROR if gb <= cfg.disk_error_gb else State.WARN if gb <= cfg.disk_warn_gb else State.OK
        return CheckResult(self.name, state, f"{gb:.1f} GB free", gb)


# ---------------------------------------------------------------- live checks
@dataclass(frozen=True)
class DaqHeartbeatCheck:
    name: str = "daq_heartbeat"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.heartbeat.daq_timeout_s
        if ctx.status_age_s is None:
            if ctx.uptime_s < timeout:
                return CheckResult(self.name, State.UNKNOWN, "not judged: waiting for the DAQ")
            return CheckResult(self.name, State.ERROR, f"no DAQ status since start ({ctx.uptime_s:.0f} s)")
        if ctx.status_age_s > timeout:
            return CheckResult(
                self.name, State.ERROR, f"DAQ silent for {ctx.status_age_s:.1f} s", ctx.status_age_s
            )
        state = ctx.status.state if ctx.status is not None else "?"
        return CheckResult(self.name, State.OK, f"DAQ {state}", ctx.status_age_s)


@dataclass(frozen=True)
class FrontendHeartbeatCheck:
    """The current run's front-ends speak (a front-end of an earlier run is no concern: the DAQ keeps
    old identities for an hour). Which front-ends belong to the run: the status's ``run_frontends``
    (docs/daq.md); without it (an older DAQ), every listed front-end. Between runs the alarm is
    suppressed by design (:mod:`dqm.monitor`)."""

    name: str = "frontend_heartbeat"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.heartbeat.frontend_timeout_s
        if ctx.status is None or ctx.status_age_s is None or ctx.status_age_s > timeout:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no current DAQ status")
        if not ctx.status.running:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no run")
        fes = ctx.status.frontends
        # a running DAQ names its run's front-end; one that does not (status version 1, an older DAQ):
        # every listed front-end is expected
        expected = list(ctx.status.run_frontends) or list(fes)
        if not expected:
            return CheckResult(self.name, State.WARN, "the DAQ runs without a front-end")
        bad = []
        for fid in expected:
            info = fes.get(fid)
            if info is None:
                bad.append(f"{fid} not connected")
                continue
            age = info.last_seen_s
            fe_state = info.state.lower()
            label = f"{info.name or 'front-end'} {fid}"
            if age > timeout:
                bad.append(f"{label} silent {age:.1f} s")
            elif fe_state == "stalled":
                bad.append(f"{label} stalled")
        if bad:
            return CheckResult(self.name, State.ERROR, "; ".join(bad), float(len(bad)))
        return CheckResult(
            self.name, State.OK, f"{len(expected)} front-end(s) of run {ctx.status.run} alive", 0.0
        )


@dataclass(frozen=True)
class DaqIdleBeamCheck:
    """The DAQ says it records no run while a front-end says it runs one (in a spill, or between
    spills): the beam's data goes nowhere. A restarted DAQ asks the front-end for its run within a
    second; a front-end whose run the DAQ refused stops. Anything longer is an ERROR."""

    name: str = "daq_idle_beam"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        hb = ctx.config.checks.heartbeat
        st = ctx.status
        if st is None or ctx.status_age_s is None or ctx.status_age_s > hb.daq_timeout_s:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no current DAQ status")
        if st.running:
            return CheckResult(self.name, State.OK, f"DAQ records run {st.run}")
        busy = [
            f"{info.name or 'front-end'} {fid} ({info.state})"
            for fid, info in sorted(st.frontends.items())
            if info.last_seen_s <= hb.frontend_timeout_s and info.state.lower() in _BUSY_FRONTEND_STATES
        ]
        if busy:
            return CheckResult(
                self.name,
                State.ERROR,
                f"DAQ idle while {', '.join(busy)} runs: its data is not recorded",
                float(len(busy)),
            )
        return CheckResult(self.name, State.OK, "DAQ idle, no front-end running")


#: front-end states (HEARTBEAT) in which it sends a run's data
_BUSY_FRONTEND_STATES = frozenset({"running", "in_spill", "stalled"})


#: DAQ alarms in its status (``alarms {name: text}``, docs/daq.md) and the severity they become here
DAQ_ALARMS: dict[str, State] = {
    "disk": State.ERROR,  # too little space: spills are not recorded
    "write": State.ERROR,  # a spill file failed
    "run": State.ERROR,  # a run was rejected (no usable trigger, its number already has files)
    "recovered": State.WARN,  # spill files of a crashed DAQ were recovered (their tails are lost)
}
#: DAQ alarms another check judges from its own status entry (CalibrationCheck: ``calibration``)
DAQ_ALARMS_ELSEWHERE = frozenset({"calibration"})


@dataclass(frozen=True)
class DaqAlarmCheck:
    """One of the DAQ's own alarms (``daq_<name>``); ``daq_other`` collects names this DQM does not know
    (a newer DAQ), so that none is lost."""

    key: str

    @property
    def name(self) -> str:
        return f"daq_{self.key}"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.heartbeat.daq_timeout_s
        if ctx.status is None or ctx.status_age_s is None or ctx.status_age_s > timeout:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no current DAQ status")
        alarms = ctx.status.alarms
        if self.key == "other":
            known = DAQ_ALARMS.keys() | DAQ_ALARMS_ELSEWHERE
            other = {str(k): str(v) for k, v in alarms.items() if k not in known}
            if other:
                listed = "; ".join(f"{k}: {v}" for k, v in sorted(other.items()))
                return CheckResult(self.name, State.WARN, f"DAQ: {listed}", float(len(other)), tuple(other))
            return CheckResult(self.name, State.OK, "no other DAQ alarm")
        text = alarms.get(self.key)
        if text:
            return CheckResult(self.name, DAQ_ALARMS.get(self.key, State.WARN), f"DAQ {self.key}: {text}")
        return CheckResult(self.name, State.OK, f"no DAQ {self.key} alarm")


@dataclass(frozen=True)
class BeamTimeoutCheck:
    """Live part of ``beam_off``: the DAQ runs but no spill has ended for a long time."""

    name: str = "beam_off"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.rates.beam_off_timeout_s
        if ctx.status is None or not ctx.status.running:
            return CheckResult(self.name, State.UNKNOWN, "not judged: DAQ not running")
        age = ctx.summary_age_s
        if age is not None and age > timeout:
            return CheckResult(self.name, State.ERROR, f"no spill for {age:.0f} s while the DAQ runs", age)
        return CheckResult(self.name, State.UNKNOWN, "not judged here: spills arriving (judged per spill)")


#: detectors whose channels enter the energy sums (E_ECAL, E_HCAL, so E_miss): an undetermined gain there
#: biases the physics; an undetermined counter, VETO or SRD channel (V1, V2 see only halo) does not
_SUM_DETECTORS = ("ECAL", "PRS", "HCAL")


@dataclass(frozen=True)
class CalibrationCheck:
    """The DAQ status's ``calibration`` entry (docs/daq.md): ERROR when the current run has no usable
    constants (the DAQ does not record it), WARN when constants of channels in the energy sums were not
    determined (nominal values in use), OK otherwise (the message names the set and its source)."""

    name: str = "calibration"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.heartbeat.daq_timeout_s
        if ctx.status is None or ctx.status_age_s is None or ctx.status_age_s > timeout:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no current DAQ status")
        cal = ctx.status.calibration
        if cal.run is None:
            return CheckResult(self.name, State.UNKNOWN, "not judged: no run started yet")
        run = cal.run
        if not cal.usable:
            return CheckResult(
                self.name,
                State.ERROR,
                f"run {run} has no usable calibration, not recorded: {cal.problem}",
            )
        undetermined = list(cal.undetermined)
        text = f"run {run}: {cal.id} ({cal.source})"
        in_sums = [c for c in undetermined if c.startswith(_SUM_DETECTORS)]
        if in_sums:
            more = f" (+{len(in_sums) - 5})" if len(in_sums) > 5 else ""
            return CheckResult(
                self.name,
                State.WARN,
                f"{text}: {len(in_sums)} channels of the energy sums undetermined (nominal constants): "
                f"{', '.join(in_sums[:5])}{more}",
                float(len(in_sums)),
                tuple(undetermined),
            )
        if undetermined:
            text += f"; undetermined (nominal constants): {', '.join(undetermined)}"
        return CheckResult(self.name, State.OK, text, float(len(undetermined)), tuple(undetermined))


def default_spill_checks(cfg: DqmConfig) -> list[SpillCheck]:
    """The standard per-spill checks enabled in ``cfg``."""
    c = cfg.checks
    table: list[tuple[bool, Callable[[], Sequence[SpillCheck]]]] = [
        (c.reference.enabled, lambda: [ReferenceCheck(h) for h in c.reference.histograms]),
        (c.channels.enabled, lambda: [DeadChannelCheck(), HotChannelCheck()]),
        (c.pedestals.enabled, lambda: [PedestalCheck()]),
        (c.electron_peak.enabled, lambda: [ElectronPeakCheck()]),
        (c.rates.enabled, lambda: [BeamOffCheck(), EotCheck(), TriggerRateCheck()]),
        (c.losses.enabled, lambda: [LossCheck()]),
        (c.sources.enabled, lambda: [MissingSourceCheck()]),
        (c.saturation.enabled, lambda: [SaturationCheck()]),
        (c.run_state.enabled, lambda: [DeadTimeCheck(), SpillStatusCheck(), DiskCheck()]),
    ]
    return [check for enabled, make in table if enabled for check in make()]


def default_live_checks(cfg: DqmConfig) -> list[LiveCheck]:
    """The standard live (heartbeat) checks enabled in ``cfg``."""
    out: list[LiveCheck] = []
    if cfg.checks.heartbeat.enabled:
        out += [DaqHeartbeatCheck(), FrontendHeartbeatCheck(), DaqIdleBeamCheck()]
        out += [DaqAlarmCheck(key) for key in (*DAQ_ALARMS, "other")]
    if cfg.checks.rates.enabled:
        out.append(BeamTimeoutCheck())
    if cfg.checks.run_state.enabled:
        out.append(CalibrationCheck())
    return out
