"""Calibration constants: per-channel pedestals, noise, gains, time offsets and status, versioned.

A :class:`Constants` set is valid for a run range and records how it was derived (provenance) and the
uncertainty of every constant. It is stored as JSON, human-readable and diff-able: a short header, then
one line per channel keyed by channel name::

    {
     "format": "na64-calibration",
     "format_version": 1,
     "version": "cal-run000012-gains",
     "valid_runs": [12, null],
     "ecal_scale": 1.0142,
     "provenance": {...},
     "channels": {
      "ECAL00": {"pedestal_even": 201.37, "pedestal_odd": 203.1, "noise": 1.52, "gain": 0.04487, ...},
      ...
     }
    }

Numbers are written with 7 significant digits; unknown uncertainties are left out of ``errors``. :func:`nominal`
gives the identity-like defaults used until derived constants exist; :func:`select` picks, among
several files, the set valid for a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq import detector
from daq.errors import UserError

FORMAT = "na64-calibration"
FORMAT_VERSION = 1
SIGNIFICANT_DIGITS = 7

GOOD, DEAD, HOT, NOISY, UNDETERMINED = 0, 1, 2, 3, 4
#: undetermined: a live channel one of whose constants no derivation step determined (no error): it
#: carries its base value, usually the nominal one (e.g. the hole vetoes V1 V2, which see only halo)
STATUS_NAMES = ("good", "dead", "hot", "noisy", "undetermined")
#: the keyword of ``na64 daq --calibration nominal``: record with the nominal constants, on purpose
NOMINAL_KEYWORD = "nominal"

#: per-channel quantities and their uncertainties, in file order
QUANTITIES = ("pedestal_even", "pedestal_odd", "noise", "gain", "time_offset_ns")


class CalibrationError(UserError):
    """A calibration file is missing, malformed, incomplete or not valid for the run asked for."""


def _full(value: float) -> np.ndarray:
    return np.full(detector.N_CHANNELS, value, dtype=np.float64)


def _no_errors() -> dict[str, np.ndarray]:
    return {q: _full(math.nan) for q in QUANTITIES}


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
    errors: Mapping[str, np.ndarray] = field(default_factory=_no_errors)
    run_min: int = 0
    run_max: int | None = None  # None: open-ended
    provenance: Mapping[str, Any] = field(default_factory=dict)
    #: calorimeter energy scale: the DAQ multiplies its ECAL+PRS sum (E_ECAL) by it, correcting the shower
    #: energy the cells do not see (leakage off the face, cells under the zero suppression); the gains are
    #: the cells' own (pulse height per MeV deposited)
    ecal_scale: float = 1.0
    ecal_scale_error: float = math.nan

    def __post_init__(self) -> None:
        n = detector.N_CHANNELS
        if not isinstance(self.version, str) or not self.version.strip():
            raise CalibrationError("constants: the version id must be a non-empty string")
        for q in (*QUANTITIES, "status"):
            a = getattr(self, q)
            if np.shape(a) != (n,):
                raise CalibrationError(
                    f"constants {self.version}: {q} has shape {np.shape(a)}, expected ({n},)"
                )
            object.__setattr__(self, q, np.array(a, dtype=np.uint8 if q == "status" else np.float64))
        for q in QUANTITIES:
            a = getattr(self, q)
            if not np.all(np.isfinite(a)):
                bad = int(np.flatnonzero(~np.isfinite(a))[0])
                raise CalibrationError(
                    f"constants {self.version}: {q} of {detector.channel_name(bad)} is {a[bad]}"
                )
        self._check_positive("gain", self.gain, strict=True)
        self._check_positive("noise", self.noise, strict=False)
        if np.any(self.status >= len(STATUS_NAMES)):
            bad = int(np.flatnonzero(self.status >= len(STATUS_NAMES))[0])
            raise CalibrationError(
                f"constants {self.version}: status of {detector.channel_name(bad)} is {self.status[bad]} "
                f"(0..{len(STATUS_NAMES) - 1})"
            )
        errors = dict(self.errors)
        unknown = sorted(set(errors) - set(QUANTITIES))
        if unknown:
            raise CalibrationError(f"constants {self.version}: errors for unknown quantity {unknown[0]!r}")
        for q in QUANTITIES:
            e = np.array(errors.get(q, _full(math.nan)), dtype=np.float64)
            if e.shape != (n,):
                raise CalibrationError(
                    f"constants {self.version}: errors.{q} has shape {e.shape}, expected ({n},)"
                )
            errors[q] = e
        object.__setattr__(self, "errors", errors)
        if self.run_min < 0:
            raise CalibrationError(f"constants {self.version}: first run {self.run_min} is negative")
        if self.run_max is not None and self.run_max < self.run_min:
            raise CalibrationError(
                f"constants {self.version}: run range {self.run_min}..{self.run_max} is empty"
            )
        object.__setattr__(self, "provenance", dict(self.provenance))
        scale = self.ecal_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0.5 <= scale <= 2.0:
            raise CalibrationError(f"constants {self.version}: ecal_scale {scale!r} is not in [0.5, 2]")
        object.__setattr__(self, "ecal_scale", float(scale))

    def _check_positive(self, q: str, a: np.ndarray, strict: bool) -> None:
        bad_mask = ~(a > 0) if strict else a < 0
        if np.any(bad_mask):
            bad = int(np.flatnonzero(bad_mask)[0])
            need = "> 0" if strict else ">= 0"
            raise CalibrationError(
                f"constants {self.version}: {q} of {detector.channel_name(bad)} is {a[bad]} (must be {need})"
            )

    def valid_for(self, run: int) -> bool:
        return self.run_min <= run and (self.run_max is None or run <= self.run_max)

    @property
    def mev_per_count(self) -> np.ndarray:
        return 1.0 / self.gain

    @property
    def run_range(self) -> str:
        return f"{self.run_min}..{'' if self.run_max is None else self.run_max}"

    def replace(self, **changes: Any) -> Constants:
        return dataclasses.replace(self, **changes)

    def updated(
        self,
        quantity: str,
        channels: Sequence[int] | np.ndarray,
        values: Sequence[float] | np.ndarray,
        errors: Sequence[float] | np.ndarray | None = None,
    ) -> Constants:
        """A copy with ``quantity`` (and its errors) replaced for the given channel ids only."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}")
        ids = np.asarray(channels, dtype=np.intp)
        new = getattr(self, quantity).copy()
        new[ids] = values
        errs = {q: e.copy() for q, e in self.errors.items()}
        errs[quantity][ids] = math.nan if errors is None else np.asarray(errors, dtype=np.float64)
        return dataclasses.replace(self, **{quantity: new}, errors=errs)


