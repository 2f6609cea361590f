"""The NA64 trigger as pure, vectorized functions over structure-of-arrays batches of primitives.

Conditions, per particle (bits of the trigger mask, :mod:`daq.contract`, ``docs/architecture.md``):

- ``S_TRIG`` = S0 x S2 x S3 x not V1 x not V2: a counter *fires* when its amplitude is strictly above its
  threshold (ADC counts); S0, S2, S3 must fire, the hole vetoes V1, V2 must not;
- ``S_PRS``: E_PRS(block) > ``prs_min_gev``; ``S_EC``: E_ECAL(block) < ``ecal_max_gev``, both on the sum of
  the ``block_size`` cells around ``beam_cell`` (masked cells excluded), E = amp / gain;
- ``PHYSICS`` = S_TRIG x S_PRS x S_EC; ``BEAM``: every ``beam_prescale``-th S_TRIG particle; ``RANDOM``:
  a clock every ``random_period_ns`` (at (k + 1/2) x period since spill start), read out whatever is there.

Every PHYSICS, BEAM or RANDOM candidate is subject to a non-paralysable dead time (``dead_time_ns``
after each accepted trigger); rejected candidates are counted (``dead_time_lost``). Energies at
exactly a threshold (within 1e-6 relative, i.e. far below one ADC count) count as *not* passing it.

Typical use, e.g. in a unit test::

    trig = Trigger(TriggerConfig(), nominal(), default_primitive_channels())
    batch = make_batch(ecal_block_gev=[50.0, 100.0], prs_block_gev=[1.0, 1.0], t_ns=[1000, 90000])
    d = trig.evaluate(batch)
    d.accept        # [True, False]: the 100 GeV electron is above the S_EC threshold
    d.mask & S_EC   # condition bits per particle (daq.contract.S_EC)

No I/O, no clocks, no logging here: the state that carries across batches (prescale counter, random
clock phase, end of the dead time) is the explicit :class:`TriggerState`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from daq import detector
from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_PRS, S_TRIG, ChannelConstants
from daq.errors import ConfigError
from daq.protocol import NO_PARTICLE, Slice

#: relative tolerance at which an energy is taken to sit exactly at a threshold
THRESHOLD_RTOL = 1e-6
#: particles per chunk of the float (per-cell gains) block sums
_CHUNK = 16384


@dataclass(frozen=True)
class TriggerConfig:
    """Trigger thresholds and settings (``[trigger]`` in the DAQ config)."""

    beam_cell: tuple[int, int] = detector.BEAM_CELL
    block_size: tuple[int, int] = detector.BLOCK_SIZE
    prs_min_gev: float = 0.3
    ecal_max_gev: float = 80.0
    #: counter thresholds in ADC counts: a counter fires when its amplitude is above (~half a MIP: 300)
    s0_adc: int = 150
    s2_adc: int = 150
    s3_adc: int = 150
    v1_adc: int = 150
    v2_adc: int = 150
    #: ECAL or PRS cells left out of the block sums, by channel name, e.g. ("ECAL23", "PRS12")
    masked_cells: tuple[str, ...] = ()
    #: every Nth S_trig particle is a beam trigger (0 = off); 2000 gives ~1 kHz at 2 MHz, ~4800 beam
    #: events per 4.8 s spill: the 100 GeV ECAL peak is visible in every spill
    beam_prescale: int = 2000
    #: period of the random (pedestal) trigger in ns (0 = off): 10 ms = 100 Hz
    random_period_ns: int = 10_000_000
    #: non-paralysable dead time after each accepted trigger
    dead_time_ns: int = 5_000

    def __post_init__(self) -> None:
        try:
            detector.block_cells(self.beam_cell, self.block_size)
        except ValueError as e:
            raise ValueError(str(e)) from None
        if not self.prs_min_gev >= 0:
            raise ValueError(f"prs_min_gev must be >= 0 (got {self.prs_min_gev})")
        if not self.ecal_max_gev > 0:
            raise ValueError(f"ecal_max_gev must be > 0 (got {self.ecal_max_gev})")
        for name in ("s0_adc", "s2_adc", "s3_adc", "v1_adc", "v2_adc"):
            v = getattr(self, name)
            if not 0 <= v <= 65535:
                raise ValueError(f"{name} must be in 0..65535 ADC counts (got {v})")
        for name in self.masked_cells:
            try:
                ch = detector.channel_id(name)
            except KeyError:
                raise ValueError(f"masked_cells: no channel named {name!r}") from None
            if detector.CHANNELS["detector"][ch] not in (detector.Detector.ECAL, detector.Detector.PRS):
                raise ValueError(f"masked_cells: {name} is not an ECAL or PRS cell")
        if self.beam_prescale < 0:
            raise ValueError(f"beam_prescale must be >= 0 (0 = off; got {self.beam_prescale})")
        if self.random_period_ns < 0:
            raise ValueError(f"random_period_ns must be >= 0 (0 = off; got {self.random_period_ns})")
        if self.dead_time_ns < 0:
            raise ValueError(f"dead_time_ns must be >= 0 (got {self.dead_time_ns})")

    def block_channels(self) -> tuple[list[int], list[int]]:
        """Channel ids (ECAL, PRS) of the block cells that enter the sums (masked cells removed)."""
        cells = detector.block_cells(self.beam_cell, self.block_size)
        masked = {detector.channel_id(n) for n in self.masked_cells}
        ecal = [c for c in (detector.ecal_id(x, y) for x, y in cells) if c not in masked]
        prs = [c for c in (detector.prs_id(x, y) for x, y in cells) if c not in masked]
        return ecal, prs

    def thresholds(self) -> dict[str, Any]:
        """Plain dict of all settings (for files and summaries)."""
        return dataclasses.asdict(self)


@dataclass
class TriggerState:
    """What carries from one batch to the next: prescale counter, random clock, dead time."""

    n_strig: int = 0  # S_trig particles seen so far (prescale counter)
    next_random_ns: int | None = None  # next random-trigger time (None: first grid point of the spill)
    dead_until_ns: int = -(1 << 62)  # no trigger accepted before this time

    def new_spill(self) -> None:
        """Times restart at each spill: reset the random clock and the dead time (keep the prescaler)."""
        self.next_random_ns = None
        self.dead_until_ns = -(1 << 62)


@dataclass(frozen=True, eq=False)
class PrimitiveBatch:
    """Primitives of N particles: ``t_ns`` (N,) int64 since spill start, ``amp`` (C, N) uint16.

    The batch covers the time window [t0_ns, t0_ns + length_ns) (for the random trigger); ``length_ns``
    None means up to the last particle.
    """

    t_ns: np.ndarray
    amp: np.ndarray
    t0_ns: int = 0
    length_ns: int | None = None
    slice_id: int = 0

    def __post_init__(self) -> None:
        if self.amp.ndim != 2 or self.t_ns.shape != (self.amp.shape[1],):
            raise ValueError(f"batch shapes differ: t_ns{self.t_ns.shape}, amp{self.amp.shape}")

    @property
    def n(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def t1_ns(self) -> int:
        if self.length_ns is not None:
            return self.t0_ns + self.length_ns
        return int(self.t_ns.max()) + 1 if self.n else self.t0_ns

    @classmethod
    def from_slice(cls, msg: Slice) -> PrimitiveBatch:
        """From a decoded ``protocol.Slice``."""
        return cls(
            t_ns=msg.t_ns, amp=msg.amp, t0_ns=msg.t0_ns, length_ns=msg.length_ns, slice_id=msg.slice_id
        )


@dataclass(frozen=True, eq=False)
class BlockEnergy:
    """A block's energy per particle: ``gev_array`` (float32 GeV), or integer ADC ``sums`` x ``gev_per_count``."""

    gev_array: np.ndarray | None = None
    sums: np.ndarray | None = None
    gev_per_count: float = 0.0

    def gev(self) -> np.ndarray:
        if self.gev_array is not None:
            return self.gev_array
        assert self.sums is not None
        e = self.sums.astype(np.float32)
        e *= np.float32(self.gev_per_count)
        return e


