"""Configuration of the simulator: frozen, validated dataclasses with documented defaults.

Every physics number of ``shared/reference/detector.md`` and ``signal.md`` is a default here, not a
constant buried in code. Build from TOML with :func:`daq.config_loader.from_dict` (see :func:`load`); the CLI
overrides single keys. The tables are ``[beam]``, ``[tails]``, ``[ecal]``, ``[hcal]``, ``[veto]``,
``[srd]``, ``[counters]``, ``[electronics]``, ``[readout]``, ``[signal]`` and ``faults = [...]``.
Docs: ``docs/simulator.md`` lists each key with its source.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from daq import config_loader, detector


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (got {value})")


def _fraction(name: str, value: float, hi: float = 1.0) -> None:
    if not 0.0 <= value <= hi:
        raise ValueError(f"{name} must be in [0, {hi}] (got {value})")


@dataclass(frozen=True)
class BeamConfig:
    """Beam composition, spot and time structure."""

    energy_gev: float = 100.0  # H4 e- beam [paper]
    momentum_spread: float = 0.01  # dp/p ~ 1% (Gaussian sigma) [paper]
    rate_hz: float = 2.0e6  # particles per second inside the spill [paper: up to 2 MHz]
    spill_length_s: float = 4.8  # [paper]
    spill_period_s: float = 10.8  # [paper]
    profile: Literal["flat", "ramp", "spike"] = "flat"  # intensity profile inside the spill
    ramp_start: float = 0.5  # ramp: relative intensity at spill start, rising linearly to 1 at the end
    spike_factor: float = 4.0  # spike: intensity factor during the first spike_length_s
    spike_length_s: float = 0.3
    spot_sigma_mm: tuple[float, float] = (5.0, 5.0)  # beam spot (x, y) Gaussian sigma [est: few mm-1 cm]
    spot_offset_mm: tuple[float, float] = (0.0, 0.0)  # spot centre relative to the beam-cell centre
    halo_fraction: float = 0.01  # particles in a wide halo (they hit the hole vetoes) [est]
    halo_sigma_mm: float = 25.0
    beam_cell: tuple[int, int] = detector.BEAM_CELL  # the trigger block (primitive channels) is around it
    # steering (calibration scans; the ECAL moves across the beam, counters stay on the beam axis):
    # aim_cell = ECAL cell the beam is aimed at (default: beam_cell); scan_cells = cells visited in turn,
    # one per spill (scan_mode "spill") or one drawn per particle (scan_mode "particle")
    aim_cell: tuple[int, int] | None = None
    scan_cells: tuple[tuple[int, int], ...] = ()
    scan_mode: Literal["spill", "particle"] = "spill"
    pion_fraction: float = 0.008  # h/e <~ 1% in total [paper]
    kaon_fraction: float = 0.0015
    antiproton_fraction: float = 0.0005
    muon_fraction: float = 0.003  # a few 1e-3 [est]

    def __post_init__(self) -> None:
        _positive("energy_gev", self.energy_gev)
        _fraction("momentum_spread", self.momentum_spread, 0.2)
        _positive("rate_hz", self.rate_hz)
        _positive("spill_length_s", self.spill_length_s)
        if self.spill_period_s < self.spill_length_s:
            raise ValueError(
                f"spill_period_s ({self.spill_period_s}) must be >= spill_length_s ({self.spill_length_s})"
            )
        _fraction("ramp_start", self.ramp_start, 10.0)
        _positive("spike_factor", self.spike_factor)
        _positive("spike_length_s", self.spike_length_s)
        if min(self.spot_sigma_mm) <= 0:
            raise ValueError(f"spot_sigma_mm must be > 0 (got {self.spot_sigma_mm})")
        _fraction("halo_fraction", self.halo_fraction)
        _positive("halo_sigma_mm", self.halo_sigma_mm)
        detector.block_cells(self.beam_cell, (1, 1))
        for cell in ((self.aim_cell,) if self.aim_cell is not None else ()) + tuple(self.scan_cells):
            if len(cell) != 2 or not (0 <= cell[0] < detector.ECAL_NX and 0 <= cell[1] < detector.ECAL_NY):
                raise ValueError(
                    f"aim/scan cell {list(cell)} is not an ECAL cell [x, y] (x 0..{detector.ECAL_NX - 1}, "
                    f"y 0..{detector.ECAL_NY - 1})"
                )
        if self.aim_cell is not None and self.scan_cells:
            raise ValueError("give either aim_cell or scan_cells, not both")
        for name in ("pion_fraction", "kaon_fraction", "antiproton_fraction", "muon_fraction"):
            _fraction(name, getattr(self, name))
        if self.hadron_fraction + self.muon_fraction > 0.5:
            raise ValueError("hadron + muon fractions must be <= 0.5 (this is an electron beam)")

    @property
    def hadron_fraction(self) -> float:
        return self.pion_fraction + self.kaon_fraction + self.antiproton_fraction

    def aim_cells(self) -> list[tuple[int, int]]:
        """The ECAL cells the beam is aimed at: scan_cells, or [aim_cell or beam_cell]."""
        if self.scan_cells:
            return [(int(x), int(y)) for x, y in self.scan_cells]
        cell = self.aim_cell if self.aim_cell is not None else self.beam_cell
        return [(int(cell[0]), int(cell[1]))]


@dataclass(frozen=True)
class TailsConfig:
    """Rare electron processes that populate the low-energy and HCAL tails (fractions per electron)."""

    radiative_fraction: float = 0.0005  # electrons that radiated upstream and arrive with E(1-y) [est]
    radiative_y_min: float = 0.05  # radiated energy fraction y, brems spectrum on [y_min, y_max]
    radiative_y_max: float = 0.95
    electronuclear_fraction: float = 2.0e-4  # hard photo-nuclear interaction in the ECAL [est]
    electronuclear_f_min: float = 0.1  # energy fraction f given to hadrons, 1/f spectrum on [f_min, f_max]
    electronuclear_f_max: float = 0.95
    dimuon_fraction: float = 2.0e-5  # gamma -> mu+ mu- in the target [est, NA64 dimuon calibration sample]
    dimuon_x_min: float = 0.3  # energy fraction taken by the pair, flat on [x_min, x_max] [est]
    dimuon_x_max: float = 0.95

    def __post_init__(self) -> None:
        for name in ("radiative_fraction", "electronuclear_fraction", "dimuon_fraction"):
            _fraction(name, getattr(self, name), 0.2)
        for lo, hi in (
            ("radiative_y_min", "radiative_y_max"),
            ("electronuclear_f_min", "electronuclear_f_max"),
            ("dimuon_x_min", "dimuon_x_max"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 0 < a < b < 1:
                raise ValueError(f"need 0 < {lo} < {hi} < 1 (got {a}, {b})")


@dataclass(frozen=True)
class EcalConfig:
    """ECAL + PRS response (EM scale: deposits are energies an electron calibration reads back)."""

    stochastic: float = 0.10  # sigma_E/E = stochastic/sqrt(E[GeV]) (+) constant [paper]
    constant: float = 0.04  # [paper]
    prs_fraction_mean: float = 0.045  # PRS share of an electron shower, 3-6% [est]
    prs_fraction_rms: float = 0.012  # event-by-event fluctuation (gamma distribution) [est]
    # lateral profile: 1D projection w*exp(-|x|/b1)/(2 b1) + (1-w)*exp(-|x|/b2)/(2 b2) per axis, chosen
    # so that a centred shower leaves ~77% in its cell and ~95.5% in the 3x3 [est: 75-85%, 95-97%]
    core_weight: float = 0.77
    core_slope_mm: float = 5.0
    halo_slope_mm: float = 23.0
    prs_core_weight: float = 0.90  # the first 4 X0 see a narrower shower [est]
    prs_core_slope_mm: float = 3.0
    prs_halo_slope_mm: float = 15.0
    hadron_core_weight: float = 0.5  # hadronic showers are wider [est]
    hadron_core_slope_mm: float = 15.0
    hadron_halo_slope_mm: float = 60.0
    template_bin_mm: float = 1.0  # impact-position binning of the shower templates
    hadron_prs_min_fraction: float = 3e-4  # hadron interacting in the PRS: PRS share of its energy,
    hadron_prs_max_fraction: float = 0.02  # log-uniform between these [est]
    mip_prs_mev: float = 45.0  # MIP in the PRS on the EM scale, most probable value [est: 40-50 MeV]
    mip_ecal_mev: float = 500.0  # MIP through the whole ECAL [est: 0.4-0.6 GeV]
    mip_width: float = 0.12  # Landau width / MPV of MIP deposits [est]
    lambda_int_mm: float = 288.0  # nuclear interaction length of 1.5 mm Pb / 1.5 mm Sc [est]
    length_mm: float = 450.0  # 150 layers x 3 mm = 40 X0 [paper]
    prs_length_mm: float = 45.0  # first 4 X0 [paper]
    # the active target for Z' production: 1.5 mm Pb + 1.5 mm scintillator layers [paper]; material
    # constants from the PDG tables (Pb; polyvinyltoluene) [lit]
    absorber_mm: float = 1.5
    absorber_z: float = 82.0
    absorber_a: float = 207.2
    absorber_density_g_cm3: float = 11.35
    absorber_x0_mm: float = 5.612
    scintillator_mm: float = 1.5
    scintillator_density_g_cm3: float = 1.032
    scintillator_z_over_a: float = 0.5414
    scintillator_x0_mm: float = 425.4
    # longitudinal shower profile (PDG gamma-function fit): t_max = ln(E/E_c) - 0.5 (electrons), b [lit];
    # E_c of the sandwich = ionisation loss per X0 of the layer mix [est]
    critical_energy_mev: float = 8.0
    profile_b: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "stochastic",
            "prs_fraction_mean",
            "prs_fraction_rms",
            "core_slope_mm",
            "halo_slope_mm",
            "prs_core_slope_mm",
            "prs_halo_slope_mm",
            "hadron_core_slope_mm",
            "hadron_halo_slope_mm",
            "template_bin_mm",
            "mip_prs_mev",
            "mip_ecal_mev",
            "mip_width",
            "lambda_int_mm",
            "length_mm",
            "prs_length_mm",
            "absorber_mm",
            "absorber_z",
            "absorber_a",
            "absorber_density_g_cm3",
            "absorber_x0_mm",
            "scintillator_density_g_cm3",
            "scintillator_z_over_a",
            "scintillator_x0_mm",
            "critical_energy_mev",
            "profile_b",
        ):
            _positive(name, getattr(self, name))
        if self.scintillator_mm < 0:
            raise ValueError(f"scintillator_mm must be >= 0 (got {self.scintillator_mm})")
        _fraction("constant", self.constant, 0.5)
        for name in ("core_weight", "prs_core_weight", "hadron_core_weight"):
            _fraction(name, getattr(self, name))
        if not 0 < self.hadron_prs_min_fraction < self.hadron_prs_max_fraction < 1:
            raise ValueError("need 0 < hadron_prs_min_fraction < hadron_prs_max_fraction < 1")
        if self.prs_fraction_mean >= 0.5:
            raise ValueError(f"prs_fraction_mean must be < 0.5 (got {self.prs_fraction_mean})")
        if self.prs_length_mm >= self.length_mm:
            raise ValueError("prs_length_mm must be shorter than length_mm")

    def resolution(self, e_gev: float) -> float:
        """Relative energy resolution sigma_E/E at energy ``e_gev``."""
        return math.hypot(self.stochastic / math.sqrt(e_gev), self.constant)

    @property
    def x0_per_layer(self) -> float:
        """Radiation lengths of one absorber + scintillator layer."""
        return self.absorber_mm / self.absorber_x0_mm + self.scintillator_mm / self.scintillator_x0_mm

    @property
    def mm_per_x0(self) -> float:
        """Depth (mm) of one radiation length of the sandwich."""
        return (self.absorber_mm + self.scintillator_mm) / self.x0_per_layer

    @property
    def nuclei_per_cm2_x0(self) -> float:
        """Absorber nuclei per cm^2 along one X0 of path (the Z^2 of the scintillator's C and H adds
        below 0.1% to bremsstrahlung and is left out)."""
        per_layer = self.absorber_density_g_cm3 * 6.02214076e23 / self.absorber_a * self.absorber_mm / 10
        return per_layer / self.x0_per_layer

    @property
    def electrons_per_cm2_x0(self) -> float:
        """Atomic electrons (absorber and scintillator) per cm^2 along one X0 of path."""
        na = 6.02214076e23
        pb = self.absorber_density_g_cm3 * na * self.absorber_z / self.absorber_a * self.absorber_mm / 10
        sc = self.scintillator_density_g_cm3 * na * self.scintillator_z_over_a * self.scintillator_mm / 10
        return (pb + sc) / self.x0_per_layer


@dataclass(frozen=True)
class HcalConfig:
    """HCAL response to hadrons and muons."""

    stochastic: float = 0.60  # sigma_E/E = 60%/sqrt(E) (+) constant [est]
    constant: float = 0.07
    invisible_fraction: float = 0.15  # hadronic energy lost to binding, neutrons, neutrinos [est]
    mip_module_mev: float = 2500.0  # muon per module, most probable value [est: 2-3 GeV]
    mip_width: float = 0.15
    module_share: tuple[float, float, float, float] = (0.80, 0.15, 0.04, 0.01)  # hadron shower per module
    central_share: float = 0.85  # share of a module's energy in its central cell [est]
    pion_lambda_factor: float = 1.0  # interaction length relative to ecal.lambda_int_mm [est]
    kaon_lambda_factor: float = 1.1
    antiproton_lambda_factor: float = 0.8
    # HCAL cell (x, y), the same in every module, crossed by muons and reached by hadron showers:
    # "central" (on the beam axis) or "uniform" (each particle one of the 9, like a halo/scan muon
    # beam for the MIP calibration of every cell)
    track_cells: Literal["central", "uniform"] = "central"
    # along the beam, from the ECAL face: where the first module starts [est] and the module length
    # (60x60x163 cm3 [paper]); a Z' decaying beyond the last module is invisible
    z_start_mm: float = 600.0
    module_length_mm: float = 1630.0

    def __post_init__(self) -> None:
        for name in (
            "stochastic",
            "mip_module_mev",
            "mip_width",
            "pion_lambda_factor",
            "kaon_lambda_factor",
            "antiproton_lambda_factor",
            "z_start_mm",
            "module_length_mm",
        ):
            _positive(name, getattr(self, name))
        _fraction("constant", self.constant, 0.5)
        _fraction("invisible_fraction", self.invisible_fraction, 0.9)
        _fraction("central_share", self.central_share)
        if self.track_cells not in ("central", "uniform"):
            raise ValueError(f"track_cells must be 'central' or 'uniform' (got {self.track_cells!r})")
        if any(s < 0 for s in self.module_share) or not math.isclose(
            sum(self.module_share), 1.0, abs_tol=1e-6
        ):
            raise ValueError(f"module_share must be >= 0 and sum to 1 (got {self.module_share})")


@dataclass(frozen=True)
class VetoConfig:
    mip_mev: float = 10.0  # 1 MIP per slab [est]
    mip_width: float = 0.15
    attenuation_mm: float = 600.0  # light attenuation: the two PMTs see E*exp(-+x/L); sqrt(a1 a2) = E
    z_mm: float = 500.0  # its front face along the beam, from the ECAL face [est]

    def __post_init__(self) -> None:
        for name in ("mip_mev", "mip_width", "attenuation_mm", "z_mm"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class SrdConfig:
    electron_mean_mev: float = 30.0  # synchrotron-radiation deposit per module, e- [est: 10-80 MeV]
    electron_shape: float = 3.0  # gamma-distribution shape parameter of that deposit
    hadron_mean_mev: float = 0.3  # hadrons and muons: ~0 ((E/m)^4 suppression) [est]

    def __post_init__(self) -> None:
        for name in ("electron_mean_mev", "electron_shape", "hadron_mean_mev"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class CountersConfig:
    """Beam counters S0 S2 S3 (1.5 mm, 32 mm diameter) and hole vetoes V1 V2 (10 mm, 40 mm holes)."""

    s_mip_mev: float = 0.3  # 1.5 mm scintillator [paper geometry, est deposit]
    v_mip_mev: float = 2.0  # 10 mm scintillator
    mip_width: float = 0.12
    s_radius_mm: float = 16.0  # [paper]
    v_hole_radius_mm: float = 20.0  # [paper]
    v_outer_radius_mm: float = 100.0  # [est]

    def __post_init__(self) -> None:
        for name in ("s_mip_mev", "v_mip_mev", "mip_width", "s_radius_mm", "v_hole_radius_mm"):
            _positive(name, getattr(self, name))
        if self.v_hole_radius_mm < self.s_radius_mm:
            raise ValueError("v_hole_radius_mm must be >= s_radius_mm (a particle cannot hit both)")
        if self.v_outer_radius_mm <= self.v_hole_radius_mm:
            raise ValueError("v_outer_radius_mm must be larger than v_hole_radius_mm")


@dataclass(frozen=True)
class ElectronicsConfig:
    """Digitizer (MSADC) truth: the means are daq.detector's nominal values."""

    n_samples: int = detector.N_SAMPLES  # 32 samples of 12.5 ns [lit/code]
    gain_spread: float = 0.10  # channel-to-channel gain RMS (before truncation), relative to NOMINAL_GAIN
    gain_min_factor: float = 0.75  # gains are truncated to [min, max] x nominal: the HV is set so that a
    gain_max_factor: float = 1.10  # 100 GeV shower in the beam cell stays below ADC_MAX
    # the ECAL and PRS cells of the trigger block are HV-equalised with the beam before the run [est]: the
    # S_EC < 80 GeV cut sits ~3.7 sigma below the 100 GeV peak, so a 1-2% miscalibration of the beam cell
    # would move the trigger rate a lot (the DAQ starts with nominal constants): exactly nominal by default
    block_gain_spread: float = 0.0
    pedestal_mean: float = detector.NOMINAL_PEDESTAL  # ADC counts [est: 100-300]
    pedestal_spread: float = 25.0
    even_odd_spread: float = 3.0  # RMS of (odd - even) pedestal, two interleaved ADCs [lit]
    noise_min: float = 1.0  # noise RMS per channel uniform in [min, max] ADC counts [est: 1-3]
    noise_max: float = 3.0
    time_offset_spread_ns: float = 2.0  # channel-to-channel timing RMS
    peak_sample: float = 10.0  # a triggered particle peaks ~10 samples into the window [est: 8-12]
    em_fwhm_ns: float = 40.0  # ECAL/PRS [est: 35-50 ns]
    hadronic_fwhm_ns: float = 70.0  # HCAL [est: 60-80 ns]
    fast_fwhm_ns: float = 30.0  # VETO, SRD, counters [est: 25-40 ns]
    shape_order: int = 3  # CR-RC^n pulse shape order

    def __post_init__(self) -> None:
        if not 8 <= self.n_samples <= 1024:
            raise ValueError(f"n_samples must be in 8..1024 (got {self.n_samples})")
        _fraction("gain_spread", self.gain_spread, 0.4)
        _fraction("block_gain_spread", self.block_gain_spread, 0.4)
        if not 0.1 <= self.gain_min_factor < 1.0 < self.gain_max_factor <= 3.0:
            raise ValueError("need 0.1 <= gain_min_factor < 1 < gain_max_factor <= 3")
        if not 20 <= self.pedestal_mean <= 1000:
            raise ValueError(f"pedestal_mean must be in 20..1000 (got {self.pedestal_mean})")
        for name in ("pedestal_spread", "even_odd_spread", "time_offset_spread_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 < self.noise_min <= self.noise_max <= 50:
            raise ValueError(
                f"need 0 < noise_min <= noise_max <= 50 (got {self.noise_min}, {self.noise_max})"
            )
        if not 1 <= self.peak_sample <= self.n_samples - 4:
            raise ValueError(f"peak_sample must be in 1..n_samples-4 (got {self.peak_sample})")
        for name in ("em_fwhm_ns", "hadronic_fwhm_ns", "fast_fwhm_ns"):
            if not 5 <= getattr(self, name) <= 400:
                raise ValueError(f"{name} must be in 5..400 ns (got {getattr(self, name)})")
        if not 1 <= self.shape_order <= 8:
            raise ValueError(f"shape_order must be in 1..8 (got {self.shape_order})")


@dataclass(frozen=True)
class ReadoutConfig:
    """Front-end behaviour: slicing, latency buffer, request timeout, heartbeats, pacing."""

    slice_ms: float = 20.0  # beam time per SLICE message (10-20 ms; 20 halves the per-message costs)
    latency_buffer_s: float = 2.0  # beam time kept for readout requests (>= 2 s)
    request_timeout_s: float = 2.0  # SPILL_END at the latest this long after the last slice
    heartbeat_s: float = 1.0
    pace: Literal["realtime", "max"] = "realtime"
    max_inflight_slices: int = 50  # max pacing: slices sent but not yet requested (0 = unlimited; 1 s)
    linger_s: float = 5.0  # at exit, how long queued messages may still be sent
    noise_pool_size: int = 1 << 20  # pre-drawn random numbers per pool
    pileup_before_ns: float = 300.0  # particles this long before a window's trigger still add pulses

    def __post_init__(self) -> None:
        if not 0.1 <= self.slice_ms <= 1000:
            raise ValueError(f"slice_ms must be in 0.1..1000 (got {self.slice_ms})")
        for name in ("latency_buffer_s", "request_timeout_s", "heartbeat_s", "linger_s"):
            _positive(name, getattr(self, name))
        if self.max_inflight_slices < 0:
            raise ValueError(f"max_inflight_slices must be >= 0 (got {self.max_inflight_slices})")
        if not 1 << 12 <= self.noise_pool_size <= 1 << 26:
            raise ValueError(f"noise_pool_size must be in 4096..2**26 (got {self.noise_pool_size})")
        if self.pileup_before_ns < 0:
            raise ValueError("pileup_before_ns must be >= 0")


@dataclass(frozen=True)
class SignalConfig:
    """Z' signal injection (``--signal MODEL:MASS_MEV:COUPLING``, ``--signal-boost X``).

    The number of Z' per electron on target follows from the model, mass and coupling (bremsstrahlung and
    resonant annihilation in the ECAL, see docs/simulator.md), times ``boost``."""

    enabled: bool = False
    model: str = "B-L"  # B-L, B-3L_e, B-2L_e-L_mu, B-L_e-2L_mu
    mass_mev: float = 100.0
    coupling: float = 1e-4  # g
    boost: float = 1.0  # the physical yield is multiplied by this, so that a short run shows signal
    # Z' below this energy are not made: their missing energy hides in the electron peak (and the trigger's
    # E_ECAL < 80 GeV rejects them); yields are quoted above it. 1 GeV .. beam energy
    min_energy_gev: float = 10.0
    dm_mass_mev: float = 0.0  # scalar dark matter chi; 0 = no dark-matter channel
    dm_charge: float = 1.0
    resonant_smear: float = 0.02  # relative broadening of E_R by the motion of atomic electrons [est]
    # removed (issue 15): the rate and the resonant share follow from the physics now
    rate_per_1e9_eot: float | None = None
    resonant_fraction: float | None = None

    def __post_init__(self) -> None:
        from simulator import zprime

        if self.rate_per_1e9_eot is not None:
            raise ValueError(
                "rate_per_1e9_eot was removed: the Z' yield now follows from the model, mass and coupling; "
                "use signal.boost (--signal-boost) to scale it"
            )
        if self.resonant_fraction is not None:
            raise ValueError(
                "resonant_fraction was removed: the resonant share now follows from the positron track "
                "length at E_R and so from the mass"
            )
        if self.model not in zprime.CHARGES:
            raise ValueError(f"unknown model {self.model!r} (known: {', '.join(zprime.CHARGES)})")
        _positive("mass_mev", self.mass_mev)
        if not 0 < self.coupling < 1:
            raise ValueError(f"coupling must be in (0, 1) (got {self.coupling})")
        if not 0 < self.boost <= 1e15:
            raise ValueError(f"boost must be in (0, 1e15] (got {self.boost})")
        if not self.min_energy_gev >= 1.0:
            raise ValueError(f"min_energy_gev must be >= 1 GeV (got {self.min_energy_gev})")
        if self.dm_mass_mev < 0:
            raise ValueError("dm_mass_mev must be >= 0")
        _fraction("resonant_smear", self.resonant_smear, 0.5)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs; ``faults`` holds ``NAME[:ARGS]`` strings (see simulator.faults)."""

    seed: int = 1
    run: int = 1
    beam: BeamConfig = field(default_factory=BeamConfig)
    tails: TailsConfig = field(default_factory=TailsConfig)
    ecal: EcalConfig = field(default_factory=EcalConfig)
    hcal: HcalConfig = field(default_factory=HcalConfig)
    veto: VetoConfig = field(default_factory=VetoConfig)
    srd: SrdConfig = field(default_factory=SrdConfig)
    counters: CountersConfig = field(default_factory=CountersConfig)
    electronics: ElectronicsConfig = field(default_factory=ElectronicsConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    faults: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63) (got {self.seed})")
        if not 0 <= self.run < 2**32:
            raise ValueError(f"run must be in [0, 2**32) (got {self.run})")
        if self.readout.latency_buffer_s * 1000 < 2 * self.readout.slice_ms:
            raise ValueError("readout.latency_buffer_s must hold at least two slices")
        if self.signal.enabled and self.signal.min_energy_gev >= self.beam.energy_gev:
            raise ValueError(
                f"signal.min_energy_gev ({self.signal.min_energy_gev}) must be below the beam energy "
                f"({self.beam.energy_gev} GeV)"
            )
        if self.signal.enabled and self.signal.mass_mev >= self.beam.energy_gev * 1000:
            raise ValueError(
                f"signal.mass_mev ({self.signal.mass_mev}) is beyond the reach of a "
                f"{self.beam.energy_gev} GeV beam"
            )
        if self.hcal.z_start_mm <= self.ecal.length_mm or not (
            self.ecal.length_mm < self.veto.z_mm < self.hcal.z_start_mm
        ):
            raise ValueError("need ecal.length_mm < veto.z_mm < hcal.z_start_mm (along the beam)")
        from simulator import faults

        try:
            faults.parse_faults(self.faults)
        except ValueError as e:
            raise ValueError(f"faults: {e}") from None


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SimConfig:
    """Config from an optional TOML file plus dotted-key overrides (``{"beam.rate_hz": 2e5}``)."""
    data = config_loader.load_toml(path) if path is not None else {}
    if overrides:
        data = config_loader.with_overrides(data, overrides)
    return config_loader.from_dict(SimConfig, data)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` (re-validates)."""
    return dataclasses.replace(config, **changes)
