"""Faults on demand: parsing of ``NAME[:ARGS]`` strings and their effect at a given spill and time.

=================  ==========================================  ============================================
fault              arguments (defaults)                        effect
=================  ==========================================  ============================================
dead               CH                                          channel gain 0 (pedestal and noise only)
noisy              CH[:RMS=15]                                 channel noise RMS (ADC counts)
hot                CH[:PROB=0.01]                              spurious pulses (100-2000 counts) in a
                                                               fraction PROB of particles and windows
gain_drift         [TARGET=ECAL[:PERCENT_PER_SPILL=-2]]        gains drift linearly with beam time
pedestal_jump      [TARGET=ECAL[:COUNTS=15[:SPILL=2]]]         pedestals shift from that spill on
no_answer          [GROUP=HCAL[:SPILL=2[:T_S=0]]]              that source stops answering requests (rest
                                                               of the run)
empty_fragment     [GROUP=SRD[:SPILL=1[:T_S=1]]]               that source sends header-only fragments for
                                                               the rest of that spill
spike              [FACTOR=4[:LENGTH_S=0.3[:SAT=2500[:SPILL]]]] intensity x FACTOR early in the spill, and
                                                               ECAL PMTs saturate at SAT counts meanwhile
stall              [SPILL=1[:AT_S=1[:DURATION_S=2[:restart]]]]  front-end stops (no slices, heartbeats say
                                                               STALLED); ``restart``: then restarts
beam_off           [SPILL=2]                                   no beam in that spill (empty slices)
=================  ==========================================  ============================================

CH is a channel name (``ECAL23``, ``HCAL0_11``, ``S0``) or id; TARGET is a channel, a detector name
(``ECAL``, ``PRS``, ``HCAL``, ``VETO``, ``SRD``, ``COUNTER``) or ``all``; GROUP is a detector name or
readout group number; SPILL numbers start at 1; a spike without SPILL applies to every spill.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from daq import detector
from daq.detector import Detector

FAULT_NAMES = (
    "dead",
    "noisy",
    "hot",
    "gain_drift",
    "pedestal_jump",
    "no_answer",
    "empty_fragment",
    "spike",
    "stall",
    "beam_off",
)


@dataclass(frozen=True)
class Fault:
    name: str
    channels: tuple[int, ...] = ()
    group: int = -1
    value: float = 0.0
    spill: int = 0  # 0: every spill
    t_s: float = 0.0
    length_s: float = 0.0
    sat: float = 0.0
    restart: bool = False
    text: str = ""


def _channels(arg: str) -> tuple[int, ...]:
    if arg.lower() == "all":
        return tuple(range(detector.N_CHANNELS))
    up = arg.upper()
    if up in Detector.__members__:
        return tuple(int(c) for c in detector.GROUP_IDS[Detector[up]])
    if arg.isdigit():
        ch = int(arg)
        if not 0 <= ch < detector.N_CHANNELS:
            raise ValueError(f"channel {ch} is outside 0..{detector.N_CHANNELS - 1}")
        return (ch,)
    try:
        return (detector.channel_id(arg),)
    except KeyError:
        raise ValueError(
            f"unknown channel or detector {arg!r} (e.g. ECAL23, HCAL0_11, S0, ECAL, all)"
        ) from None


def _group(arg: str) -> int:
    up = arg.upper()
    if up in Detector.__members__:
        return int(Detector[up])
    if arg.isdigit() and int(arg) < detector.N_GROUPS:
        return int(arg)
    raise ValueError(f"unknown readout group {arg!r} (one of {', '.join(Detector.__members__)} or 0..5)")


def _num(args: list[str], i: int, default: float, what: str) -> float:
    if len(args) <= i or args[i] == "":
        return default
    try:
        return float(args[i])
    except ValueError:
        raise ValueError(f"{what} must be a number (got {args[i]!r})") from None


def _spill(args: list[str], i: int, default: int) -> int:
    v = _num(args, i, default, "SPILL")
    if v != int(v) or v < 0:
        raise ValueError(f"SPILL must be a spill number >= 1 (got {args[i]!r})")
    return int(v)


def parse_fault(text: str) -> Fault:
    """Parse one ``NAME[:ARGS]``; ValueError names the fault and what is wrong."""
    name, *args = text.strip().split(":")
    name = name.lower().replace("-", "_")
    try:
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault (known: {', '.join(FAULT_NAMES)})")
        if name in ("dead", "noisy", "hot"):
            if not args:
                raise ValueError("needs a channel, e.g. dead:ECAL22")
            chans = _channels(args[0])
            default = {"dead": 0.0, "noisy": 15.0, "hot": 0.01}[name]
            value = _num(args, 1, default, "the argument")
            if name == "hot" and not 0 < value <= 1:
                raise ValueError("PROB must be in (0, 1]")
            if name == "noisy" and not 0 < value <= 500:
                raise ValueError("RMS must be in (0, 500]")
            return Fault(name, chans, value=value, text=text)
        if name == "gain_drift":
            chans = _channels(args[0] if args else "ECAL")
            return Fault(name, chans, value=_num(args, 1, -2.0, "PERCENT_PER_SPILL"), text=text)
        if name == "pedestal_jump":
            chans = _channels(args[0] if args else "ECAL")
            return Fault(
                name, chans, value=_num(args, 1, 15.0, "COUNTS"), spill=_spill(args, 2, 2), text=text
            )
        if name in ("no_answer", "empty_fragment"):
            default_group, default_spill, default_t = (
                ("HCAL", 2, 0.0) if name == "no_answer" else ("SRD", 1, 1.0)
            )
            group = _group(args[0] if args and args[0] else default_group)
            return Fault(
                name,
                group=group,
                spill=_spill(args, 1, default_spill),
                t_s=_num(args, 2, default_t, "T_S"),
                text=text,
            )
        if name == "spike":
            factor = _num(args, 0, 4.0, "FACTOR")
            length = _num(args, 1, 0.3, "LENGTH_S")
            sat = _num(args, 2, 2500.0, "SAT")
            if factor <= 0 or length <= 0 or not 0 < sat <= detector.ADC_MAX:
                raise ValueError("FACTOR and LENGTH_S must be > 0 and SAT in (0, 4095]")
            return Fault(name, value=factor, length_s=length, sat=sat, spill=_spill(args, 3, 0), text=text)
        if name == "stall":
            restart = len(args) > 3 and args[3].lower() == "restart"
            if len(args) > 3 and not restart:
                raise ValueError(f"the 4th argument can only be 'restart' (got {args[3]!r})")
            dur = _num(args, 2, 2.0, "DURATION_S")
            if dur <= 0:
                raise ValueError("DURATION_S must be > 0")
            return Fault(
                name,
                spill=_spill(args, 0, 1),
                t_s=_num(args, 1, 1.0, "AT_S"),
                length_s=dur,
                restart=restart,
                text=text,
            )
        return Fault(name, spill=_spill(args, 0, 2), text=text)  # beam_off
    except ValueError as e:
        raise ValueError(f"fault {text!r}: {e}") from None


def parse_faults(texts: Iterable[str]) -> list[Fault]:
    return [parse_fault(t) for t in texts]


@dataclass
class SliceState:
    """Electronics as seen by one slice: per channel (110,) arrays."""

    gain: np.ndarray  # counts per MeV (0 for dead channels)
    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    noise: np.ndarray
    saturation: np.ndarray  # max pulse height from the PMT (counts); inf when not saturating
    hot_prob: np.ndarray  # probability of a spurious pulse per particle/window
    key: tuple[object, ...] = field(default=())
    n_samples: int = 32

    def __post_init__(self) -> None:
        self.gain32 = self.gain.astype(np.float32)
        self.saturation32 = self.saturation.astype(np.float32)
        self.saturates = bool(np.isfinite(self.saturation).any())
        self.noise32 = self.noise.astype(np.float32)
        base = np.empty((self.gain.size, self.n_samples), np.float32)
        base[:, 0::2] = self.pedestal_even[:, None]
        base[:, 1::2] = self.pedestal_odd[:, None]
        base += np.float32(0.5)  # rounding offset for the final truncation to integers
        #: (110, n_samples) pedestal per sample (+0.5), even and odd samples from the two interleaved ADCs
        self.baseline = base


class FaultSet:
    """The effect of a list of faults on the electronics, the beam and the readout, as pure queries."""

    def __init__(
        self,
        faults: Sequence[Fault],
        gain: np.ndarray,
        pedestal_even: np.ndarray,
        pedestal_odd: np.ndarray,
        noise: np.ndarray,
        spill_length_s: float,
        n_samples: int = 32,
    ) -> None:
        self.faults = list(faults)
        self.n_samples = n_samples
        self.base = (gain, pedestal_even, pedestal_odd, noise)
        self.spill_length_s = spill_length_s
        self._cache: SliceState | None = None
        self.status = np.zeros(detector.N_CHANNELS, np.uint8)  # 1 dead, 2 hot, 3 noisy (calibration codes)
        for f in self.faults:
            code = {"dead": 1, "hot": 2, "noisy": 3}.get(f.name)
            if code:
                self.status[list(f.channels)] = code

    def of(self, name: str) -> list[Fault]:
        return [f for f in self.faults if f.name == name]

    def state(self, spill_index: int, spill: int, t_s: float) -> SliceState:
        """Electronics at ``t_s`` into the ``spill_index``-th spill (0-based) numbered ``spill``."""
        gain, ped_e, ped_o, noise = self.base
        spikes = [f for f in self.of("spike") if (f.spill in (0, spill)) and t_s < f.length_s]
        drift = self.of("gain_drift")
        beam_time = spill_index + min(t_s / self.spill_length_s, 1.0)
        jumps = [f for f in self.of("pedestal_jump") if spill >= f.spill]
        key = (tuple(round(beam_time * f.value, 4) for f in drift), bool(spikes), len(jumps))
        if self._cache is not None and self._cache.key == key:
            return self._cache
        g = gain.copy()
        for f in drift:
            g[list(f.channels)] *= max(1.0 + f.value / 100.0 * beam_time, 0.05)
        for f in self.of("dead"):
            g[list(f.channels)] = 0.0
        pe, po, nz = ped_e.copy(), ped_o.copy(), noise.copy()
        for f in jumps:
            pe[list(f.channels)] += f.value
            po[list(f.channels)] += f.value
        for f in self.of("noisy"):
            nz[list(f.channels)] = f.value
        sat = np.full(detector.N_CHANNELS, np.inf)
        for f in spikes:
            sat[detector.ECAL_IDS] = np.minimum(sat[detector.ECAL_IDS], f.sat)
        hot = np.zeros(detector.N_CHANNELS)
        for f in self.of("hot"):
            hot[list(f.channels)] = f.value
        self._cache = SliceState(g, pe, po, nz, sat, hot, key, self.n_samples)
        return self._cache

    def intensity_factor(self, spill: int, t_s: float) -> float:
        if any(f.spill == spill for f in self.of("beam_off")):
            return 0.0
        factor = 1.0
        for f in self.of("spike"):
            if f.spill in (0, spill) and t_s < f.length_s:
                factor *= f.value
        return factor

    def group_mode(self, spill: int, t_s: float, group: int) -> str:
        """'ok', 'silent' (no fragment at all) or 'empty' (header-only fragment) for a readout group."""
        for f in self.of("no_answer"):
            if f.group == group and (spill > f.spill or (spill == f.spill and t_s >= f.t_s)):
                return "silent"
        for f in self.of("empty_fragment"):
            if f.group == group and spill == f.spill and t_s >= f.t_s:
                return "empty"
        return "ok"

    def stall(self, spill: int) -> Fault | None:
        for f in self.of("stall"):
            if f.spill == spill:
                return f
        return None
