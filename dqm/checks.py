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
from dqm import metrics
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
@dataclass(frozen=True)
class ReferenceCheck:
    """Shape of a per-spill histogram vs the baseline's (chi2/ndf or KS distance)."""

    hist: str

    @property
    def name(self) -> str:
        return f"reference_{self.hist}"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.reference
        if ctx.baseline is None:
            return CheckResult(self.name, State.UNKNOWN, "no reference or run baseline yet")
        observed = ctx.book.h1[self.hist].values()
        expected = ctx.baseline.book.h1[self.hist].values()
        if observed.sum() < cfg.min_entries or expected.sum() < cfg.min_entries:
            return CheckResult(
                self.name,
                State.UNKNOWN,
                f"{self.hist}: {observed.sum():.0f} entries, need {cfg.min_entries}",
            )
        if cfg.method == "ks":
            dist, p = metrics.ks_distance(observed, expected)
            text = f"{self.hist}: KS {dist:.2f} (p={p:.2g}) vs {ctx.baseline.source}"
        else:
            dist, ndf = metrics.chi2_ndf(observed, expected)
            text = f"{self.hist}: chi2/ndf {dist:.2f} (ndf {ndf}) vs {ctx.baseline.source}"
        return CheckResult(self.name, _level(dist, cfg.warn, cfg.error), text, dist)


@dataclass(frozen=True)
class DeadChannelCheck:
    name: str = "dead_channels"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.channels
        book = ctx.book
        dead = np.zeros(detector.N_CHANNELS, bool)
        judged = 0
        if ctx.baseline is not None:
            # beam triggers only: an unbiased sample of electrons whatever a fault does to the physics trigger
            expected = ctx.baseline.hit_rate[1] * book.arrays["n_type"][1]
            observed = book.arrays["hits"][1]
            sel = expected >= cfg.min_expected
            judged += int(sel.sum())
            dead |= sel & (observed < cfg.dead_fraction * expected)
        ped = metrics.pedestals(book)
        noise_ok = ped.n >= cfg.min_samples
        if ctx.baseline is not None:
            base = ctx.baseline.pedestals
            # only where the baseline itself showed noise: a channel that never had noise cannot go quiet
            noise_ok &= ~(base.noise <= cfg.dead_noise_adc)
        judged = max(judged, int(noise_ok.sum()))
        dead |= noise_ok & (ped.noise <= cfg.dead_noise_adc)
        ids = np.flatnonzero(dead)
        if judged == 0:
            return CheckResult(self.name, State.UNKNOWN, "not enough events or waveforms to judge channels")
        state = _level(len(ids), cfg.warn, cfg.error) if len(ids) else State.OK
        msg = f"{len(ids)} dead: {_names(ids)}" if len(ids) else f"no dead channel ({judged} judged)"
        return CheckResult(
            self.name, state, msg, float(len(ids)), tuple(detector.channel_name(int(i)) for i in ids)
        )


@dataclass(frozen=True)
class HotChannelCheck:
    name: str = "hot_channels"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.channels
        book = ctx.book
        hot = np.zeros(detector.N_CHANNELS, bool)
        judged = False
        if ctx.baseline is not None and book.arrays["n_type"][1] > 0:
            # beam triggers only (see DeadChannelCheck)
            expected = ctx.baseline.hit_rate[1] * book.arrays["n_type"][1]
            observed = book.arrays["hits"][1]
            n_sig = book.arrays["n_type"][1]
            limit = np.maximum(
                cfg.hot_factor * expected + 5 * np.sqrt(expected) + 5, cfg.hot_min_fraction * n_sig
            )
            hot |= observed > limit
            judged = True
        ped = metrics.pedestals(book)
        ok = ped.n >= cfg.min_samples
        if ok.any():
            judged = True
            limit_noise = np.full(detector.N_CHANNELS, cfg.hot_noise_adc)
            if ctx.baseline is not None:
                base = ctx.baseline.pedestals.noise
                limit_noise = np.where(
                    np.isfinite(base), np.minimum(limit_noise, 3 * base + 1.0), limit_noise
                )
            hot |= ok & (ped.noise > limit_noise)
        if not judged:
            return CheckResult(self.name, State.UNKNOWN, "not enough events to judge channels")
        ids = np.flatnonzero(hot)
        state = _level(len(ids), cfg.warn, cfg.error) if len(ids) else State.OK
        msg = f"{len(ids)} hot/noisy: {_names(ids)}" if len(ids) else "no hot channel"
        return CheckResult(
            self.name, state, msg, float(len(ids)), tuple(detector.channel_name(int(i)) for i in ids)
        )


@dataclass(frozen=True)
class PedestalCheck:
    name: str = "pedestals"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.pedestals
        if ctx.baseline is None:
            return CheckResult(self.name, State.UNKNOWN, "no reference or run baseline yet")
        ped = metrics.pedestals(ctx.book)
        base = ctx.baseline.pedestals
        sel = (ped.n >= cfg.min_samples) & (base.n >= cfg.min_samples)
        if not sel.any():
            return CheckResult(self.name, State.UNKNOWN, "not enough waveforms for pedestals")
        shift = np.where(sel, np.abs(ped.mean - base.mean), 0.0)
        worst = int(np.argmax(shift))
        bad = np.flatnonzero(shift >= cfg.warn)
        state = _level(float(shift[worst]), cfg.warn, cfg.error)
        msg = (
            f"pedestal shift up to {shift[worst]:.1f} ADC ({detector.channel_name(worst)}); "
            f"{len(bad)} channels >= {cfg.warn:g}: {_names(bad)}"
            if len(bad)
            else f"pedestals stable (max shift {shift[worst]:.1f} ADC)"
        )
        return CheckResult(
            self.name, state, msg, float(shift[worst]), tuple(detector.channel_name(int(i)) for i in bad)
        )


