"""Waveform reconstruction (the multi-pulse fit) alone: CPU per event and per channel fitted, one core.

Events are what the DAQ reconstructs at a given beam rate: the simulator's front-end (in this process,
no sockets) makes slices of primitives and the readout windows of the trigger's accepted particles, with
pile-up; the neighbours of every trigger come from the slice's arrival times and primitives, as in the
DAQ (``daq.waveform.find_neighbours``). Each batch is one slice's readout (~100 events at 2 MHz), timed
with ``time.thread_time`` (CPU of this thread, so the figures hold while other processes run; the best
of several rounds). "Fitted" channels are the windows that are not quiet (a pulse, pile-up or
saturation; the rest take a fixed linear filter). Three cases of the channels' time offsets:
``calibrated`` (the constants' own: the fit places the templates), ``learned`` (nominal constants, the
run's time tracker learning the offsets from the first isolated pulses, as the DAQ does: the timed
batches start with a fresh tracker, so the learning is included), ``fitted`` (nominal constants, every
window's time shift fitted: ``reco.time_track_pulses = 0``).

    python benchmarks/bench_reco.py                      # 0.2, 2 and 4 MHz
    python benchmarks/bench_reco.py --rates 2e6 --slices 40
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from daq import detector, protocol, pulse_fit
from daq.trigger import PrimitiveBatch, Trigger, TriggerConfig
from daq.waveform import (
    ChannelTracker,
    RecoConfig,
    event_sums,
    find_neighbours,
    neighbour_range_ns,
    reconstruct,
)


def readout_batches(rate: float, n_slices: int, seed: int) -> tuple[list[tuple[np.ndarray, ...]], object]:
    """One slice's readout per batch: (waveforms, trigger times, neighbours); and the electronics truth."""
    from calibration.constants import nominal
    from simulator.config import BeamConfig, SimConfig
    from simulator.frontend import FrontEnd

    cfg = SimConfig(seed=seed, beam=dataclasses.replace(BeamConfig(), rate_hz=rate))
    fe = FrontEnd(cfg)
    rs = fe.run_start()
    trig = Trigger(TriggerConfig(), nominal(), rs.prim_channels)
    before, after = neighbour_range_ns(RecoConfig(), detector.SAMPLE_PERIOD_NS, detector.N_SAMPLES)
    fe.begin_spill(1, 0)
    out = []
    for sid in range(n_slices):
        msg = fe.slice_message(1, sid)
        d = trig.evaluate(PrimitiveBatch.from_slice(msg))
        req = protocol.ReadoutRequest(
            run=1, spill=1, slice_id=sid, n_events=d.index.size, index=d.index, t_ns=d.t_ns
        )
        wf = np.zeros((d.index.size, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        for f in fe.answer(req):
            if f.waveforms is not None:
                wf[:, detector.GROUP_SLICES[f.source], :] = f.waveforms
        own = np.where(d.index == protocol.NO_PARTICLE, -1, d.index.astype(np.int64))
        nb, _ = find_neighbours(d.t_ns, own, msg.t_ns, msg.amp, rs.prim_channels, before, after)
        out.append((wf, d.t_ns.copy(), nb))
    return out, fe.electronics


def fitted_channels(wf: np.ndarray, noise: np.ndarray, quiet_sigma: float) -> int:
    """Windows the fit does not treat as quiet (the kernel's own criterion)."""
    w = wf.astype(np.int32)
    spread = np.maximum(np.ptp(w[:, :, 0::2], axis=2), np.ptp(w[:, :, 1::2], axis=2))
    return int(((spread >= quiet_sigma * noise) | (w.max(axis=2) >= detector.ADC_MAX)).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="2e5,2e6,4e6", help="beam rates, Hz, comma-separated")
    ap.add_argument("--slices", type=int, default=25, help="slices of 20 ms per rate (default 25)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, the best counts (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pulse_fit.warm_up()
    print(f"kernel ready (compiled or loaded from numba's cache) in {time.perf_counter() - t0:.2f} s")
    cfg = RecoConfig()
    print(f"CPU of one thread, best of {args.rounds} rounds; batches of one 20 ms slice's readout")
    print(
        f"{'rate':>6} {'timing':>10} {'events':>7} {'ev/batch':>8} {'fitted/ev':>9} {'us/event':>9} "
        f"{'us/fitted':>9} {'CPU at 5 kHz':>12} {'sums us/ev':>10}"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        batches, el = readout_batches(rate, args.slices, args.seed)
        n_ev = sum(b[0].shape[0] for b in batches)
        noise = el.noise
        fitted = sum(fitted_channels(b[0], noise, cfg.quiet_sigma) for b in batches)
        for label, t_off, t_err, conf in (
            ("calibrated", el.time_offset_ns, np.full(detector.N_CHANNELS, 0.05), cfg),
            ("learned", None, None, cfg),
            ("fitted", None, None, dataclasses.replace(cfg, time_track_pulses=0)),
        ):
            best = float("inf")
            energy = None
            for _ in range(args.rounds):
                tracker = ChannelTracker.new()
                t = time.thread_time()
                for wf, trig_t, nb in batches:
                    r = reconstruct(
                        wf,
                        el.gain,
                        noise=noise,
                        time_offset_ns=t_off,
                        time_offset_error_ns=t_err,
                        config=conf,
                        trigger_ns=trig_t,
                        neighbours=nb,
                        tracker=tracker,
                    )
                    energy = r.energy
                best = min(best, time.thread_time() - t)
            assert energy is not None
            ts = time.thread_time()
            for _ in range(20):
                event_sums(energy, cfg.beam_energy_gev)
            sums_us = (time.thread_time() - ts) / 20 / energy.shape[0] * 1e6
            us = best / n_ev * 1e6
            print(
                f"{rate / 1e6:>5.1f}M {label:>10} {n_ev:>7} {n_ev / len(batches):>8.0f} {fitted / n_ev:>9.1f} "
                f"{us:>9.1f} {best / max(fitted, 1) * 1e6:>9.2f} {us * 5e3 / 1e6:>11.1%} {sums_us:>10.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
