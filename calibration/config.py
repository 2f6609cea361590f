"""Configuration of the calibration derivations: reference values from simulation and fit settings.

Built from an optional TOML file with :func:`daq.config_loader.from_dict` (tables ``[reference]``,
``[pedestals]``, ``[gains]``, ``[mip]``, ``[timing]``); ``na64 calibrate`` flags override single keys.
The reference values are what the detector should read for a known particle, taken from simulation;
the defaults match the simulator's default model (``simulator/config.py``, ``docs/simulator.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from daq import detector


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be > 0 (got {value!r})")


@dataclass(frozen=True)
class ReferenceConfig:
    """Expected deposits (MeV unless stated) for the particles each calibration uses."""

    beam_energy_gev: float = 100.0
    #: share of an electron's energy deposited in the 30 ECAL + 30 PRS cells (the rest leaks off the face),
    #: per shower-centre cell: from the containment reference (default: the one shipped with the detector
    #: model, calibration/reference/ecal_containment_v1.json); a number here replaces it for every cell
    containment: float | None = None
    #: another containment reference file (tools/make_containment_reference.py); "" = the shipped one
    containment_reference: str = ""
    #: per shower-centre cell (ECAL cell name -> containment), over the reference or the number above
    containment_map: dict[str, float] = field(default_factory=dict)
    hcal_mip_mev: float = 2500.0  # most probable muon deposit per HCAL module (in its crossed cell)
    prs_mip_mev: float = 45.0  # most probable muon deposit in the PRS cell it crosses (EM scale)
    veto_mip_mev: float = 10.0  # most probable MIP deposit per VETO slab, seen by each of its PMTs
    srd_median_mev: float = 26.74  # median synchrotron-radiation deposit of a 100 GeV e- per SRD module
    counter_mip_mev: float = 0.3  # most probable deposit in S0, S2, S3 (1.5 mm scintillator)
    hole_veto_mip_mev: float = 2.0  # most probable deposit in V1, V2 (10 mm scintillator)
    #: relative systematic uncertainty added in quadrature to every gain from a MIP peak (HCAL, VETO, PRS,
    #: counters): the Moyal fit's peak of a noise-smeared Landau-like spectrum against the reference MPV
    #: (offsets of 0.2-0.5% per group in simulated campaigns, docs/calibration.md "Errors")
    mip_systematic: float = 0.004
    #: the same for every ECAL gain from the shower fit: its absolute scale (the containment's peak, pile-up;
    #: +0.15% in simulated campaigns)
    shower_systematic: float = 0.002

    def __post_init__(self) -> None:
        for name in (
            "beam_energy_gev",
            "hcal_mip_mev",
            "prs_mip_mev",
            "veto_mip_mev",
            "srd_median_mev",
            "counter_mip_mev",
            "hole_veto_mip_mev",
        ):
            _positive(name, getattr(self, name))
        for name in ("mip_systematic", "shower_systematic"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 0.1:
                raise ValueError(f"{name} must be a number in [0, 0.1) (got {v!r})")
        c = self.containment
        if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or not 0.5 <= c <= 1.0):
            raise ValueError(f"containment must be a number in [0.5, 1] (got {c!r})")
        if not isinstance(self.containment_reference, str):
            raise ValueError("containment_reference must be a file name")
        if not isinstance(self.containment_map, dict):
            raise ValueError("containment_map must be a table of ECAL cell name = containment")
        ecal_names = {detector.channel_name(int(c)) for c in detector.ECAL_IDS}
        for name, value in self.containment_map.items():
            if name not in ecal_names:
                raise ValueError(f"containment_map: {name!r} is not an ECAL cell (e.g. ECAL23)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 1.0:
                raise ValueError(f"containment_map.{name} must be a number in [0.5, 1] (got {value!r})")


@dataclass(frozen=True)
class PedestalConfig:
    threshold_sigma: float = 3.0  # pulse finder: |3-sample sum| > threshold x noise x sqrt(3)
    guard_before: int = 3  # samples cut before a pulse (its rise)
    guard_after: int = 8  # samples cut after it (its tail)
    initial_windows: int = 2000  # random windows used for the first (median) estimate
    prepulse_samples: int = 4  # pre-pulse cross-check: first samples of triggered events
    prepulse_tolerance: float = 1.0  # ADC counts; larger pre-pulse vs random-trigger differences are logged
    dead_noise: float = 0.2
    noisy_factor: float = 3.0
    hot_stray: float = 0.005  # large pulses without a beam-counter pulse, fraction of random windows
    hot_factor: float = 5.0  # ... and this x the median of the detector
    occupancy_sigma: float = 5.0  # occupancy (provenance): a triggered event's amplitude above this x noise
    #: dead (live noise, no signal): mean fixed-time signal in triggered events within this many errors of 0
    dead_max_significance: float = 5.0
    dead_min_expected_significance: float = 20.0  # ... where its neighbourhood predicts this many errors

    def __post_init__(self) -> None:
        _positive("threshold_sigma", self.threshold_sigma)
        if self.guard_before < 0 or self.guard_after < 0:
            raise ValueError("guard_before and guard_after must be >= 0")
        if self.initial_windows < 10:
            raise ValueError(f"initial_windows must be >= 10 (got {self.initial_windows})")
        if self.prepulse_samples < 2:
            raise ValueError(f"prepulse_samples must be >= 2 (got {self.prepulse_samples})")
        _positive("prepulse_tolerance", self.prepulse_tolerance)


@dataclass(frozen=True)
class GainConfig:
    prior_rel: float = 0.15  # relative width of the prior on the starting gains (nominal: 10% spread)
    window: float = 3.0  # events within +-window sigma of the peak of sum/target enter the fit
    max_rel_error: float = 0.02  # a cell is determined when its gain error is below this
    min_events: int = 200
    cell_min_events: int = 30  # per-cell peak check: events centred on the cell
    cell_tolerance: float = 0.02  # per-cell peak off by more than this is logged as a warning
    exclude_saturated: bool = True  # drop events with a saturated calorimeter sample
    exclude_pileup: bool = False  # drop events whose most energetic cell has the pile-up flag
    #: the DAQ's zero suppression (amplitude below this x noise: no energy); cells under it enter the fit
    #: with their fixed-time amplitude; < 0: take reco.zero_suppress_sigma from the files
    zero_suppress_sigma: float = -1.0
    prs_from_muons: bool = True  # PRS gains from their MIP peak (muons), then fixed in the least squares
    srd_min_entries: int = 100
    counter_min_entries: int = 100
    #: cross-check against the containment measured from the data: a cell off by more than this (and 3
    #: errors), or the outer ring on average by more than crosscheck_ring_tolerance, fails the step
    crosscheck_cell_tolerance: float = 0.02
    crosscheck_ring_tolerance: float = 0.01
    crosscheck_fail: bool = True  # false: a failed cross-check is logged and recorded, the constants written

    def __post_init__(self) -> None:
        for name in (
            "prior_rel",
            "window",
            "max_rel_error",
            "cell_tolerance",
            "crosscheck_cell_tolerance",
            "crosscheck_ring_tolerance",
        ):
            _positive(name, getattr(self, name))
        if self.min_events < 10 or self.cell_min_events < 5:
            raise ValueError("min_events must be >= 10 and cell_min_events >= 5")


@dataclass(frozen=True)
class MipConfig:
    ecal_max_gev: float = 2.0
    prs_max_gev: float = 0.3
    hcal_module_min_gev: float = 0.8
    hcal_module_max_gev: float = 8.0
    hcal_min_modules: int = 4
    veto_min_mev: float = 3.0  # a slab is crossed when sqrt(E1 E2) exceeds this
    min_entries: int = 100
    max_rel_error: float = 0.03

    def __post_init__(self) -> None:
        for name in (
            "ecal_max_gev",
            "prs_max_gev",
            "hcal_module_min_gev",
            "hcal_module_max_gev",
            "veto_min_mev",
            "max_rel_error",
        ):
            _positive(name, getattr(self, name))
        if self.hcal_module_max_gev <= self.hcal_module_min_gev:
            raise ValueError("hcal_module_max_gev must be larger than hcal_module_min_gev")
        if not 1 <= self.hcal_min_modules <= detector.HCAL_MODULES:
            raise ValueError(f"hcal_min_modules must be in 1..{detector.HCAL_MODULES}")
        if self.min_entries < 20:
            raise ValueError("min_entries must be >= 20")


@dataclass(frozen=True)
class TimingConfig:
    threshold_sigma: float = 10.0  # a pulse's time counts when its amplitude exceeds this x noise
    min_entries: int = 100  # a truncated mean over fewer, tail-prone entries is not trusted

    def __post_init__(self) -> None:
        _positive("threshold_sigma", self.threshold_sigma)
        if self.min_entries < 3:
            raise ValueError("min_entries must be >= 3")


@dataclass(frozen=True)
class CalibrationConfig:
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    pedestals: PedestalConfig = field(default_factory=PedestalConfig)
    gains: GainConfig = field(default_factory=GainConfig)
    mip: MipConfig = field(default_factory=MipConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)


def as_dict(config: CalibrationConfig) -> dict[str, Any]:
    """Plain-dict form (for provenance)."""
    import dataclasses

    return dataclasses.asdict(config)
