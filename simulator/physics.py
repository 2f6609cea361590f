"""Beam particles and their detector response, vectorised over batches (pure: no I/O, no clocks).

:class:`BeamModel` turns a count ``n`` into a :class:`Batch` of particles (structure of arrays): kind,
process, beam energy, impact point, the energies that reach the PRS, ECAL and HCAL, missing energy and
the five counter deposits. Most particles are ordinary 100 GeV electrons, computed on a branch-free bulk
path from pooled random numbers and a pool of beam-spot entries (:class:`SpotPool`: impact point and
the gain-scaled block-cell shares, so the primitives need no gathers); the rare ones (radiative tail,
electro-nuclear, dimuons, hadrons, muons, signal) are picked sparsely and overwritten with exact draws.
The beam can be aimed at any ECAL cell (calibration scans: ``beam.aim_cell``, ``beam.scan_cells``).

:meth:`BeamModel.primitives` makes the trigger-primitive amplitudes (counters + ECAL/PRS block cells) of
every particle; :meth:`BeamModel.deposits` gives all 110 channel deposits (MeV, EM scale) of chosen
particles, with secondary quantities (SRD, HCAL and VETO sharing) drawn from a hash RNG keyed by the
particle, so they are the same whenever that particle is looked at. Block-cell deposits come from the same
shower table in both, so a particle's primitives match its waveform pulse heights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from daq import detector
from simulator import randoms as rnd
from simulator import showers, zprime
from simulator.config import SimConfig
from simulator.showers import Profile

N_COUNTERS = len(detector.COUNTER_NAMES)
#: spot-pool entries are renewed in chunks of at least this many (per-call overheads)
POOL_REFRESH = 8192
#: rare particles are drawn ahead in blocks of at least this many
RARE_BLOCK = 16384


class Kind(IntEnum):
    ELECTRON = 0
    PION = 1
    KAON = 2
    ANTIPROTON = 3
    MUON = 4


KIND_NAMES = ("e", "pi", "K", "pbar", "mu")


class Process(IntEnum):
    """What happened to the particle (truth only)."""

    ELECTRON = 0  # ordinary electron shower
    RADIATIVE = 1  # lost energy upstream
    ELECTRONUCLEAR = 2  # hard photo-nuclear interaction in the ECAL: hadrons into VETO/HCAL
    DIMUON = 3  # gamma -> mu+ mu- in the target
    SIGNAL_BREMS = 4  # Z' bremsstrahlung, invisible decay
    SIGNAL_RESONANT = 5  # e+ e- -> Z' on atomic electrons, invisible decay
    SIGNAL_VISIBLE = 6  # Z' produced but decayed visibly (to e+ e-) inside the ECAL
    HADRON_EARLY = 7  # hadron interacting in the PRS
    HADRON_SHOWER = 8  # hadron interacting in the ECAL after the PRS
    HADRON_MIP = 9  # hadron crossing the ECAL without interacting
    MUON = 10


SIGNAL_PROCESSES = (Process.SIGNAL_BREMS, Process.SIGNAL_RESONANT)

#: template class of the ECAL and PRS deposits, per process
ECAL_PROFILE = np.array(
    [Profile.EM] * 7 + [Profile.HADRONIC, Profile.HADRONIC, Profile.MIP, Profile.MIP], dtype=np.intp
)
PRS_PROFILE = np.array(
    [Profile.EM_PRS] * 7 + [Profile.EM_PRS, Profile.MIP, Profile.MIP, Profile.MIP], dtype=np.intp
)


@dataclass
class Batch:
    """Particles of one slice, structure of arrays. Energies in GeV, positions in mm (face coordinates)."""

    kind: np.ndarray  # uint8 Kind
    process: np.ndarray  # uint8 Process
    e_beam: np.ndarray  # float32 GeV
    x: np.ndarray  # float32 mm, origin at the centre of ECAL cell (0, 0)
    y: np.ndarray
    bin: np.ndarray  # int32 shower-template bin of (x, y)
    e_prs: np.ndarray  # float32 GeV deposited in the PRS (EM scale)
    e_ecal: np.ndarray  # float32 GeV deposited in the ECAL after the PRS
    e_hcal: np.ndarray  # float32 GeV sent to the HCAL (visible, before per-module sharing)
    e_miss: np.ndarray  # float32 GeV escaping undetected (Z', neutrinos, muons, neutrons)
    counters: np.ndarray  # float32 (5, N) MeV in S0 S2 S3 V1 V2
    t_ns: np.ndarray | None = None  # int64 ns since spill start
    #: (pool, offset, generation) when the spot came from a contiguous run of a SpotPool (primitives read
    #: its pre-scaled block shares); None otherwise. Not copied by take/concat.
    origin: tuple[SpotPool, int, int] | None = None
    #: sorted indices of the particles that are not bulk electrons (None: unknown), not copied either
    special: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def take(self, index: np.ndarray) -> Batch:
        """The particles at ``index`` (copies)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_COPIED}
        for name, value in out.items():
            if value is None:
                continue
            out[name] = value[:, index] if name == "counters" else value[index]
        return Batch(**out)

    @property
    def signal(self) -> np.ndarray:
        """True for invisible-signal particles (truth only)."""
        return (self.process == Process.SIGNAL_BREMS) | (self.process == Process.SIGNAL_RESONANT)


_NOT_COPIED = ("origin", "special")


def concat(batches: list[Batch]) -> Batch:
    """One batch from several (copies)."""
    out: dict[str, np.ndarray | None] = {}
    for f in dataclasses.fields(Batch):
        if f.name in _NOT_COPIED:
            continue
        parts = [getattr(b, f.name) for b in batches]
        if any(p is None for p in parts):
            out[f.name] = None
        else:
            out[f.name] = np.concatenate(parts, axis=1 if f.name == "counters" else 0)
    return Batch(**out)  # type: ignore[arg-type]


@dataclass
class SpotPool:
    """Pre-drawn beam-spot entries for the bulk electrons: impact point, template bin, which counters it
    hits and, once the gains are known, the gain-scaled shares of a unit deposit in the 12 ECAL and 12
    PRS block cells (counts per GeV). A slice copies a contiguous run at a random offset; every call
    redraws a rotating part (1/32 of its use), so an entry serves ~32 particles (see docs)."""

    x: np.ndarray  # float32 (P,) mm, ECAL face
    y: np.ndarray
    bin: np.ndarray  # int32 (P,)
    s_mask: np.ndarray  # float32 (P,) S0 S2 S3 most probable deposit (MeV) where hit, else 0
    v_mask: np.ndarray  # float32 (P,) the same for V1 V2
    aim: int  # index into the aim cells it was drawn for; -1: a cell per entry (scan_mode "particle")
    ecal: np.ndarray | None = None  # float32 (12, P) counts per GeV of e_ecal
    prs: np.ndarray | None = None  # float32 (12, P) counts per GeV of e_prs
    cursor: int = 0
    generation: int = 0  # bumped whenever entries change
    debt: float = 0.0  # entries due for renewal (redrawn in chunks of POOL_REFRESH)

    @property
    def size(self) -> int:
        return int(self.x.size)


