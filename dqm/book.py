"""Histogram book: every quantity the DQM shows, filled per batch (pure: no I/O, no clocks, no locks).

A :class:`Book` holds boost-histograms and per-channel numpy accumulators for one range of data (one
spill, several spills, a run). Books of the same :class:`BookSpec` add up, which is how the "last N
spills" and "run" views are made from per-spill books.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boost_histogram as bh
import numpy as np
from numpy.typing import NDArray

from daq import detector
from daq.contract import BEAM, PHYSICS, RANDOM
from dqm.batch import MonitoredEvents
from dqm.config import DqmConfig

N_CH = detector.N_CHANNELS
#: trigger types kept apart in per-type accumulators (row order)
TYPES = ("physics", "beam", "random")
#: rows of the time-in-spill histogram
#: "saturated": a calorimeter channel at the top of the ADC range; "signal_like": physics trigger with
#: E_ECAL < signal_like_ecal_gev and E_HCAL < signal_like_hcal_gev (what PMT saturation produces)
TIME_ROWS = ("physics", "beam", "random", "saturated", "signal_like")
TIME_MAX_NS = 12_000_000_000
TIME_BINS = 2400
SPECTRUM_BINS = 100
#: per-waveform pre-sample mean: 1-ADC bins over NOMINAL_PEDESTAL +- WF_MEAN_HALF_RANGE (robust pedestals)
WF_MEAN_HALF_RANGE = 128
#: per-waveform pre-sample RMS (around the even and odd means): 0.25-ADC bins over [0, WF_RMS_MAX)
WF_RMS_MAX = 32.0
WF_RMS_BINS = 128
#: calorimeter channels checked for saturation
_CALO = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS, detector.HCAL_IDS])


def _per_channel(values: tuple[float, ...]) -> NDArray[np.float64]:
    out = np.empty(N_CH, np.float64)
    for det, v in zip(detector.Detector, values, strict=True):
        out[detector.GROUP_IDS[det]] = v
    return out


@dataclass(frozen=True, eq=False)
class BookSpec:
    """Axes and thresholds of a book; books add only when their specs are equal (:meth:`key`)."""

    beam_energy_gev: float = 100.0
    hit_threshold_gev: NDArray[np.float64] = field(
        default_factory=lambda: _per_channel(DqmConfig().hit_threshold_gev)
    )
    spectrum_max_gev: NDArray[np.float64] = field(
        default_factory=lambda: _per_channel(DqmConfig().spectrum_max_gev)
    )
    #: energy above which a calorimeter channel counts as saturated (GeV)
    saturation_gev: NDArray[np.float64] = field(
        default_factory=lambda: (
            0.99 * (detector.ADC_MAX - detector.NOMINAL_PEDESTAL) / detector.nominal_gains() / 1e3
        )
    )
    signal_like_ecal_gev: float = 70.0
    signal_like_hcal_gev: float = 1.0
    #: upper edge of the zoomed signal-region view's E_HCAL axis (GeV)
    zoom_hcal_max_gev: float = 5.0
    presamples: int = 6
    #: max - min of a channel's pre-samples above which they hold a pulse, not pedestal (ADC counts)
    presample_max_spread: float = 25.0
    veto_mip_gev: float = 0.01

    @classmethod
    def from_config(cls, cfg: DqmConfig) -> BookSpec:
        return cls(
            beam_energy_gev=cfg.beam_energy_gev,
            hit_threshold_gev=_per_channel(cfg.hit_threshold_gev),
            spectrum_max_gev=_per_channel(cfg.spectrum_max_gev),
            veto_mip_gev=cfg.veto_mip_gev,
        )

    def key(self) -> tuple[Any, ...]:
        return (
            self.beam_energy_gev,
            tuple(self.hit_threshold_gev),
            tuple(self.spectrum_max_gev),
            self.presamples,
            self.presample_max_spread,
            self.veto_mip_gev,
            self.signal_like_ecal_gev,
            self.signal_like_hcal_gev,
            self.zoom_hcal_max_gev,
        )

    def axes_1d(self) -> dict[str, bh.axis.Regular]:
        e = self.beam_energy_gev
        return {
            "e_miss": bh.axis.Regular(140, -0.2 * e, 1.2 * e),
            "ecal_sum_beam": bh.axis.Regular(120, 0.0, 1.2 * e),
            "prs_sum_beam": bh.axis.Regular(100, 0.0, 0.15 * e),
            "ecal_sum_phys": bh.axis.Regular(120, 0.0, 1.2 * e),
            "hcal_sum_phys": bh.axis.Regular(120, 0.0, 1.2 * e),
            "veto_mip_phys": bh.axis.Regular(100, 0.0, 10.0),
            "srd_sum_beam": bh.axis.Regular(100, 0.0, 0.3),
        }

    def axes_2d(self) -> dict[str, tuple[bh.axis.Regular, bh.axis.Regular]]:
        e = self.beam_energy_gev
        return {
            "ecal_hcal": (bh.axis.Regular(60, 0.0, 1.2 * e), bh.axis.Regular(60, 0.0, 1.2 * e)),
            "prs_ecal": (bh.axis.Regular(60, 0.0, 1.2 * e), bh.axis.Regular(60, 0.0, 0.15 * e)),
            # the signal region magnified: E_HCAL in 0.1 GeV bins up to a few GeV
            "ecal_hcal_zoom": (
                bh.axis.Regular(60, 0.0, 1.2 * e),
                bh.axis.Regular(round(self.zoom_hcal_max_gev * 10), 0.0, self.zoom_hcal_max_gev),
            ),
        }


class Book:
    """Histograms and accumulators for one data range. ``fill(batch)`` is vectorized over the batch."""

    def __init__(self, spec: BookSpec) -> None:
        self.spec = spec
        self.h1 = {name: bh.Histogram(ax, storage=bh.storage.Double()) for name, ax in spec.axes_1d().items()}
        self.h2 = {
            name: bh.Histogram(ax, ay, storage=bh.storage.Double())
            for name, (ax, ay) in spec.axes_2d().items()
        }
        #: per-channel spectra of physics+beam events, energy / spectrum_max in [0, 1)
        self.spectra = bh.Histogram(
            bh.axis.Integer(0, N_CH, underflow=False, overflow=False),
            bh.axis.Regular(SPECTRUM_BINS, 0.0, 1.0),
            storage=bh.storage.Double(),
        )
        self.times = bh.Histogram(
            bh.axis.Integer(0, len(TIME_ROWS), underflow=False, overflow=False),
            bh.axis.Regular(TIME_BINS, 0.0, float(TIME_MAX_NS)),
            storage=bh.storage.Double(),
        )
        #: per monitored waveform and channel: pre-sample mean (relative to the nominal pedestal) and RMS.
        #: Medians and tail fractions of these are robust against pile-up in the pre-samples (docs/dqm.md)
        self.wf_mean = bh.Histogram(
            bh.axis.Integer(0, N_CH, underflow=False, overflow=False),
            bh.axis.Regular(2 * WF_MEAN_HALF_RANGE, -WF_MEAN_HALF_RANGE, WF_MEAN_HALF_RANGE),
            storage=bh.storage.Double(),
        )
        self.wf_rms = bh.Histogram(
            bh.axis.Integer(0, N_CH, underflow=False, overflow=False),
            bh.axis.Regular(WF_RMS_BINS, 0.0, WF_RMS_MAX),
            storage=bh.storage.Double(),
        )
        self.arrays: dict[str, NDArray[np.float64]] = {
            "n_type": np.zeros(len(TYPES)),  # events per trigger type
            "n_events": np.zeros(1),
            "n_skipped": np.zeros(1),
            "n_saturated": np.zeros(1),
            "hits": np.zeros((2, N_CH)),  # hits above threshold, physics / beam
            "esum": np.zeros((2, N_CH)),  # energy sum, physics / beam
            "rnd_sum": np.zeros(N_CH),  # random triggers: energy sum and sum of squares
            "rnd_sum2": np.zeros(N_CH),
            "ped_n": np.zeros((2, N_CH)),  # pre-samples, even / odd
            "ped_sum": np.zeros((2, N_CH)),
            "ped_sum2": np.zeros((2, N_CH)),
            # monitored waveforms, and those in which a whole readout group is zero (no data from a source)
            "wf_n": np.zeros(1),
            "ped_piled_up": np.zeros(1),  # channel waveforms skipped for pedestals (pulse in the pre-samples)
            "wf_zero_group": np.zeros(detector.N_GROUPS),
        }
        #: entries absent from the dictionary this book was read from (see :meth:`from_dict`)
        self.missing: list[str] = []

    # ------------------------------------------------------------ filling
    def fill(self, b: MonitoredEvents) -> None:
        """Fill every histogram from one batch."""
        a = self.arrays
        a["n_skipped"][0] += b.n_skipped
        if b.waveforms is not None and b.waveforms.shape[0]:
            self._fill_pedestals(b.waveforms)
        if b.n == 0:
            return
        e_beam = self.spec.beam_energy_gev
        mask = b.mask
        phys = (mask & PHYSICS) != 0
        beam = (mask & BEAM) != 0
        rnd = (mask & RANDOM) != 0
        a["n_events"][0] += b.n
        a["n_type"] += (np.count_nonzero(phys), np.count_nonzero(beam), np.count_nonzero(rnd))

        h = self.h1
        h["e_miss"].fill(e_beam - b.e_ecal[phys])
        h["ecal_sum_phys"].fill(b.e_ecal[phys])
        h["hcal_sum_phys"].fill(b.e_hcal[phys])
        h["ecal_sum_beam"].fill(b.e_ecal[beam])
        h["prs_sum_beam"].fill(b.e_prs[beam])
        h["srd_sum_beam"].fill(b.e_srd[beam])
        self.h2["ecal_hcal"].fill(b.e_ecal[phys], b.e_hcal[phys])
        self.h2["prs_ecal"].fill(b.e_ecal[phys | beam], b.e_prs[phys | beam])
        self.h2["ecal_hcal_zoom"].fill(b.e_ecal[phys], b.e_hcal[phys])

        energy = b.energy
        for row, sel in enumerate((phys, beam)):
            if sel.any():
                en = energy[sel]
                a["hits"][row] += (en > self.spec.hit_threshold_gev).sum(axis=0)
                a["esum"][row] += en.sum(axis=0, dtype=np.float64)
        if phys.any():
            veto = energy[phys][:, detector.VETO_IDS]
            slabs = np.sqrt(np.clip(veto[:, 0::2] * veto[:, 1::2], 0.0, None)) / self.spec.veto_mip_gev
            h["veto_mip_phys"].fill(slabs.sum(axis=1))
        if rnd.any():
            en = energy[rnd].astype(np.float64)
            a["rnd_sum"] += en.sum(axis=0)
            a["rnd_sum2"] += (en * en).sum(axis=0)
        sig = phys | beam
        if sig.any():
            u = energy[sig] / self.spec.spectrum_max_gev
            ch = np.broadcast_to(np.arange(N_CH), u.shape)
            self.spectra.fill(ch.ravel(), u.ravel())

        saturated = (energy[:, _CALO] >= self.spec.saturation_gev[_CALO]).any(axis=1)
        a["n_saturated"][0] += np.count_nonzero(saturated)
        t = b.t_ns.astype(np.float64)
        signal_like = (
            phys & (b.e_ecal < self.spec.signal_like_ecal_gev) & (b.e_hcal < self.spec.signal_like_hcal_gev)
        )
        sels = (phys, beam, rnd, saturated, signal_like)
        rows = np.concatenate([np.full(np.count_nonzero(s), i) for i, s in enumerate(sels)])
        self.times.fill(rows, np.concatenate([t[s] for s in sels]))

    def _fill_pedestals(self, wf: NDArray[np.uint16]) -> None:
        """Pre-sample sums of (W, N_CH, S) (or one (N_CH, S)) waveforms, vectorized over W.

        Every sum is of integers (ADC counts) in float64, so it does not depend on how the waveforms
        are batched.
        """
        a = self.arrays
        wf = wf.reshape(-1, N_CH, wf.shape[-1])
        # a channel always shows its pedestal: all-zero samples mean the source sent nothing
        live: NDArray[np.bool_] = np.asarray(wf.any(axis=2))  # (W, N_CH)
        a["wf_n"][0] += wf.shape[0]
        for g, ids in enumerate(detector.GROUP_IDS):
            a["wf_zero_group"][g] += np.count_nonzero(~live[:, ids].any(axis=1))
        pre = wf[:, :, : self.spec.presamples].astype(np.float64)
        self._fill_waveform_stats(pre, live)
        # a pulse (pile-up) inside the pre-samples is not pedestal: skip that channel in this waveform
        clean = live & (np.ptp(pre, axis=2) <= self.spec.presample_max_spread)
        a["ped_piled_up"][0] += np.count_nonzero(live & ~clean)
        pre *= clean[:, :, None]  # channels not used contribute zeros
        for row, cols in enumerate((pre[:, :, 0::2], pre[:, :, 1::2])):
            a["ped_n"][row] += np.count_nonzero(clean, axis=0) * cols.shape[2]
            a["ped_sum"][row] += cols.sum(axis=(0, 2))
            a["ped_sum2"][row] += (cols * cols).sum(axis=(0, 2))

    def _fill_waveform_stats(self, pre: NDArray[np.float64], live: NDArray[np.bool_]) -> None:
        """One entry per live channel of every waveform: pre-sample mean and RMS around the even and
        odd means (the ADCs' even/odd offset is not noise). No pile-up cut: their medians are robust."""
        even, odd = pre[:, :, 0::2], pre[:, :, 1::2]
        mean = pre.mean(axis=2)
        dev2 = ((even - even.mean(axis=2, keepdims=True)) ** 2).sum(axis=2) + (
            (odd - odd.mean(axis=2, keepdims=True)) ** 2
        ).sum(axis=2)
        rms = np.sqrt(dev2 / pre.shape[2])
        ch = np.broadcast_to(np.arange(N_CH), mean.shape)[live]
        self.wf_mean.fill(ch, mean[live] - detector.NOMINAL_PEDESTAL)
        self.wf_rms.fill(ch, rms[live])

    # ------------------------------------------------------------ arithmetic
    def add(self, other: Book) -> Book:
        """Add ``other`` into this book (in place) and return self."""
        if other.spec.key() != self.spec.key():
            raise ValueError("cannot add books with different axes or thresholds")
        for name, hist in self.h1.items():
            hist += other.h1[name]
        for name, hist in self.h2.items():
            hist += other.h2[name]
        self.spectra += other.spectra
        self.times += other.times
        self.wf_mean += other.wf_mean
        self.wf_rms += other.wf_rms
        for name, arr in self.arrays.items():
            arr += other.arrays[name]
        return self

    def copy(self) -> Book:
        out = Book(self.spec)
        return out.add(self)

    @property
    def n_events(self) -> int:
        return int(self.arrays["n_events"][0])

    # ------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain lists of all counts (for a reference file); axes come from the spec."""
        return {
            "h1": {k: v.values(flow=True).tolist() for k, v in self.h1.items()},
            "h2": {k: v.values(flow=True).tolist() for k, v in self.h2.items()},
            "spectra": self.spectra.values(flow=True).tolist(),
            "times": self.times.values(flow=True).tolist(),
            "wf_mean": self.wf_mean.values(flow=True).tolist(),
            "wf_rms": self.wf_rms.values(flow=True).tolist(),
            "arrays": {k: v.tolist() for k, v in self.arrays.items()},
        }

    @classmethod
    def from_dict(cls, spec: BookSpec, data: dict[str, Any], optional: tuple[str, ...] = ()) -> Book:
        """Inverse of :meth:`to_dict`; raises ValueError naming the first entry that does not fit.

        Entries named in ``optional`` (e.g. ``h2.ecal_hcal_zoom``, ``wf_mean``: histograms an older
        reference format did not have) may be absent: they stay empty and are listed in ``book.missing``.
        """
        book = cls(spec)

        def put(name: str, hist: bh.Histogram[Any], values: Any) -> None:
            if values is None:
                if name not in optional:
                    raise ValueError(f"{name} is missing")
                book.missing.append(name)
                return
            arr = np.asarray(values, dtype=np.float64)
            view = hist.view(flow=True)
            if arr.shape != view.shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {view.shape}")
            view[...] = arr

        for k, hist in book.h1.items():
            put(f"h1.{k}", hist, data["h1"].get(k))
        for k, hist in book.h2.items():
            put(f"h2.{k}", hist, data["h2"].get(k))
        put("spectra", book.spectra, data.get("spectra"))
        put("times", book.times, data.get("times"))
        put("wf_mean", book.wf_mean, data.get("wf_mean"))
        put("wf_rms", book.wf_rms, data.get("wf_rms"))
        for k, arr in book.arrays.items():
            got = np.asarray(data["arrays"][k], dtype=np.float64)
            if got.shape != arr.shape:
                raise ValueError(f"arrays.{k} has shape {got.shape}, expected {arr.shape}")
            arr[...] = got
        return book
