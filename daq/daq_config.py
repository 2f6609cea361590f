"""Configuration of ``na64 daq``: frozen dataclasses built from TOML with ``daq.config_loader.from_dict``.

Sections: ``[trigger]`` (:class:`daq.trigger.TriggerConfig`), ``[reco]`` (:class:`daq.waveform.RecoConfig`),
``[readout]``, ``[writer]`` (:class:`daq.writer.WriterConfig`), ``[monitor]``, ``[histograms]``. Every key,
its default and meaning is listed in ``docs/daq.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daq import config_loader
from daq.trigger import TriggerConfig
from daq.waveform import RecoConfig
from daq.writer import WriterConfig


@dataclass(frozen=True)
class ReadoutConfig:
    """Readout bookkeeping: how long to wait for fragments and spill ends."""

    #: a request whose fragments have not all arrived after this long is closed (fragment_timeout)
    fragment_timeout_s: float = 5.0
    #: a spill with no message for this long is closed as incomplete (spill_end_missing)
    spill_timeout_s: float = 30.0
    #: how long to retry sending a READOUT_REQUEST to a front-end that is not reading (request_failed)
    send_timeout_s: float = 5.0
    #: a RUN_START from another front-end takes the run over only when its owner has been silent this long
    #: (front-ends send a HEARTBEAT every second)
    owner_timeout_s: float = 10.0
    #: largest message frame taken from the network (ZMQ_MAXMSGSIZE); a peer sending more is disconnected
    max_frame_mb: float = 256.0

    def __post_init__(self) -> None:
        for name in (
            "fragment_timeout_s",
            "spill_timeout_s",
            "send_timeout_s",
            "owner_timeout_s",
            "max_frame_mb",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")


@dataclass(frozen=True)
class MonitorConfig:
    """The DQM feed (XPUB): sampled event batches and JSON summaries."""

    #: EVENTS messages per second at most (the events built in between are sent together)
    batches_per_s: float = 4.0
    #: events per EVENTS message at most; more are skipped (and counted as monitor_skipped)
    max_events_per_batch: int = 2000
    #: send high-water mark of the XPUB socket (messages); a full queue skips, never blocks
    sndhwm: int = 16
    status_period_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.batches_per_s <= 100:
            raise ValueError(f"batches_per_s must be in (0, 100] (got {self.batches_per_s})")
        if self.max_events_per_batch < 1:
            raise ValueError(f"max_events_per_batch must be >= 1 (got {self.max_events_per_batch})")
        if self.sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 (got {self.sndhwm})")
        if not self.status_period_s > 0:
            raise ValueError(f"status_period_s must be > 0 (got {self.status_period_s})")


@dataclass(frozen=True)
class HistogramConfig:
    """Per-spill histograms of the full primitive stream."""

    arrival_bins: int = 100
    ecal_bins: int = 240
    ecal_max_gev: float = 120.0
    prs_bins: int = 200
    prs_max_gev: float = 10.0

    def __post_init__(self) -> None:
        for name in ("arrival_bins", "ecal_bins", "prs_bins"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ValueError(f"{name} must be in 1..100000 (got {getattr(self, name)})")
        for name in ("ecal_max_gev", "prs_max_gev"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")


@dataclass(frozen=True)
class StorageConfig:
    """Where and when to write."""

    #: a spill is not recorded (status failed) when less than this is free at its start
    min_free_mb: float = 500.0

    def __post_init__(self) -> None:
        if self.min_free_mb < 0:
            raise ValueError(f"min_free_mb must be >= 0 (got {self.min_free_mb})")


@dataclass(frozen=True)
class DaqConfig:
    """The whole DAQ configuration (recorded as JSON in every spill file)."""

    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    reco: RecoConfig = field(default_factory=RecoConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    histograms: HistogramConfig = field(default_factory=HistogramConfig)


def load_config(
    path: str | Path | None = None,
    assignments: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> DaqConfig:
    """TOML file (optional), then ``KEY=VALUE`` assignments, then programmatic overrides (dotted keys)."""
    data: dict[str, Any] = config_loader.load_toml(path) if path else {}
    dotted: dict[str, Any] = {}
    for text in assignments or []:
        key, value = config_loader.parse_assignment(text)
        dotted[key] = value
    dotted.update(overrides or {})
    return config_loader.from_dict(DaqConfig, config_loader.with_overrides(data, dotted))
