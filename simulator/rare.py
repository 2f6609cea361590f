"""Rare particles mixed into the beam: hadrons, muons, electron tails and the Z' signal (pure).

The sparse categories (radiative tail, electro-nuclear, dimuons, hadrons, muons, signal) are placed at
Bernoulli positions (geometric gaps) and copied from a queue drawn ahead with exact random numbers, so
their per-slice cost stays small (:meth:`RareProcesses.add`).
"""

from __future__ import annotations

import math

import numpy as np

from daq import detector
from simulator import randoms as rnd
from simulator.config import SimConfig
from simulator.particles import Batch, Kind, Process, ZPrimeTruth
from simulator.zprime_signal import MAX_PER_ELECTRON, for_config

N_COUNTERS = len(detector.COUNTER_NAMES)
#: rare particles are drawn ahead in blocks of at least this many
RARE_BLOCK = 16384


class RareProcesses:
    """The rare categories of one configuration, their probabilities and a queue of drawn particles."""

    _RARE_FIELDS = ("kind", "process", "e_beam", "e_prs", "e_ecal", "e_hcal", "e_miss")

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        #: the Z' signal, when injected
        self.signal = for_config(config) if config.signal.enabled else None
        self._rare = self._table()
        empty = {name: np.zeros(0) for name in self._RARE_FIELDS}
        self._rare_queue: tuple[dict[str, np.ndarray], ZPrimeTruth | None, int] = (empty, None, 0)

    # ------------------------------------------------------------ rare categories
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
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
        if self.signal is not None:
            p_sig = self.signal.produced_per_eot * c.signal.boost
            if p_sig > MAX_PER_ELECTRON:
                raise ValueError(
                    f"signal.boost {c.signal.boost:g} makes {p_sig:.3g} Z' per electron (physical yield "
                    f"{self.signal.produced_per_eot:.3g}); at most {MAX_PER_ELECTRON} is allowed"
                )
            cats.append((Process.SIGNAL_BREMS, p_e * p_sig))  # production and decay drawn in _signal
        codes = np.array([k for k, p in cats if p > 0], dtype=np.int64)
        probs = np.array([p for k, p in cats if p > 0], dtype=np.float64)
        return codes, probs

    def add(self, batch: Batch, r: rnd.Randoms) -> None:
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

    def _fill_rare(self, b: Batch, idx: np.ndarray, rng: np.random.Generator) -> None:
        """Rare particles from a queue drawn ahead in blocks (categories mixed by their probabilities,
        each particle used once): the per-slice cost stays small although drawing them takes dozens of
        numpy calls per category."""
        m = idx.size
        done = 0
        zp: list[ZPrimeTruth] = []
        while done < m:
            values, truth, cursor = self._rare_queue
            size = values["kind"].size
            if cursor >= size:
                self._rare_queue = (*self._draw_rare_block(max(RARE_BLOCK, 4 * m), rng), 0)
                continue
            k = min(m - done, size - cursor)
            at = idx[done : done + k]
            for name in self._RARE_FIELDS:
                getattr(b, name)[at] = values[name][cursor : cursor + k]
            if truth is not None:
                lo, hi = np.searchsorted(truth.index, (cursor, cursor + k))
                if hi > lo:
                    zp.append(truth.rows(slice(lo, hi), at[truth.index[lo:hi] - cursor]))
            self._rare_queue = (values, truth, cursor + k)
            done += k
        if zp:
            b.zprime = ZPrimeTruth.concat([(t, 0) for t in zp])

    def _draw_rare_block(
        self, size: int, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], ZPrimeTruth | None]:
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
        return {name: getattr(tmp, name) for name in self._RARE_FIELDS}, tmp.zprime

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
            where = np.flatnonzero(sel)
            b.zprime = self._signal(rng, where, e_beam, e_prs, e_ecal, e_hcal, e_miss, proc).rows(
                slice(None), idx[where]
            )

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
        where: np.ndarray,
        e_beam: np.ndarray,
        e_prs: np.ndarray,
        e_ecal: np.ndarray,
        e_hcal: np.ndarray,
        e_miss: np.ndarray,
        proc: np.ndarray,
    ) -> ZPrimeTruth:
        """Electrons at ``where`` make a Z' (:meth:`ZPrimeSignal.draw`); its truth, indexed by ``where``."""
        assert self.signal is not None
        d = self.signal.draw(rng, e_beam[where])
        e_prs[where], e_ecal[where], e_hcal[where], e_miss[where] = d.e_prs, d.e_ecal, d.e_hcal, d.e_miss
        proc[where] = d.process
        return ZPrimeTruth(
            where.astype(np.int64), d.mode, d.emitter, d.depth_x0, d.x, d.energy_gev, d.decay, d.decay_z_mm
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
