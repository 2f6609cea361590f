"""``na64 calibrate``: derive calibration constants from recorded spill files, and show them.

    na64 calibrate pedestals FILES... --out peds.json
    na64 calibrate gains     FILES... --base peds.json --out gains.json
    na64 calibrate mip       FILES... --base gains.json --out mip.json
    na64 calibrate timing    FILES... --base mip.json --out cal.json --run-range 12:
    na64 calibrate show cal.json [--channels ECAL] [--json]
    na64 calibrate compare old.json new.json

Each derivation starts from ``--base`` (default: nominal constants), replaces only what it determined,
and records its inputs, method and results in the provenance. This module is the shell: it reads spill
files through :mod:`daq.files` and hands arrays to the pure fits of the ``calibration`` package.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration import constants as cc
from calibration import containment, gain_campaign, spectra, timing
from calibration import gains as gain_fit
from calibration import pedestals as ped_fit
from calibration.config import CalibrationConfig, as_dict
from calibration.constants import CalibrationError, Constants
from daq import __version__, config_loader, detector, waveform
from daq.contract import BEAM as BEAM_BIT
from daq.contract import PHYSICS as PHYSICS_BIT
from daq.contract import RANDOM as RANDOM_BIT
from daq.waveform import RecoConfig

log = logging.getLogger(__name__)

CALO_IDS = np.concatenate([detector.ECAL_IDS, detector.PRS_IDS])
BEAM_COUNTER_IDS = np.array([detector.counter_id(n) for n in detector.BEAM_COUNTERS], np.intp)
HOLE_VETO_IDS = np.array([detector.counter_id(n) for n in detector.VETO_COUNTERS], np.intp)
READ_CHUNK = 2000  # events per read of waveforms
COUNTER_MIN_COUNTS = 50.0  # a beam counter fired (MIP ~300 counts at nominal gain)
DEFAULT_ZERO_SUPPRESS = 5.0  # daq.waveform.RecoConfig default, if a file does not record its own


# ============================================================================ argument parsing
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="derive calibration constants from spill files (pedestals, gains, MIP peaks, timing); show them",
        description="Derive calibration constants from recorded spill files, or show/compare constants "
        "files. Derivations start from --base and replace only the constants they determine.",
    )
    sub = p.add_subparsers(dest="calibrate_command", metavar="STEP", required=True)
    steps = (
        (
            "pedestals",
            "pedestals (even/odd), noise and channel status from random-trigger windows",
            _pedestals,
        ),
        ("gains", "ECAL/PRS gains from beam-trigger electrons (least squares), SRD and counters", _gains),
        ("mip", "HCAL and VETO gains from the MIP peak of muon-like beam-trigger events", _mip),
        ("timing", "per-channel time offsets relative to the beam counters", _timing),
    )
    for name, text, func in steps:
        sp = sub.add_parser(
            name,
            help=text,
            description=text[:1].upper() + text[1:] + ".",  # not capitalize(): it lowers "ECAL"
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        sp.add_argument("files", nargs="+", metavar="FILE", help="spill files or directories of them")
        sp.add_argument("--out", required=True, metavar="FILE", help="constants file to write (JSON)")
        sp.add_argument("--base", metavar="FILE", help="constants to start from (default: nominal constants)")
        sp.add_argument(
            "--version",
            dest="cal_version",
            metavar="ID",
            help="version id of the new set (default: cal-STEP-runNNNNNN-TIMESTAMP)",
        )
        sp.add_argument(
            "--run-range",
            metavar="A:B",
            help="runs the new set is valid for: A:B, A: (open-ended) or A (default: first input run:)",
        )
        sp.add_argument(
            "--config", metavar="FILE", help="TOML with [reference], [pedestals], [gains], [mip], [timing]"
        )
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set gains.window=2.5 (repeatable)",
        )
        sp.add_argument(
            "--max-events",
            type=int,
            default=0,
            metavar="N",
            help="stop reading after N selected events (0: all)",
        )
        if name in ("gains", "mip", "timing"):
            group = sp.add_mutually_exclusive_group()
            group.add_argument(
                "--workers",
                type=int,
                metavar="N",
                help="read the files in N dask worker processes (a LocalCluster on 127.0.0.1); default: "
                "in this process",
            )
            group.add_argument(
                "--scheduler",
                metavar="ADDR",
                help="read the files on an existing dask cluster (tcp://host:8786); the files must be "
                "visible to its workers under the same paths",
            )
        if name in ("gains", "mip"):
            sp.add_argument(
                "--beam-energy",
                type=float,
                metavar="GEV",
                help="beam energy in GeV (reference.beam_energy_gev, default 100)",
            )
        if name == "timing":
            sp.add_argument(
                "--recorded-with",
                metavar="FILE",
                help="constants the files were recorded with (default: --base or nominal, if their id matches)",
            )
        if name == "gains":
            sp.add_argument(
                "--containment",
                type=float,
                metavar="F",
                help="one shower containment in ECAL+PRS for every cell (reference.containment; default: "
                "per cell, from the containment reference shipped with the detector model)",
            )
            sp.add_argument(
                "--containment-reference",
                metavar="FILE",
                help="another containment reference (reference.containment_reference; made by "
                "tools/make_containment_reference.py)",
            )
        sp.set_defaults(run=func)

    sp = sub.add_parser(
        "show",
        help="print a constants file",
        description="Print a summary of a constants file per detector, optionally every channel.",
    )
    sp.add_argument("file", metavar="FILE")
    sp.add_argument(
        "--channels",
        nargs="?",
        const="",
        metavar="PREFIX",
        help="also list channels (those whose name starts with PREFIX, e.g. ECAL or HCAL0)",
    )
    sp.add_argument("--json", action="store_true", help="machine-readable summary")
    sp.set_defaults(run=_show)

    sp = sub.add_parser(
        "compare",
        help="compare two constants files",
        description="Per-detector differences of gains (relative), pedestals and time offsets.",
    )
    sp.add_argument("old", metavar="OLD")
    sp.add_argument("new", metavar="NEW")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(run=_compare)


def _parallel(args: argparse.Namespace) -> Parallel:
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 0:
        raise CalibrationError(f"--workers must be >= 0 (got {workers})")
    return Parallel(workers=workers, scheduler=getattr(args, "scheduler", None))


def _config(args: argparse.Namespace) -> CalibrationConfig:
    if getattr(args, "out", None) is not None:
        config_loader.output_file(args.out, "--out")  # before the fit, not after it
    data: dict[str, Any] = config_loader.load_toml(args.config) if args.config else {}
    overrides = dict(config_loader.parse_assignment(a) for a in args.overrides)
    if getattr(args, "beam_energy", None) is not None:
        overrides["reference.beam_energy_gev"] = args.beam_energy
    if getattr(args, "containment", None) is not None:
        overrides["reference.containment"] = args.containment
    if getattr(args, "containment_reference", None) is not None:
        overrides["reference.containment_reference"] = args.containment_reference
    if overrides:
        data = config_loader.with_overrides(data, overrides)
    return config_loader.from_dict(CalibrationConfig, data)


def parse_run_range(text: str) -> tuple[int, int | None]:
    """``A:B`` -> (A, B); ``A:`` -> (A, None); ``A`` -> (A, A)."""
    first, sep, last = text.partition(":")
    try:
        a = int(first)
        b = (None if not last.strip() else int(last)) if sep else a
    except ValueError:
        raise CalibrationError(f"--run-range {text!r}: expected A:B, A: or A with run numbers") from None
    if a < 0 or (b is not None and b < a):
        raise CalibrationError(f"--run-range {text!r}: empty or negative range")
    return a, b


# ============================================================================ reading spill files
class Inputs:
    """The spill files of a derivation, and what was read from them."""

    def __init__(self, paths: Sequence[str], step: str) -> None:
        from daq.files import list_spill_files

        self.step = step
        self.files = list_spill_files(paths)
        if not self.files:
            raise CalibrationError(f"calibrate {step}: no spill files in {', '.join(paths)}")
        self.runs: set[int] = set()
        self.used: list[str] = []
        self.calibration_ids: set[str] = set()
        self.skipped: list[str] = []

    def read(
        self,
        bits: int,
        fields: Callable[[Any, np.ndarray], dict[str, np.ndarray]],
        max_events: int = 0,
        what: str = "events",
        parallel: Parallel | None = None,
    ) -> dict[str, np.ndarray]:
        """Concatenate ``fields(spill_file, index)`` over the events with any of ``bits`` and complete data.

        With ``parallel`` (``--workers`` / ``--scheduler``) every file is read in a dask worker
        (:func:`daq.offline.map_spills`; ``fields`` must then be a module-level function or a
        ``functools.partial`` of one) and the per-spill arrays are concatenated in file order, truncated to
        ``max_events``: the same arrays as the serial read. Unreadable files are skipped there (logged and
        counted in the provenance).
        """
        chunks: dict[str, list[np.ndarray]] = {}
        total = 0
        if parallel is not None and parallel.active:
            from daq.offline import map_spills

            task = functools.partial(read_spill, bits=bits, fields=fields, max_events=max_events)
            out = map_spills(task, self.files, scheduler=parallel.scheduler, workers=parallel.workers)
            for s in out.skipped:
                self.skipped.append(s.reason)
            log.info(
                "calibrate %s: %d files read on %d dask workers in %.1f s (%d skipped)",
                self.step,
                len(out.files),
                out.workers,
                out.seconds,
                out.n_skipped,
            )
            spills = list(zip(out.files, out.results, strict=True))
        else:
            spills = []
            for path in self.files:
                spill = read_spill(path, bits, fields, max(max_events - total, 0) if max_events else 0)
                spills.append((path, spill))
                total += spill.n
                if max_events and total >= max_events:
                    log.info("calibrate %s: --max-events %d reached", self.step, max_events)
                    break
            total = 0
        for i, (path, spill) in enumerate(spills, 1):
            n = spill.n if not max_events else min(spill.n, max(max_events - total, 0))
            for k, v in spill.arrays.items():
                chunks.setdefault(k, []).append(v[:n])
            total += n
            self._note(spill, path)
            log.info(
                "calibrate %s: file %d/%d %s: %d %s (total %d)",
                self.step,
                i,
                len(self.files),
                path.name,
                n,
                what,
                total,
            )
        if total == 0:
            raise CalibrationError(f"calibrate {self.step}: no {what} in {len(self.files)} spill file(s)")
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def zero_suppress_sigma(self) -> float:
        """The DAQ's zero-suppression threshold (reco.zero_suppress_sigma) the files were recorded with."""
        from daq.files import SpillFile

        with SpillFile(self.files[0]) as f:
            value = f.config.get("reco", {}).get("zero_suppress_sigma", DEFAULT_ZERO_SUPPRESS)
        return float(value)

    def _note(self, spill: Spill, path: Path) -> None:
        self.runs.add(spill.run)
        if str(path) not in self.used:
            self.used.append(str(path))
        self.calibration_ids.add(spill.calibration_id)


