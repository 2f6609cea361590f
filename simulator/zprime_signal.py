"""Z' signal in the NA64 setup: expected yield per electron on target, emission, decays, deposits (pure).

:class:`ZPrimeSignal` computes, for one configuration, the number of Z' (energy above
``signal.min_energy_gev``) that one beam electron makes in the active target (the ECAL):

- bremsstrahlung: N_b = n_N sum_species int dt int dE T_s(E, t) sigma_IWW(E; xE > E_min), with n_N the
  absorber nuclei per cm^2 per X0 (:attr:`~simulator.config.EcalConfig.nuclei_per_cm2_x0`), T_s the track
  lengths of the beam electron, shower electrons and positrons (:func:`simulator.cascade.track_lengths`)
  and sigma from :func:`simulator.zprime.brems_cross_section_cm2`;
- resonant annihilation: N_r = n_e <dT_+/dE>_line int sigma_res dE, with n_e the atomic electrons per
  cm^2 per X0, the positron track length per GeV averaged over the line at E_R (broadened by the motion
  of atomic electrons) and :func:`simulator.zprime.resonant_integral_cm2_gev`; none when m < 2 m_e (the
  positron would need E_R < m_e) or when E_R is outside [E_min, E0].

Both scale with g^2 Q_e^2. A produced Z' is drawn from the same tables: production mode, emitter,
emission depth (X0) and energy, x from the DMG4 spectrum at the emitter's energy; a decay mode from the
partial widths and a decay point from gamma beta c tau. The calorimeters then see the shower of the beam
electron before the emission and of the recoil electron after it (PRS share from the longitudinal
profile, :class:`simulator.cascade.PrsFraction`), and the visible decay products where the Z' decays:
e+e- showers in the ECAL (or the HCAL), mu+mu- as two MIPs through the rest of the ECAL, the VETO and the
HCAL, hadrons as a hadronic shower. A Z' decaying beyond the HCAL is invisible.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from simulator import cascade, zprime
from simulator import randoms as rnd
from simulator.config import HcalConfig, SimConfig
from simulator.particles import Decay, Emitter, Process, Production

#: Decay code of each of zprime.DECAY_MODES, in that order
DECAY_CODES = np.array([Decay[m.upper()] for m in zprime.DECAY_MODES], dtype=np.uint8)
_EMITTERS = np.array([Emitter.BEAM_ELECTRON, Emitter.SHOWER_ELECTRON, Emitter.SHOWER_POSITRON], np.uint8)
#: an injected probability per electron above this is refused (the beam would no longer be a beam)
MAX_PER_ELECTRON = 0.1
#: the PRS is the first 4 radiation lengths of the ECAL [paper]
PRS_X0 = 4.0
_X_POINTS = 512


def first_hcal_module(z_decay_mm: np.ndarray, hcal: HcalConfig) -> np.ndarray:
    """Index (0..3) of the first HCAL module reached by the products of a decay at ``z_decay_mm`` (from the
    ECAL face): the module it decays in, or the first one for decays before the HCAL."""
    k = np.floor((np.asarray(z_decay_mm, np.float64) - hcal.z_start_mm) / hcal.module_length_mm)
    return np.clip(k, 0, 3).astype(np.intp)


@dataclass
class SignalDraw:
    """Produced Z' (one row each): what the detector sees and the truth."""

    process: np.ndarray  # uint8 Process
    e_prs: np.ndarray  # float64 GeV
    e_ecal: np.ndarray
    e_hcal: np.ndarray
    e_miss: np.ndarray
    mode: np.ndarray  # uint8 Production
    emitter: np.ndarray  # uint8 Emitter
    depth_x0: np.ndarray  # float32
    x: np.ndarray  # float32
    energy_gev: np.ndarray  # float32
    decay: np.ndarray  # uint8 Decay
    decay_z_mm: np.ndarray  # float32


