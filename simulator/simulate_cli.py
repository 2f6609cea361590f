"""``na64 simulate``: run the simulated front-end against a DAQ (connects a DEALER to ``--endpoint``)."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

from daq import config_loader, detector
from daq.curve import add_client_options, client_keys_of
from daq.errors import ConfigError, UserError
from simulator.config import SimConfig

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulated NA64 front-end: beam, detector, electronics, wire protocol",
        description="Stream trigger primitives of every beam particle to a DAQ, answer its readout requests "
        "with waveforms, mark spills and the run, send heartbeats. Settings come from defaults, then "
        "--config FILE, then --set KEY=VALUE, then the flags below. See docs/simulator.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="DAQ ROUTER endpoint to connect to")
    add_client_options(p, "front-end")
    p.add_argument("--rate", type=float, default=None, help="beam rate in spill, Hz (default 2e6)")
    p.add_argument(
        "--spills",
        type=int,
        default=None,
        help="number of spills, then RUN_STOP and exit (default: until SIGINT/SIGTERM)",
    )
    p.add_argument("--spill-length", type=float, default=None, help="spill length, s (default 4.8)")
    p.add_argument("--spill-period", type=float, default=None, help="spill period, s (default 10.8)")
    p.add_argument(
        "--pace",
        choices=["realtime", "max"],
        default=None,
        help="realtime: slices leave on wall-clock deadlines; max: as fast as the DAQ reads "
        "(default realtime)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default 1): the beam depends on (seed, run), the detector truth (gains, "
        "pedestals, noise, timing) on the seed only",
    )
    p.add_argument("--run", dest="run_number", type=int, default=None, help="run number (default 1)")
    p.add_argument(
        "--slice-ms", type=float, default=None, help="beam time per SLICE message, ms (default 20)"
    )
    p.add_argument(
        "--aim-cell",
        default=None,
        metavar="X,Y",
        help="aim the beam at ECAL cell (X, Y) (x 0..4, y 0..5; the ECAL moves, the counters stay on the "
        "beam; the trigger block stays around beam.beam_cell) (default: the beam cell 2,3)",
    )
    p.add_argument(
        "--scan-cells",
        default=None,
        metavar="all|X,Y;X,Y;...",
        help="calibration scan: the beam visits these ECAL cells, one per spill in turn (--scan-mode "
        "spill) or a random one per particle (--scan-mode particle); 'all' = all 30 cells",
    )
    p.add_argument(
        "--scan-mode",
        choices=["spill", "particle"],
        default=None,
        help="how --scan-cells are visited (default spill)",
    )
    p.add_argument(
        "--hcal-cells",
        choices=["central", "uniform"],
        default=None,
        help="HCAL cell crossed by muons and hit by hadron showers (same in all 4 modules): the central "
        "one, or uniform over the 9 (muon halo / HCAL scan, for the MIP calibration of every cell) "
        "(default central)",
    )
    p.add_argument(
        "--signal",
        default=None,
        metavar="MODEL:MASS_MEV:COUPLING",
        help="inject a Z' of U(1)_{B-L} type, e.g. B-L:16.7:3e-4 (models: B-L, B-3L_e, B-2L_e-L_mu, "
        "B-L_e-2L_mu): the number made per electron on target follows from the model, mass and coupling "
        "g (bremsstrahlung and resonant annihilation in the ECAL, ~g^2 Q_e^2), each Z' decays by its "
        "partial widths (invisibly, or to e+e-, mu+mu-, hadrons where its decay length lets it)",
    )
    p.add_argument(
        "--signal-boost",
        type=float,
        default=None,
        metavar="X",
        help="multiply the physical Z' yield by X so that a short run shows signal; the file and the "
        "truth record both (default 1)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[:ARGS]",
        help="inject a fault (repeatable): dead:CH, noisy:CH[:RMS], hot:CH[:PROB], "
        "gain_drift[:TARGET[:PCT_PER_SPILL]], pedestal_jump[:TARGET[:COUNTS[:SPILL]]], "
        "no_answer[:GROUP[:SPILL[:T_S]]], empty_fragment[:GROUP[:SPILL[:T_S]]], "
        "spike[:FACTOR[:LENGTH_S[:SAT[:SPILL]]]], stall[:SPILL[:AT_S[:DURATION_S[:restart]]]], "
        "beam_off[:SPILL]",
    )
    p.add_argument("--config", default=None, metavar="FILE", help="TOML config file (tables as in docs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override one config key, e.g. --set beam.profile="spike" (repeatable)',
    )
    p.add_argument("--truth", default=None, metavar="FILE", help="write truth of read-out particles to HDF5")
    p.set_defaults(run=run)


def parse_signal(text: str) -> dict[str, Any]:
    """``MODEL:MASS_MEV:COUPLING`` -> signal config keys."""
    parts = text.split(":")
    if len(parts) == 4:
        raise ConfigError(
            f"--signal {text!r}: the fourth field (a rate per 1e9 EOT) was removed: the Z' yield now "
            "follows from the model, mass and coupling; give MODEL:MASS_MEV:COUPLING and scale the yield "
            "with --signal-boost X"
        )
    if len(parts) != 3:
        raise ConfigError(f"--signal {text!r}: expected MODEL:MASS_MEV:COUPLING, e.g. B-L:16.7:3e-4")
    try:
        mass, coupling = (float(v) for v in parts[1:])
    except ValueError:
        raise ConfigError(f"--signal {text!r}: mass and coupling must be numbers") from None
    return {"enabled": True, "model": parts[0], "mass_mev": mass, "coupling": coupling}


def check_signal(config: SimConfig) -> None:
    """A Z' that cannot be made, or a boost that turns the beam into signal, is a user error."""
    if not config.signal.enabled:
        return
    from simulator.zprime_signal import MAX_PER_ELECTRON, for_config

    sig = config.signal
    signal = for_config(config)
    if signal.produced_per_eot <= 0:
        raise ConfigError(
            f"--signal {sig.model}:{sig.mass_mev:g}:{sig.coupling:g}: no Z' of {sig.mass_mev:g} MeV can be "
            f"made above signal.min_energy_gev={sig.min_energy_gev:g} by a {config.beam.energy_gev:g} GeV beam"
        )
    injected = signal.produced_per_eot * sig.boost
    if injected > MAX_PER_ELECTRON:
        raise ConfigError(
            f"--signal-boost {sig.boost:g}: {injected:.3g} Z' per electron (physical yield "
            f"{signal.produced_per_eot:.3g} per EOT); the boost may make at most {MAX_PER_ELECTRON}"
        )


