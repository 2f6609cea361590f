"""DQM configuration: frozen, validated dataclasses built from TOML with :func:`daq.config_loader.from_dict`.

Every threshold of every check lives here with its default; ``docs/dqm.md`` lists them. Example::

    beam_energy_gev = 100
    [checks.electron_peak]
    warn = 0.02
    error = 0.05
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daq.config_loader import from_dict, load_toml
from daq.contract import LOSS_REASONS

#: detectors in daq.detector.Detector order
DETECTORS = ("ECAL", "PRS", "HCAL", "VETO", "SRD", "COUNTER")


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise ValueError(why)


def _loss_reasons(key: str, reasons: tuple[str, ...]) -> None:
    """A name that is not a DAQ loss reason would silently match nothing."""
    unknown = [r for r in reasons if r not in LOSS_REASONS]
    _need(
        not unknown, f"{key}: unknown DAQ loss reason {', '.join(unknown)} (known: {', '.join(LOSS_REASONS)})"
    )


def _levels(warn: float, error: float, rising: bool = True) -> None:
    _need(warn >= 0 and error >= 0, f"warn and error must be >= 0 (got {warn}, {error})")
    if rising:
        _need(error >= warn, f"error ({error}) must be >= warn ({warn})")
    else:
        _need(error <= warn, f"error ({error}) must be <= warn ({warn})")


@dataclass(frozen=True)
class ReferenceCheckConfig:
    """Shape comparison of per-spill histograms with the reference (or the run's own baseline).

    chi2: the two-sample chi2 turned into a p-value with its degrees of freedom (and, as an effect size,
    chi2/ndf at least ``warn``/``error``); ks: the KS distance D sqrt(nm/(n+m)) (1.36 ~ 5%, 1.63 ~ 1%).
    """

    enabled: bool = True
    method: Literal["chi2", "ks"] = "chi2"
    #: chi2: smallest chi2/ndf that can alarm (a significant but tiny difference is no alarm);
    #: ks: the distance itself
    warn: float = 1.5
    error: float = 3.0
    min_entries: int = 200
    histograms: tuple[str, ...] = ("ecal_sum_beam", "prs_sum_beam", "e_miss", "hcal_sum_phys")

    def __post_init__(self) -> None:
        _levels(self.warn, self.error)
        _need(self.min_entries >= 1, f"min_entries must be >= 1 (got {self.min_entries})")


@dataclass(frozen=True)
class ChannelCheckConfig:
    """Dead and hot channels: hits (vs the baseline and vs the detector's symmetry) and waveform noise.

    A channel is flagged when the test is significant (false-alarm probabilities ``checks.alarm_*`` with
    the look-elsewhere correction over every channel and test) and the effect is large enough.
    """

    enabled: bool = True
    #: a hits test judges a channel only when it expects at least this many hits in the spill
    min_expected: float = 15.0
    #: dead: hits < dead_fraction x expected (from the baseline, or from the channel's symmetric peers)
    dead_fraction: float = 0.2
    #: hot: hits > hot_factor x expected, and the occupancy at least hot_min_excess above expected
    hot_factor: float = 2.0
    hot_min_excess: float = 0.005
    #: dead by noise: every monitored waveform's pre-sample RMS <= dead_noise_adc (a live channel has noise)
    dead_noise_adc: float = 0.25
    #: noisy: half the spill's waveforms have a pre-sample RMS >= noise_factor x the baseline's median
    noise_factor: float = 2.5
    #: waveforms per channel needed before the noise tests judge it
    min_waveforms: int = 5

    def __post_init__(self) -> None:
        _need(0 < self.dead_fraction < 1, f"dead_fraction must be in (0, 1) (got {self.dead_fraction})")
        _need(self.hot_factor > 1, f"hot_factor must be > 1 (got {self.hot_factor})")
        _need(self.noise_factor > 1, f"noise_factor must be > 1 (got {self.noise_factor})")
        _need(self.min_expected > 0, "min_expected must be > 0")
        _need(self.min_waveforms >= 1, "min_waveforms must be >= 1")


@dataclass(frozen=True)
class PedestalCheckConfig:
    """Pedestal shift: per-waveform pre-sample means per channel vs the baseline's, in ADC counts.

    WARN (ERROR) when half the spill's waveforms lie ``warn`` (``error``) counts or more from the
    baseline's median, significantly more often than in the baseline."""

    enabled: bool = True
    warn: float = 3.0
    error: float = 10.0
    min_waveforms: int = 5

    def __post_init__(self) -> None:
        _levels(self.warn, self.error)
        _need(self.min_waveforms >= 1, "min_waveforms must be >= 1")


@dataclass(frozen=True)
class PeakCheckConfig:
    """ECAL electron peak (sum ECAL for beam triggers) relative drift vs the baseline: the shift must be
    at least ``warn``/``error`` and significant (its error from resampling the spill's and the
    baseline's histograms; false-alarm probabilities ``checks.alarm_*``)."""

    enabled: bool = True
    warn: float = 0.02
    error: float = 0.05
    min_events: int = 30
    #: used when there is neither a reference nor a run baseline yet; as a fraction of the beam energy.
    #: With nominal constants the simulated 100 GeV peak reads ~101 GeV: the DAQ's template amplitude is
    #: unbiased (the old maximum-sample estimator read 2.3% low, hence the earlier 0.98), and pile-up at
    #: 2 MHz adds ~1% to the mean of the +-2 sigma window.
    expected_fraction: float = 1.01

    def __post_init__(self) -> None:
        _levels(self.warn, self.error)
        _need(0 < self.expected_fraction <= 1.2, "expected_fraction must be in (0, 1.2]")


@dataclass(frozen=True)
class RateCheckConfig:
    """Physics-trigger acceptance (per EOT) and EOT per spill, vs the baseline; plus absolute limits."""

    enabled: bool = True
    #: relative deviation from the baseline for WARN and ERROR
    warn: float = 0.3
    error: float = 0.6
    #: absolute limits used when there is no baseline (physics triggers per EOT)
    acceptance_min: float = 1e-4
    acceptance_max: float = 5e-2
    #: EOT per spill below which the spill counts as "beam off" (ERROR of check beam_off)
    beam_off_eot: int = 100
    #: no spill summary for this long while the DAQ runs: beam off (s)
    beam_off_timeout_s: float = 35.0

    def __post_init__(self) -> None:
        _levels(self.warn, self.error)
        _need(0 <= self.acceptance_min < self.acceptance_max, "acceptance_min must be < acceptance_max")
        _need(self.beam_off_timeout_s > 0, "beam_off_timeout_s must be > 0")


@dataclass(frozen=True)
class LossCheckConfig:
    """DAQ losses by reason (dead_time and monitor_skipped are not data losses)."""

    enabled: bool = True
    #: losses per spill for WARN; fraction of accepted triggers for ERROR
    warn: int = 1
    error_fraction: float = 0.01
    ignore: tuple[str, ...] = ("dead_time", "monitor_skipped")

    def __post_init__(self) -> None:
        _need(self.warn >= 1, "warn must be >= 1")
        _need(0 <= self.error_fraction <= 1, "error_fraction must be in [0, 1]")
        _loss_reasons("ignore", self.ignore)


@dataclass(frozen=True)
class SourceCheckConfig:
    """Missing readout sources: fragment timeouts/empty fragments, or a group's waveforms all zero."""

    enabled: bool = True
    reasons: tuple[str, ...] = ("fragment_timeout", "empty_fragment", "truncated_fragment")
    #: fraction of monitored waveforms in which a whole readout group is zero (the source sent nothing)
    zero_fraction: float = 0.5
    min_waveforms: int = 5

    def __post_init__(self) -> None:
        _need(0 < self.zero_fraction <= 1, "zero_fraction must be in (0, 1]")
        _loss_reasons("reasons", self.reasons)


@dataclass(frozen=True)
class SaturationCheckConfig:
    """Early-spill saturation pattern: an intensity spike early in the spill (WARN), with an excess of
    saturated or signal-like events there (ERROR) compared with the rest of the spill."""

    enabled: bool = True
    early_fraction: float = 0.2
    #: early intensity over the median of the rest (WARN); early excess factor over the rate later (ERROR)
    spike_factor: float = 2.0
    min_events: int = 50

    def __post_init__(self) -> None:
        _need(0 < self.early_fraction < 1, "early_fraction must be in (0, 1)")
        _need(self.spike_factor > 1, "spike_factor must be > 1")


@dataclass(frozen=True)
class HeartbeatCheckConfig:
    """DAQ status messages and front-end heartbeats (live only)."""

    enabled: bool = True
    daq_timeout_s: float = 3.5
    frontend_timeout_s: float = 3.5

    def __post_init__(self) -> None:
        _need(self.daq_timeout_s > 0 and self.frontend_timeout_s > 0, "timeouts must be > 0")


@dataclass(frozen=True)
class RunStateCheckConfig:
    """Spill status, dead-time fraction and free disk."""

    enabled: bool = True
    dead_time_warn: float = 0.05
    dead_time_error: float = 0.2
    disk_warn_gb: float = 20.0
    disk_error_gb: float = 2.0

    def __post_init__(self) -> None:
        _levels(self.dead_time_warn, self.dead_time_error)
        _levels(self.disk_warn_gb, self.disk_error_gb, rising=False)


@dataclass(frozen=True)
class ChecksConfig:
    #: false-alarm probability per spill (spill checks) of each statistical check, for WARN and for
    #: ERROR; a check testing many channels divides it among them (look-elsewhere correction)
    alarm_warn: float = 1e-4
    alarm_error: float = 1e-6
    reference: ReferenceCheckConfig = field(default_factory=ReferenceCheckConfig)
    channels: ChannelCheckConfig = field(default_factory=ChannelCheckConfig)
    pedestals: PedestalCheckConfig = field(default_factory=PedestalCheckConfig)
    electron_peak: PeakCheckConfig = field(default_factory=PeakCheckConfig)
    rates: RateCheckConfig = field(default_factory=RateCheckConfig)
    losses: LossCheckConfig = field(default_factory=LossCheckConfig)
    sources: SourceCheckConfig = field(default_factory=SourceCheckConfig)
    saturation: SaturationCheckConfig = field(default_factory=SaturationCheckConfig)
    heartbeat: HeartbeatCheckConfig = field(default_factory=HeartbeatCheckConfig)
    run_state: RunStateCheckConfig = field(default_factory=RunStateCheckConfig)

    def __post_init__(self) -> None:
        _need(0 < self.alarm_error <= self.alarm_warn < 0.5, "need 0 < alarm_error <= alarm_warn < 0.5")


@dataclass(frozen=True)
class MqttConfig:
    topic_prefix: str = "na64/dqm"
    keepalive_s: int = 10
    backoff_min_s: float = 0.5
    backoff_max_s: float = 10.0
    #: the retained service status is refreshed this often (s)
    status_period_s: float = 10.0
    #: non-retained messages kept while the broker is unreachable (oldest dropped and counted)
    max_queued: int = 200
    client_id: str = ""

    def __post_init__(self) -> None:
        _need(
            bool(self.topic_prefix) and not any(c in self.topic_prefix for c in "#+"),
            f"topic_prefix must be non-empty without wildcards (got {self.topic_prefix!r})",
        )
        _need(self.keepalive_s >= 1, "keepalive_s must be >= 1")
        _need(0 < self.backoff_min_s <= self.backoff_max_s, "need 0 < backoff_min_s <= backoff_max_s")
        _need(self.max_queued >= 1, "max_queued must be >= 1")


@dataclass(frozen=True)
class AlarmsConfig:
    """Alarm management (docs/dqm.md, "Alarms")."""

    #: a shelve lasts at most this long (a shift); the page and MQTT offer shorter ones
    max_shelve_minutes: float = 480.0
    #: off-delay: a spill check's active alarm returns to normal after this many good spills in a row
    #: (a drift hovering at a threshold does not flap raised / normal / raised)
    clear_after_spills: int = 2

    def __post_init__(self) -> None:
        _need(0 < self.max_shelve_minutes <= 7 * 24 * 60, "max_shelve_minutes must be in (0, 10080]")
        _need(1 <= self.clear_after_spills <= 100, "clear_after_spills must be in 1..100")


@dataclass(frozen=True)
class DqmConfig:
    beam_energy_gev: float = 100.0
    #: signal region: E_ECAL below this (E_miss above beam_energy - this)
    signal_ecal_max_gev: float = 50.0
    #: ... and E_HCAL below this (the signal box of the zoomed view)
    signal_hcal_max_gev: float = 1.0
    #: the "last N spills" view
    last_n_spills: int = 10
    #: spills kept in the per-spill history (rates, check history)
    history_spills: int = 100
    #: good spills at the start of a run that form the baseline when there is no reference
    baseline_spills: int = 2
    #: snapshot and browser update period (ms)
    update_ms: int = 500
    #: live: a spill is checked this long after its summary (events may still be in flight) (s)
    close_delay_s: float = 1.5
    #: per-detector hit thresholds (GeV), in order ECAL PRS HCAL VETO SRD COUNTER
    hit_threshold_gev: tuple[float, float, float, float, float, float] = (0.5, 0.05, 0.5, 0.003, 0.005, 1e-4)
    #: per-detector upper edge of the per-channel spectra (GeV)
    spectrum_max_gev: tuple[float, float, float, float, float, float] = (110.0, 10.0, 100.0, 0.2, 0.15, 0.002)
    #: energy of one MIP in a VETO slab (GeV)
    veto_mip_gev: float = 0.01
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    def __post_init__(self) -> None:
        _need(self.beam_energy_gev > 0, f"beam_energy_gev must be > 0 (got {self.beam_energy_gev})")
        _need(0 < self.signal_ecal_max_gev < self.beam_energy_gev, "signal_ecal_max_gev must be in (0, beam)")
        _need(
            0 < self.signal_hcal_max_gev <= 5.0,
            "signal_hcal_max_gev must be in (0, 5] (the zoomed view's range)",
        )
        _need(1 <= self.last_n_spills <= 1000, "last_n_spills must be in 1..1000")
        _need(1 <= self.history_spills <= 10000, "history_spills must be in 1..10000")
        _need(1 <= self.baseline_spills <= 100, "baseline_spills must be in 1..100")
        _need(50 <= self.update_ms <= 60000, "update_ms must be in 50..60000")
        _need(0 <= self.close_delay_s <= 60, "close_delay_s must be in 0..60")
        _need(all(t >= 0 for t in self.hit_threshold_gev), "hit_threshold_gev must be >= 0")
        _need(all(m > 0 for m in self.spectrum_max_gev), "spectrum_max_gev must be > 0")
        _need(self.veto_mip_gev > 0, "veto_mip_gev must be > 0")


def load_config(path: str | Path | None = None, **overrides: object) -> DqmConfig:
    """Config from a TOML file (or defaults) with top-level overrides (e.g. beam_energy_gev=...)."""
    data = load_toml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(DqmConfig, data)
