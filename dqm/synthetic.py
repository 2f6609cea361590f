"""A synthetic DAQ feed for exercising the DQM without a DAQ: EVENTS batches and SUMMARY documents.

Plausible, not physics-faithful (that is the simulator's job): electrons of the beam energy showering in
the beam cell, physics triggers along the ECAL+HCAL diagonal, pedestal-only random triggers, waveforms
with per-channel pedestals and noise. Faults (dead/hot channel, gain drift, pedestal jump, beam off,
lost fragments, missing source, early-spill saturation) can be switched on per spill. Used by tests,
benchmarks and demos; nothing in the live DQM depends on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from daq import detector, protocol
from daq.contract import BEAM, PHYSICS, RANDOM, S_TRIG, DaqState, SpillStatus
from daq.summary import ARRIVAL_TIME, DaqStatus, FrontEndStatus, Histogram, SpillSummary, Triggers
from dqm.batch import make_events

GAINS = detector.nominal_gains()  # ADC counts per MeV


@dataclass(frozen=True)
class Faults:
    dead: tuple[int, ...] = ()  # channel ids with no signal and no noise
    hot: tuple[int, ...] = ()  # channel ids firing in every event with large noise
    ecal_gain: float = 1.0  # gain factor of the ECAL (drift)
    pedestal_shift: float = 0.0  # ADC counts added to every pedestal
    beam_off: bool = False
    lost_fragments: int = 0  # fragment_timeout losses reported in the summary
    missing_group: int | None = None  # readout group whose waveforms are all zero
    early_saturation: bool = False


@dataclass(frozen=True)
class SynthConfig:
    beam_energy_gev: float = 100.0
    events_per_spill: int = 2000
    batch_size: int = 50
    eot_per_event: int = 400
    beam_fraction: float = 0.3
    random_fraction: float = 0.1
    spill_length_s: float = 4.8
    faults: Faults = field(default_factory=Faults)


class SyntheticDaq:
    """Makes the messages a DAQ would publish, deterministic for a seed."""

    def __init__(self, config: SynthConfig | None = None, seed: int = 1) -> None:
        self.config = config or SynthConfig()
        self.rng = np.random.default_rng(seed)
        n = detector.N_CHANNELS
        self.ped_even = 200.0 + self.rng.normal(0, 5, n)
        self.ped_odd = self.ped_even + self.rng.normal(0, 1, n)
        self.noise = np.full(n, 1.5)
        self.seq = 0
        self.event_id = 0
        self.eot_run = 0
        self.spills_run = 0

    def with_faults(self, **faults: Any) -> None:
        self.config = replace(self.config, faults=Faults(**faults))

    # ------------------------------------------------------------ events
    def energies(self, mask: np.ndarray) -> np.ndarray:
        """Per-channel energies (n, 110) GeV for events of the given trigger masks."""
        rng, cfg, f = self.rng, self.config, self.config.faults
        n = mask.shape[0]
        e = np.zeros((n, detector.N_CHANNELS), np.float32)
        beam_e = cfg.beam_energy_gev * rng.normal(1.0, 0.01, n)
        # every non-random event: an electron showering around the beam cell
        sig = (mask & (PHYSICS | BEAM)) != 0
        phys = (mask & PHYSICS) != 0
        e_cal: np.ndarray = np.where(phys, rng.uniform(0.05, 0.8, n), 1.0) * beam_e * rng.normal(1.0, 0.02, n)
        bx, by = detector.BEAM_CELL
        share = np.zeros((detector.ECAL_NY, detector.ECAL_NX))
        for x in range(detector.ECAL_NX):
            for y in range(detector.ECAL_NY):
                share[y, x] = np.exp(-1.6 * np.hypot(x - bx, y - by))
        share /= share.sum()
        prs_frac = np.asarray(rng.uniform(0.03, 0.06, n))
        ecal = (1 - prs_frac)[:, None] * e_cal[:, None] * share.ravel()[None] * cfg.faults.ecal_gain
        prs = prs_frac[:, None] * e_cal[:, None] * share.ravel()[None]
        e[:, detector.ECAL_IDS] = np.where(sig[:, None], ecal, 0)
        e[:, detector.PRS_IDS] = np.where(sig[:, None], prs, 0)
        # physics triggers: the rest mostly in the HCAL (diagonal), a few with nothing (signal-like)
        rest = np.where(phys & (rng.random(n) > 0.05), beam_e - e_cal, 0.0) * rng.normal(1, 0.1, n)
        hcal_share = np.full(detector.HCAL_IDS.size, 1.0 / detector.HCAL_IDS.size)
        e[:, detector.HCAL_IDS] = np.clip(rest, 0, None)[:, None] * hcal_share[None]
        e[:, detector.VETO_IDS] = np.where(phys[:, None] & (rest[:, None] > 5), 0.01, 0.0)
        e[:, detector.SRD_IDS] = np.where(sig[:, None], rng.uniform(0.01, 0.03, (n, 3)), 0.0)
        e[:, detector.COUNTER_IDS[:3]] = np.where(sig[:, None], rng.normal(3e-4, 3e-5, (n, 3)), 0.0)
        # noise (zero-suppressed below 2 sigma, as the DAQ does)
        noise = np.abs(rng.normal(0, 1.5, e.shape)) / GAINS / 1e3
        noise[noise < 3 / GAINS / 1e3] = 0
        e += noise.astype(np.float32)
        if f.dead:
            e[:, list(f.dead)] = 0
        if f.hot:
            e[:, list(f.hot)] += rng.uniform(2, 20, (n, len(f.hot))).astype(np.float32)
        if f.missing_group is not None:
            e[:, detector.GROUP_IDS[f.missing_group]] = 0
        return e

    def waveform(self, energy: np.ndarray) -> np.ndarray:
        """Raw samples (110, 32) for one event's channel energies."""
        f = self.config.faults
        ns = detector.N_SAMPLES
        ped = (
            np.where(np.arange(ns) % 2 == 0, self.ped_even[:, None], self.ped_odd[:, None]) + f.pedestal_shift
        )
        t = np.arange(ns) * detector.SAMPLE_PERIOD_NS
        shape = np.exp(-0.5 * ((t - 125.0) / 17.0) ** 2)
        amp = energy.astype(np.float64) * 1e3 * GAINS
        noise = self.noise.copy()
        if f.hot:
            noise[list(f.hot)] = 20.0
        wf = ped + amp[:, None] * shape[None] + self.rng.normal(0, 1, ped.shape) * noise[:, None]
        if f.dead:
            wf[list(f.dead)] = np.round(ped[list(f.dead)])
        if f.missing_group is not None:
            wf[detector.GROUP_IDS[f.missing_group]] = 0
        return np.clip(np.round(wf), 0, detector.ADC_MAX).astype(np.uint16)

    def batch(
        self, run: int, spill: int, t_ns: np.ndarray, n_skipped: int = 0, send_time_ns: int = 0
    ) -> protocol.Events:
        cfg = self.config
        n = t_ns.shape[0]
        u = self.rng.random(n)
        mask = np.where(
            u < cfg.random_fraction,
            RANDOM,
            np.where(u < cfg.random_fraction + cfg.beam_fraction, BEAM | S_TRIG, PHYSICS | S_TRIG),
        )
        mask = mask.astype(np.uint32)
        energy = self.energies(mask)
        if cfg.faults.early_saturation:
            early = (t_ns < 0.2 * cfg.spill_length_s * 1e9) & ((mask & RANDOM) == 0)
            cell = detector.ecal_id(*detector.BEAM_CELL)
            energy[early, cell] = np.maximum(energy[early, cell], 90.0)
        ids = np.arange(self.event_id, self.event_id + n, dtype=np.uint64)
        self.event_id += n
        msg = make_events(
            run=run,
            spill=spill,
            t_ns=t_ns,
            mask=mask,
            energy=energy,
            waveform=self.waveform(energy[-1]),
            event_id=ids,
            n_skipped=n_skipped,
            e_miss_beam_gev=cfg.beam_energy_gev,
            send_time_ns=send_time_ns,
            seq=self.seq,
        )
        self.seq += 1
        return msg

    def spill_events(self, run: int, spill: int) -> Iterator[protocol.Events]:
        """The EVENTS batches of one spill, in time order."""
        cfg = self.config
        if cfg.faults.beam_off:
            return
        length = cfg.spill_length_s * 1e9
        t = np.sort(self.rng.uniform(0, length, cfg.events_per_spill)).astype(np.int64)
        for i in range(0, t.size, cfg.batch_size):
            yield self.batch(run, spill, t[i : i + cfg.batch_size])

    # ------------------------------------------------------------ summaries
    def spill_summary(self, run: int, spill: int, n_events: int | None = None) -> SpillSummary:
        cfg, f = self.config, self.config.faults
        n = cfg.events_per_spill if n_events is None else n_events
        if f.beam_off:
            n = 0
        n_beam = n * cfg.eot_per_event
        random = int(n * cfg.random_fraction)
        beam = int(n * cfg.beam_fraction)
        physics = n - random - beam
        length_ns = cfg.spill_length_s * 1e9
        edges = np.linspace(0, length_ns, 101)
        counts = self.rng.poisson(max(n_beam, 0) / 100, 100).astype(float)
        if f.early_saturation:
            counts[:20] *= 3
        losses = {"fragment_timeout": f.lost_fragments} if f.lost_fragments else {}
        self.eot_run += n_beam
        self.spills_run += 1
        return SpillSummary(
            run=run,
            spill=spill,
            status=SpillStatus.INCOMPLETE if f.lost_fragments else SpillStatus.OK,
            file=f"run{run:06d}_spill{spill:05d}.h5",
            n_beam=n_beam,
            n_particles=int(n_beam * 1.01),
            triggers=Triggers(physics=physics, beam=beam, random=random),
            n_accepted=n,
            n_events_written=n - f.lost_fragments,
            dead_time_lost=n // 100,
            dead_time_fraction=0.01,
            losses=losses,
            t_end_ns=int(length_ns),
            spill_length_s=cfg.spill_length_s,
            write_seconds=0.05,
            write_mb=n * 0.007,
            free_disk_bytes=500_000_000_000,
            calibration_id="nominal",
            histograms={ARRIVAL_TIME: Histogram(tuple(edges.tolist()), tuple(counts.tolist()))},
        )

    def summary_message(self, run: int, spill: int) -> protocol.Summary:
        msg = protocol.Summary.of(
            protocol.Summary.KIND_SPILL,
            self.spill_summary(run, spill).to_json(),
            run=run,
            spill=spill,
            seq=self.seq,
        )
        self.seq += 1
        return msg

    def status_message(
        self, run: int, spill: int, state: str = "running", uptime_s: float = 0.0, frontend_age_s: float = 0.2
    ) -> protocol.Summary:
        doc = DaqStatus(
            state=DaqState(state),
            run=run,
            spill=spill,
            uptime_s=uptime_s,
            frontends={"0": FrontEndStatus(last_seen_s=frontend_age_s, state="running")},
            run_frontends=("0",),
            eot_run=self.eot_run,
            events_run=self.event_id,
            spills_run=self.spills_run,
            free_disk_bytes=500_000_000_000,
            data_dir="synthetic",
        )
        msg = protocol.Summary.of(
            protocol.Summary.KIND_STATUS, doc.to_json(), run=run, spill=spill, seq=self.seq
        )
        self.seq += 1
        return msg

    def spill_messages(self, run: int, spill: int) -> Iterator[protocol.Message]:
        """EVENTS batches of a spill followed by its spill summary."""
        yield from self.spill_events(run, spill)
        yield self.summary_message(run, spill)


