"""EventBatch: built events in structure-of-arrays form, the unit the writer and the monitor consume."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, fields

import numpy as np

from daq import detector
from daq.waveform import MAX_NEIGHBOURS

#: names of the event sums, in the row order of ``EventBatch.sums`` and ``protocol.Events.sums``
SUM_NAMES = ("e_prs", "e_ecal", "e_hcal", "e_veto", "e_srd", "e_miss")


@dataclass(frozen=True, eq=False)
class EventBatch:
    """A batch of E built events. Arrays are owned by the batch (never views of ZeroMQ frames)."""

    event_id: np.ndarray  # (E,) uint64
    slice: np.ndarray  # (E,) uint32
    index: np.ndarray  # (E,) uint32, NO_PARTICLE for random triggers
    t_ns: np.ndarray  # (E,) int64, since spill start
    trigger_mask: np.ndarray  # (E,) uint32
    missing_groups: np.ndarray  # (E,) uint8, bit g: readout group g absent
    sums: np.ndarray  # (6, E) float32 GeV, rows SUM_NAMES
    energy: np.ndarray  # (E, 110) float32 GeV
    amplitude: np.ndarray  # (E, 110) float32 ADC counts
    peak_time: np.ndarray  # (E, 110) float32 ns
    pileup: np.ndarray  # (E, 110) bool: an out-of-time pulse above threshold was fitted and removed
    chi2: np.ndarray  # (E, 110) float32: the pulse fit's chi2 per degree of freedom
    n_pulses: np.ndarray  # (E, 110) uint8: pulses above threshold in the window, in-time included
    waveforms: np.ndarray  # (E, 110, S) uint16
    prim_amp: np.ndarray  # (C, E) uint16
    #: the other particles near each trigger used by the pile-up fit (daq.waveform.Neighbours, padded)
    nb_count: np.ndarray  # (E,) uint8
    nb_dt_ns: np.ndarray  # (E, K) int32
    nb_amp: np.ndarray  # (E, K, C) uint16

    def __len__(self) -> int:
        return int(self.event_id.shape[0])

    @property
    def n_events(self) -> int:
        return len(self)

    @property
    def nbytes(self) -> int:
        """Bytes held by the batch's arrays."""
        return sum(int(a.nbytes) for a in vars(self).values() if isinstance(a, np.ndarray))

    def column(self, name: str) -> np.ndarray:
        """An event-table column by name (the SUM_NAMES are rows of ``sums``)."""
        if name in SUM_NAMES:
            return np.asarray(self.sums[SUM_NAMES.index(name)])
        return np.asarray(getattr(self, name))

    def take(self, sel: builtins.slice | np.ndarray) -> EventBatch:
        """A sub-batch (copies for index arrays, views for slices)."""
        kw = {}
        for f in fields(self):
            a = getattr(self, f.name)
            kw[f.name] = a[:, sel] if f.name in ("sums", "prim_amp") else a[sel]
        return EventBatch(**kw)

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        if len(batches) == 1:
            return batches[0]
        kw = {}
        for f in fields(EventBatch):
            axis = 1 if f.name in ("sums", "prim_amp") else 0
            kw[f.name] = np.concatenate([getattr(b, f.name) for b in batches], axis=axis)
        return EventBatch(**kw)

    @staticmethod
    def without_fit(n: int, n_prim: int) -> dict[str, np.ndarray]:
        """The pulse-fit fields of n events that were not fitted (chi2 0, no pulses, no neighbours): for
        batches made by hand (tests, benchmarks), ``EventBatch(..., **EventBatch.without_fit(n, c))``."""
        return {
            "chi2": np.zeros((n, detector.N_CHANNELS), np.float32),
            "n_pulses": np.zeros((n, detector.N_CHANNELS), np.uint8),
            "nb_count": np.zeros(n, np.uint8),
            "nb_dt_ns": np.zeros((n, MAX_NEIGHBOURS), np.int32),
            "nb_amp": np.zeros((n, MAX_NEIGHBOURS, n_prim), np.uint16),
        }

    @staticmethod
    def empty(n_prim: int, n_samples: int = detector.N_SAMPLES) -> EventBatch:
        n = detector.N_CHANNELS
        return EventBatch(
            event_id=np.zeros(0, np.uint64),
            slice=np.zeros(0, np.uint32),
            index=np.zeros(0, np.uint32),
            t_ns=np.zeros(0, np.int64),
            trigger_mask=np.zeros(0, np.uint32),
            missing_groups=np.zeros(0, np.uint8),
            sums=np.zeros((len(SUM_NAMES), 0), np.float32),
            energy=np.zeros((0, n), np.float32),
            amplitude=np.zeros((0, n), np.float32),
            peak_time=np.zeros((0, n), np.float32),
            pileup=np.zeros((0, n), bool),
            chi2=np.zeros((0, n), np.float32),
            n_pulses=np.zeros((0, n), np.uint8),
            waveforms=np.zeros((0, n, n_samples), np.uint16),
            prim_amp=np.zeros((n_prim, 0), np.uint16),
            nb_count=np.zeros(0, np.uint8),
            nb_dt_ns=np.zeros((0, MAX_NEIGHBOURS), np.int32),
            nb_amp=np.zeros((0, MAX_NEIGHBOURS, n_prim), np.uint16),
        )
