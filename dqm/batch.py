"""The DQM's view of one EVENTS message: validated structure-of-arrays columns (pure, no I/O).

Both the live feed (``daq.protocol.Events`` off the DAQ's PUB socket) and recorded spill files
(converted to ``Events`` by :mod:`dqm.sources`) arrive here, so online and offline filling share one path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from daq import detector, protocol
from dqm.errors import DqmError

#: row order of Events.sums
SUM_ROWS = {name: i for i, name in enumerate(protocol.Events.SUMS)}


class BatchError(DqmError):
    """An EVENTS message is well-formed on the wire but unusable by the DQM (e.g. wrong channel count)."""


@dataclass(frozen=True, eq=False)
class MonitoredEvents:
    """The built events of one EVENTS message as the DQM reads them: validated columns (views of the
    message's arrays; not ``daq.batch.EventBatch``, which the DAQ writes). Energies in GeV, times in ns
    since spill start."""

    run: int
    spill: int
    send_time_ns: int
    n_skipped: int
    event_id: NDArray[np.uint64]
    t_ns: NDArray[np.int64]
    mask: NDArray[np.uint32]
    e_prs: NDArray[np.float32]
    e_ecal: NDArray[np.float32]
    e_hcal: NDArray[np.float32]
    e_veto: NDArray[np.float32]
    e_srd: NDArray[np.float32]
    energy: NDArray[np.float32]  # (n, N_CHANNELS)
    #: (W, N_CHANNELS, n_samples) sampled waveforms (the live DAQ sends its batch's last event: W = 1;
    #: files send one per ``dqm.sources.FILE_BATCH`` events), or None
    waveforms: NDArray[np.uint16] | None

    @property
    def n(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def waveform(self) -> NDArray[np.uint16] | None:
        """(N_CHANNELS, n_samples) of the batch's last sampled event (the waveform view), or None."""
        return None if self.waveforms is None else self.waveforms[-1]

    @classmethod
    def from_events(cls, msg: protocol.Events) -> MonitoredEvents:
        """Validate and wrap a decoded EVENTS message (arrays are not copied)."""
        n = msg.n_events
        if msg.energy.shape != (n, detector.N_CHANNELS):
            raise BatchError(
                f"EVENTS run {msg.run} spill {msg.spill}: energy has shape {msg.energy.shape}, "
                f"expected ({n}, {detector.N_CHANNELS})"
            )
        wf: NDArray[np.uint16] | None = None
        if msg.waveforms.shape[0] >= 1:
            if msg.waveforms.shape[1] != detector.N_CHANNELS:
                raise BatchError(
                    f"EVENTS run {msg.run} spill {msg.spill}: waveforms have {msg.waveforms.shape[1]} "
                    f"channels, expected {detector.N_CHANNELS}"
                )
            wf = msg.waveforms
        s = msg.sums
        return cls(
            run=msg.run,
            spill=msg.spill,
            send_time_ns=msg.send_time_ns,
            n_skipped=msg.n_skipped,
            event_id=msg.event_id,
            t_ns=msg.t_ns,
            mask=msg.trigger_mask,
            e_prs=s[SUM_ROWS["e_prs"]],
            e_ecal=s[SUM_ROWS["e_ecal"]],
            e_hcal=s[SUM_ROWS["e_hcal"]],
            e_veto=s[SUM_ROWS["e_veto"]],
            e_srd=s[SUM_ROWS["e_srd"]],
            energy=msg.energy,
            waveforms=wf,
        )


def make_events(
    *,
    run: int,
    spill: int,
    t_ns: np.ndarray,
    mask: np.ndarray,
    energy: np.ndarray,
    waveform: np.ndarray | None = None,
    event_id: np.ndarray | None = None,
    n_skipped: int = 0,
    e_miss_beam_gev: float = 100.0,
    send_time_ns: int = 0,
    seq: int = 0,
) -> protocol.Events:
    """Build an EVENTS message from per-channel energies (sums computed from the channel map).

    Used by the offline file source and by synthetic feeds; ``waveform`` is (N_CHANNELS, samples).
    """
    energy = np.ascontiguousarray(energy, dtype=np.float32)
    n = energy.shape[0]
    sums = np.empty((len(protocol.Events.SUMS), n), np.float32)
    calo = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])
    for row, ids in (
        ("e_prs", detector.PRS_IDS),
        ("e_ecal", calo),  # the whole calorimeter, ECAL + PRS (docs/hdf5-format.md)
        ("e_hcal", detector.HCAL_IDS),
        ("e_srd", detector.SRD_IDS),
    ):
        sums[SUM_ROWS[row]] = energy[:, ids].sum(axis=1)
    veto = energy[:, detector.VETO_IDS]
    sums[SUM_ROWS["e_veto"]] = np.sqrt(np.clip(veto[:, 0::2] * veto[:, 1::2], 0, None)).sum(axis=1)
    sums[SUM_ROWS["e_miss"]] = e_miss_beam_gev - sums[SUM_ROWS["e_ecal"]]
    wf = (
        np.zeros((0, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        if waveform is None
        else np.ascontiguousarray(waveform, dtype=np.uint16)[None]
    )
    return protocol.Events(
        run=run,
        spill=spill,
        seq=seq,
        send_time_ns=send_time_ns,
        n_events=n,
        n_skipped=n_skipped,
        event_id=np.arange(n, dtype=np.uint64) if event_id is None else np.asarray(event_id, np.uint64),
        t_ns=np.asarray(t_ns, np.int64),
        trigger_mask=np.asarray(mask, np.uint32),
        sums=sums,
        energy=energy,
        peak_time=np.zeros_like(energy),
        waveforms=wf,
    )