# ---------------------------------------------------------------- arrivals and intensity
def intensity(t_s: float, config: SimConfig) -> float:
    """Relative beam intensity at ``t_s`` seconds into the spill (1 = the configured rate)."""
    beam = config.beam
    if beam.profile == "ramp":
        return beam.ramp_start + (1.0 - beam.ramp_start) * min(max(t_s / beam.spill_length_s, 0.0), 1.0)
    if beam.profile == "spike" and t_s < beam.spike_length_s:
        return beam.spike_factor
    return 1.0


def arrival_times(
    rate_hz: float,
    t0_ns: int,
    length_ns: int,
    rng: np.random.Generator,
    r: rnd.Randoms | None = None,
    compiled: bool | None = None,
) -> np.ndarray:
    """Poisson arrival times (int64 ns, sorted) in [t0, t0 + length): cumulative exponential gaps, drawn
    from ``r`` (pooled on the hot path) or exactly from ``rng``. ``compiled`` (default: with pooled
    randoms) sums and scales in one compiled pass (:func:`simulator.kernels.arrival_chunk`), the same
    integers as the numpy code."""
    mean_gap = 1e9 / rate_hz if rate_hz > 0 else math.inf
    if not math.isfinite(mean_gap) or length_ns <= 0:
        return np.zeros(0, np.int64)
    source = r if r is not None else rnd.ExactRandoms(rng)
    expected = length_ns / mean_gap
    end = length_ns / mean_gap * rnd.GAP_UNIT  # in gap units
    # ns = times x mean_gap / GAP_UNIT in integer fixed point (2^-24 relative: far below 1 ns)
    k = round(mean_gap / rnd.GAP_UNIT * (1 << 24))
    chunks: list[np.ndarray] = []
    if compiled if compiled is not None else isinstance(r, rnd.PooledRandoms):
        from simulator import kernels  # lazy: numba only where a front-end is simulated

        s, done = 0, False
        while not done:
            m = int(expected + 6 * math.sqrt(expected) + 16)
            t, s, done = kernels.arrival_chunk(source.gaps(m), s, end, k, t0_ns)
            chunks.append(t)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    last = 0
    while True:
        m = int(expected + 6 * math.sqrt(expected) + 16)
        t = np.cumsum(source.gaps(m), dtype=np.int64)
        t += last
        if t[-1] >= end:
            chunks.append(t[: np.searchsorted(t, end)])
            break
        chunks.append(t)
        last = int(t[-1])
    times = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    times *= np.int64(k)
    times >>= np.int64(24)
    times += t0_ns
    return times