@dataclass(frozen=True)
class ElectronPeakCheck:
    name: str = "electron_peak"

    def evaluate(self, ctx: SpillContext) -> CheckResult:
        cfg = ctx.config.checks.electron_peak
        h = ctx.book.h1["ecal_sum_beam"]
        peak = metrics.find_peak(h.values(), h.axes[0].edges, cfg.min_events)
        if peak is None:
            return CheckResult(self.name, State.UNKNOWN, f"fewer than {cfg.min_events} beam triggers")
        if ctx.baseline is not None and ctx.baseline.peak is not None:
            expected, source = ctx.baseline.peak.mean, ctx.baseline.source
        else:
            expected, source = ctx.config.beam_energy_gev * cfg.expected_fraction, "beam energy"
        rel = peak.mean / expected - 1.0
        state = _level(abs(rel), cfg.warn, cfg.error)
        # a shift within the statistical precision of this spill's peak is no drift
        stat = peak.sigma / math.sqrt(max(peak.n, 1.0))
        if abs(peak.mean - expected) < cfg.significance * stat:
            state = State.OK
        return CheckResult(
            self.name,
            state,
            f"ECAL electron peak {peak.mean:.2f} +- {stat:.2f} GeV, {100 * rel:+.1f}% vs {expected:.2f} ({source})",
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
            return CheckResult(self.name, State.UNKNOWN, "spill length unknown")
        sat = metrics.early_excess(ctx.book, TIME_ROWS.index("saturated"), length_ns, cfg.early_fraction)
        sig = metrics.early_excess(ctx.book, TIME_ROWS.index("signal_like"), length_ns, cfg.early_fraction)
        spiking = math.isfinite(spike) and spike >= cfg.spike_factor
        text = (
            f"early/median intensity {spike:.2f}; first {100 * cfg.early_fraction:.0f}% of the spill: "
            f"{sat.observed:.0f} saturated events (expected {sat.expected:.1f}), {sig.observed:.0f} signal-like "
            f"(expected {sig.expected:.1f})"
        )
        if sat.significant(cfg.spike_factor) or sig.significant(cfg.spike_factor):
            return CheckResult(
                self.name,
                State.ERROR,
                "early-spill saturation pattern: " + text,
                max(sat.observed, sig.observed),
            )
        if spiking:
            return CheckResult(self.name, State.WARN, "early-spill intensity spike: " + text, spike)
        if not math.isfinite(spike) and sat.n_early < cfg.min_events:
            return CheckResult(self.name, State.UNKNOWN, text)
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
        state = {SpillStatus.OK: State.OK, SpillStatus.INCOMPLETE: State.WARN}.get(status, State.ERROR)
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
                return CheckResult(self.name, State.UNKNOWN, "waiting for the DAQ")
            return CheckResult(self.name, State.ERROR, f"no DAQ status since start ({ctx.uptime_s:.0f} s)")
        if ctx.status_age_s > timeout:
            return CheckResult(
                self.name, State.ERROR, f"DAQ silent for {ctx.status_age_s:.1f} s", ctx.status_age_s
            )
        state = ctx.status.state if ctx.status is not None else "?"
        return CheckResult(self.name, State.OK, f"DAQ {state}", ctx.status_age_s)


@dataclass(frozen=True)
class FrontendHeartbeatCheck:
    name: str = "frontend_heartbeat"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.heartbeat.frontend_timeout_s
        if ctx.status is None or ctx.status_age_s is None or ctx.status_age_s > timeout:
            return CheckResult(self.name, State.UNKNOWN, "no current DAQ status")
        fes = ctx.status.frontends
        if not fes:
            state = State.WARN if ctx.status.running else State.UNKNOWN
            return CheckResult(self.name, state, "no front-end connected")
        bad = []
        for fid, info in fes.items():
            age = info.last_seen_s
            fe_state = info.state.lower()
            if age > timeout:
                bad.append(f"{fid} silent {age:.1f} s")
            elif fe_state == "stalled":
                bad.append(f"{fid} stalled")
        if bad:
            return CheckResult(self.name, State.ERROR, "; ".join(bad), float(len(bad)))
        return CheckResult(self.name, State.OK, f"{len(fes)} front-end(s) alive", 0.0)


@dataclass(frozen=True)
class BeamTimeoutCheck:
    """Live part of ``beam_off``: the DAQ runs but no spill has ended for a long time."""

    name: str = "beam_off"

    def evaluate(self, ctx: LiveContext) -> CheckResult:
        timeout = ctx.config.checks.rates.beam_off_timeout_s
        if ctx.status is None or not ctx.status.running:
            return CheckResult(self.name, State.UNKNOWN, "DAQ not running")
        age = ctx.summary_age_s
        if age is not None and age > timeout:
            return CheckResult(self.name, State.ERROR, f"no spill for {age:.0f} s while the DAQ runs", age)
        return CheckResult(self.name, State.UNKNOWN, "spills arriving")


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
        cal = ctx.status.calibration if ctx.status is not None else None
        if cal is None or cal.run is None:
            return CheckResult(self.name, State.UNKNOWN, "no run started yet")
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
        out += [DaqHeartbeatCheck(), FrontendHeartbeatCheck()]
    if cfg.checks.rates.enabled:
        out.append(BeamTimeoutCheck())
    if cfg.checks.run_state.enabled:
        out.append(CalibrationCheck())
    return out