@dataclasses.dataclass(frozen=True)
class Parallel:
    """Where per-file reading runs: ``--workers N`` (a dask LocalCluster) or ``--scheduler ADDR``."""

    workers: int | None = None
    scheduler: str | None = None

    @property
    def active(self) -> bool:
        return self.scheduler is not None or bool(self.workers)


@dataclasses.dataclass(frozen=True, eq=False)
class Spill:
    """What :func:`read_spill` extracted from one spill file."""

    run: int
    calibration_id: str
    n: int  # events selected
    arrays: dict[str, np.ndarray]


def read_spill(
    path: Path,
    bits: int,
    fields: Callable[[Any, np.ndarray], dict[str, np.ndarray]],
    max_events: int = 0,
) -> Spill:
    """``fields(spill_file, index)`` over the complete events of one file with any of ``bits`` (the first
    ``max_events`` if > 0), read in chunks; module-level so that dask workers can run it."""
    from daq.files import SpillFile

    chunks: dict[str, list[np.ndarray]] = {}
    with SpillFile(path) as f:
        ev = f.events(["trigger_mask", "missing_groups"])
        idx = np.flatnonzero(((ev["trigger_mask"] & bits) != 0) & (ev["missing_groups"] == 0))
        if max_events:
            idx = idx[:max_events]
        for start in range(0, idx.size, READ_CHUNK):
            for k, v in fields(f, idx[start : start + READ_CHUNK]).items():
                chunks.setdefault(k, []).append(v)
        arrays = {k: np.concatenate(v) for k, v in chunks.items()}
        return Spill(int(f.run), str(f.attrs.get("calibration_id", "")), int(idx.size), arrays)


