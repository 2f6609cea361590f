"""The DAQ's two JSON documents, typed: the spill summary and the status (bottom layer).

Both travel as SUMMARY messages to the DQM (kind 1: :class:`SpillSummary`, after each spill file is
closed; kind 2: :class:`DaqStatus`, every second); the spill summary is also stored in every spill file.
Readers get attributes (``summary.n_beam``), never ``doc.get("n_beam", 0)``: a mistyped name is an error,
not a silent zero.

Each document carries a version (``summary_version``, ``status_version``). A versioned document must
have every field of its version (a field added later says since which: ``field(metadata={"since": 2})``),
with the right JSON type; unknown keys are ignored, a newer version is refused. A document without a version (spill files and tools older than the versions) is read with
defaults for what it lacks. The JSON schemas in ``docs/schemas/`` are generated from these classes
(:func:`json_schema`; ``tests/golden/make_schemas.py``) and a test keeps them equal.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, TypeVar

from daq.contract import DaqState, SpillStatus
from daq.errors import ProtocolError

SUMMARY_VERSION: Final = 1
#: 2 added ``run_frontends``; 3 ``losses_outside_spills`` and ``gaps``; 4 ``rejected`` (issue 17)
STATUS_VERSION: Final = 4
#: names of the per-spill histograms of every particle
ARRIVAL_TIME: Final = "arrival_time"
ECAL_BLOCK_GEV: Final = "ecal_block_gev"
PRS_BLOCK_GEV: Final = "prs_block_gev"


class DocumentError(ProtocolError):
    """A summary or status document does not match its schema (the message names the field)."""


class _Document:
    """A versioned document: ``VERSION_KEY`` names its version field."""

    VERSION_KEY: ClassVar[str]


@dataclass(frozen=True)
class Triggers:
    """Accepted triggers of a spill by type (an event with two type bits counts in both)."""

    physics: int = 0
    beam: int = 0
    random: int = 0


@dataclass(frozen=True)
class Histogram:
    """``counts`` in ``len(edges) - 1`` bins; the last bin includes the overflow."""

    edges: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()


@dataclass(frozen=True)
class SpillSummary(_Document):
    """One spill as the DAQ recorded it (docs/daq.md, "DQM feed")."""

    VERSION_KEY: ClassVar[str] = "summary_version"

    run: int
    spill: int
    status: SpillStatus = SpillStatus.OK
    #: the spill file's name, None when there is none (failed)
    file: str | None = None
    #: electrons on target: S_TRIG particles in the full primitive stream
    n_beam: int = 0
    n_particles: int = 0
    triggers: Triggers = field(default_factory=Triggers)
    n_accepted: int = 0
    n_events_written: int = 0
    dead_time_lost: int = 0
    #: accepted triggers x dead time / beam time (the sum of the slice lengths)
    dead_time_fraction: float = 0.0
    #: reason -> count (every reason of daq.contract.LOSS_REASONS, plus decode_error.<kind> keys)
    losses: Mapping[str, int] = field(default_factory=dict)
    #: the front-end's SPILL_END counters (empty without SPILL_END)
    frontend: Mapping[str, int] = field(default_factory=dict)
    #: wall clock, ns since the Unix epoch
    t_start_ns: int = 0
    t_end_ns: int = 0
    spill_length_s: float = 0.0
    write_seconds: float = 0.0
    write_mb: float = 0.0
    #: None: unknown
    free_disk_bytes: int | None = None
    calibration_id: str = ""
    #: SPILL_END, stopped, spill timeout, next spill started, run stopped, run restarted
    ended_by: str = ""
    #: every DAQ counter of the spill, as in the file's /counters
    counters: Mapping[str, int] = field(default_factory=dict)
    #: why the spill failed ("" unless status is failed)
    failure: str = ""
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    summary_version: int = SUMMARY_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _to_plain(self)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SpillSummary:
        """Validate a decoded document; raise :class:`DocumentError` naming the bad field."""
        return _from_document(cls, doc, SUMMARY_VERSION)

    @classmethod
    def from_json(cls, text: str) -> SpillSummary:
        return cls.from_dict(_loads(text, "spill summary"))


@dataclass(frozen=True)
class FrontEndStatus:
    last_seen_s: float
    #: from its last HEARTBEAT: idle, running, stalled, ... (unknown before the first)
    state: str = "unknown"
    name: str = ""


@dataclass(frozen=True)
class CalibrationStatus:
    """The constants of the current (or last) run (``calibration.constants.for_run``)."""

    run: int | None = None
    #: their version id; None when none was usable (the run was not recorded)
    id: str | None = None
    usable: bool = True
    #: the file, "nominal (asked for)" or "nominal (no --calibration given)"
    source: str = ""
    #: why none was usable
    problem: str = ""
    #: channels whose constants no derivation determined (their nominal values are used)
    undetermined: tuple[str, ...] = ()


@dataclass(frozen=True)
class DaqStatus(_Document):
    """The DAQ's state, published every ``monitor.status_period_s`` (docs/daq.md, "DQM feed")."""

    VERSION_KEY: ClassVar[str] = "status_version"

    state: DaqState
    run: int | None = None
    spill: int | None = None
    uptime_s: float = 0.0
    #: front-end id (hex) -> its state
    frontends: Mapping[str, FrontEndStatus] = field(default_factory=dict)
    #: the current run's front-ends (ids as in ``frontends``; empty between runs): only they are expected
    #: to speak (an earlier run's identity stays listed in ``frontends`` for an hour)
    run_frontends: tuple[str, ...] = field(default=(), metadata={"since": 2})
    #: messages refused since the DAQ started, by reason, that are not the run's losses: from peers outside
    #: the run (a NACK code's name: not_owner, no_run, no_spill, already_done, malformed, invalid,
    #: run_refused, not_accepted; their duplicate and sequence_gap), not_authorized (CURVE handshakes
    #: refused), nack_suppressed (NACKs not sent: rate limit), frontends_evicted (identities forgotten
    #: beyond the limit)
    rejected: Mapping[str, int] = field(default_factory=dict, metadata={"since": 4})
    losses_run: Mapping[str, int] = field(default_factory=dict)
    #: losses outside any spill since the last run summary (between spills, before a run): never a spill's
    losses_outside_spills: Mapping[str, int] = field(default_factory=dict, metadata={"since": 3})
    #: "run R spill S" -> what of it is not in a spill file and why (the DAQ restarted, crashed, ...)
    gaps: Mapping[str, str] = field(default_factory=dict, metadata={"since": 3})
    eot_run: int = 0
    events_run: int = 0
    spills_run: int = 0
    free_disk_bytes: int | None = None
    data_dir: str = ""
    #: alarm name (disk, write, calibration, run) -> text
    alarms: Mapping[str, str] = field(default_factory=dict)
    writer_queue: int = 0
    pending_requests: int = 0
    calibration_id: str | None = None
    calibration: CalibrationStatus = field(default_factory=CalibrationStatus)
    status_version: int = STATUS_VERSION

    @property
    def running(self) -> bool:
        """A run is on (between spills or in one)."""
        return self.state in (DaqState.RUNNING, DaqState.IN_SPILL)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _to_plain(self)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DaqStatus:
        return _from_document(cls, doc, STATUS_VERSION)

    @classmethod
    def from_json(cls, text: str) -> DaqStatus:
        return cls.from_dict(_loads(text, "status"))


