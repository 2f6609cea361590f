"""Calibration constants: per-channel pedestals, noise, gains, time offsets and status, versioned.

A :class:`Constants` set is valid for a run range and records how it was derived. It is stored as JSON
(human-readable, diff-able: one object per channel, keyed by channel name). :func:`nominal` gives the
identity-like defaults used until derived constants exist.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq import detector
from daq.errors import UserError

FORMAT = "na64-calibration"
FORMAT_VERSION = 1

GOOD, DEAD, HOT, NOISY = 0, 1, 2, 3
STATUS_NAMES = ("good", "dead", "hot", "noisy")

#: per-channel quantities and their uncertainties, in file order
QUANTITIES = ("pedestal_even", "pedestal_odd", "noise", "gain", "time_offset_ns")


class CalibrationError(UserError):
    """A calibration file is missing, malformed, incomplete or not valid for the run asked for."""


def _full(value: float) -> np.ndarray:
    return np.full(detector.N_CHANNELS, value, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Constants:
    """One versioned set of per-channel constants (arrays indexed by channel id)."""

    version: str
    pedestal_even: np.ndarray = field(default_factory=lambda: _full(detector.NOMINAL_PEDESTAL))
    pedestal_odd: np.ndarray = field(default_factory=lambda: _full(detector.NOMINAL_PEDESTAL))
    noise: np.ndarray = field(default_factory=lambda: _full(1.5))
    gain: np.ndarray = field(default_factory=detector.nominal_gains)  # ADC counts per MeV
    time_offset_ns: np.ndarray = field(default_factory=lambda: _full(0.0))
    status: np.ndarray = field(default_factory=lambda: np.zeros(detector.N_CHANNELS, np.uint8))
    #: uncertainty of each quantity (same keys as QUANTITIES); NaN where unknown
    errors: Mapping[str, np.ndarray] = field(default_factory=lambda: {q: _full(math.nan) for q in QUANTITIES})
    run_min: int = 0
    run_max: int | None = None  # None: open-ended
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = detector.N_CHANNELS
        for q in (*QUANTITIES, "status"):
            a = getattr(self, q)
            if np.shape(a) != (n,):
                raise CalibrationError(
                    f"constants {self.version}: {q} has shape {np.shape(a)}, expected ({n},)"
                )
        if np.any(~np.isfinite(self.gain)) or np.any(self.gain <= 0):
            bad = int(np.flatnonzero(~(self.gain > 0))[0])
            raise CalibrationError(
                f"constants {self.version}: gain of {detector.channel_name(bad)} is {self.gain[bad]} (must be > 0)"
            )
        if self.run_max is not None and self.run_max < self.run_min:
            raise CalibrationError(
                f"constants {self.version}: run range {self.run_min}..{self.run_max} is empty"
            )

    def valid_for(self, run: int) -> bool:
        return self.run_min <= run and (self.run_max is None or run <= self.run_max)

    @property
    def mev_per_count(self) -> np.ndarray:
        return 1.0 / self.gain

    def replace(self, **changes: Any) -> Constants:
        return dataclasses.replace(self, **changes)


def nominal() -> Constants:
    """Identity-like defaults: nominal gains and pedestals, all channels good, valid for every run."""
    return Constants(version="nominal-v1", provenance={"method": "nominal detector values (daq.detector)"})


def to_json_dict(c: Constants) -> dict[str, Any]:
    channels = {}
    for ch in range(detector.N_CHANNELS):
        entry: dict[str, Any] = {q: _num(getattr(c, q)[ch]) for q in QUANTITIES}
        entry["status"] = STATUS_NAMES[int(c.status[ch])]
        entry["errors"] = {q: _num(c.errors[q][ch]) for q in QUANTITIES if q in c.errors}
        channels[detector.channel_name(ch)] = entry
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": c.version,
        "valid_runs": [c.run_min, c.run_max],
        "provenance": dict(c.provenance),
        "channels": channels,
    }


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def save(c: Constants, path: str | Path) -> Path:
    """Write constants as JSON (atomically: temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(to_json_dict(c), indent=1, sort_keys=False) + "\n")
    tmp.replace(p)
    return p


def from_json_dict(data: Mapping[str, Any], source: str = "<dict>") -> Constants:
    """Validate and build constants from their JSON form; every problem is one CalibrationError."""

    def fail(msg: str) -> CalibrationError:
        return CalibrationError(f"{source}: {msg}")

    if data.get("format") != FORMAT:
        raise fail(f"not a calibration file (format is {data.get('format')!r}, expected {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise fail(f"format_version {data.get('format_version')!r} is not supported ({FORMAT_VERSION})")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise fail("missing 'version' id")
    runs = data.get("valid_runs")
    if not (
        isinstance(runs, list)
        and len(runs) == 2
        and isinstance(runs[0], int)
        and (runs[1] is None or isinstance(runs[1], int))
    ):
        raise fail("'valid_runs' must be [first_run, last_run or null]")
    channels = data.get("channels")
    if not isinstance(channels, Mapping):
        raise fail("missing 'channels' table")
    names = [detector.channel_name(i) for i in range(detector.N_CHANNELS)]
    missing = [n for n in names if n not in channels]
    if missing:
        raise fail(f"{len(missing)} channels missing, first {missing[0]}")
    unknown = sorted(set(channels) - set(names))
    if unknown:
        raise fail(f"unknown channel {unknown[0]!r}")
    arrays = {q: np.empty(detector.N_CHANNELS) for q in QUANTITIES}
    errors = {q: np.full(detector.N_CHANNELS, math.nan) for q in QUANTITIES}
    status = np.zeros(detector.N_CHANNELS, np.uint8)
    for ch, name in enumerate(names):
        entry = channels[name]
        for q in QUANTITIES:
            v = entry.get(q) if isinstance(entry, Mapping) else None
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise fail(f"channel {name}: {q} is {v!r} (expected a finite number)")
            arrays[q][ch] = v
            e = (entry.get("errors") or {}).get(q)
            if e is not None:
                if isinstance(e, bool) or not isinstance(e, int | float):
                    raise fail(f"channel {name}: errors.{q} is {e!r} (expected a number or null)")
                errors[q][ch] = e
        st = entry.get("status", "good")
        if st not in STATUS_NAMES:
            raise fail(f"channel {name}: status {st!r} (expected one of {', '.join(STATUS_NAMES)})")
        status[ch] = STATUS_NAMES.index(st)
    prov = data.get("provenance", {})
    return Constants(
        version=version,
        status=status,
        errors=errors,
        run_min=runs[0],
        run_max=runs[1],
        provenance=prov if isinstance(prov, Mapping) else {},
        **arrays,
    )


def load(path: str | Path) -> Constants:
    """Load one calibration file; a bad or incomplete file raises one CalibrationError naming the problem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"calibration file {p} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise CalibrationError(f"calibration file {p} is not valid JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise CalibrationError(f"{p}: not a calibration file (top level is not an object)")
    return from_json_dict(data, str(p))


def select(paths: Iterable[str | Path], run: int) -> Constants:
    """Of several calibration files, the one valid for ``run`` with the latest start run."""
    valid = [c for c in (load(p) for p in paths) if c.valid_for(run)]
    if not valid:
        raise CalibrationError(f"no calibration set is valid for run {run}")
    return max(valid, key=lambda c: c.run_min)