# ============================================================================ writing results
def _base(args: argparse.Namespace) -> Constants:
    return cc.load(args.base) if args.base else cc.nominal()


def _finish(
    args: argparse.Namespace,
    base: Constants,
    new: Constants,
    inputs: Inputs,
    method: str,
    config: dict[str, Any],
    results: dict[str, Any],
) -> int:
    from daq.writer import git_hash

    first = min(inputs.runs)
    run_min, run_max = parse_run_range(args.run_range) if args.run_range else (first, None)
    now = datetime.datetime.now(datetime.UTC)
    version = args.cal_version or f"cal-{inputs.step}-run{first:06d}-{now:%Y%m%dT%H%M%S}"
    step = {
        "step": inputs.step,
        "version": version,
        "method": method,
        "created": now.isoformat(timespec="seconds"),
        "software_version": __version__,
        "git_hash": git_hash(),
        "base": base.version,
        "inputs": inputs.used,
        "runs": sorted(inputs.runs),
        "recorded_with": sorted(inputs.calibration_ids),
        "config": config,
        "results": results,
    }
    steps = [*base.provenance.get("steps", []), step]
    provenance = {
        "method": "; ".join(f"{s.get('step')}: {s.get('method')}" for s in steps if isinstance(s, dict)),
        "software_version": __version__,
        "steps": steps,
    }
    out = cc.with_undetermined_status(
        new.replace(version=version, run_min=run_min, run_max=run_max, provenance=provenance)
    )
    undetermined = np.flatnonzero(out.status == cc.UNDETERMINED)
    if undetermined.size:
        log.info(
            "calibrate %s: %d channels undetermined (a constant without error: its base value is kept), "
            "first %s",
            inputs.step,
            undetermined.size,
            ", ".join(_names(undetermined[:8])),
        )
    path = cc.save(out, args.out)
    log.info("calibrate %s: wrote %s (version %s, runs %s)", inputs.step, path, version, out.run_range)
    print(f"{path}: {version} valid for runs {out.run_range}")
    return 0


def _names(ids: np.ndarray) -> list[str]:
    return [detector.channel_name(int(i)) for i in ids]


def _rounded(a: np.ndarray, digits: int = 5) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else round(float(v), digits) for v in a]