def publish(
    endpoint: str,
    spills: int = 0,
    run: int = 1,
    spill_period_s: float = 1.0,
    batches_per_s: float = 50.0,
    config: SynthConfig | None = None,
    seed: int = 1,
    stop: Any = None,
) -> int:
    """Publish a synthetic run on an XPUB socket (like the DAQ): EVENTS batches paced in time, a spill
    summary at each spill end, a status document every second. ``spills=0`` runs until ``stop`` is set
    (a ``threading.Event``). Returns the number of spills published."""
    import time

    import zmq

    daq = SyntheticDaq(config, seed)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    skipped = 0
    start = time.monotonic()
    next_status = start

    def send(msg: protocol.Message) -> bool:
        try:
            sock.send_multipart(protocol.encode(msg), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def status(spill: int, state: str) -> None:
        nonlocal next_status
        if time.monotonic() >= next_status:
            send(daq.status_message(run, spill, state, time.monotonic() - start))
            next_status += 1.0

    done = 0
    spill = 0
    try:
        while (spills == 0 or done < spills) and not (stop is not None and stop.is_set()):
            spill += 1
            t0 = time.monotonic()
            batches = list(daq.spill_events(run, spill))
            for i, batch in enumerate(batches):
                due = t0 + i / batches_per_s
                while time.monotonic() < due:
                    status(spill, "in_spill")
                    time.sleep(min(0.005, max(0.0, due - time.monotonic())))
                msg = replace(batch, n_skipped=skipped, send_time_ns=time.time_ns())
                skipped = 0 if send(msg) else skipped + batch.n_events
            send(daq.summary_message(run, spill))
            done += 1
            while time.monotonic() < t0 + spill_period_s:
                status(spill, "running")
                time.sleep(0.01)
    finally:
        sock.close(0)
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m dqm.synthetic --endpoint tcp://127.0.0.1:5556``: a stand-in DAQ feed."""
    import argparse
    import signal
    import threading

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    p.add_argument("--spills", type=int, default=0)
    p.add_argument("--run", type=int, default=1)
    p.add_argument("--spill-period", type=float, default=1.0)
    p.add_argument("--events-per-spill", type=int, default=1000)
    p.add_argument("--batches-per-s", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cfg = SynthConfig(events_per_spill=a.events_per_spill, spill_length_s=0.5 * a.spill_period)
    publish(a.endpoint, a.spills, a.run, a.spill_period, a.batches_per_s, cfg, a.seed, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
