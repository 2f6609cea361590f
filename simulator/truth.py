"""The simulator's truth file (HDF5): electronics truth per channel and per spill, and per-particle truth
of every read-out particle. Truth never goes into detector data; it is for calibration and physics tests.

Layout (format ``na64sim-truth`` version 2; all datasets 1D unless noted)::

    /                       attrs: format, format_version, simulator_version, run, seed, config (JSON),
                                   signal (JSON: the injected Z', its boost and expected yields, or null),
                                   kind_names, process_names, zp_mode_names, zp_emitter_names,
                                   zp_decay_names (JSON lists), created (ISO time),
                                   complete (bool, True once closed cleanly)
    /channels/              per channel (index = channel id, 110): gain [ADC counts/MeV], pedestal_even,
                            pedestal_odd [ADC counts], noise [ADC counts RMS], time_offset_ns, status
                            (0 good, 1 dead, 2 hot, 3 noisy), dead, hot, noisy (uint8 flags), name (S12)
    /spills/                one row per spill: spill, n_particles, n_events_read, n_requests, n_signal
                            (Z' made, any decay), n_signal_missing (of them with missing energy);
                            (n_spills, 110): gain_start, gain_end, pedestal_even, pedestal_odd, noise
                            (as seen at spill start, resp. end, after faults such as gain_drift)
    /particles/             one row per read-out particle: run, spill, slice, index, t_ns, kind, process,
                            energy_gev (beam energy), x_mm, y_mm (ECAL face, origin at cell (0,0) centre),
                            e_ecal_gev, e_prs_gev, e_hcal_gev, e_veto_gev, e_srd_gev (true deposits on
                            the EM scale), signal (1 = Z' with missing energy), e_miss_gev, and per Z':
                            zp_mode (0 none, 1 brems, 2 resonant), zp_emitter (1 beam e-, 2 shower e-,
                            3 shower e+), zp_depth_x0 (emission depth, X0 from the ECAL face), zp_x
                            (E_Z'/E_emitter), zp_energy_gev, zp_decay (1 invisible, 2 ee, 3 mumu,
                            4 hadrons, 5 tautau), zp_decay_z_mm (decay point from the ECAL face); NaN
                            where the particle made no Z'
    /zprime/                one row per Z' made (read out or not): run, spill, slice, index, t_ns,
                            process, energy_gev (beam energy), e_prs_gev, e_ecal_gev, e_hcal_gev,
                            e_miss_gev (as generated: before the per-channel sharing), and the zp_* columns

The file is written as ``PATH.partial`` and renamed to ``PATH`` when closed. Version 1 files (no Z'
columns, no n_signal) are still read.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from daq import detector
from daq.errors import UserError
from simulator.electronics import Electronics
from simulator.faults import SliceState
from simulator.particles import KIND_NAMES, Decay, Emitter, Process, Production

log = logging.getLogger(__name__)

FORMAT = "na64sim-truth"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

PARTICLE_FIELDS: dict[str, str] = {
    "run": "u4",
    "spill": "u4",
    "slice": "u4",
    "index": "u4",
    "t_ns": "i8",
    "kind": "u1",
    "process": "u1",
    "energy_gev": "f4",
    "x_mm": "f4",
    "y_mm": "f4",
    "e_ecal_gev": "f4",
    "e_prs_gev": "f4",
    "e_hcal_gev": "f4",
    "e_veto_gev": "f4",
    "e_srd_gev": "f4",
    "signal": "u1",
    "e_miss_gev": "f4",
    "zp_mode": "u1",
    "zp_emitter": "u1",
    "zp_depth_x0": "f4",
    "zp_x": "f4",
    "zp_energy_gev": "f4",
    "zp_decay": "u1",
    "zp_decay_z_mm": "f4",
}
ZPRIME_FIELDS: dict[str, str] = {
    "run": "u4",
    "spill": "u4",
    "slice": "u4",
    "index": "u4",
    "t_ns": "i8",
    "process": "u1",
    "energy_gev": "f4",
    "e_prs_gev": "f4",
    "e_ecal_gev": "f4",
    "e_hcal_gev": "f4",
    "e_miss_gev": "f4",
    **{k: v for k, v in PARTICLE_FIELDS.items() if k.startswith("zp_")},
}
SPILL_SCALARS = ("spill", "n_particles", "n_events_read", "n_requests", "n_signal", "n_signal_missing")
SPILL_ARRAYS = ("gain_start", "gain_end", "pedestal_even", "pedestal_odd", "noise")


class TruthError(UserError):
    """A truth file is missing or not a simulator truth file."""


class TruthWriter:
    """Appends truth to an HDF5 file; rows are buffered in memory and written at each spill end."""

    def __init__(self, path: str | Path, info: dict[str, Any], electronics: Electronics) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        try:
            self.f = h5py.File(self.tmp, "w")
        except OSError as e:
            raise TruthError(f"cannot create truth file {self.tmp}: {e}") from None
        a = self.f.attrs
        a["format"], a["format_version"] = FORMAT, FORMAT_VERSION
        a["simulator_version"] = str(info.get("version", ""))
        a["run"], a["seed"] = int(info.get("run", 0)), int(info.get("seed", 0))
        a["config"] = json.dumps(info.get("config", {}), default=str)
        a["signal"] = json.dumps(info.get("signal"), default=str)
        a["kind_names"] = json.dumps(list(KIND_NAMES))
        a["process_names"] = json.dumps([p.name for p in Process])
        a["zp_mode_names"] = json.dumps([p.name for p in Production])
        a["zp_emitter_names"] = json.dumps([p.name for p in Emitter])
        a["zp_decay_names"] = json.dumps([p.name for p in Decay])
        a["created"] = datetime.datetime.now(datetime.UTC).isoformat()
        a["complete"] = False
        ch = self.f.create_group("channels")
        for name in ("gain", "pedestal_even", "pedestal_odd", "noise", "time_offset_ns", "status"):
            ch.create_dataset(name, data=getattr(electronics, name))
        for code, flag in ((1, "dead"), (2, "hot"), (3, "noisy")):
            ch.create_dataset(flag, data=(electronics.status == code).astype(np.uint8))
        ch.create_dataset("name", data=detector.CHANNELS["name"])
        sp = self.f.create_group("spills")
        for name in SPILL_SCALARS:
            sp.create_dataset(name, shape=(0,), maxshape=(None,), dtype="u8")
        for name in SPILL_ARRAYS:
            sp.create_dataset(
                name, shape=(0, detector.N_CHANNELS), maxshape=(None, detector.N_CHANNELS), dtype="f8"
            )
        for group, fields in (("particles", PARTICLE_FIELDS), ("zprime", ZPRIME_FIELDS)):
            g = self.f.create_group(group)
            for name, dt in fields.items():
                g.create_dataset(
                    name,
                    shape=(0,),
                    maxshape=(None,),
                    dtype=dt,
                    chunks=(16384,),
                    compression="gzip",
                    compression_opts=1,
                    shuffle=True,
                )
        self._rows: list[dict[str, np.ndarray]] = []
        self._zprime_rows: list[dict[str, np.ndarray]] = []
        self.n_particles = 0
        self.n_zprime = 0

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Buffer truth rows of read-out particles (keys = PARTICLE_FIELDS)."""
        self._rows.append(rows)

    def add_zprime(self, rows: dict[str, np.ndarray]) -> None:
        """Buffer truth rows of Z' made (keys = ZPRIME_FIELDS)."""
        self._zprime_rows.append(rows)

    def end_spill(self, spill: int, counters: dict[str, float], start: SliceState, end: SliceState) -> None:
        """Write the buffered particles and the spill's electronics truth; flush."""
        self.flush()
        sp = self.f["spills"]
        n = sp["spill"].shape[0]
        values = {
            "spill": spill,
            "n_particles": counters.get("n_particles", 0),
            "n_events_read": counters.get("n_events_read", 0),
            "n_requests": counters.get("n_requests", 0),
            "n_signal": counters.get("n_signal", 0),
            "n_signal_missing": counters.get("n_signal_missing", 0),
        }
        for name in SPILL_SCALARS:
            sp[name].resize((n + 1,))
            sp[name][n] = int(values[name])
        arrays = {
            "gain_start": start.gain,
            "gain_end": end.gain,
            "pedestal_even": start.pedestal_even,
            "pedestal_odd": start.pedestal_odd,
            "noise": start.noise,
        }
        for name in SPILL_ARRAYS:
            sp[name].resize((n + 1, detector.N_CHANNELS))
            sp[name][n] = arrays[name]
        self.f.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        self.n_particles = _append(self.f["particles"], PARTICLE_FIELDS, rows)
        rows, self._zprime_rows = self._zprime_rows, []
        self.n_zprime = _append(self.f["zprime"], ZPRIME_FIELDS, rows)

    def close(self) -> None:
        if not self.f.id.valid:
            return
        self.flush()
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.tmp, self.path)
        log.info(
            "truth written to %s (%d read-out particles, %d Z')", self.path, self.n_particles, self.n_zprime
        )