class ZPrimeSignal:
    """Yields, samplers and detector response of the Z' of one configuration."""

    def __init__(self, config: SimConfig) -> None:
        c, sig, ec = config, config.signal, config.ecal
        self.config = config
        self.e0 = c.beam.energy_gev
        self.mass = sig.mass_mev
        self.charge_e = zprime.charges(sig.model)["e"]
        dm = sig.dm_mass_mev if sig.dm_mass_mev > 0 else None
        self.widths = zprime.partial_widths(sig.model, sig.mass_mev, sig.coupling, dm, sig.dm_charge)
        self.total_width = zprime.total_width(self.widths)
        self.branching = zprime.decay_mode_probabilities(self.widths)
        self.br_invisible = self.branching["invisible"]
        self._mode_cdf = np.cumsum([self.branching[m] for m in zprime.DECAY_MODES])
        self.mm_per_x0 = ec.mm_per_x0
        self.tracks = cascade.track_lengths(sig.min_energy_gev, self.e0, t_max=ec.length_mm / self.mm_per_x0)
        energies = self.tracks.energies
        x_min = sig.min_energy_gev / energies
        self.sigma_cm2 = np.array(
            [
                zprime.brems_cross_section_cm2(
                    float(e),
                    sig.mass_mev,
                    sig.coupling,
                    self.charge_e,
                    ec.absorber_z,
                    ec.absorber_a,
                    float(xm),
                )
                for e, xm in zip(energies, x_min, strict=True)
            ]
        )
        weights = self.tracks.tracks[:3] * self.sigma_cm2[None, :, None] * ec.nuclei_per_cm2_x0
        self.brems_per_eot = float(weights.sum())
        self._brems_cdf = np.cumsum(weights.ravel()) / max(self.brems_per_eot, 1e-300)
        self._brems_shape = weights.shape
        self._x_rows, self._x_cdf = self._x_tables(energies, x_min)
        self.e_r = zprime.resonant_energy_gev(sig.mass_mev)
        res_depth = self._positron_line(sig.min_energy_gev, sig.resonant_smear)
        self.resonant_per_eot = float(
            ec.electrons_per_cm2_x0
            * res_depth.sum()
            * zprime.resonant_integral_cm2_gev(sig.mass_mev, self.widths["ee"])
        )
        self._res_cdf = np.cumsum(res_depth) / res_depth.sum() if res_depth.sum() > 0 else res_depth
        self.produced_per_eot = self.brems_per_eot + self.resonant_per_eot
        self.resonant_share = self.resonant_per_eot / self.produced_per_eot if self.produced_per_eot else 0.0
        self.prs_e = cascade.PrsFraction(ec.critical_energy_mev / 1000.0, ec.profile_b, PRS_X0, -0.5)
        self.prs_gamma = cascade.PrsFraction(ec.critical_energy_mev / 1000.0, ec.profile_b, PRS_X0, 0.5)
        self.hcal_end_mm = c.hcal.z_start_mm + 4 * c.hcal.module_length_mm
        self.missing_fraction = self._missing_fraction()

    # ------------------------------------------------------------ yields
    def info(self) -> dict[str, object]:
        """The expected yields and what they rest on (RUN_START info, truth file, logs)."""
        sig = self.config.signal
        return {
            "model": sig.model,
            "mass_mev": sig.mass_mev,
            "coupling": sig.coupling,
            "charge_e": self.charge_e,
            "boost": sig.boost,
            "min_energy_gev": sig.min_energy_gev,
            "produced_per_eot": self.produced_per_eot,
            "brems_per_eot": self.brems_per_eot,
            "resonant_per_eot": self.resonant_per_eot,
            "resonant_share": self.resonant_share,
            "invisible_per_eot": self.produced_per_eot * self.br_invisible,
            "missing_per_eot": self.produced_per_eot * self.missing_fraction,
            "injected_per_eot": self.produced_per_eot * sig.boost,
            "br_invisible": self.br_invisible,
            "missing_fraction": self.missing_fraction,
            "branching": dict(self.branching),
            "total_width_mev": self.total_width,
            "e_r_gev": self.e_r,
        }

    def _positron_line(self, e_min: float, smear: float) -> np.ndarray:
        """Positron track length per GeV at E_R per depth step (X0/GeV), averaged over the line."""
        depth = np.zeros(self.tracks.tracks.shape[2])
        if not zprime.resonant_allowed(self.mass) or not e_min <= self.e_r < self.e0:
            return depth
        z = np.linspace(-4.0, 4.0, 81)
        w = np.exp(-0.5 * z * z)
        w /= w.sum()
        e_line = self.e_r * (1.0 + smear * z)
        density = self.tracks.tracks[2] / self.tracks.widths[:, None]  # (N, K) X0 / GeV
        ln_e = -np.log(self.tracks.energies)  # ascending
        for e, wi in zip(e_line, w, strict=True):
            if not e_min <= e < self.e0:
                continue
            f = np.interp(-math.log(e), ln_e, np.arange(ln_e.size))
            i = min(int(f), ln_e.size - 2)
            u = f - i
            depth += wi * ((1 - u) * density[i] + u * density[i + 1])
        return depth

    def _x_tables(self, energies: np.ndarray, x_min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per energy bin, x on a grid dense towards 1 and its cumulative distribution (rows of 0..1)."""
        rows = np.zeros((energies.size, _X_POINTS))
        cdfs = np.tile(np.linspace(0.0, 1.0, _X_POINTS), (energies.size, 1))
        for i, (e, xm) in enumerate(zip(energies, x_min, strict=True)):
            x = zprime.brems_x_grid(self.mass, float(e), float(xm), _X_POINTS)
            if x.size == 0:
                continue
            pdf = zprime.brems_dsigma_dx(x, self.mass, float(e)) * (1.0 - x)  # per unit w = -ln(1-x)
            w = -np.log1p(-x)
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(w))])
            if cdf[-1] > 0:
                rows[i], cdfs[i] = x, cdf / cdf[-1]
        return rows, cdfs

    def _missing_fraction(self, n: int = 20000) -> float:
        """Share of the Z' with a missing-energy signature (invisible decay, or decay beyond the HCAL),
        estimated from ``n`` draws with a fixed private generator (not the run's)."""
        if self.produced_per_eot <= 0:
            return 0.0
        d = self.draw(np.random.default_rng(20260415), np.full(n, self.e0))
        return float(np.mean(d.process != Process.SIGNAL_VISIBLE))

    # ------------------------------------------------------------ drawing produced Z'
    def draw(self, rng: np.random.Generator, e_beam: np.ndarray) -> SignalDraw:
        """One produced Z' per beam electron of energy ``e_beam`` (GeV): production, decay, deposits."""
        m = e_beam.size
        scale = e_beam / self.e0
        resonant = rng.random(m) < self.resonant_share
        emitter = np.full(m, Emitter.SHOWER_POSITRON, np.uint8)
        e_em = np.empty(m)
        x = np.ones(m)
        depth = np.empty(m)
        brems = np.flatnonzero(~resonant)
        if brems.size:
            flat = np.minimum(
                np.searchsorted(self._brems_cdf, rng.random(brems.size)), self._brems_cdf.size - 1
            )
            s, i, k = np.unravel_index(flat, self._brems_shape)
            emitter[brems] = _EMITTERS[s]
            h = self.tracks.h
            e_em[brems] = self.tracks.energies[i] * np.exp(h * (rng.random(brems.size) - 0.5)) * scale[brems]
            depth[brems] = (k + rng.random(brems.size)) * self.tracks.dt
            x[brems] = self._sample_x(i, rng.random(brems.size))
        res = np.flatnonzero(resonant)
        if res.size:
            sig = self.config.signal
            e = zprime.sample_resonant_missing_energy(
                res.size, rng, self.mass, self.total_width, sig.resonant_smear
            )
            e_em[res] = np.clip(e, 0.0, e_beam[res])
            k = np.minimum(np.searchsorted(self._res_cdf, rng.random(res.size)), self._res_cdf.size - 1)
            depth[res] = (k + rng.random(res.size)) * self.tracks.dt
        e_zp = x * e_em
        code = DECAY_CODES[np.minimum(np.searchsorted(self._mode_cdf, rng.random(m) * self._mode_cdf[-1]), 4)]
        length = zprime.decay_length_mm(e_zp, self.mass, self.total_width)
        z_decay = depth * self.mm_per_x0 + length * rng.standard_exponential(m)
        out = self._deposits(rng, e_beam, e_em, e_zp, depth, resonant, code, z_decay)
        out.mode[:] = np.where(resonant, Production.RESONANT, Production.BREMS)
        out.emitter[:] = emitter
        out.depth_x0[:] = depth
        out.x[:] = x
        out.energy_gev[:] = e_zp
        out.decay[:] = code
        out.decay_z_mm[:] = z_decay
        return out

    def _sample_x(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x by inverse CDF, each value from its own energy bin's table (one search in the stacked rows)."""
        cdf = self._x_cdf + 2.0 * np.arange(self._x_cdf.shape[0])[:, None]  # rows kept apart: monotonic
        q = u + 2.0 * rows
        j = np.clip(np.searchsorted(cdf.ravel(), q), 1, cdf.size - 1)
        lo, hi = cdf.ravel()[j - 1], cdf.ravel()[j]
        xs = self._x_rows.ravel()
        t = np.where(hi > lo, (q - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        return np.clip(xs[j - 1] + t * (xs[j] - xs[j - 1]), 0.0, 1.0)

    def _deposits(
        self,
        rng: np.random.Generator,
        e_beam: np.ndarray,
        e_em: np.ndarray,
        e_zp: np.ndarray,
        depth: np.ndarray,
        resonant: np.ndarray,
        code: np.ndarray,
        z_decay: np.ndarray,
    ) -> SignalDraw:
        c = self.config
        ec, hc = c.ecal, c.hcal
        m = e_beam.size
        e_rec = np.where(resonant, 0.0, e_em - e_zp)
        f_beam = self.prs_e(e_beam, np.zeros(m))
        mean_prs = np.maximum(
            e_beam * f_beam - e_em * self.prs_e(e_em, depth) + e_rec * self.prs_e(e_rec, depth), 0.0
        )
        vis = e_beam - e_zp  # the shower without the Z'
        prs_extra = np.zeros(m)
        ecal_extra = np.zeros(m)
        e_hcal = np.zeros(m)
        e_miss = e_zp.copy()
        visible = (code != Decay.INVISIBLE) & (z_decay < self.hcal_end_mm)
        in_ecal = visible & (z_decay < ec.length_mm)
        after = visible & ~in_ecal
        t_dec = z_decay / self.mm_per_x0
        # e+ e-: a shower of the whole Z' energy where it decays
        ee = code == Decay.EE
        sel = ee & in_ecal
        prs_extra[sel] = e_zp[sel] * self.prs_gamma(e_zp[sel], t_dec[sel])
        ecal_extra[sel] = e_zp[sel] - prs_extra[sel]
        sel = ee & after
        e_hcal[sel] = self._hcal_smear(rng, e_zp[sel])
        e_miss[ee & visible] = 0.0
        # mu+ mu-: two MIPs through what is left of the ECAL, and every HCAL module from the decay on
        sel = (code == Decay.MUMU) & visible
        if sel.any():
            z = z_decay[sel]
            k = int(sel.sum())
            f_prs = np.clip((ec.prs_length_mm - z) / ec.prs_length_mm, 0.0, 1.0)
            f_ecal = np.clip(
                (ec.length_mm - np.maximum(z, ec.prs_length_mm)) / (ec.length_mm - ec.prs_length_mm), 0, 1
            )
            prs_extra[sel] = 2 * f_prs * self._mip(rng, ec.mip_prs_mev, ec.mip_width, k)
            ecal_extra[sel] = 2 * f_ecal * self._mip(rng, ec.mip_ecal_mev, ec.mip_width, k)
            n_mod = 4 - self.first_module(z)
            e_hcal[sel] = 2 * n_mod * hc.mip_module_mev / 1000  # nominal; modules drawn in deposits()
            e_miss[sel] = np.maximum(e_zp[sel] - prs_extra[sel] - ecal_extra[sel] - e_hcal[sel], 0.0)
        # hadrons (and tau pairs): a hadronic shower from the decay point, 15% of it invisible
        sel = ((code == Decay.HADRONS) | (code == Decay.TAUTAU)) & visible
        if sel.any():
            k = int(sel.sum())
            remaining = np.clip((ec.length_mm - z_decay[sel]) / ec.length_mm, 0.0, 1.0)
            contain = np.clip(rng.uniform(0.5, 1.0, k) * remaining * 0.8, 0.0, 0.9)
            e = e_zp[sel]
            in_ec = e * contain * (1 - hc.invisible_fraction)
            prs_extra[sel] = in_ec * self.prs_e(e, t_dec[sel])
            ecal_extra[sel] = in_ec - prs_extra[sel]
            e_hcal[sel] = self._hcal_smear(rng, e * (1 - contain) * (1 - hc.invisible_fraction))
            e_miss[sel] = e * hc.invisible_fraction
        # ECAL + PRS: smeared sum; PRS share of an ordinary electron (its fluctuation) times this event's
        # mean PRS share over an ordinary electron's
        total = vis + prs_extra + ecal_extra
        e_tot = np.maximum(
            total
            * (
                1
                + np.hypot(ec.stochastic / np.sqrt(np.maximum(total, 1e-3)), ec.constant)
                * rng.standard_normal(m)
            ),
            0.0,
        )
        shape = (ec.prs_fraction_mean / ec.prs_fraction_rms) ** 2
        f = rng.standard_gamma(shape, m) * (ec.prs_fraction_mean / shape)
        ratio = (mean_prs + prs_extra) / np.maximum(total * f_beam, 1e-12)
        e_prs = np.clip(f * ratio, 0.0, 1.0) * e_tot
        # the charged tracks through the PRS: the emitter before the emission, the recoil after it
        t4 = np.clip(depth / PRS_X0, 0.0, 1.0)
        floor = ec.mip_prs_mev / 1000 * np.where(resonant, t4, 1.0)
        e_prs = np.minimum(np.maximum(e_prs, floor), e_tot)
        process = np.where(
            visible,
            Process.SIGNAL_VISIBLE,
            np.where(resonant, Process.SIGNAL_RESONANT, Process.SIGNAL_BREMS),
        ).astype(np.uint8)
        return SignalDraw(
            process=process,
            e_prs=e_prs,
            e_ecal=e_tot - e_prs,
            e_hcal=e_hcal,
            e_miss=e_miss,
            mode=np.zeros(m, np.uint8),
            emitter=np.zeros(m, np.uint8),
            depth_x0=np.zeros(m, np.float32),
            x=np.zeros(m, np.float32),
            energy_gev=np.zeros(m, np.float32),
            decay=np.zeros(m, np.uint8),
            decay_z_mm=np.zeros(m, np.float32),
        )

    def first_module(self, z_decay_mm: np.ndarray) -> np.ndarray:
        """Index (0..3) of the first HCAL module reached by the products of a decay at ``z_decay_mm``."""
        return first_hcal_module(z_decay_mm, self.config.hcal)

    def _hcal_smear(self, rng: np.random.Generator, e: np.ndarray) -> np.ndarray:
        hc = self.config.hcal
        e = np.maximum(e, 1e-3)
        sigma = np.hypot(hc.stochastic / np.sqrt(e), hc.constant)
        return np.maximum(e * (1 + sigma * rng.standard_normal(e.size)), 0.0)

    @staticmethod
    def _mip(rng: np.random.Generator, mpv_mev: float, width: float, k: int) -> np.ndarray:
        """MIP deposits (GeV), Moyal fluctuations as for the other muons."""
        return (
            np.maximum(mpv_mev * (1 + width * rnd.moyal_from_normal(rng.standard_normal(k))), 0.1 * mpv_mev)
            / 1000
        )


@functools.lru_cache(maxsize=8)
def for_config(config: SimConfig) -> ZPrimeSignal:
    """The (cached) :class:`ZPrimeSignal` of a config with ``signal.enabled``."""
    return ZPrimeSignal(config)