# ============================================================================ pedestals
def _pedestals(args: argparse.Namespace) -> int:
    cfg = _config(args)
    pc = cfg.pedestals
    base = _base(args)
    inputs = Inputs(args.files, "pedestals")
    state: dict[str, Any] = {"buffer": [], "acc": None, "n": 0}

    def feed(f: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
        w = f.waveforms(idx)
        state["n"] += w.shape[0]
        if state["acc"] is None:
            state["buffer"].append(w)
            if sum(b.shape[0] for b in state["buffer"]) >= pc.initial_windows:
                _start_accumulator(state, pc)
        else:
            state["acc"].add(w)
        return {"n": np.array([w.shape[0]])}

    inputs.read(RANDOM_BIT, feed, args.max_events, "random-trigger windows")
    if state["acc"] is None:
        _start_accumulator(state, pc)
    acc: ped_fit.PedestalAccumulator = state["acc"]
    res = acc.result()
    if np.any(res.n_samples_used == 0):
        bad = _names(np.flatnonzero(res.n_samples_used == 0))
        raise CalibrationError(
            f"calibrate pedestals: no pulse-free samples for {len(bad)} channels, first {bad[0]}"
        )
    rules = ped_fit.StatusRules(pc.dead_noise, pc.noisy_factor, pc.hot_stray, pc.hot_factor)
    status, reasons = ped_fit.classify_channels(res, rules)

    # triggered events: pre-pulse samples (pedestal cross-check) and occupancy (dead channels: live noise,
    # no signal where their neighbours have one)
    trig = inputs.read(
        PHYSICS_BIT | BEAM_BIT,
        functools.partial(
            _occupancy_fields, noise=res.noise, n_sigma=pc.occupancy_sigma, prepulse=pc.prepulse_samples
        ),
        max(args.max_events, 0) or 20000,
        "triggered events (pre-pulse samples, signals)",
    )
    pre = trig["pre"]
    n_trig = int(pre.shape[0])
    occupancy = trig["hits"].sum(axis=0) / n_trig
    mean = trig["signal"].sum(axis=0) / n_trig
    spread = np.sqrt(np.maximum(trig["signal2"].sum(axis=0) / n_trig - mean**2, 0.0))
    dead, dead_reasons = ped_fit.dead_by_signal(
        mean, spread / math.sqrt(n_trig), n_trig, pc.dead_max_significance, pc.dead_min_expected_significance
    )
    fresh = dead & (status == cc.GOOD)
    status[fresh] = cc.DEAD
    reasons += [r for r in dead_reasons if fresh[detector.channel_id(r.split(":")[0])]]
    for line in reasons:
        log.warning("calibrate pedestals: %s", line)
    pre_even, pre_odd = ped_fit.prepulse_pedestals(pre, pc.prepulse_samples)
    diff = np.maximum(np.abs(pre_even - res.pedestal_even), np.abs(pre_odd - res.pedestal_odd))
    off = np.flatnonzero(diff > pc.prepulse_tolerance)
    for ch in off:
        log.warning(
            "calibrate pedestals: %s pre-pulse pedestal differs by %.2f counts from random triggers",
            detector.channel_name(int(ch)),
            diff[ch],
        )
    log.info(
        "calibrate pedestals: %d windows; pre-pulse cross-check: max |diff| %.2f counts, %d channels > %.1f",
        res.n_windows,
        float(np.nanmax(diff)),
        off.size,
        pc.prepulse_tolerance,
    )

    ids = np.arange(detector.N_CHANNELS)
    new = (
        base.updated("pedestal_even", ids, res.pedestal_even, res.pedestal_even_error)
        .updated("pedestal_odd", ids, res.pedestal_odd, res.pedestal_odd_error)
        .updated("noise", ids, res.noise, res.noise_error)
        .replace(status=status)
    )
    results = {
        "n_windows": res.n_windows,
        "status": {
            cc.STATUS_NAMES[s]: _names(np.flatnonzero(status == s)) for s in (cc.DEAD, cc.HOT, cc.NOISY)
        },
        "status_reasons": reasons,
        "pulse_fraction_median": round(float(np.nanmedian(res.pulse_fraction)), 4),
        "occupancy": dict(zip(_names(np.arange(detector.N_CHANNELS)), _rounded(occupancy, 4), strict=True)),
        "mean_signal": dict(zip(_names(np.arange(detector.N_CHANNELS)), _rounded(mean, 3), strict=True)),
        "prepulse_max_diff": round(float(np.nanmax(diff)), 3),
        "prepulse_off": _names(off),
    }
    return _finish(
        args,
        base,
        new,
        inputs,
        "pulse-free samples of random-trigger windows (3-sample pulse finder, "
        "even/odd separately); pre-pulse cross-check",
        as_dict(cfg)["pedestals"],
        results,
    )


def _start_accumulator(state: dict[str, Any], pc: Any) -> None:
    first = np.concatenate(state["buffer"]) if state["buffer"] else None
    if first is None or first.shape[0] == 0:
        raise CalibrationError("calibrate pedestals: no random-trigger windows")
    acc = ped_fit.PedestalAccumulator(
        *ped_fit.initial_pedestals(first),
        threshold=pc.threshold_sigma,
        guard=(pc.guard_before, pc.guard_after),
        veto_channels=ped_fit.MARKER_IDS,
    )
    acc.add(first)
    state["acc"], state["buffer"] = acc, []


# ============================================================================ gains
def _file_reco(f: Any) -> RecoConfig:
    """The DAQ's reconstruction settings a spill was recorded with (defaults for keys it lacks)."""
    known = {fl.name for fl in dataclasses.fields(RecoConfig)}
    recorded = f.config.get("reco", {}) if isinstance(f.config, dict) else {}
    return RecoConfig(**{k: v for k, v in recorded.items() if k in known})


def fixed_time_signals(
    wf: np.ndarray,
    amp: np.ndarray,
    ids: np.ndarray,
    centre: np.ndarray,
    reco: RecoConfig,
    trigger_ns: np.ndarray | None = None,
) -> np.ndarray:
    """Fixed-time amplitudes (E, len(ids)) of channels ``ids`` (:func:`calibration.gains.fixed_time_amplitudes`)
    from full waveforms ``wf`` (E, 110, S). The event time is the beam counters' mean peak time (MIPs of
    ~300 counts: precise even for a muon, whose ECAL pulse is small), else the peak time of channel
    ``centre`` (E,) moved to the counters' frame; each channel's delay relative to it is measured from its
    own large pulses in these events. ``trigger_ns`` (E,): the events' trigger times (``/events/t_ns``):
    where in its window each event's pulses sit, to within the channels' delays (without them the fit
    searches the time of each pulse over the 12.5 ns clock period)."""
    n = wf.shape[0]
    rows = np.arange(n)
    shapes = detector.CHANNELS["shape"][ids]
    t = trigger_ns
    r = waveform.reconstruct(wf[:, ids, :], np.ones(ids.size), config=reco, shape=shapes, trigger_ns=t)
    rc = waveform.reconstruct(
        wf[:, BEAM_COUNTER_IDS, :], np.ones(BEAM_COUNTER_IDS.size), config=reco, trigger_ns=t
    )
    fired = (rc.amplitude > COUNTER_MIN_COUNTS) & ~rc.pileup
    n_fired = fired.sum(axis=1)
    counter_t = np.where(fired, rc.peak_time, 0.0).sum(axis=1) / np.maximum(n_fired, 1)
    em = np.array([int(detector.PulseShape.EM)])  # the centre is an ECAL cell
    rt = waveform.reconstruct(wf[rows, centre][:, None, :], np.ones(1), config=reco, shape=em, trigger_ns=t)
    centre_t, centre_a = rt.peak_time[:, 0], rt.amplitude[:, 0]
    both = (n_fired > 0) & (centre_a > 30.0)
    lag = float(np.median(centre_t[both] - counter_t[both])) if both.any() else 0.0
    event_t = np.where(n_fired > 0, counter_t, centre_t - lag)
    delay = gain_fit.relative_delays(r.peak_time, np.where(r.pileup, 0.0, r.amplitude), event_t, 30.0)
    fwhm = {int(k): v for k, v in waveform.shape_fwhm(reco).items()}
    return gain_fit.fixed_time_amplitudes(
        wf[:, ids, :],
        event_t,
        shapes,
        lambda dt, c: waveform.template(dt, reco.pulse_order, fwhm[c]),
        fwhm,
        6,  # pre-samples of the fixed-time fit's pedestal
        offset_ns=delay,
    )


def _gains_fields(
    f: Any, idx: np.ndarray, ecal_gain: np.ndarray, exclude_pileup: bool
) -> dict[str, np.ndarray]:
    """Per-chunk extraction of the gains step (runs in dask workers too): the DAQ's amplitudes, the
    calorimeter cells' fixed-time amplitudes at the event time, saturation, pile-up."""
    amp = f.amplitude(idx).astype(np.float32)
    wf = f.waveforms(idx)
    out = {"amp": amp, "saturated": (wf[:, CALO_IDS, :] >= detector.ADC_MAX).any(axis=(1, 2))}
    centre = np.argmax(amp[:, detector.ECAL_IDS] / ecal_gain, axis=1) if idx.size else np.zeros(0, np.intp)
    t_ns = f.events(["t_ns"], idx)["t_ns"]
    out["fixed"] = fixed_time_signals(
        wf, amp, CALO_IDS, detector.ECAL_IDS[centre], _file_reco(f), t_ns
    ).astype(np.float32)
    if exclude_pileup:
        out["pileup"] = f.pileup(idx)[:, CALO_IDS][np.arange(idx.size), centre]
    return out


def _occupancy_fields(
    f: Any, idx: np.ndarray, noise: np.ndarray, n_sigma: float, prepulse: int
) -> dict[str, np.ndarray]:
    """Per-chunk sums of the pedestal step's triggered events: pre-pulse samples, occupancy above
    ``n_sigma`` x noise, and each channel's fixed-time signal (sum and sum of squares)."""
    amp = f.amplitude(idx).astype(np.float32)
    wf = f.waveforms(idx)
    centre = np.argmax(amp[:, detector.ECAL_IDS], axis=1) if idx.size else np.zeros(0, np.intp)
    t_ns = f.events(["t_ns"], idx)["t_ns"]
    sig = fixed_time_signals(
        wf, amp, np.arange(detector.N_CHANNELS), detector.ECAL_IDS[centre], _file_reco(f), t_ns
    )
    return {
        "pre": wf[:, :, :prepulse],
        "hits": (amp > n_sigma * noise[None, :]).sum(axis=0, keepdims=True),
        "signal": sig.sum(axis=0, keepdims=True),
        "signal2": (sig**2).sum(axis=0, keepdims=True),
    }


def _gains(args: argparse.Namespace) -> int:
    cfg = _config(args)
    ref = cfg.reference
    base = _base(args)
    reference = containment.load_reference(ref.containment_reference or None).with_overrides(
        ref.containment, ref.containment_map
    )
    inputs = Inputs(args.files, "gains")
    fields = functools.partial(
        _gains_fields, ecal_gain=base.gain[detector.ECAL_IDS], exclude_pileup=cfg.gains.exclude_pileup
    )
    data = inputs.read(BEAM_BIT, fields, args.max_events, "beam-trigger events", _parallel(args))
    zs = cfg.gains.zero_suppress_sigma
    scan = gain_campaign.ScanData(
        amp=data["amp"],
        fixed=data["fixed"],
        saturated=data["saturated"],
        zero_suppress_sigma=zs if zs >= 0 else inputs.zero_suppress_sigma(),
        pileup=data.get("pileup"),
    )
    out = gain_campaign.derive(scan, base, cfg, reference)
    for m in out.messages:
        log.log(_LEVELS[m.level], "calibrate gains: %s", m.text)
    results = out.results | {"skipped_files": inputs.skipped}
    check = out.crosscheck
    if check is not None and check.failed and cfg.gains.crosscheck_fail:
        raise CalibrationError(
            f"calibrate gains: cross-check failed, nothing written: {check.reason}. The containment "
            f"({reference.version}) does not describe these showers (another beam spot or detector?): see "
            "docs/calibration.md, 'Containment'; --set gains.crosscheck_fail=false writes the constants anyway"
        )
    method = (
        "ECAL+PRS: least squares, calibrated sum (cells under the zero suppression with their fixed-time "
        "amplitude) = beam energy x containment (per shower-centre cell, from the containment reference), "
        "Gaussian-core selection, weak prior on the base gains; cross-check against the containment measured "
        "from the lateral profile in the data; PRS: Moyal MIP peak of muons, held fixed; E_ECAL scale = 1 / "
        "(containment of the beam cell x zero-suppression share); SRD: median of electron deposits; counters: "
        "Moyal MIP peak"
    )
    return _finish(
        args, base, out.constants, inputs, method, as_dict(cfg)["reference"] | as_dict(cfg)["gains"], results
    )


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


# ============================================================================ MIP (HCAL, VETO)
def _amplitude_fields(f: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {"amp": f.amplitude(idx).astype(np.float32)}


def _timing_fields(f: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "t": f.peak_time(idx).astype(np.float32),
        "amp": f.amplitude(idx).astype(np.float32),
        "pileup": f.pileup(idx),
    }


def _mip(args: argparse.Namespace) -> int:
    cfg = _config(args)
    mc, ref = cfg.mip, cfg.reference
    base = _base(args)
    inputs = Inputs(args.files, "mip")
    data = inputs.read(BEAM_BIT, _amplitude_fields, args.max_events, "beam-trigger events", _parallel(args))
    amp = data["amp"].astype(np.float64)
    # GeV with the starting gains, zero-suppressed as in the DAQ (the maximum sample of noise is > 0)
    zs = inputs.zero_suppress_sigma()
    energy = np.where(amp > zs * base.noise[None, :], amp, 0.0) / base.gain / 1000.0
    sel = spectra.MuonSelection(
        mc.ecal_max_gev, mc.prs_max_gev, mc.hcal_module_min_gev, mc.hcal_module_max_gev, mc.hcal_min_modules
    )
    muons = spectra.muon_like(energy, sel)
    log.info("calibrate mip: %d muon-like events of %d", int(muons.sum()), amp.shape[0])
    hc = spectra.peak_gains(
        amp[:, detector.HCAL_IDS],
        spectra.hcal_cell_hits(energy, muons),
        detector.HCAL_IDS,
        ref.hcal_mip_mev,
        "moyal",
        mc.min_entries,
        mc.max_rel_error,
    )
    vt = spectra.peak_gains(
        amp[:, detector.VETO_IDS],
        spectra.veto_slab_hits(energy, muons, mc.veto_min_mev / 1000.0),
        detector.VETO_IDS,
        ref.veto_mip_mev,
        "moyal",
        mc.min_entries,
        mc.max_rel_error,
    )
    new = base
    for res in (
        spectra.with_systematic(hc, ref.mip_systematic),
        spectra.with_systematic(vt, ref.mip_systematic),
    ):
        for line in res.messages:
            log.info("calibrate mip: not determined: %s", line)
        new = new.updated(
            "gain", res.channels[res.determined], res.gain[res.determined], res.gain_error[res.determined]
        )
    log.info(
        "calibrate mip: %d HCAL cells and %d VETO PMTs determined",
        int(hc.determined.sum()),
        int(vt.determined.sum()),
    )
    results = {
        "n_events": int(amp.shape[0]),
        "n_muons": int(muons.sum()),
        "determined": _names(hc.channels[hc.determined]) + _names(vt.channels[vt.determined]),
        "mpv_counts": {
            n: v
            for n, v, d in zip(
                _names(np.concatenate([hc.channels, vt.channels])),
                _rounded(np.concatenate([hc.peak, vt.peak]), 3),
                np.concatenate([hc.determined, vt.determined]),
                strict=True,
            )
            if d
        },
    }
    method = (
        "Moyal (Landau-like) fit of the MIP peak of muon-like beam-trigger events, per crossed cell / slab"
    )
    return _finish(args, base, new, inputs, method, as_dict(cfg)["reference"] | as_dict(cfg)["mip"], results)


# ============================================================================ timing
def _timing(args: argparse.Namespace) -> int:
    cfg = _config(args)
    tc = cfg.timing
    base = _base(args)
    inputs = Inputs(args.files, "timing")
    data = inputs.read(
        BEAM_BIT | PHYSICS_BIT, _timing_fields, args.max_events, "triggered events", _parallel(args)
    )
    # the DAQ subtracted the offsets of the constants it recorded with: add them back (raw peak times)
    recorded = _recorded_with(args, base, inputs)
    raw = data["t"] + recorded.time_offset_ns[None, :].astype(np.float32)
    res = timing.time_offsets(
        raw, data["amp"], tc.threshold_sigma * base.noise, data["pileup"], min_entries=tc.min_entries
    )
    ids = np.flatnonzero(res.determined)
    log.info(
        "calibrate timing: %d events with a counter reference time; %d channels determined",
        res.n_reference,
        ids.size,
    )
    new = base.updated("time_offset_ns", ids, res.offset_ns[ids], res.error_ns[ids])
    results = {
        "n_reference": res.n_reference,
        "determined": len(ids),
        "recorded_with": recorded.version,
        "not_determined": _names(np.flatnonzero(~res.determined)),
    }
    method = (
        "truncated mean of peak time minus the mean time of S0, S2, S3, over clear pulses without pile-up"
    )
    return _finish(args, base, new, inputs, method, as_dict(cfg)["timing"], results)


def _recorded_with(args: argparse.Namespace, base: Constants, inputs: Inputs) -> Constants:
    """The constants the files were recorded with (their time offsets were subtracted by the DAQ)."""
    ids = inputs.calibration_ids
    if args.recorded_with:
        rec = cc.load(args.recorded_with)
        if ids - {rec.version}:
            raise CalibrationError(
                f"calibrate timing: files were recorded with {', '.join(sorted(ids))}, "
                f"--recorded-with {args.recorded_with} is {rec.version}"
            )
        return rec
    if len(ids) == 1:
        (only,) = ids
        if only == base.version:
            return base
        if only == cc.nominal().version:
            return cc.nominal()
    raise CalibrationError(
        f"calibrate timing: files were recorded with calibration {', '.join(sorted(ids))}; give that "
        "constants file with --recorded-with (its time offsets were subtracted from the peak times)"
    )


# ============================================================================ show / compare
GROUPS = tuple((d.name, detector.GROUP_IDS[d]) for d in detector.Detector)


def summary(c: Constants) -> dict[str, Any]:
    """Per-detector summary of a constants set (plain dict)."""
    nominal = detector.nominal_gains()
    out: dict[str, Any] = {"version": c.version, "valid_runs": [c.run_min, c.run_max], "detectors": {}}
    for name, ids in GROUPS:
        rel = c.gain[ids] / nominal[ids]
        out["detectors"][name] = {
            "channels": int(ids.size),
            "status": {s: int((c.status[ids] == i).sum()) for i, s in enumerate(cc.STATUS_NAMES)},
            "gain_over_nominal_mean": round(float(rel.mean()), 4),
            "gain_over_nominal_rms": round(float(rel.std()), 4),
            "gains_with_error": int(np.isfinite(c.errors["gain"][ids]).sum()),
            "pedestal_mean": round(float(0.5 * (c.pedestal_even[ids] + c.pedestal_odd[ids]).mean()), 2),
            "noise_mean": round(float(c.noise[ids].mean()), 3),
            "time_offset_rms_ns": round(float(c.time_offset_ns[ids].std()), 3),
        }
    steps = c.provenance.get("steps", [])
    out["steps"] = [
        {k: s.get(k) for k in ("step", "version", "created", "runs", "method")}
        for s in steps
        if isinstance(s, dict)
    ]
    if not steps:
        out["method"] = c.provenance.get("method")
    return out


def _show(args: argparse.Namespace) -> int:
    c = cc.load(args.file)
    s = summary(c)
    if args.json:
        if args.channels is not None:
            s["channels"] = {
                k: v for k, v in cc.to_json_dict(c)["channels"].items() if k.startswith(args.channels)
            }
        print(json.dumps(s, indent=1))
        return 0
    print(f"{args.file}: calibration {c.version}, valid for runs {c.run_range}")
    for st in s["steps"]:
        runs = st.get("runs") or []
        span = f"runs {min(runs)}-{max(runs)}" if runs else ""
        print(
            f"  step {st.get('step')}: {st.get('version')} ({st.get('created')}, {span}) {st.get('method')}"
        )
    if "method" in s:
        print(f"  method: {s['method']}")
    print(
        f"{'detector':9s} {'ch':>3s} {'good':>4s} {'dead':>4s} {'hot':>4s} {'noisy':>5s} {'undet':>5s} "
        f"{'gain/nom':>8s} {'rms':>6s} {'w/err':>5s} {'pedestal':>8s} {'noise':>6s} {'t_rms ns':>8s}"
    )
    for name, d in s["detectors"].items():
        st = d["status"]
        print(
            f"{name:9s} {d['channels']:3d} {st['good']:4d} {st['dead']:4d} {st['hot']:4d} {st['noisy']:5d} "
            f"{st['undetermined']:5d} {d['gain_over_nominal_mean']:8.4f} {d['gain_over_nominal_rms']:6.4f} {d['gains_with_error']:5d} "
            f"{d['pedestal_mean']:8.2f} {d['noise_mean']:6.3f} {d['time_offset_rms_ns']:8.3f}"
        )
    if args.channels is not None:
        print(
            f"{'channel':9s} {'status':12s} {'gain':>10s} {'+-':>9s} {'ped even':>9s} {'ped odd':>9s} "
            f"{'noise':>6s} {'t_off ns':>8s} not determined"
        )
        for ch in range(detector.N_CHANNELS):
            name = detector.channel_name(ch)
            if not name.startswith(args.channels):
                continue
            err = c.errors["gain"][ch]
            print(
                f"{name:9s} {cc.STATUS_NAMES[c.status[ch]]:12s} {c.gain[ch]:10.5g} "
                f"{'' if not math.isfinite(err) else f'{err:.2g}':>9s} {c.pedestal_even[ch]:9.2f} "
                f"{c.pedestal_odd[ch]:9.2f} {c.noise[ch]:6.2f} {c.time_offset_ns[ch]:8.2f} "
                f"{', '.join(cc.undetermined(c, ch))}"
            )
    return 0


def compare(old: Constants, new: Constants) -> dict[str, Any]:
    """Per-detector differences new - old: relative gains, pedestals (counts), time offsets (ns)."""
    out: dict[str, Any] = {"old": old.version, "new": new.version, "detectors": {}}
    for name, ids in GROUPS:
        rel = new.gain[ids] / old.gain[ids] - 1.0
        dped = np.concatenate(
            [new.pedestal_even[ids] - old.pedestal_even[ids], new.pedestal_odd[ids] - old.pedestal_odd[ids]]
        )
        dt = new.time_offset_ns[ids] - old.time_offset_ns[ids]
        worst = int(ids[np.argmax(np.abs(rel))])
        out["detectors"][name] = {
            "gain_rel_mean": round(float(rel.mean()), 5),
            "gain_rel_rms": round(float(np.sqrt(np.mean(rel**2))), 5),
            "gain_rel_max": round(float(np.max(np.abs(rel))), 5),
            "gain_worst": detector.channel_name(worst),
            "pedestal_diff_rms": round(float(np.sqrt(np.mean(dped**2))), 4),
            "pedestal_diff_max": round(float(np.max(np.abs(dped))), 4),
            "time_offset_diff_rms_ns": round(float(np.sqrt(np.mean(dt**2))), 4),
            "status_changed": _names(ids[new.status[ids] != old.status[ids]]),
        }
    return out


def _compare(args: argparse.Namespace) -> int:
    d = compare(cc.load(args.old), cc.load(args.new))
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"{args.new} ({d['new']}) vs {args.old} ({d['old']})")
    print(
        f"{'detector':9s} {'gain mean':>9s} {'gain rms':>9s} {'max':>8s} {'worst':>9s} {'ped rms':>8s} "
        f"{'ped max':>8s} {'t rms ns':>8s} status changed"
    )
    for name, x in d["detectors"].items():
        print(
            f"{name:9s} {x['gain_rel_mean']:+9.4f} {x['gain_rel_rms']:9.4f} {x['gain_rel_max']:8.4f} "
            f"{x['gain_worst']:>9s} {x['pedestal_diff_rms']:8.3f} {x['pedestal_diff_max']:8.3f} "
            f"{x['time_offset_diff_rms_ns']:8.3f} {', '.join(x['status_changed'])}"
        )
    return 0