class _Fused(NamedTuple):
    """What the compiled pass gives (see :meth:`Trigger._fused`)."""

    strig: np.ndarray
    s_prs: np.ndarray
    s_ec: np.ndarray
    phys: np.ndarray
    e_prs: BlockEnergy
    e_ecal: BlockEnergy
    beam_pos: np.ndarray
    phys_pos: np.ndarray
    n_strig: int
    flags: np.ndarray


@dataclass(frozen=True, eq=False)
class Decisions:
    """Trigger outcome for one batch.

    Per particle (N,): the conditions ``strig``, ``s_prs``, ``s_ec`` and ``physics`` (bool), ``mask``
    (uint32 bits: the conditions, plus PHYSICS/BEAM where that trigger fired, before dead time),
    ``accept`` (read out), ``e_prs``/``e_ecal`` block energies in GeV (float32, computed on first access
    from the integer block sums when the block's gains are equal). Per readout entry (accepted
    triggers in time order, random triggers included): ``index`` (NO_PARTICLE for random), ``t_ns`` and
    ``trigger_mask``. ``counts``: per-batch counters (see :data:`COUNT_NAMES`).
    """

    strig: np.ndarray
    s_prs: np.ndarray
    s_ec: np.ndarray
    physics: np.ndarray
    beam_pos: np.ndarray  # particles that fired the prescaled beam trigger
    prs_energy: BlockEnergy
    ecal_energy: BlockEnergy
    index: np.ndarray
    t_ns: np.ndarray
    trigger_mask: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @functools.cached_property
    def e_prs(self) -> np.ndarray:
        return self.prs_energy.gev()

    @functools.cached_property
    def e_ecal(self) -> np.ndarray:
        return self.ecal_energy.gev()

    @property
    def mask(self) -> np.ndarray:
        """(N,) uint32 trigger bits per particle (computed on access)."""
        m = _mask_bits(self.strig, self.s_prs, self.s_ec, self.physics)
        m[self.beam_pos] |= BEAM
        return m

    @property
    def accept(self) -> np.ndarray:
        """(N,) bool: particles read out (after dead time)."""
        acc = np.zeros(self.strig.shape[0], dtype=bool)
        acc[self.index[self.index != NO_PARTICLE]] = True
        return acc

    @property
    def n_readout(self) -> int:
        return int(self.index.shape[0])