# ---------------------------------------------------------------- the model
class BeamModel:
    """The beam and detector-response model for one configuration (holds templates and samplers)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.grid, self.tables = showers.build_templates(config.ecal)
        #: (profile, bin, cell): a particle's 30 shares in one or two cache lines (deposits gather rows)
        self.tables_t = np.ascontiguousarray(self.tables.transpose(0, 2, 1))
        bx, by = config.beam.beam_cell
        cx, cy = detector.cell_center_mm(bx, by)
        self.beam_axis = (float(cx), float(cy))  # the VETO is centred here (it moves with the ECAL)
        aims = config.beam.aim_cells()
        ax, ay = detector.cell_center_mm(np.array([a[0] for a in aims]), np.array([a[1] for a in aims]))
        #: centres (mm) of the cells the beam is aimed at: one per spill, or one per particle
        self.aim_centres = np.stack([ax, ay]).astype(np.float32)  # (2, n_aims)
        self.per_particle_aim = config.beam.scan_mode == "particle" and len(aims) > 1
        self.pool: SpotPool | None = None
        self.pool_size = 1 << 18  # spot entries: 262144 x 116 B = 30 MB
        self.pool_renew = 1 / 32  # redrawn per call, relative to its use: an entry serves ~32 particles
        #: False: the numpy path of the bulk electrons in generate() (the reference of the fused kernel)
        self.fused_generate = True
        cells = detector.block_cells(config.beam.beam_cell)
        self.block_cells = np.array([y * detector.ECAL_NX + x for x, y in cells], dtype=np.intp)
        #: per profile, the block rows of the template (contiguous), for the primitives
        self.block_tables = np.ascontiguousarray(self.tables[:, self.block_cells, :])
        self._scaled: tuple[np.ndarray, np.ndarray] | None = None
        self._scaled_t: tuple[np.ndarray, ...] = ()
        self._scaled_gain = np.zeros(0, np.float32)
        self._rare = self._rare_table()
        empty = {name: np.zeros(0) for name in self._RARE_FIELDS}
        self._rare_queue: tuple[dict[str, np.ndarray], int] = (empty, 0)
        sig = config.signal
        self.brems: zprime.BremsSampler | None = None
        self.signal_total_width = 0.0
        self.signal_br_invisible = 0.0
        self.resonant_fraction = 0.0
        if sig.enabled and sig.rate_per_1e9_eot > 0:
            dm = sig.dm_mass_mev if sig.dm_mass_mev > 0 else None
            widths = zprime.partial_widths(sig.model, sig.mass_mev, sig.coupling, dm, sig.dm_charge)
            self.signal_total_width = zprime.total_width(widths)
            self.signal_br_invisible = zprime.invisible_branching_ratio(
                sig.model, sig.mass_mev, sig.coupling, dm, sig.dm_charge
            )
            self.brems = zprime.BremsSampler(sig.mass_mev, config.beam.energy_gev)
            e_r = zprime.resonant_energy_gev(sig.mass_mev)
            allowed = e_r < config.beam.energy_gev * 0.98
            if sig.resonant_fraction >= 0:
                self.resonant_fraction = sig.resonant_fraction if allowed else 0.0
            else:
                self.resonant_fraction = 0.3 if allowed else 0.0

    # ------------------------------------------------------------ rare categories
    def _rare_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, probabilities per particle) of the sparse categories."""
        c = self.config
        cats: list[tuple[int, float]] = []
        p_e = 1.0 - c.beam.hadron_fraction - c.beam.muon_fraction
        cats += [
            (100 + Kind.PION, c.beam.pion_fraction),
            (100 + Kind.KAON, c.beam.kaon_fraction),
            (100 + Kind.ANTIPROTON, c.beam.antiproton_fraction),
            (100 + Kind.MUON, c.beam.muon_fraction),
        ]
        cats += [
            (Process.RADIATIVE, p_e * c.tails.radiative_fraction),
            (Process.ELECTRONUCLEAR, p_e * c.tails.electronuclear_fraction),
            (Process.DIMUON, p_e * c.tails.dimuon_fraction),
        ]
        if c.signal.enabled and c.signal.rate_per_1e9_eot > 0:
            p_sig = p_e * c.signal.rate_per_1e9_eot * 1e-9
            cats.append((Process.SIGNAL_BREMS, p_sig))  # split into resonant/visible in _signal
        codes = np.array([k for k, p in cats if p > 0], dtype=np.int64)
        probs = np.array([p for k, p in cats if p > 0], dtype=np.float64)
        return codes, probs

    # ------------------------------------------------------------ generation
    def aim_index(self, spill_index: int) -> int:
        """Index of the aim cell of the ``spill_index``-th spill (0-based); -1 in per-particle scans."""
        if self.per_particle_aim:
            return -1
        return spill_index % self.aim_centres.shape[1]

    def generate(self, n: int, r: rnd.Randoms, spill_index: int = 0) -> Batch:
        """``n`` beam particles (no times): bulk electrons, then sparse rare particles.

        With :class:`~simulator.randoms.PooledRandoms` the spot (impact point, counters) is a run of the
        :class:`SpotPool`; otherwise everything is drawn exactly. ``spill_index`` selects the aim cell
        of a per-spill scan."""
        c = self.config
        e0 = np.float32(c.beam.energy_gev)
        rng = r.rng
        aim = self.aim_index(spill_index)
        res = np.float32(c.ecal.resolution(c.beam.energy_gev))
        spread = np.float32(c.beam.momentum_spread) * e0
        k = (c.ecal.prs_fraction_mean / c.ecal.prs_fraction_rms) ** 2
        f_scale = np.float32(c.ecal.prs_fraction_mean / k)
        if isinstance(r, rnd.PooledRandoms):
            # pools of the final per-particle factors (one random offset each, renewed like all pools):
            # one pass per quantity instead of draw + scale + shift
            def beam_energy(m: int) -> np.ndarray:
                return rng.standard_normal(m, dtype=np.float32) * spread + e0

            def shower_factor(m: int) -> np.ndarray:
                return rng.standard_normal(m, dtype=np.float32) * res + np.float32(1)

            def prs_share(m: int) -> np.ndarray:
                return rng.standard_gamma(k, m, dtype=np.float32) * f_scale

            eb_pool = r.custom(("e_beam", float(e0), float(spread)), beam_energy, n)
            sh_pool = r.custom(("shower", float(res)), shower_factor, n)
            pr_pool = r.custom(("prs_share", k, float(f_scale)), prs_share, n)
            if self.fused_generate and 0 < n <= self.pool_size // 2:
                return self._generate_fused(n, r, aim, eb_pool, sh_pool, pr_pool, bool(res > 0.15))
            e_beam = eb_pool.copy()
            e_tot = np.multiply(sh_pool, e_beam)
            e_prs = np.multiply(pr_pool, e_tot)
        else:
            e_beam = np.multiply(r.normal1(n), spread)
            e_beam += e0
            e_tot = np.multiply(r.normal1(n), res)
            e_tot += np.float32(1.0)
            e_tot *= e_beam
            e_prs = np.multiply(r.gamma(k, n), f_scale)
            e_prs *= e_tot
        if res > 0.15:  # e_tot >= 0 unless a normal is below -1/resolution (-24 sigma at 100 GeV)
            np.maximum(e_tot, np.float32(0), out=e_tot)
            np.maximum(e_prs, np.float32(0), out=e_prs)
        e_ecal = np.subtract(e_tot, e_prs)
        origin: tuple[SpotPool, int, int] | None = None
        if isinstance(r, rnd.PooledRandoms) and 0 < n <= self.pool_size // 2:
            pool, o, x, y, bins = self._pool_slot(aim, rng, n)
            unit = r.custom("counter_unit", lambda m: self.counter_unit(rng, m), N_COUNTERS * n)
            counters = self._counters(pool.s_mask[o : o + n], pool.v_mask[o : o + n], unit)
            origin = (pool, o, pool.generation)
        else:
            x, y, s_mask, v_mask = self._draw_spot(n, rng, aim)
            counters = self._counters(s_mask, v_mask, self.counter_unit(rng, N_COUNTERS * n))
            bins = self.grid.bins(x, y)
        return self._electron_batch(r, e_beam, e_prs, e_ecal, x, y, bins, counters, origin)

    def _generate_fused(
        self,
        n: int,
        r: rnd.PooledRandoms,
        aim: int,
        eb_pool: np.ndarray,
        sh_pool: np.ndarray,
        pr_pool: np.ndarray,
        clamp: bool,
    ) -> Batch:
        """The pooled path of :meth:`generate` with the bulk-electron arithmetic (energies, counters) in
        one compiled pass (:func:`simulator.kernels.bulk_electrons`): the same random numbers drawn in
        the same order, the same float32 operations, the same batch bit for bit."""
        from simulator import kernels  # lazy: numba only where a front-end is simulated

        rng = r.rng
        pool, o, x, y, bins = self._pool_slot(aim, rng, n)
        unit = r.custom("counter_unit", lambda m: self.counter_unit(rng, m), N_COUNTERS * n)
        e_beam, e_prs, e_ecal, counters = kernels.bulk_electrons(
            eb_pool, sh_pool, pr_pool, clamp, pool.s_mask[o : o + n], pool.v_mask[o : o + n], unit
        )
        return self._electron_batch(
            r, e_beam, e_prs, e_ecal, x, y, bins, counters, (pool, o, pool.generation)
        )

    def _pool_slot(
        self, aim: int, rng: np.random.Generator, n: int
    ) -> tuple[SpotPool, int, np.ndarray, np.ndarray, np.ndarray]:
        """n consecutive spots of the aim's pool (refreshed as it is used): the pool, the offset, and
        copies of their x, y and shower bins."""
        pool = self._pool_for(aim, rng)
        pool.debt += n * self.pool_renew
        if pool.debt >= POOL_REFRESH:
            self._pool_fill(pool, pool.cursor, int(pool.debt), rng)
            pool.debt = 0.0
        o = int(rng.integers(0, pool.size - n))
        return pool, o, pool.x[o : o + n].copy(), pool.y[o : o + n].copy(), pool.bin[o : o + n].copy()

    def _electron_batch(
        self,
        r: rnd.Randoms,
        e_beam: np.ndarray,
        e_prs: np.ndarray,
        e_ecal: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        bins: np.ndarray,
        counters: np.ndarray,
        origin: tuple[SpotPool, int, int] | None,
    ) -> Batch:
        """The bulk electrons as a Batch, with the rare particles (hadrons, muons, processes) mixed in."""
        n = e_beam.size
        batch = Batch(
            kind=np.zeros(n, np.uint8),
            process=np.zeros(n, np.uint8),
            e_beam=e_beam,
            x=x,
            y=y,
            bin=bins,
            e_prs=e_prs,
            e_ecal=e_ecal,
            e_hcal=np.zeros(n, np.float32),
            e_miss=np.zeros(n, np.float32),
            counters=counters,
            origin=origin,
        )
        self._add_rare(batch, r)
        return batch

    def _add_rare(self, batch: Batch, r: rnd.Randoms) -> None:
        """Replace a Bernoulli selection of the bulk electrons by rare particles; set ``batch.special``."""
        rng = r.rng
        n = len(batch)
        codes, probs = self._rare
        p_rare = min(float(probs.sum()), 1.0)
        if codes.size and n:
            idx = bernoulli_positions(n, p_rare, rng)
            if idx.size:
                if isinstance(r, rnd.PooledRandoms):
                    self._fill_rare(batch, idx, rng)
                else:
                    cat = codes[rng.choice(codes.size, idx.size, p=probs / probs.sum())]
                    self._apply_rare(batch, idx, cat, rng)
                batch.special = idx[batch.kind[idx] != Kind.ELECTRON]
            else:
                batch.special = idx

    # ------------------------------------------------------------ beam spot
    def _draw_spot(self, k: int, rng: np.random.Generator, aim: int) -> tuple[np.ndarray, ...]:
        """Impact points (float32 mm, ECAL face) of ``k`` particles and their counter masks.

        The spot is Gaussian around the aim-cell centre (+ spot_offset_mm), a ``halo_fraction`` wider;
        the counters sit on the beam axis (the aim-cell centre): S0 S2 S3 fire within their radius, the
        hole vetoes V1 V2 in their ring. The masks are the counters' most probable deposits (MeV) where
        they are hit, else 0. ``aim`` < 0: each particle aimed at a random scan cell."""
        b, cc = self.config.beam, self.config.counters
        z = rng.standard_normal((2, k), dtype=np.float32)
        xr = z[0] * np.float32(b.spot_sigma_mm[0]) + np.float32(b.spot_offset_mm[0])
        yr = z[1] * np.float32(b.spot_sigma_mm[1]) + np.float32(b.spot_offset_mm[1])
        halo = np.flatnonzero(rng.random(k) < b.halo_fraction)
        if halo.size:
            h = rng.standard_normal((2, halo.size)) * b.halo_sigma_mm
            xr[halo] = b.spot_offset_mm[0] + h[0]
            yr[halo] = b.spot_offset_mm[1] + h[1]
        r2 = xr * xr + yr * yr
        s_mask = np.where(r2 <= np.float32(cc.s_radius_mm**2), np.float32(cc.s_mip_mev), np.float32(0))
        v_on = (r2 > np.float32(cc.v_hole_radius_mm**2)) & (r2 < np.float32(cc.v_outer_radius_mm**2))
        v_mask = np.where(v_on, np.float32(cc.v_mip_mev), np.float32(0))
        centres = self.aim_centres
        if aim >= 0:
            xr += centres[0, aim]
            yr += centres[1, aim]
        else:
            cell = rng.integers(0, centres.shape[1], k)
            xr += centres[0, cell]
            yr += centres[1, cell]
        return xr, yr, s_mask, v_mask

    def counter_unit(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
        """Counter deposits in units of their most probable value: max(1 + width x Moyal, 0.1), float32."""
        w = self.config.counters.mip_width
        land = rnd.moyal_from_normal(rng.standard_normal(shape))
        return np.maximum(np.float32(1) + np.float32(w) * land, np.float32(0.1))

    def _counters(
        self, s_mask: np.ndarray, v_mask: np.ndarray, unit: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(5, k) counter deposits (MeV) from the masks and unit deposits (5k values, any shape)."""
        k = s_mask.size
        if out is None:
            out = np.empty((N_COUNTERS, k), np.float32)
        u = unit.reshape(N_COUNTERS, k)
        np.multiply(u[:3], s_mask, out=out[:3])
        np.multiply(u[3:], v_mask, out=out[3:])
        return out

    def _pool_for(self, aim: int, rng: np.random.Generator) -> SpotPool:
        """The spot pool for this aim (rebuilt, fully drawn, when the aim changes)."""
        pool = self.pool
        if pool is None or pool.aim != aim:
            p = self.pool_size
            pool = SpotPool(
                np.empty(p, np.float32),
                np.empty(p, np.float32),
                np.empty(p, np.int32),
                np.empty(p, np.float32),
                np.empty(p, np.float32),
                aim,
                generation=pool.generation + 1 if pool is not None else 0,
            )
            self.pool = pool
            self._pool_fill(pool, 0, p, rng)
        return pool

    def _pool_fill(self, pool: SpotPool, start: int, k: int, rng: np.random.Generator) -> None:
        """Redraw ``k`` entries from ``start`` (wrapping), and their block shares if the gains are known."""
        done = 0
        while done < k:
            lo = (start + done) % pool.size
            m = min(k - done, pool.size - lo)
            sl = slice(lo, lo + m)
            x, y, s_mask, v_mask = self._draw_spot(m, rng, pool.aim)
            pool.x[sl], pool.y[sl], pool.s_mask[sl], pool.v_mask[sl] = x, y, s_mask, v_mask
            pool.bin[sl] = self.grid.bins(x, y)
            self._pool_shares(pool, sl)
            done += m
        pool.cursor = (start + k) % pool.size
        pool.generation += 1

    def _pool_shares(self, pool: SpotPool, sl: slice) -> None:
        if self._scaled is None:
            pool.ecal = pool.prs = None
            return
        if pool.ecal is None or pool.prs is None:
            pool.ecal = np.empty((self.block_cells.size, pool.size), np.float32)
            pool.prs = np.empty((self.block_cells.size, pool.size), np.float32)
            sl = slice(0, pool.size)
        ecal_tab, prs_tab = self._scaled
        bins = pool.bin[sl]
        pool.ecal[:, sl] = np.take(ecal_tab[Profile.EM], bins, axis=1, mode="clip")
        pool.prs[:, sl] = np.take(prs_tab[Profile.EM_PRS], bins, axis=1, mode="clip")

    _RARE_FIELDS = ("kind", "process", "e_beam", "e_prs", "e_ecal", "e_hcal", "e_miss")

    def _fill_rare(self, b: Batch, idx: np.ndarray, rng: np.random.Generator) -> None:
        """Rare particles from a queue drawn ahead in blocks (categories mixed by their probabilities,
        each particle used once): the per-slice cost stays small although drawing them takes dozens of
        numpy calls per category."""
        m = idx.size
        done = 0
        while done < m:
            values, cursor = self._rare_queue
            size = values["kind"].size
            if cursor >= size:
                self._rare_queue = (self._draw_rare_block(max(RARE_BLOCK, 4 * m), rng), 0)
                continue
            k = min(m - done, size - cursor)
            at = idx[done : done + k]
            for name in self._RARE_FIELDS:
                getattr(b, name)[at] = values[name][cursor : cursor + k]
            self._rare_queue = (values, cursor + k)
            done += k

    def _draw_rare_block(self, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        codes, probs = self._rare
        cat = codes[rng.choice(codes.size, size, p=probs / probs.sum())]
        e0 = c.beam.energy_gev
        tmp = Batch(
            kind=np.zeros(size, np.uint8),
            process=np.zeros(size, np.uint8),
            e_beam=(e0 * (1 + c.beam.momentum_spread * rng.standard_normal(size))).astype(np.float32),
            x=np.zeros(size, np.float32),
            y=np.zeros(size, np.float32),
            bin=np.zeros(size, np.int32),
            e_prs=np.zeros(size, np.float32),
            e_ecal=np.zeros(size, np.float32),
            e_hcal=np.zeros(size, np.float32),
            e_miss=np.zeros(size, np.float32),
            counters=np.zeros((N_COUNTERS, size), np.float32),
        )
        self._apply_rare(tmp, np.arange(size), cat, rng)
        return {name: getattr(tmp, name) for name in self._RARE_FIELDS}

    # ------------------------------------------------------------ rare particles
    def _landau(
        self, rng: np.random.Generator, mpv: float, width: float, size: int | tuple[int, ...]
    ) -> np.ndarray:
        return np.maximum(mpv * (1 + width * rnd.moyal_from_normal(rng.standard_normal(size))), 0.1 * mpv)

    def _shower(self, rng: np.random.Generator, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(e_prs, e_ecal) of electron showers of energy ``e`` with exact resolution."""
        ec = self.config.ecal
        e = np.maximum(e, 1e-3)
        sigma = np.hypot(ec.stochastic / np.sqrt(e), ec.constant)
        e_tot = np.maximum(e * (1 + sigma * rng.standard_normal(e.size)), 0.0)
        k = (ec.prs_fraction_mean / ec.prs_fraction_rms) ** 2
        f = rng.standard_gamma(k, e.size) * (ec.prs_fraction_mean / k)
        return e_tot * f, e_tot * (1 - f)

    def _apply_rare(self, b: Batch, idx: np.ndarray, cat: np.ndarray, rng: np.random.Generator) -> None:
        c = self.config
        e_beam = b.e_beam[idx].astype(np.float64)
        n = idx.size
        e_prs = np.zeros(n)
        e_ecal = np.zeros(n)
        e_hcal = np.zeros(n)
        e_miss = np.zeros(n)
        kind = np.zeros(n, np.uint8)
        proc = np.zeros(n, np.uint8)

        sel = cat == Process.RADIATIVE
        if sel.any():
            y = _sample_brems_y(rng, int(sel.sum()), c.tails.radiative_y_min, c.tails.radiative_y_max)
            e = e_beam[sel] * (1 - y)
            e_beam[sel] = e
            e_prs[sel], e_ecal[sel] = self._shower(rng, e)
            proc[sel] = Process.RADIATIVE

        sel = cat == Process.ELECTRONUCLEAR
        if sel.any():
            m = int(sel.sum())
            f = _sample_log_uniform(rng, m, c.tails.electronuclear_f_min, c.tails.electronuclear_f_max)
            e = e_beam[sel]
            e_had = f * e
            contained = rng.uniform(0.1, 0.4, m)  # share of the hadronic energy absorbed in the ECAL [est]
            prs, ecal = self._shower(rng, e - e_had)
            vis_had = e_had * (1 - contained) * (1 - c.hcal.invisible_fraction)
            e_prs[sel] = prs
            e_ecal[sel] = ecal + e_had * contained
            e_hcal[sel] = self._hcal_smear(rng, vis_had)
            e_miss[sel] = e_had * (1 - contained) * c.hcal.invisible_fraction
            proc[sel] = Process.ELECTRONUCLEAR

        sel = cat == Process.DIMUON
        if sel.any():
            m = int(sel.sum())
            xm = rng.uniform(c.tails.dimuon_x_min, c.tails.dimuon_x_max, m)
            e = e_beam[sel]
            prs, ecal = self._shower(rng, e * (1 - xm))
            e_prs[sel] = prs + self._landau(rng, c.ecal.mip_prs_mev, c.ecal.mip_width, m) / 1000 * 2
            e_ecal[sel] = ecal + self._landau(rng, c.ecal.mip_ecal_mev, c.ecal.mip_width, m) / 1000 * 2
            e_hcal[sel] = 2 * 4 * c.hcal.mip_module_mev / 1000  # nominal; modules drawn in deposits()
            e_miss[sel] = e * xm - 2 * (c.ecal.mip_ecal_mev + 4 * c.hcal.mip_module_mev) / 1000
            proc[sel] = Process.DIMUON

        sel = cat == Process.SIGNAL_BREMS
        if sel.any():
            self._signal(rng, sel, e_beam, e_prs, e_ecal, e_miss, proc)

        sel = (cat == 100 + Kind.PION) | (cat == 100 + Kind.KAON) | (cat == 100 + Kind.ANTIPROTON)
        if sel.any():
            kind[sel] = cat[sel] - 100
            self._hadrons(rng, kind, sel, e_beam, e_prs, e_ecal, e_hcal, e_miss, proc)

        sel = cat == 100 + Kind.MUON
        if sel.any():
            m = int(sel.sum())
            kind[sel] = Kind.MUON
            proc[sel] = Process.MUON
            e_prs[sel] = self._landau(rng, c.ecal.mip_prs_mev, c.ecal.mip_width, m) / 1000
            e_ecal[sel] = self._landau(rng, c.ecal.mip_ecal_mev, c.ecal.mip_width, m) / 1000
            e_hcal[sel] = 4 * c.hcal.mip_module_mev / 1000  # nominal; modules drawn in deposits()
            e_miss[sel] = e_beam[sel] - e_prs[sel] - e_ecal[sel] - e_hcal[sel]

        b.e_beam[idx] = e_beam
        b.e_prs[idx] = e_prs
        b.e_ecal[idx] = e_ecal
        b.e_hcal[idx] = e_hcal
        b.e_miss[idx] = e_miss
        b.kind[idx] = kind
        b.process[idx] = proc

    def _hcal_smear(self, rng: np.random.Generator, e: np.ndarray) -> np.ndarray:
        hc = self.config.hcal
        e = np.maximum(e, 1e-3)
        sigma = np.hypot(hc.stochastic / np.sqrt(e), hc.constant)
        return np.maximum(e * (1 + sigma * rng.standard_normal(e.size)), 0.0)

    def _signal(
        self,
        rng: np.random.Generator,
        sel: np.ndarray,
        e_beam: np.ndarray,
        e_prs: np.ndarray,
        e_ecal: np.ndarray,
        e_miss: np.ndarray,
        proc: np.ndarray,
    ) -> None:
        assert self.brems is not None
        where = np.flatnonzero(sel)
        m = where.size
        u = rng.random(m)
        resonant = u < self.resonant_fraction
        visible = rng.random(m) >= self.signal_br_invisible
        e = e_beam[where]
        miss = np.zeros(m)
        nb = int((~resonant).sum())
        if nb:
            miss[~resonant] = self.brems.sample(nb, rng) * e[~resonant]
        nr = int(resonant.sum())
        if nr:
            sig = self.config.signal
            er = zprime.sample_resonant_missing_energy(
                nr, rng, sig.mass_mev, self.signal_total_width, sig.resonant_smear
            )
            miss[resonant] = np.clip(er, 0.0, e[resonant])
        miss = np.where(visible, 0.0, miss)  # a visible decay (e+ e-) deposits its energy in the ECAL
        prs, ecal = self._shower(rng, e - miss)
        e_prs[where], e_ecal[where], e_miss[where] = prs, ecal, miss
        proc[where] = np.where(
            visible, Process.SIGNAL_VISIBLE, np.where(resonant, Process.SIGNAL_RESONANT, Process.SIGNAL_BREMS)
        )

    def _hadrons(
        self,
        rng: np.random.Generator,
        kind: np.ndarray,
        sel: np.ndarray,
        e_beam: np.ndarray,
        e_prs: np.ndarray,
        e_ecal: np.ndarray,
        e_hcal: np.ndarray,
        e_miss: np.ndarray,
        proc: np.ndarray,
    ) -> None:
        c = self.config
        ec, hc = c.ecal, c.hcal
        factors = np.array(
            [1.0, hc.pion_lambda_factor, hc.kaon_lambda_factor, hc.antiproton_lambda_factor, 1.0]
        )
        where = np.flatnonzero(sel)
        factor = factors[kind[where]]
        m = where.size
        e = e_beam[where]
        z = rng.exponential(ec.lambda_int_mm * factor, m)  # interaction depth in the ECAL
        mip_prs = self._landau(rng, ec.mip_prs_mev, ec.mip_width, m) / 1000
        mip_ecal = self._landau(rng, ec.mip_ecal_mev, ec.mip_width, m) / 1000
        early = z < ec.prs_length_mm
        late = (~early) & (z < ec.length_mm)
        through = z >= ec.length_mm
        f_prs = _sample_log_uniform(rng, m, ec.hadron_prs_min_fraction, ec.hadron_prs_max_fraction)
        prs = np.where(early, np.maximum(e * f_prs, mip_prs), mip_prs)
        # share of the shower contained in the ECAL after the interaction point: more when it starts early
        remaining = np.clip((ec.length_mm - z) / ec.length_mm, 0.0, 1.0)
        contain = np.clip(rng.uniform(0.5, 1.0, m) * remaining * 0.8, 0.0, 0.9)
        shower = np.where(through, 0.0, e - prs)
        ecal_vis = shower * contain * (1 - hc.invisible_fraction)
        ecal_vis = np.where(through, mip_ecal, ecal_vis + mip_ecal * np.clip(z / ec.length_mm, 0, 1))
        to_hcal = np.where(through, e - mip_prs - mip_ecal, shower * (1 - contain))
        hcal_vis = self._hcal_smear(rng, to_hcal * (1 - hc.invisible_fraction))
        e_prs[where] = prs
        e_ecal[where] = ecal_vis
        e_hcal[where] = hcal_vis
        e_miss[where] = np.maximum(e - prs - ecal_vis - hcal_vis, 0.0)
        proc[where] = np.where(
            early, Process.HADRON_EARLY, np.where(late, Process.HADRON_SHOWER, Process.HADRON_MIP)
        )

    # ------------------------------------------------------------ primitives
    def primitives(
        self,
        b: Batch,
        scale: np.ndarray,
        out: np.ndarray | None = None,
        cols: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Noise-free primitive pulse heights (float32, (29, N), ADC counts).

        ``scale`` (29,) is each primitive channel's gain in counts per MeV (order: 5 counters, 12 ECAL
        block cells, 12 PRS block cells as in ``daq.detector.default_primitive_channels``). The shower
        tables are pre-multiplied by the gains of the first call; later gains apply as a ratio.
        ``cols`` = (c0, c1): only particles c0..c1-1 (``out`` is then (29, c1 - c0)), so that a caller
        can work in cache-sized column blocks.
        """
        scale = self._scale_tables(scale)
        assert self._scaled is not None
        ecal_tab, prs_tab = self._scaled
        c0, c1 = cols if cols is not None else (0, len(b))
        n = c1 - c0
        nb = self.block_cells.size
        if out is None:
            out = np.empty((N_COUNTERS + 2 * nb, n), np.float32)
        e_ecal, e_prs = b.e_ecal[c0:c1], b.e_prs[c0:c1]
        np.multiply(b.counters[:, c0:c1], scale[:N_COUNTERS, None], out=out[:N_COUNTERS])
        ecal = out[N_COUNTERS : N_COUNTERS + nb]
        prs = out[N_COUNTERS + nb :]
        shares = self.pooled_shares(b, scale)
        if shares is not None:
            pool_ecal, pool_prs, o = shares
            o += c0
            np.multiply(pool_ecal[:, o : o + n], e_ecal, out=ecal)  # shares x energy: no gathers
            np.multiply(pool_prs[:, o : o + n], e_prs, out=prs)
        else:
            bins = b.bin[c0:c1]
            np.take(ecal_tab[Profile.EM], bins, axis=1, out=ecal, mode="wrap")  # bins are in range
            np.take(prs_tab[Profile.EM_PRS], bins, axis=1, out=prs, mode="wrap")
            ecal *= e_ecal
            prs *= e_prs
        special, s_ecal, s_prs = self.special_blocks(b, (c0, c1))
        if special.size:
            ecal[:, special] = s_ecal
            prs[:, special] = s_prs
        ratio = self.gain_ratio(scale)
        if ratio is not None:
            out[N_COUNTERS:] *= ratio[N_COUNTERS:, None]
        return out

    def _scale_tables(self, scale: np.ndarray) -> np.ndarray:
        """``scale`` as float32; the first call pre-multiplies the block tables by these gains."""
        scale = np.asarray(scale, np.float32)
        if self._scaled is None:
            self._scaled_gain = scale.copy()
            nb = self.block_cells.size
            k = 1000.0 * scale[N_COUNTERS:].astype(np.float64)
            self._scaled = (
                (self.block_tables * k[None, :nb, None]).astype(np.float32),
                (self.block_tables * k[None, nb:, None]).astype(np.float32),
            )
            #: the same, particle-major (profile, bin, cell): one cache line per particle in a gather
            self._scaled_t = tuple(np.ascontiguousarray(t.transpose(0, 2, 1)) for t in self._scaled)
        return scale

    def gain_ratio(self, scale: np.ndarray) -> np.ndarray | None:
        """(29,) float32 factors of the current gains over those the tables were scaled with (the rows
        after the counters apply), or None when they are unchanged."""
        scale = self._scale_tables(scale)
        if not bool((scale[N_COUNTERS:] != self._scaled_gain[N_COUNTERS:]).any()):
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self._scaled_gain > 0, scale / self._scaled_gain, 0.0).astype(np.float32)

    def pooled_shares(self, b: Batch, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(ECAL shares (12, P), PRS shares (12, P), offset of particle 0) of a batch that is an intact
        run of the spot pool (counts per GeV at the tables' gains), or None (then gather the templates)."""
        if b.origin is None:
            return None
        pool, o, generation = b.origin
        if pool.generation != generation:
            return None
        self._scale_tables(scale)
        if pool.ecal is None or pool.prs is None:
            self._pool_shares(pool, slice(0, pool.size))
        assert pool.ecal is not None and pool.prs is not None
        return pool.ecal, pool.prs, o

    def special_index(self, b: Batch, cols: tuple[int, int]) -> np.ndarray:
        """Indices (relative to c0) of the hadrons and muons among particles c0..c1-1."""
        c0, c1 = cols
        if b.special is not None:
            lo, hi = np.searchsorted(b.special, (c0, c1))
            return b.special[lo:hi] - c0
        return np.flatnonzero(b.kind[c0:c1] != Kind.ELECTRON)

    def special_templates(self) -> tuple[np.ndarray, np.ndarray]:
        """(ECAL, PRS) block templates (profile, bin, cell) float32 at the tables' gains (counts per
        GeV), particle-major, and :data:`ECAL_PROFILE` / :data:`PRS_PROFILE` map a process to a profile.
        Call after :meth:`_scale_tables` (e.g. via :meth:`pooled_shares`)."""
        ecal_t, prs_t = self._scaled_t
        return ecal_t, prs_t

    def special_blocks(self, b: Batch, cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices relative to c0, ECAL (12, S), PRS (12, S)) block heights of the hadrons and muons
        among particles c0..c1-1 (their own templates; one row gather per detector), at the tables'
        gains. Call after :meth:`_scale_tables`."""
        c0, c1 = cols
        special = self.special_index(b, cols)
        if not special.size:
            empty = np.zeros((self.block_cells.size, 0), np.float32)
            return special, empty, empty
        proc = b.process[c0:c1][special]
        bins = b.bin[c0:c1][special]
        ecal_t, prs_t = self._scaled_t
        s_ecal = (ecal_t[ECAL_PROFILE[proc], bins] * b.e_ecal[c0:c1][special, None]).T
        s_prs = (prs_t[PRS_PROFILE[proc], bins] * b.e_prs[c0:c1][special, None]).T
        return special, s_ecal, s_prs

    # ------------------------------------------------------------ full deposits
    def deposits(self, b: Batch, keys: np.ndarray) -> np.ndarray:
        """All channel deposits (float32 (K, 110), MeV on the EM scale) of the particles in ``b``.

        ``keys`` (uint64 per particle, :func:`simulator.randoms.particle_keys`) seed the secondaries
        (SRD for everyone; HCAL and VETO for hadrons, muons, dimuons and electro-nuclear events).
        """
        c = self.config
        k = len(b)
        dep = np.zeros((k, detector.N_CHANNELS), np.float32)
        if k == 0:
            return dep
        pe, pp = ECAL_PROFILE[b.process], PRS_PROFILE[b.process]
        np.multiply(self.tables_t[pe, b.bin], (b.e_ecal * np.float32(1000.0))[:, None], out=dep[:, _ECAL])
        np.multiply(self.tables_t[pp, b.bin], (b.e_prs * np.float32(1000.0))[:, None], out=dep[:, _PRS])
        dep[:, _COUNTER] = b.counters.T
        # SRD columns for everyone; all columns only for the few particles that reach the HCAL/VETO
        u_srd = rnd.hash_uniform(keys, 0, (_U_SRDH.stop - _U_SRD.start,), first=_U_SRD.start)
        srd_e = (
            c.srd.electron_mean_mev
            / c.srd.electron_shape
            * _gamma_wh(_box_muller(u_srd[:, : _U_SRD.stop - _U_SRD.start]), c.srd.electron_shape)
        )
        srd_h = -c.srd.hadron_mean_mev * np.log(u_srd[:, _U_SRDH.start - _U_SRD.start :])
        dep[:, _SRD] = np.where((b.kind == Kind.ELECTRON)[:, None], srd_e, srd_h)
        downstream = np.flatnonzero(_IS_DOWNSTREAM[b.process])
        if downstream.size:
            sub = b.take(downstream)
            us = rnd.hash_uniform(np.asarray(keys)[downstream], 0, (_N_U,))
            dep[downstream, _HCAL] = self._hcal_cells(sub, us).reshape(downstream.size, -1)
            dep[downstream, _VETO] = self._veto(sub, us)
        return dep

    def _hcal_cells(self, b: Batch, u: np.ndarray) -> np.ndarray:
        """(K, 4 modules, 9 cells) HCAL deposits in MeV.

        The particle's track cell (same (x, y) in every module) gets ``central_share`` of a module's
        shower and the whole MIP of a muon; it is the central cell, or with ``hcal.track_cells =
        "uniform"`` one of the 9 drawn per particle (hash stream, so the same in every look)."""
        hc = self.config.hcal
        k = len(b)
        share = np.asarray(hc.module_share)[None, :] * np.exp(0.3 * _box_muller(u[:, _U_HMOD]))
        share /= share.sum(axis=1, keepdims=True)
        if hc.track_cells == "uniform":
            cell = np.minimum((u[:, _U_HCELL] * 9).astype(np.intp), 8)
        else:
            cell = np.full(k, 4, np.intp)  # central cell (x=1, y=1) of each module, on the beam axis
        rows = np.arange(k)
        lat = np.exp(0.3 * _box_muller(u[:, _U_HLAT]))
        lat[rows, cell] = 0.0
        lat *= (1 - hc.central_share) / lat.sum(axis=1, keepdims=True)
        lat[rows, cell] = hc.central_share
        cells = (b.e_hcal * 1000.0)[:, None, None] * share[:, :, None] * lat[:, None, :]
        n_mu = np.where(b.process == Process.MUON, 1, 0) + np.where(b.process == Process.DIMUON, 2, 0)
        mips = np.flatnonzero(n_mu > 0)
        if mips.size:
            land = rnd.moyal_from_normal(_box_muller(u[mips][:, _U_HMIP]))
            per_mod = np.maximum(hc.mip_module_mev * (1 + hc.mip_width * land), 0.1 * hc.mip_module_mev)
            cells[mips] = 0.0
            cells[mips, :, cell[mips]] = per_mod * n_mu[mips, None]
        return cells.astype(np.float32)

    def _veto(self, b: Batch, u: np.ndarray) -> np.ndarray:
        """(K, 6) VETO PMT deposits: slab energy E split as E exp(-+dx/L) between its two PMTs."""
        vc = self.config.veto
        p = b.process
        mean_n = np.zeros(len(b))
        mean_n[p == Process.ELECTRONUCLEAR] = 1.5
        mean_n[(p == Process.HADRON_SHOWER) | (p == Process.HADRON_EARLY)] = 1.5
        n_mip = _poisson_from_uniform(u[:, _U_VN], mean_n[:, None])
        fixed = np.zeros(len(b))
        fixed[(p == Process.MUON) | (p == Process.HADRON_MIP)] = 1
        fixed[p == Process.DIMUON] = 2
        n_mip = np.where(fixed[:, None] > 0, fixed[:, None], n_mip)
        land = rnd.moyal_from_normal(_box_muller(u[:, _U_VE]))
        e_slab = n_mip * np.maximum(vc.mip_mev * (1 + vc.mip_width * land), 0.1 * vc.mip_mev)
        att = np.exp((b.x - self.beam_axis[0]) / vc.attenuation_mm)[:, None]
        out = np.empty((len(b), detector.VETO_SLABS, detector.VETO_PMTS), np.float32)
        out[:, :, 0] = e_slab / att
        out[:, :, 1] = e_slab * att
        return out.reshape(len(b), -1)


def _box_muller(u: np.ndarray) -> np.ndarray:
    """Standard normals from uniform pairs: columns (0, 1), (2, 3), ... of ``u`` give one each."""
    return np.sqrt(-2.0 * np.log(u[:, 0::2])) * np.cos(2.0 * np.pi * u[:, 1::2])


def _gamma_wh(z: np.ndarray, k: float) -> np.ndarray:
    """Gamma(k) variates from standard normals (Wilson-Hilferty), >= 0."""
    c = 1.0 / (9.0 * k)
    return k * np.clip(1.0 - c + z * np.sqrt(c), 0.0, None) ** 3


_ECAL = slice(int(detector.ECAL_IDS[0]), int(detector.ECAL_IDS[-1]) + 1)
_PRS = slice(int(detector.PRS_IDS[0]), int(detector.PRS_IDS[-1]) + 1)
_HCAL = slice(int(detector.HCAL_IDS[0]), int(detector.HCAL_IDS[-1]) + 1)
_VETO = slice(int(detector.VETO_IDS[0]), int(detector.VETO_IDS[-1]) + 1)
_SRD = slice(int(detector.SRD_IDS[0]), int(detector.SRD_IDS[-1]) + 1)
_COUNTER = slice(int(detector.COUNTER_IDS[0]), int(detector.COUNTER_IDS[-1]) + 1)
#: columns of the per-particle hash uniforms used by the secondaries
_U_HMOD, _U_HLAT, _U_HMIP = slice(0, 8), slice(8, 26), slice(26, 34)
_U_VN, _U_VE, _U_SRD, _U_SRDH = slice(34, 37), slice(37, 43), slice(43, 49), slice(49, 52)
_U_HCELL = 52  # HCAL track cell (hcal.track_cells = "uniform")
_N_U = 53
#: processes that put energy downstream of the ECAL (HCAL, VETO), and a lookup by process code
_DOWNSTREAM = np.array(
    [
        Process.ELECTRONUCLEAR,
        Process.DIMUON,
        Process.HADRON_EARLY,
        Process.HADRON_SHOWER,
        Process.HADRON_MIP,
        Process.MUON,
    ],
    dtype=np.uint8,
)
_IS_DOWNSTREAM = np.zeros(256, bool)
_IS_DOWNSTREAM[_DOWNSTREAM] = True


def bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions in [0, n) of the successes of n Bernoulli(p) trials, drawn as geometric gaps
    (cost proportional to n p, not n)."""
    if n <= 0 or p <= 0:
        return np.zeros(0, np.int64)
    if p >= 0.2:
        return np.flatnonzero(rng.random(n) < p)
    out: list[np.ndarray] = []
    last = -1
    while True:
        m = int(n * p + 5 * math.sqrt(n * p) + 10)
        pos = last + np.cumsum(rng.geometric(p, m))
        if pos[-1] >= n:
            out.append(pos[: np.searchsorted(pos, n)])
            break
        out.append(pos)
        last = int(pos[-1])
    return out[0] if len(out) == 1 else np.concatenate(out)


def _poisson_from_uniform(u: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Poisson variates (small means) by inverse CDF from uniforms."""
    mean = np.broadcast_to(mean, u.shape)
    n = np.zeros(u.shape)
    p = np.exp(-mean)
    cdf = p.copy()
    for i in range(1, 20):
        more = u > cdf
        if not more.any():
            break
        n += more
        p = p * mean / i
        cdf = cdf + p
    return n


def _sample_log_uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """dN/df ~ 1/f on [lo, hi]."""
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _sample_brems_y(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Radiated energy fraction y with dN/dy ~ (4/3 - 4/3 y + y^2) / y (complete screening) on [lo, hi]."""
    out = np.empty(0)
    while out.size < n:
        y = _sample_log_uniform(rng, 2 * (n - out.size) + 8, lo, hi)
        keep = rng.random(y.size) * (4 / 3) < (4 / 3 - 4 / 3 * y + y * y)
        out = np.concatenate([out, y[keep]])
    return out[:n]


@functools.lru_cache(maxsize=8)
def model_for(config: SimConfig) -> BeamModel:
    """A cached :class:`BeamModel` for a config."""
    return BeamModel(config)


def generate(n: int, rng: np.random.Generator, config: SimConfig | None = None) -> Batch:
    """``n`` particles drawn with exact random numbers from ``rng`` (pure and seedable; for tests)."""
    return model_for(config or SimConfig()).generate(n, rnd.ExactRandoms(rng))
