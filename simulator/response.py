"""Detector response: lateral shower templates, trigger-primitive heights and full channel deposits (pure).

:meth:`DetectorResponse.primitives` makes the trigger-primitive amplitudes (counters + ECAL/PRS block
cells) of every particle; :meth:`DetectorResponse.deposits` gives all 110 channel deposits (MeV, EM
scale) of chosen particles, with secondary quantities (SRD, HCAL and VETO sharing) drawn from a hash RNG
keyed by the particle, so they are the same whenever that particle is looked at. Block-cell deposits
come from the same shower table in both, so a particle's primitives match its waveform pulse heights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from daq import detector
from simulator import randoms as rnd
from simulator import showers
from simulator.config import SimConfig
from simulator.particles import ECAL_PROFILE, PRS_PROFILE, Batch, Decay, Kind, Process
from simulator.showers import Profile
from simulator.zprime_signal import first_hcal_module

if TYPE_CHECKING:
    from simulator.beam import SpotPool

N_COUNTERS = len(detector.COUNTER_NAMES)


class DetectorResponse:
    """Templates and gain-scaled block tables for one configuration; primitives and deposits of batches."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.grid, self.tables = showers.build_templates(config.ecal)
        #: (profile, bin, cell): a particle's 30 shares in one or two cache lines (deposits gather rows)
        self.tables_t = np.ascontiguousarray(self.tables.transpose(0, 2, 1))
        bx, by = config.beam.beam_cell
        cx, cy = detector.cell_center_mm(bx, by)
        self.beam_axis = (float(cx), float(cy))  # the VETO is centred here (it moves with the ECAL)
        cells = detector.block_cells(config.beam.beam_cell)
        self.block_cells = np.array([y * detector.ECAL_NX + x for x, y in cells], dtype=np.intp)
        #: per profile, the block rows of the template (contiguous), for the primitives
        self.block_tables = np.ascontiguousarray(self.tables[:, self.block_cells, :])
        self._scaled: tuple[np.ndarray, np.ndarray] | None = None
        self._scaled_t: tuple[np.ndarray, ...] = ()
        self._scaled_gain = np.zeros(0, np.float32)

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
        scale = self.scale_tables(scale)
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

    def scale_tables(self, scale: np.ndarray) -> np.ndarray:
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
        scale = self.scale_tables(scale)
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
        self.scale_tables(scale)
        if pool.ecal is None or pool.prs is None:
            self.pool_shares(pool, slice(0, pool.size))
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
        Call after :meth:`scale_tables` (e.g. via :meth:`pooled_shares`)."""
        ecal_t, prs_t = self._scaled_t
        return ecal_t, prs_t

    def special_blocks(self, b: Batch, cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices relative to c0, ECAL (12, S), PRS (12, S)) block heights of the hadrons and muons
        among particles c0..c1-1 (their own templates; one row gather per detector), at the tables'
        gains. Call after :meth:`scale_tables`."""
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
        (SRD for everyone; HCAL and VETO for hadrons, muons, dimuons, electro-nuclear events and Z'
        decaying visibly: where a Z' decays inside the HCAL, its products start in that module).
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
        decay, first = self._signal_decays(b)
        shifted = np.flatnonzero(first > 0)
        for f in np.unique(first[shifted]):  # a Z' decaying in module f: the shower starts there
            rows_f = shifted[first[shifted] == f]
            base = np.zeros(4)
            base[f:] = np.asarray(hc.module_share)[: 4 - f]
            sh = base[None, :] * np.exp(0.3 * _box_muller(u[rows_f, _U_HMOD]))
            share[rows_f] = sh / sh.sum(axis=1, keepdims=True)
        cells = (b.e_hcal * 1000.0)[:, None, None] * share[:, :, None] * lat[:, None, :]
        n_mu = np.where(b.process == Process.MUON, 1, 0) + np.where(b.process == Process.DIMUON, 2, 0)
        n_mu = n_mu + np.where(decay == Decay.MUMU, 2, 0)
        mips = np.flatnonzero(n_mu > 0)
        if mips.size:
            land = rnd.moyal_from_normal(_box_muller(u[mips][:, _U_HMIP]))
            per_mod = np.maximum(hc.mip_module_mev * (1 + hc.mip_width * land), 0.1 * hc.mip_module_mev)
            cells[mips] = 0.0
            crossed = np.arange(4)[None, :] >= first[mips, None]  # modules after a Z' decay point
            cells[mips, :, cell[mips]] = per_mod * n_mu[mips, None] * crossed
        return cells.astype(np.float32)

    def _signal_decays(self, b: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Per particle: the Decay of a Z' that decayed visibly before the end of the HCAL (else 0) and the
        first HCAL module its products reach (0 unless it decayed inside the HCAL)."""
        decay = np.zeros(len(b), np.uint8)
        first = np.zeros(len(b), np.intp)
        zp = b.zprime
        if zp is None:
            return decay, first
        vis = b.process[zp.index] == Process.SIGNAL_VISIBLE
        at = zp.index[vis]
        decay[at] = zp.decay[vis]
        first[at] = first_hcal_module(zp.decay_z_mm[vis], self.config.hcal)
        return decay, first

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
        zp = b.zprime
        if zp is not None:  # Z' decay products that cross the VETO: charged pairs, hadron showers
            vis = p[zp.index] == Process.SIGNAL_VISIBLE
            at, dec, z = zp.index[vis], zp.decay[vis], zp.decay_z_mm[vis]
            before = z < vc.z_mm
            pair = before & ((dec == Decay.MUMU) | ((dec == Decay.EE) & (z >= self.config.ecal.length_mm)))
            fixed[at[pair]] = 2
            had = before & ((dec == Decay.HADRONS) | (dec == Decay.TAUTAU))
            mean_n[at[had]] = 1.5
            n_mip = _poisson_from_uniform(u[:, _U_VN], mean_n[:, None])
        n_mip = np.where(fixed[:, None] > 0, fixed[:, None], n_mip)
        land = rnd.moyal_from_normal(_box_muller(u[:, _U_VE]))
        e_slab = n_mip * np.maximum(vc.mip_mev * (1 + vc.mip_width * land), 0.1 * vc.mip_mev)
        att = np.exp((b.x - self.beam_axis[0]) / vc.attenuation_mm)[:, None]
        out = np.empty((len(b), detector.VETO_SLABS, detector.VETO_PMTS), np.float32)
        out[:, :, 0] = e_slab / att
        out[:, :, 1] = e_slab * att
        return out.reshape(len(b), -1)

    def pool_shares(self, pool: SpotPool, sl: slice) -> None:
        """Fill ``pool``'s gain-scaled block shares of entries ``sl`` (all of them the first time);
        nothing until the gains are known (:meth:`scale_tables`)."""
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
        Process.SIGNAL_VISIBLE,
    ],
    dtype=np.uint8,
)
_IS_DOWNSTREAM = np.zeros(256, bool)
_IS_DOWNSTREAM[_DOWNSTREAM] = True


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