def parse_cells(text: str, flag: str) -> list[list[int]]:
    """``all`` or ``X,Y;X,Y;...`` -> [[x, y], ...] (ECAL cells; ranges checked by the config)."""
    if text.strip().lower() == "all":
        return [[x, y] for y in range(detector.ECAL_NY) for x in range(detector.ECAL_NX)]
    cells = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            x, y = (int(v) for v in part.split(","))
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected X,Y cells separated by ';' (or 'all')") from None
        cells.append([x, y])
    if not cells:
        raise ConfigError(f"{flag} {text!r}: no cell given")
    return cells


def build_config(args: argparse.Namespace) -> SimConfig:
    """Defaults <- --config <- --set <- flags."""
    overrides: dict[str, Any] = {}
    for text in args.set:
        key, value = config_loader.parse_assignment(text)
        overrides[key] = value
    flag_keys = {
        "rate": "beam.rate_hz",
        "spill_length": "beam.spill_length_s",
        "spill_period": "beam.spill_period_s",
        "pace": "readout.pace",
        "seed": "seed",
        "run_number": "run",
        "slice_ms": "readout.slice_ms",
    }
    for attr, key in flag_keys.items():
        value = getattr(args, attr)
        if value is not None:
            overrides[key] = value
    if args.aim_cell:
        cells = parse_cells(args.aim_cell, "--aim-cell")
        if len(cells) != 1:
            raise ConfigError(f"--aim-cell {args.aim_cell!r}: give one cell X,Y")
        overrides["beam.aim_cell"] = cells[0]
    if args.scan_cells:
        overrides["beam.scan_cells"] = parse_cells(args.scan_cells, "--scan-cells")
    if args.scan_mode:
        overrides["beam.scan_mode"] = args.scan_mode
    if args.hcal_cells:
        overrides["hcal.track_cells"] = args.hcal_cells
    if args.signal:
        for k, v in parse_signal(args.signal).items():
            overrides[f"signal.{k}"] = v
    if args.signal_boost is not None:
        overrides["signal.boost"] = args.signal_boost
    data = config_loader.load_toml(args.config) if args.config else {}
    if args.fault:
        overrides["faults"] = [*data.get("faults", []), *args.fault]
    config = config_loader.from_dict(SimConfig, config_loader.with_overrides(data, overrides))
    if args.signal_boost is not None and not config.signal.enabled:
        raise ConfigError("--signal-boost needs a signal (--signal MODEL:MASS_MEV:COUPLING)")
    check_signal(config)
    return config


def run(args: argparse.Namespace) -> int:
    if args.spills is not None and args.spills < 0:
        raise UserError(f"--spills must be >= 0 (got {args.spills})")
    if args.truth:
        config_loader.output_file(args.truth, "--truth")  # before the run, not after it
    config = build_config(args)
    stopping: list[str] = []
    holder: list[Any] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signal.Signals(signum).name)
        log.info("%s: ending the run cleanly", stopping[-1])
        for service in holder:
            service.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    writer = None
    try:
        from simulator.service import Service, tune_allocator  # heavy imports only when running

        tune_allocator()
        service = Service(config, args.endpoint, n_spills=args.spills, client_keys=client_keys_of(args))
        holder.append(service)
        _log_signal(service.fe.signal_info(), config)
        if stopping:
            service.request_stop()
        if args.truth:
            writer = _truth_writer(args.truth, service, config)
        return service.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()


def _log_signal(info: dict[str, Any] | None, config: SimConfig) -> None:
    if info is None:
        return
    per_spill = config.beam.rate_hz * config.beam.spill_length_s
    log.info(
        "Z' %s m=%g MeV g=%g: %.3g per EOT above %g GeV (bremsstrahlung %.3g, resonant %.3g), "
        "BR(invisible) %.3f, with missing energy %.3g per EOT; boost %g -> %.3g per EOT, ~%.3g per spill",
        info["model"],
        info["mass_mev"],
        info["coupling"],
        info["produced_per_eot"],
        info["min_energy_gev"],
        info["brems_per_eot"],
        info["resonant_per_eot"],
        info["br_invisible"],
        info["missing_per_eot"],
        info["boost"],
        info["injected_per_eot"],
        info["injected_per_eot"] * per_spill,
    )


def _truth_writer(path: str, service: Any, config: SimConfig) -> Any:
    from simulator.truth import TruthWriter

    fe = service.fe
    writer = TruthWriter(path, fe.info(), fe.electronics)
    fe.truth_sink = writer.add
    fe.zprime_sink = writer.add_zprime

    def spill_truth(spill: int, counters: dict[str, float]) -> None:
        start = fe.electronics_state(spill, 0.0)
        end = fe.electronics_state(spill, config.beam.spill_length_s)
        writer.end_spill(spill, counters, start, end)

    service.on_spill_end = spill_truth
    return writer