def undetermined(c: Constants, channel: int) -> list[str]:
    """The quantities of ``channel`` that no derivation step determined (no error) in ``c``."""
    return [q for q in QUANTITIES if not math.isfinite(c.errors[q][channel])]


def with_undetermined_status(c: Constants) -> Constants:
    """``c`` with the status of its live channels (good or undetermined) set from what was determined:
    undetermined if any constant of the channel has no error, good otherwise. Dead, hot and noisy stay."""
    live = (c.status == GOOD) | (c.status == UNDETERMINED)
    missing = np.zeros(detector.N_CHANNELS, bool)
    for q in QUANTITIES:
        missing |= ~np.isfinite(c.errors[q])
    status = c.status.copy()
    status[live] = np.where(missing[live], UNDETERMINED, GOOD)
    return c.replace(status=status)


def nominal() -> Constants:
    """Identity-like defaults: nominal gains and pedestals, all channels good, valid for every run."""
    return Constants(version="nominal-v1", provenance={"method": "nominal detector values (daq.detector)"})


# --------------------------------------------------------------------------------------- JSON form
def _num(x: float) -> float | int | None:
    x = float(x)
    if not math.isfinite(x):
        return None
    r = float(f"{x:.{SIGNIFICANT_DIGITS}g}")
    return int(r) if r.is_integer() and abs(r) < 1e15 else r


def to_json_dict(c: Constants) -> dict[str, Any]:
    """The JSON document of a constants set (plain dicts, lists and numbers)."""
    channels = {}
    for ch in range(detector.N_CHANNELS):
        entry: dict[str, Any] = {q: _num(getattr(c, q)[ch]) for q in QUANTITIES}
        entry["status"] = STATUS_NAMES[int(c.status[ch])]
        entry["errors"] = {q: _num(c.errors[q][ch]) for q in QUANTITIES if math.isfinite(c.errors[q][ch])}
        channels[detector.channel_name(ch)] = entry
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": c.version,
        "valid_runs": [c.run_min, c.run_max],
        "ecal_scale": _num(c.ecal_scale),
        **({"ecal_scale_error": _num(c.ecal_scale_error)} if math.isfinite(c.ecal_scale_error) else {}),
        "provenance": _jsonable(dict(c.provenance)),
        "channels": channels,
    }


