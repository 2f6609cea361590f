"""The beam: Poisson arrivals in the spill, the intensity profile, and the ordinary electrons (pure).

Most particles are ordinary 100 GeV electrons, computed on a branch-free bulk path from pooled random
numbers and a pool of beam-spot entries (:class:`SpotPool`: impact point and the gain-scaled block-cell
shares, so the primitives need no gathers). The beam can be aimed at any ECAL cell (calibration scans:
``beam.aim_cell``, ``beam.scan_cells``). Rare particles are mixed in by :mod:`simulator.rare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daq import detector
from simulator import randoms as rnd
from simulator.config import SimConfig
from simulator.particles import Batch

if TYPE_CHECKING:
    from simulator.response import DetectorResponse

N_COUNTERS = len(detector.COUNTER_NAMES)
#: spot-pool entries are renewed in chunks of at least this many (per-call overheads)
POOL_REFRESH = 8192


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
        return _inside(chunks[0] if len(chunks) == 1 else np.concatenate(chunks), t0_ns + length_ns)
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
    return _inside(times, t0_ns + length_ns)


def _inside(times: np.ndarray, end_ns: int) -> np.ndarray:
    """The times before the slice's end: the cut is made in gap units, and the fixed-point conversion to
    ns can put the last particle 1 ns past the end (a SLICE the DAQ then refuses, rightly: issue 17)."""
    n = int(np.searchsorted(times, end_ns, "left"))
    return times if n == times.size else times[:n]


# ---------------------------------------------------------------- ordinary electrons
class BulkBeam:
    """The ordinary electrons of the beam: energies, PRS share, spot (pooled or exact) and counters.

    Holds the spot pool of the current aim; the pool's block shares come from ``response``'s gain-scaled
    tables (:meth:`~simulator.response.DetectorResponse.pool_shares`)."""

    def __init__(self, config: SimConfig, response: DetectorResponse) -> None:
        self.config = config
        self.response = response
        aims = config.beam.aim_cells()
        ax, ay = detector.cell_center_mm(np.array([a[0] for a in aims]), np.array([a[1] for a in aims]))
        #: centres (mm) of the cells the beam is aimed at: one per spill, or one per particle
        self.aim_centres = np.stack([ax, ay]).astype(np.float32)  # (2, n_aims)
        self.per_particle_aim = config.beam.scan_mode == "particle" and len(aims) > 1
        self.pool: SpotPool | None = None
        self.pool_size = 1 << 18  # spot entries: 262144 x 116 B = 30 MB
        self.pool_renew = 1 / 32  # redrawn per call, relative to its use: an entry serves ~32 particles
        #: False: the numpy path of the bulk electrons (the reference of the fused kernel)
        self.fused_generate = True

    def aim_index(self, spill_index: int) -> int:
        """Index of the aim cell of the ``spill_index``-th spill (0-based); -1 in per-particle scans."""
        if self.per_particle_aim:
            return -1
        return spill_index % self.aim_centres.shape[1]

    def electrons(self, n: int, r: rnd.Randoms, aim: int) -> Batch:
        """``n`` ordinary electrons (no times), aimed at aim cell ``aim`` (:meth:`aim_index`).

        With :class:`~simulator.randoms.PooledRandoms` the spot (impact point, counters) is a run of the
        :class:`SpotPool`; otherwise everything is drawn exactly."""
        c = self.config
        e0 = np.float32(c.beam.energy_gev)
        rng = r.rng
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
            bins = self.response.grid.bins(x, y)
        return self._batch(e_beam, e_prs, e_ecal, x, y, bins, counters, origin)

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
        """The pooled path of :meth:`electrons` with the bulk-electron arithmetic (energies, counters) in
        one compiled pass (:func:`simulator.kernels.bulk_electrons`): the same random numbers drawn in
        the same order, the same float32 operations, the same batch bit for bit."""
        from simulator import kernels  # lazy: numba only where a front-end is simulated

        rng = r.rng
        pool, o, x, y, bins = self._pool_slot(aim, rng, n)
        unit = r.custom("counter_unit", lambda m: self.counter_unit(rng, m), N_COUNTERS * n)
        e_beam, e_prs, e_ecal, counters = kernels.bulk_electrons(
            eb_pool, sh_pool, pr_pool, clamp, pool.s_mask[o : o + n], pool.v_mask[o : o + n], unit
        )
        return self._batch(e_beam, e_prs, e_ecal, x, y, bins, counters, (pool, o, pool.generation))

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

    def _batch(
        self,
        e_beam: np.ndarray,
        e_prs: np.ndarray,
        e_ecal: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        bins: np.ndarray,
        counters: np.ndarray,
        origin: tuple[SpotPool, int, int] | None,
    ) -> Batch:
        """The bulk electrons as a Batch (kind and process 0, nothing downstream or missing)."""
        n = e_beam.size
        return Batch(
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
            pool.bin[sl] = self.response.grid.bins(x, y)
            self.response.pool_shares(pool, sl)
            done += m
        pool.cursor = (start + k) % pool.size
        pool.generation += 1