# ---------------------------------------------------------------- conversion
D = TypeVar("D", bound=_Document)
T = TypeVar("T")


def _loads(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise DocumentError(f"{what}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DocumentError(f"{what}: not a JSON object")
    return doc


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in _ordered_fields(type(value))}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _ordered_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields with the version first."""
    fs = list(dataclasses.fields(cls))
    key = getattr(cls, "VERSION_KEY", None)
    return sorted(fs, key=lambda f: f.name != key)


def _from_document(cls: type[D], doc: Mapping[str, Any], version: int) -> D:
    if not isinstance(doc, Mapping):
        raise DocumentError(f"{cls.__name__}: not a JSON object")
    key: str = cls.VERSION_KEY
    got = doc.get(key)  # the one optional key: absent in documents older than the versions
    if got is not None and (type(got) is not int or not 1 <= got <= version):
        raise DocumentError(f"{key} {got!r} is not supported (this reader knows 1..{version})")
    return _from_dict(cls, doc, "", strict=got or 0)


def _from_dict(cls: type[T], doc: Any, path: str, strict: int) -> T:
    """``strict``: the document's version (every field of it must be there), 0 for an unversioned one."""
    if not isinstance(doc, Mapping):
        raise DocumentError(f"{path or cls.__name__}: expected an object, got {_json_type(doc)}")
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        where = f"{path}.{f.name}" if path else f.name
        if f.name in doc:
            kw[f.name] = _convert(doc[f.name], hints[f.name], where, strict)
        elif (strict and f.metadata.get("since", 1) <= strict) or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ):
            raise DocumentError(f"{where}: missing")
    return cls(**kw)