def _jsonable(x: Any) -> Any:
    """Provenance values made JSON-safe (numpy scalars and arrays, paths, NaN -> null)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return _num(x)
    if isinstance(x, str | int | bool) or x is None:
        return x
    return str(x)


def dumps(c: Constants) -> str:
    """JSON text: the header keys one per line, indented provenance, then one line per channel."""
    doc = to_json_dict(c)
    channels = doc.pop("channels")
    provenance = doc.pop("provenance")
    head = [f" {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in doc.items()]
    prov = json.dumps(provenance, indent=1, allow_nan=False).replace("\n", "\n ")
    head.append(f' "provenance": {prov}')
    rows = [f"  {json.dumps(name)}: {json.dumps(entry, allow_nan=False)}" for name, entry in channels.items()]
    return "{\n" + ",\n".join(head) + ',\n "channels": {\n' + ",\n".join(rows) + "\n }\n}\n"


def save(c: Constants, path: str | Path) -> Path:
    """Write constants as JSON (atomically: temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_text(dumps(c))
        tmp.replace(p)
    except OSError as e:
        raise CalibrationError(f"cannot write calibration file {p}: {e.strerror or e}") from None
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
    if not isinstance(version, str) or not version.strip():
        raise fail("missing 'version' id")
    runs = data.get("valid_runs")
    if not (
        isinstance(runs, list)
        and len(runs) == 2
        and _is_int(runs[0])
        and (runs[1] is None or _is_int(runs[1]))
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
        if not isinstance(entry, Mapping):
            raise fail(f"channel {name}: expected an object, got {type(entry).__name__}")
        extra = sorted(set(entry) - {*QUANTITIES, "status", "errors"})
        if extra:
            raise fail(f"channel {name}: unknown key {extra[0]!r}")
        for q in QUANTITIES:
            v = entry.get(q)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise fail(f"channel {name}: {q} is {v!r} (expected a finite number)")
            arrays[q][ch] = v
        errs = entry.get("errors") or {}
        if not isinstance(errs, Mapping):
            raise fail(f"channel {name}: errors must be an object")
        for q, e in errs.items():
            if q not in QUANTITIES:
                raise fail(f"channel {name}: errors.{q} is not a known quantity")
            if e is None:
                continue
            if isinstance(e, bool) or not isinstance(e, int | float) or not e >= 0:
                raise fail(f"channel {name}: errors.{q} is {e!r} (expected a number >= 0 or null)")
            errors[q][ch] = e
        st = entry.get("status", "good")
        if st not in STATUS_NAMES:
            raise fail(f"channel {name}: status {st!r} (expected one of {', '.join(STATUS_NAMES)})")
        status[ch] = STATUS_NAMES.index(st)
    prov = data.get("provenance", {})
    if not isinstance(prov, Mapping):
        raise fail("'provenance' must be an object")
    scale = data.get("ecal_scale", 1.0)  # absent in files written before it existed: no correction
    scale_err = data.get("ecal_scale_error")
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise fail(f"'ecal_scale' is {scale!r} (expected a number)")
    if scale_err is not None and (isinstance(scale_err, bool) or not isinstance(scale_err, int | float)):
        raise fail(f"'ecal_scale_error' is {scale_err!r} (expected a number)")
    try:
        return Constants(
            version=version,
            status=status,
            errors=errors,
            run_min=runs[0],
            run_max=runs[1],
            provenance=prov,
            ecal_scale=scale,
            ecal_scale_error=math.nan if scale_err is None else float(scale_err),
            **arrays,
        )
    except CalibrationError as e:
        raise fail(str(e)) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load(path: str | Path) -> Constants:
    """Load one calibration file; a bad or incomplete file raises one CalibrationError naming the problem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {p} does not exist") from None
    except IsADirectoryError:
        raise CalibrationError(f"calibration file {p} is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"calibration file {p} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise CalibrationError(f"calibration file {p} is not valid JSON: {e}") from None
    except RecursionError:
        raise CalibrationError(
            f"calibration file {p} is nested too deeply to be a calibration file"
        ) from None
    if not isinstance(data, Mapping):
        raise CalibrationError(f"{p}: not a calibration file (top level is not an object)")
    try:
        return from_json_dict(data, str(p))
    except (OverflowError, RecursionError) as e:  # e.g. an integer of 400 digits where a float belongs
        raise CalibrationError(f"{p}: a value cannot be used ({type(e).__name__}: {e})") from None


def calibration_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files among ``paths``; a directory contributes its ``*.json`` files (sorted)."""
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        out.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return out


def select(paths: Iterable[str | Path], run: int) -> Constants:
    """Of several calibration files (or directories of them), the one valid for ``run``.

    The set with the latest first run wins (a newer calibration supersedes an open-ended older one);
    two valid sets with the same first run are ambiguous and raise CalibrationError naming both.
    """
    return _select(_load_all(paths), run)[0]


def _load_all(paths: Iterable[str | Path]) -> list[tuple[Constants, Path]]:
    files = calibration_files(paths)
    if not files:
        raise CalibrationError("no calibration files given")
    return [(load(p), p) for p in files]


def _select(loaded: list[tuple[Constants, Path]], run: int) -> tuple[Constants, Path]:
    valid = [(c, p) for c, p in loaded if c.valid_for(run)]
    if not valid:
        ranges = ", ".join(f"{p.name} ({c.run_range})" for c, p in loaded)
        raise CalibrationError(f"no calibration set is valid for run {run} (have {ranges})")
    valid.sort(key=lambda cp: cp[0].run_min)
    best, path = valid[-1]
    # the same set given twice (a file and its directory) is no tie; two different sets are, even under one
    # version name (the spill file records only the name: which constants were used could not be told)
    ties = [
        (c, p)
        for c, p in valid
        if c.run_min == best.run_min and (c.version != best.version or dumps(c) != dumps(best))
    ]
    if ties:
        same = " with different contents" if ties[0][0].version == best.version else ""
        raise CalibrationError(
            f"ambiguous calibration for run {run}: {path} ({best.version}) and {ties[0][1]} "
            f"({ties[0][0].version}) both start at run {best.run_min}{same}"
        )
    return best, path


def check_sets(paths: Iterable[str | Path]) -> int:
    """Load every calibration file (or directory of them) given to a program, before it starts: an
    unreadable file, an empty directory, or two different sets starting at the same run (ambiguous for
    that run at least) is one CalibrationError. Returns the number of sets. The keyword ``nominal``
    (:data:`NOMINAL_KEYWORD`) alone is valid and means the nominal constants, asked for."""
    given = [Path(p) for p in paths]
    if not given:
        return 0
    if any(str(p) == NOMINAL_KEYWORD for p in given):
        if len(given) > 1:
            raise CalibrationError(
                f"--calibration {NOMINAL_KEYWORD} records with the nominal constants: it cannot be combined "
                "with calibration files (a file named 'nominal' is ./nominal)"
            )
        return 0
    for p in given:
        if p.is_dir() and not calibration_files([p]):
            raise CalibrationError(f"--calibration {p}: a directory without calibration files (*.json)")
    loaded = _load_all(given)
    for c, _ in loaded:
        _select(loaded, c.run_min)  # ambiguous where two different sets start
    return len(loaded)


@dataclass(frozen=True, eq=False)
class RunCalibration:
    """The constants a run is recorded with, or why it must not be recorded (:func:`for_run`)."""

    run: int
    constants: Constants | None  # None: no usable constants
    source: str  # the file, "nominal (asked for)" or "nominal (no --calibration given)"
    problem: str = ""

    @property
    def usable(self) -> bool:
        return self.constants is not None

    def status(self) -> dict[str, Any]:
        """The ``calibration`` entry of the DAQ status document (docs/daq.md)."""
        c = self.constants
        undet = (
            []
            if c is None
            else [detector.channel_name(int(i)) for i in np.flatnonzero(c.status == UNDETERMINED)]
        )
        return {
            "run": self.run,
            "id": None if c is None else c.version,
            "usable": self.usable,
            "source": self.source,
            "problem": self.problem,
            "undetermined": undet,
        }


def for_run(paths: Sequence[str | Path], run: int) -> RunCalibration:
    """The constants to record ``run`` with: the set valid for it among ``paths`` (:func:`select`); the
    nominal constants when asked for (``paths`` is the keyword ``nominal``) or when no paths are given.
    A set that cannot be used (none valid for the run, ambiguous, unreadable) gives no constants and the
    problem: the caller must not record the run. There is no silent fallback to nominal constants."""
    given = [Path(p) for p in paths]
    if not given:
        return RunCalibration(run, nominal(), "nominal (no --calibration given)")
    if [str(p) for p in given] == [NOMINAL_KEYWORD]:
        return RunCalibration(run, nominal(), "nominal (asked for)")
    try:
        c, path = _select(_load_all(given), run)
    except CalibrationError as e:
        return RunCalibration(run, None, "files", f"run {run}: {e}")
    return RunCalibration(run, c, str(path))