def _append(group: Any, fields: dict[str, str], rows: list[dict[str, np.ndarray]]) -> int:
    """Append buffered rows to a group's datasets; the group's row count."""
    n0 = int(group["run"].shape[0])
    if not rows:
        return n0
    k = sum(len(r["run"]) for r in rows)
    for name in fields:
        ds = group[name]
        ds.resize((n0 + k,))
        ds[n0:] = np.concatenate([r[name] for r in rows])
    return n0 + k


def read_truth(path: str | Path) -> dict[str, Any]:
    """Read a truth file: ``{"attrs", "config", "channels", "spills", "particles", "zprime"}`` (dicts of
    arrays; ``zprime`` is empty for version 1 files)."""
    p = Path(path)
    if not p.exists():
        raise TruthError(f"truth file {p} does not exist")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise TruthError(f"{p} is not an HDF5 file") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise TruthError(
                f"{p} is not a simulator truth file (format attribute {f.attrs.get('format')!r})"
            )
        if int(f.attrs["format_version"]) not in READABLE_VERSIONS:
            raise TruthError(f"{p}: truth format version {f.attrs['format_version']} is not supported")
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        out: dict[str, Any] = {"attrs": attrs, "config": json.loads(attrs["config"])}
        for group in ("channels", "spills", "particles", "zprime"):
            out[group] = {name: ds[()] for name, ds in f[group].items()} if group in f else {}
    return out