def _convert(value: Any, hint: Any, path: str, strict: int) -> Any:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, inner, path, strict)
    if hint is bool:
        if type(value) is bool:
            return value
    elif hint is int:
        # JSON has numbers: an integral float (e.g. 5e11) is an integer, as JSON Schema says
        if type(value) is int or (type(value) is float and value.is_integer()):
            return int(value)
    elif hint is float:
        if type(value) in (int, float):
            return float(value)
    elif hint is str:
        if type(value) is str:
            return value
    elif isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            raise DocumentError(
                f"{path}: {value!r} is not one of {', '.join(m.value for m in hint)}"
            ) from None
    elif origin is Mapping or origin is dict:
        _, item = typing.get_args(hint)
        if isinstance(value, Mapping):
            return {str(k): _convert(v, item, f"{path}.{k}", strict) for k, v in value.items()}
    elif origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, list | tuple):
            return tuple(_convert(v, item, f"{path}[{i}]", strict) for i, v in enumerate(value))
    elif dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, path, strict)  # type: ignore[arg-type]
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"{path}: unsupported field type {hint!r}")
    raise DocumentError(f"{path}: expected {_schema_of(hint, {})['type']}, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return "array" if isinstance(value, list | tuple) else "object"


# ---------------------------------------------------------------- JSON schema
def json_schema(cls: type[_Document]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a versioned document class (what ``to_dict`` writes)."""
    defs: dict[str, Any] = {}
    body = _object_schema(cls, defs)
    key = cls.VERSION_KEY
    version = next(f.default for f in dataclasses.fields(cls) if f.name == key)  # type: ignore[arg-type]
    body["properties"][key] = {"const": version}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://na64daq.invalid/schemas/{_slug(cls)}.schema.json",
        "title": cls.__name__,
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        **body,
        "$defs": defs,
    }


def _slug(cls: type) -> str:
    return {"SpillSummary": "spill-summary", "DaqStatus": "daq-status"}.get(cls.__name__, cls.__name__)


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = _ordered_fields(cls)
    return {
        "type": "object",
        "properties": {f.name: _schema_of(hints[f.name], defs) for f in fields},
        "required": [f.name for f in fields],
    }


def _schema_of(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        s = _schema_of(inner, defs)
        return {**s, "type": [s["type"], "null"]}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return {"type": "string", "enum": [m.value for m in hint]}
    if origin is Mapping or origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(hint)[1], defs)}
    if origin is tuple:
        return {"type": "array", "items": _schema_of(typing.get_args(hint)[0], defs)}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        defs.setdefault(hint.__name__, _object_schema(hint, defs))
        return {"type": "object", "$ref": f"#/$defs/{hint.__name__}"}
    raise TypeError(f"unsupported field type {hint!r}")  # pragma: no cover