def _mask_bits(strig: np.ndarray, s_prs: np.ndarray, s_ec: np.ndarray, phys: np.ndarray) -> np.ndarray:
    m = strig.astype(np.uint32) * np.uint32(S_TRIG)
    m |= s_prs.astype(np.uint32) * np.uint32(S_PRS)
    m |= s_ec.astype(np.uint32) * np.uint32(S_EC)
    m |= phys.astype(np.uint32) * np.uint32(PHYSICS)
    return m


#: keys of ``Decisions.counts``
COUNT_NAMES = (
    "n_particles",
    "n_strig",
    "fired_physics",
    "fired_beam",
    "fired_random",
    "triggers_physics",
    "triggers_beam",
    "triggers_random",
    "n_accepted",
    "dead_time_lost",
)


class Trigger:
    """Trigger logic for one run: thresholds, gains and the primitive channel layout fixed at construction.

    ``constants`` gives the gains (ADC counts per MeV; default nominal); ``prim_channels`` the channel id of
    each row of the batches' ``amp`` (RUN_START.prim_channels; default
    :func:`daq.detector.default_primitive_channels`). Raises :class:`ConfigError` if a counter or a block
    cell needed by the trigger is not among the primitive channels.
    """

    def __init__(
        self,
        config: TriggerConfig | None = None,
        constants: ChannelConstants | None = None,
        prim_channels: Sequence[int] | np.ndarray | None = None,
        *,
        compiled: bool = True,
    ) -> None:
        self.config = config = config or TriggerConfig()
        if constants is None:
            gains = detector.nominal_gains()
        else:
            gains = np.asarray(constants.gain, dtype=np.float64)
        if prim_channels is None:
            prim_channels = detector.default_primitive_channels()
        self.prim_channels = np.asarray(prim_channels, dtype=np.int64)
        row_of = {int(c): i for i, c in enumerate(self.prim_channels)}

        def rows(ids: Sequence[int], what: str) -> np.ndarray:
            missing = [detector.channel_name(c) for c in ids if c not in row_of]
            if missing:
                raise ConfigError(
                    f"trigger: {what} channel(s) {', '.join(missing)} not in the front-end's primitive channels "
                    f"({', '.join(detector.channel_name(int(c)) for c in self.prim_channels)})"
                )
            return np.array([row_of[c] for c in ids], dtype=np.intp)

        counters = [detector.counter_id(n) for n in detector.COUNTER_NAMES]
        self._counter_rows = rows(counters, "counter")
        self._counter_thr = np.array(
            [config.s0_adc, config.s2_adc, config.s3_adc, config.v1_adc, config.v2_adc], dtype=np.uint16
        )
        lo = int(self._counter_rows[0])
        contiguous = np.array_equal(self._counter_rows, np.arange(lo, lo + 5))
        self._counter_slice: slice | None = slice(lo, lo + 5) if contiguous else None
        ecal_ids, prs_ids = config.block_channels()
        self._blocks = [
            _BlockSum(rows(ecal_ids, "ECAL block"), gains[ecal_ids]),
            _BlockSum(rows(prs_ids, "PRS block"), gains[prs_ids]),
        ]
        # the compiled single pass (daq.trigger_kernel) serves equal gains in each block; the numpy
        # formulation below stays the reference and the path for per-cell (calibrated) gains
        self._kernel: types.ModuleType | None = None
        if compiled and all(b.uniform for b in self._blocks):
            from daq import trigger_kernel  # numba's import is paid only by processes that trigger

            trigger_kernel.warm_up()
            self._kernel = trigger_kernel
            ecal, prs = self._blocks
            self._k_rows, self._k_par = trigger_kernel.params(
                self._counter_rows,
                self._counter_thr,
                ecal.rows,
                prs.rows,
                ecal.k_below(config.ecal_max_gev),
                prs.k_above(config.prs_min_gev),
            )
        self.state = TriggerState()

    @property
    def compiled(self) -> bool:
        """Whether the per-particle conditions run in the compiled kernel (else numpy)."""
        return self._kernel is not None

    def _fused(self, amp: np.ndarray, first: int = -1) -> _Fused | None:
        """The compiled pass (uniform gains): strig, s_prs, s_ec, phys, E_PRS, E_ECAL, the prescaled
        S_TRIG particles from ordinal ``first``, the PHYSICS particles, the count of S_TRIG and the (4, N)
        condition flags; None when it does not apply to ``amp``."""
        if self._kernel is None or amp.dtype != np.uint16 or amp.ndim != 2:
            return None
        par = self._k_par
        if first >= 0:
            par = par.copy()
            par[-2:] = first, self.config.beam_prescale
        flags, sums, beam_pos, phys_pos, n_strig, overflow = self._kernel.fused(amp, self._k_rows, par)
        ecal, prs = self._blocks
        if overflow:  # rare (amplitudes far beyond 12 bits): exact uint32 sums
            sum_e = amp[ecal.rows].sum(axis=0, dtype=np.uint32)
            sum_p = amp[prs.rows].sum(axis=0, dtype=np.uint32)
        else:
            sum_e, sum_p = sums
        strig, s_prs, s_ec, phys = flags
        return _Fused(
            strig,
            s_prs,
            s_ec,
            phys,
            BlockEnergy(sums=sum_p, gev_per_count=float(prs.gev_per_count)),
            BlockEnergy(sums=sum_e, gev_per_count=float(ecal.gev_per_count)),
            beam_pos,
            phys_pos,
            int(n_strig),
            flags,
        )

    # ------------------------------------------------------------ pure parts
    def conditions(self, amp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Condition bits per particle (S_TRIG, S_PRS, S_EC; PHYSICS where all three; uint32) and the
        block energies E_PRS, E_ECAL (GeV). Pure: no state is used or changed."""
        strig, s_prs, s_ec, phys, e_prs, e_ecal = self._conditions(amp)
        return _mask_bits(strig, s_prs, s_ec, phys), e_prs.gev(), e_ecal.gev()

    def _conditions(
        self, amp: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, BlockEnergy, BlockEnergy]:
        f = self._fused(amp)
        if f is not None:
            return f[:6]
        return self._conditions_numpy(amp)

    def _conditions_numpy(
        self, amp: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, BlockEnergy, BlockEnergy]:
        """The reference formulation of the conditions (and the path for per-cell gains)."""
        cfg = self.config
        # one pass for the largest amplitude: the integer block sums run in uint16 when that is exact
        amp_max = int(amp.max()) if amp.size else 0
        # counters: all of S0 S2 S3 fire, none of V1 V2 (one comparison over the five rows)
        fire = self._counter_block(amp) > self._counter_thr[:, None]
        strig = np.logical_and.reduce(fire[:3], axis=0)
        strig &= ~np.logical_or.reduce(fire[3:], axis=0)
        ecal, prs = self._blocks
        e_ecal, s_ec = ecal.energy_below(amp, cfg.ecal_max_gev, amp_max)
        e_prs, s_prs = prs.energy_above(amp, cfg.prs_min_gev, amp_max)
        phys = strig & s_prs
        phys &= s_ec
        return strig, s_prs, s_ec, phys, e_prs, e_ecal

    def _counter_block(self, amp: np.ndarray) -> np.ndarray:
        """(5, N) amplitudes of S0 S2 S3 V1 V2 (a view when the rows are contiguous in that order)."""
        rows: np.ndarray = (
            amp[self._counter_slice] if self._counter_slice is not None else amp[self._counter_rows]
        )
        return rows

    def evaluate(self, batch: PrimitiveBatch) -> Decisions:
        """Run the trigger on a batch: conditions, prescale, random clock, dead time; updates the state."""
        cfg, st = self.config, self.state
        # prescaled beam trigger: the particles whose S_trig ordinal (over the run) is a multiple of N
        first = cfg.beam_prescale - 1 - (st.n_strig % cfg.beam_prescale) if cfg.beam_prescale > 0 else -1
        f = self._fused(batch.amp, first)
        if f is not None:
            strig, s_prs, s_ec, phys, e_prs, e_ecal, beam_pos, phys_pos, n_strig, flags = f
        else:
            strig, s_prs, s_ec, phys, e_prs, e_ecal = self._conditions_numpy(batch.amp)
            n_strig = int(np.count_nonzero(strig))
            beam_pos = np.zeros(0, np.intp)
            if first >= 0 and first < n_strig:
                beam_pos = np.flatnonzero(strig)[first :: cfg.beam_prescale]
            phys_pos = np.flatnonzero(phys)
        st.n_strig += n_strig
        # random clock: grid points (k + 1/2) x period inside [t0, t1)
        rand_t = np.zeros(0, np.int64)
        if cfg.random_period_ns > 0:
            period = cfg.random_period_ns
            nxt = period // 2 if st.next_random_ns is None else st.next_random_ns
            t0, t1 = batch.t0_ns, batch.t1_ns
            if nxt < t0:
                nxt += -((nxt - t0) // period) * period
            if nxt < t1:
                rand_t = np.arange(nxt, t1, period, dtype=np.int64)
                nxt = int(rand_t[-1]) + period
            st.next_random_ns = nxt
        if f is not None:  # candidates, time order and dead time in one compiled pass
            assert self._kernel is not None  # (the compiled pass ran)
            index, t_ns, tmask, n_physics, n_beam, n_random, n_cand, st.dead_until_ns = self._kernel.readout(
                np.asarray(batch.t_ns, dtype=np.int64),
                flags,
                phys_pos,
                beam_pos,
                rand_t,
                st.dead_until_ns,
                cfg.dead_time_ns,
            )
        else:
            index, t_ns, tmask, n_physics, n_beam, n_random, n_cand = self._readout_numpy(
                batch, s_prs, s_ec, phys, phys_pos, beam_pos, rand_t
            )
        counts = {
            "n_particles": batch.n,
            "n_strig": n_strig,
            "fired_physics": int(phys_pos.size),
            "fired_beam": int(beam_pos.size),
            "fired_random": int(rand_t.size),
            "triggers_physics": n_physics,
            "triggers_beam": n_beam,
            "triggers_random": n_random,
            "n_accepted": int(index.size),
            "dead_time_lost": n_cand - int(index.size),
        }
        return Decisions(strig, s_prs, s_ec, phys, beam_pos, e_prs, e_ecal, index, t_ns, tmask, counts)

    def _readout_numpy(
        self,
        batch: PrimitiveBatch,
        s_prs: np.ndarray,
        s_ec: np.ndarray,
        phys: np.ndarray,
        phys_pos: np.ndarray,
        beam_pos: np.ndarray,
        rand_t: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int]:
        """The reference formulation of the readout list (see ``trigger_kernel.readout``)."""
        cfg, st = self.config, self.state
        # candidates: PHYSICS particles (all condition bits set), prescaled BEAM particles, RANDOM times
        index_parts = [phys_pos.astype(np.uint32)]
        mask_parts = [np.full(phys_pos.size, S_TRIG | S_PRS | S_EC | PHYSICS, np.uint32)]
        if beam_pos.size:
            beam_phys = phys[beam_pos]
            only = beam_pos[~beam_phys]  # beam triggers of particles that are not PHYSICS candidates
            index_parts.append(only.astype(np.uint32))
            bits = s_prs[only].astype(np.uint32) * np.uint32(S_PRS)
            bits |= s_ec[only].astype(np.uint32) * np.uint32(S_EC)
            bits |= np.uint32(S_TRIG | BEAM)
            mask_parts.append(bits)
            if beam_phys.any():
                mask_parts[0][np.searchsorted(phys_pos, beam_pos[beam_phys])] |= BEAM
        if rand_t.size:
            index_parts.append(np.full(rand_t.size, NO_PARTICLE, np.uint32))
            mask_parts.append(np.full(rand_t.size, RANDOM, np.uint32))
        if len(index_parts) > 1:
            cand_index = np.concatenate(index_parts)
            cand_mask = np.concatenate(mask_parts)
            cand_t = np.concatenate([batch.t_ns[cand_index[: cand_index.size - rand_t.size]], rand_t])
        else:
            cand_index, cand_mask = index_parts[0], mask_parts[0]
            cand_t = batch.t_ns[phys_pos]
        cand_t = cand_t.astype(np.int64, copy=False)
        if cand_t.size > 1:
            # time order; at equal times particles first (by index), random triggers last
            order = np.lexsort((cand_index, cand_t))
            cand_t, cand_index, cand_mask = cand_t[order], cand_index[order], cand_mask[order]
        keep = _dead_time(cand_t, st, cfg.dead_time_ns)
        if keep is None:
            index, t_ns, tmask = cand_index, cand_t, cand_mask
        else:
            index, t_ns, tmask = cand_index[keep], cand_t[keep], cand_mask[keep]
        n_physics = int(np.count_nonzero(tmask & PHYSICS))
        n_beam = int(np.count_nonzero(tmask & BEAM))
        n_random = int(np.count_nonzero(tmask & RANDOM)) if rand_t.size else 0
        return index, t_ns, tmask, n_physics, n_beam, n_random, int(cand_t.size)

    def new_spill(self) -> None:
        self.state.new_spill()


def _dead_time(t: np.ndarray, st: TriggerState, dead_ns: int) -> np.ndarray | None:
    """Indices of the candidates (sorted times ``t``) kept by a non-paralysable dead time (None: all).

    Candidates before the dead time carried in ``st`` are dropped. A candidate at least ``dead_ns``
    after its predecessor is always accepted, so the greedy rule only has to be followed through the
    rare chains of closer candidates (one step per close pair; a slice has a few dozen candidates).
    """
    n = t.size
    if n == 0:
        return None
    first = 0 if t[0] >= st.dead_until_ns else int(np.searchsorted(t, st.dead_until_ns, "left"))
    close = np.flatnonzero(np.diff(t[first:]) < dead_ns) + first if dead_ns > 0 and n - first > 1 else None
    if close is None or close.size == 0:
        keep = None if first == 0 else np.arange(first, n)
    else:
        tl = t.tolist()
        rejected = []
        prev, acc = -2, 0
        for i in close.tolist():  # i + 1 follows i within the dead time
            if i != prev + 1:  # i starts a chain, and is accepted
                acc = tl[i]
            if tl[i + 1] - acc < dead_ns:
                rejected.append(i + 1)
            else:
                acc = tl[i + 1]
            prev = i
        keep_mask = np.ones(n, bool)
        keep_mask[:first] = False
        keep_mask[rejected] = False
        keep = np.flatnonzero(keep_mask)
    last = n - 1 if keep is None else (int(keep[-1]) if keep.size else -1)
    if last >= 0:
        st.dead_until_ns = max(st.dead_until_ns, int(t[last]) + dead_ns)
    return keep


#: largest value of an unsigned integer by size in bytes (np.iinfo is slow to construct)
_UINT_MAX = {2: 65535, 4: 4294967295}


class _BlockSum:
    """Energy sum of some primitive rows with per-row gains, and a threshold comparison.

    With equal gains in the block (nominal, or hardware-equalised constants) the sum runs on integers
    and the threshold is compared in ADC counts; otherwise it is a float32 weighted sum in chunks.
    """

    def __init__(self, rows: np.ndarray, gains: np.ndarray) -> None:
        self.rows = rows
        self.gains = np.asarray(gains, dtype=np.float64)
        self.uniform = bool(rows.size) and bool(np.all(self.gains == self.gains[0]))
        #: a block whose cells are all masked sums to 0 whatever the gain: any positive gain gives the
        #: right comparisons (0 is above no threshold >= 0 and below every threshold > 0)
        self._gain0 = float(self.gains[0]) if rows.size else 1.0
        self.gev_per_count = np.float32(1.0 / (1000.0 * self.gains[0])) if rows.size else np.float32(0)
        self.weights = (1.0 / (1000.0 * self.gains)).astype(np.float32)
        lo = int(rows.min()) if rows.size else 0
        self.contiguous = bool(rows.size) and np.array_equal(rows, np.arange(lo, lo + rows.size))
        self._slice = slice(lo, lo + rows.size)

    def _rows(self, amp: np.ndarray, s: int, e: int) -> np.ndarray:
        return amp[self._slice, s:e] if self.contiguous else amp[self.rows, s:e]

    def energy(self, amp: np.ndarray, amp_max: int | None = None) -> BlockEnergy:
        """The block energy per particle; ``amp_max``: max(amp) if known."""
        n = amp.shape[1]
        if self.rows.size == 0:
            return BlockEnergy(sums=np.zeros(n, np.uint32))
        if self.uniform:
            # uint16 sums are exact while rows x max(amp) < 65536 (always true for 12-bit ADCs and blocks
            # of up to 16 cells)
            block = amp[self._slice] if self.contiguous else amp[self.rows]
            if amp_max is None:
                amp_max = int(block.max()) if n else 0
            narrow = amp_max * self.rows.size <= _UINT_MAX[2]
            sums = block.sum(axis=0, dtype=np.uint16 if narrow else np.uint32)
            return BlockEnergy(sums=sums, gev_per_count=float(self.gev_per_count))
        out = np.empty(n, np.float32)
        tmp = np.empty((self.rows.size, min(n, _CHUNK)), np.float32)
        for s in range(0, n, _CHUNK):
            k = min(_CHUNK, n - s)
            np.copyto(tmp[:, :k], self._rows(amp, s, s + k), casting="unsafe")
            np.dot(self.weights, tmp[:, :k], out=out[s : s + k])
        return BlockEnergy(gev_array=out)

    def k_above(self, thr_gev: float) -> int:
        """Uniform gains: an integer sum is above ``thr_gev`` (beyond the tolerance) when it is > this."""
        return int(np.floor(thr_gev * 1000.0 * self._gain0 * (1 + THRESHOLD_RTOL)))

    def k_below(self, thr_gev: float) -> int:
        """Uniform gains: an integer sum is below ``thr_gev`` (beyond the tolerance) when it is < this."""
        return int(np.ceil(thr_gev * 1000.0 * self._gain0 * (1 - THRESHOLD_RTOL)))

    def energy_above(
        self, amp: np.ndarray, thr_gev: float, amp_max: int | None = None
    ) -> tuple[BlockEnergy, np.ndarray]:
        e = self.energy(amp, amp_max)
        if e.sums is not None:  # exact integer comparison: sum > thr * gain
            k = self.k_above(thr_gev)
            return e, e.sums > min(k, _UINT_MAX[e.sums.dtype.itemsize])
        return e, e.gev() > np.float32(thr_gev * (1 + THRESHOLD_RTOL))

    def energy_below(
        self, amp: np.ndarray, thr_gev: float, amp_max: int | None = None
    ) -> tuple[BlockEnergy, np.ndarray]:
        e = self.energy(amp, amp_max)
        if e.sums is not None:  # sum < thr * gain
            k = self.k_below(thr_gev)
            if k > _UINT_MAX[e.sums.dtype.itemsize]:
                return e, np.ones(e.sums.shape, bool)
            return e, e.sums < k
        return e, e.gev() < np.float32(thr_gev * (1 - THRESHOLD_RTOL))


# ---------------------------------------------------------------- hand-made batches
def make_batch(
    n: int | None = None,
    *,
    counters: Mapping[str, ArrayLike] | None = None,
    ecal_block_gev: ArrayLike = 0.0,
    prs_block_gev: ArrayLike = 0.0,
    ecal_cells_gev: Mapping[tuple[int, int], ArrayLike] | None = None,
    prs_cells_gev: Mapping[tuple[int, int], ArrayLike] | None = None,
    t_ns: ArrayLike | None = None,
    t0_ns: int = 0,
    length_ns: int | None = None,
    constants: ChannelConstants | None = None,
    prim_channels: Sequence[int] | np.ndarray | None = None,
    beam_cell: tuple[int, int] = detector.BEAM_CELL,
) -> PrimitiveBatch:
    """A batch built by hand from a few particles, for tests and notebooks.

    ``counters``: amplitudes (ADC counts, scalar or per particle) by counter name; by default a clean
    beam electron: S0 = S2 = S3 = 300, V1 = V2 = 0. ``ecal_block_gev``/``prs_block_gev``: energy put in
    the beam cell (scalar or per particle); ``ecal_cells_gev``/``prs_cells_gev``: energy per cell (x, y),
    added. Energies become amplitudes with the gains of ``constants`` (default nominal), rounded to
    whole ADC counts. ``t_ns``: arrival times (default 0, 1000, 2000, ... ns).
    """
    gains = detector.nominal_gains() if constants is None else np.asarray(constants.gain, dtype=np.float64)
    prim = np.asarray(detector.default_primitive_channels() if prim_channels is None else prim_channels)
    sizes = [np.size(v) for v in (ecal_block_gev, prs_block_gev, t_ns) if v is not None]
    sizes += [np.size(v) for v in (counters or {}).values()]
    sizes += [np.size(v) for m in (ecal_cells_gev, prs_cells_gev) if m for v in m.values()]
    if n is None:
        n = max([s for s in sizes if s != 1] or [1])
    per_channel = np.zeros((detector.N_CHANNELS, n), dtype=np.float64)  # ADC counts
    beam: dict[str, ArrayLike] = {"S0": 300, "S2": 300, "S3": 300, "V1": 0, "V2": 0}
    beam.update(counters or {})
    for name, value in beam.items():
        per_channel[detector.counter_id(name)] = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))

    def put(cell_id: int, gev: ArrayLike) -> None:
        per_channel[cell_id] += (
            np.broadcast_to(np.asarray(gev, dtype=np.float64), (n,)) * 1000.0 * gains[cell_id]
        )

    put(detector.ecal_id(*beam_cell), ecal_block_gev)
    put(detector.prs_id(*beam_cell), prs_block_gev)
    for (x, y), gev in (ecal_cells_gev or {}).items():
        put(detector.ecal_id(x, y), gev)
    for (x, y), gev in (prs_cells_gev or {}).items():
        put(detector.prs_id(x, y), gev)
    amp = np.clip(np.rint(per_channel[prim]), 0, 65535).astype(np.uint16)
    times = (
        np.arange(n, dtype=np.int64) * 1000
        if t_ns is None
        else np.broadcast_to(np.asarray(t_ns, dtype=np.int64), (n,)).copy()
    )
    return PrimitiveBatch(t_ns=times, amp=np.ascontiguousarray(amp), t0_ns=t0_ns, length_ns=length_ns)
