"""Reader API of the HDF5 spill files (format v1, ``docs/hdf5-format.md``) and the names of the layout.

Nobody outside this module (and :mod:`daq.writer`, which shares the layout constants below) opens the
HDF5 layout by hand: the DQM, calibration, replay and the tests read spill files through
:class:`SpillFile`, which returns numpy arrays and plain dicts::

    from daq.files import SpillFile, list_spill_files

    for path in list_spill_files(["na64-data"]):
        with SpillFile(path) as f:
            ev = f.events(["t_ns", "trigger_mask", "e_ecal"])
            energy = f.energy()              # (E, 110) GeV
            print(f.run, f.spill, f.counters["n_beam"], f.losses)

Every problem with a file (missing, not HDF5, not a spill file, unsupported ``format_version``, a
``.partial`` file still being written or left by a crash) raises :class:`SpillFileError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from daq import detector
from daq.errors import UserError

# ---------------------------------------------------------------- layout (shared with daq.writer)
FORMAT = "na64-spill"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
PARTIAL_SUFFIX = ".partial"

#: event table: /events/<column>, one 1-D dataset per column, all of length n_events
EVENT_COLUMNS: dict[str, np.dtype] = {
    "event_id": np.dtype("<u8"),
    "slice": np.dtype("<u4"),
    "index": np.dtype("<u4"),
    "t_ns": np.dtype("<i8"),
    "trigger_mask": np.dtype("<u4"),
    "missing_groups": np.dtype("u1"),
    "e_prs": np.dtype("<f4"),
    "e_ecal": np.dtype("<f4"),
    "e_hcal": np.dtype("<f4"),
    "e_veto": np.dtype("<f4"),
    "e_srd": np.dtype("<f4"),
    "e_miss": np.dtype("<f4"),
}
#: per-channel reconstruction: /reco/<name>, (n_events, n_channels)
RECO_DATASETS: dict[str, np.dtype] = {
    "energy": np.dtype("<f4"),
    "amplitude": np.dtype("<f4"),
    "peak_time": np.dtype("<f4"),
    "pileup": np.dtype("u1"),
    "chi2": np.dtype("<f4"),  # since version 2
    "n_pulses": np.dtype("u1"),  # since version 2
}
#: the other particles near each trigger, fitted as pile-up (version 2): /neighbours/<name>, padded to
#: daq.waveform.MAX_NEIGHBOURS per event (count: how many are real), amp rows as /primitives/channels
NEIGHBOUR_DATASETS: dict[str, np.dtype] = {
    "count": np.dtype("u1"),  # (E,)
    "dt_ns": np.dtype("<i4"),  # (E, K)
    "amp": np.dtype("<u2"),  # (E, K, C)
}
#: ``units`` and ``description`` attribute of every dataset, by path ("*" = any histogram name). One row
#: per dataset: the writer sets both on every dataset from this table and a test checks that no dataset
#: of a written file lacks them. Units: "1" for a dimensionless number (count, id, index, flag), "bitmask"
#: for a bit field (bits in the description), "ADC counts" above pedestal unless said otherwise; a
#: histogram's edges take the histogram's own unit.
DATASET_INFO: dict[str, tuple[str, str]] = {
    "channels": (
        "1",
        "channel map (daq.detector.CHANNELS): id, detector, name, module, x, y, readout group, pulse shape",
    ),
    "events/event_id": ("1", "event number, increasing over the run in trigger order"),
    "events/slice": ("1", "id of the slice the event was triggered in"),
    "events/index": ("1", "particle index in its slice; 4294967295 (0xFFFFFFFF) for a random trigger"),
    "events/t_ns": ("ns", "trigger time since the start of the spill"),
    "events/trigger_mask": (
        "bitmask",
        "trigger bits: 0 PHYSICS, 1 BEAM (prescaled S_TRIG), 2 RANDOM, 8 S_TRIG, 9 S_PRS, 10 S_EC",
    ),
    "events/missing_groups": (
        "bitmask",
        "bit g set: readout group g (0 ECAL, 1 PRS, 2 HCAL, 3 VETO, 4 SRD, 5 COUNTER) has no data (zeros)",
    ),
    "events/e_prs": ("GeV", "PRS energy: the 30 preshower cells (already included in e_ecal)"),
    "events/e_ecal": (
        "GeV",
        "whole calorimeter energy: the 30 ECAL cells PLUS the 30 PRS cells (do not add e_prs to it)",
    ),
    "events/e_hcal": ("GeV", "HCAL energy: 4 modules x 9 cells"),
    "events/e_veto": ("GeV", "VETO energy: sum over the slabs of sqrt(E_pmt1 x E_pmt2)"),
    "events/e_srd": ("GeV", "SRD energy: 3 modules"),
    "events/e_miss": ("GeV", "missing energy: beam energy (reco.beam_energy_gev) minus e_ecal"),
    "reco/energy": ("GeV", "per-channel energy (events x channels); 0 below zero suppression or missing"),
    "reco/amplitude": ("ADC counts", "per-channel pulse amplitude above pedestal (events x channels)"),
    "reco/peak_time": ("ns", "per-channel peak time within the readout window (events x channels)"),
    "reco/pileup": (
        "1",
        "per-channel flag (events x channels): 1 if an out-of-time pulse above threshold was fitted and removed",
    ),
    "reco/chi2": ("1", "per-channel chi2 per degree of freedom of the pulse fit (events x channels)"),
    "reco/n_pulses": (
        "1",
        "per-channel number of pulses above threshold in the window, in-time included (events x channels)",
    ),
    "neighbours/count": ("1", "how many other particles near the trigger the pile-up fit used (<= 12)"),
    "neighbours/dt_ns": ("ns", "their arrival times minus the trigger time (events x 12, 0 past count)"),
    "neighbours/amp": (
        "ADC counts",
        "their trigger primitives (events x 12 x primitive channels as primitives/channels, 0 past count)",
    ),
    "waveforms": ("ADC counts", "raw 12-bit samples (events x channels x samples), pedestal included"),
    "primitives/channels": ("1", "channel id of each row of primitives/amp (RUN_START prim_channels)"),
    "primitives/t_ns": (
        "ns",
        "arrival time of the read-out particle since spill start (trigger time if random)",
    ),
    "primitives/amp": (
        "ADC counts",
        "trigger primitives of the read-out particle (channels x events; 0 if random)",
    ),
    "histograms/*/counts": (
        "1",
        "particles per bin, every particle of the spill (last bin includes overflow)",
    ),
    "histograms/*/edges": ("", "bin edges (nbins + 1), in the histogram's unit"),
}


def dataset_info(path: str, unit: str = "") -> tuple[str, str]:
    """(units, description) of the dataset at ``path`` (no leading slash), from :data:`DATASET_INFO`;
    ``unit`` is a histogram's unit (for its edges). Raises ``KeyError`` for a dataset with no row."""
    parts = path.strip("/").split("/")
    key = "/".join(parts)
    if parts[0] == "histograms" and len(parts) == 3:
        key = f"histograms/*/{parts[2]}"
    units, description = DATASET_INFO[key]
    return (units or unit), description


#: spill-summary keys (contract with the DQM; see docs/daq.md)
SUMMARY_KEYS = (
    "run",
    "spill",
    "status",
    "file",
    "n_beam",
    "n_particles",
    "triggers",
    "n_accepted",
    "n_events_written",
    "dead_time_lost",
    "dead_time_fraction",
    "losses",
    "frontend",
    "t_start_ns",
    "t_end_ns",
    "spill_length_s",
    "write_seconds",
    "write_mb",
    "free_disk_bytes",
    "calibration_id",
    "histograms",
)

_NAME_RE = re.compile(r"^run(\d{6})_spill(\d{5})\.h5$")


class SpillFileError(UserError):
    """A spill file is missing, unreadable, not a spill file, of an unsupported version or partial."""


def spill_filename(run: int, spill: int) -> str:
    """File name of a spill: ``run000012_spill00003.h5``."""
    if not (0 <= run <= 999_999 and 0 <= spill <= 99_999):
        raise ValueError(f"run {run} / spill {spill} out of range for the file name (6 and 5 digits)")
    return f"run{run:06d}_spill{spill:05d}.h5"


def partial_filename(run: int, spill: int) -> str:
    """Temporary name while a spill is being written: ``.run000012_spill00003.h5.partial``."""
    return "." + spill_filename(run, spill) + PARTIAL_SUFFIX


def parse_filename(name: str) -> tuple[int, int] | None:
    """(run, spill) from a final spill file name, or None if the name is not one."""
    m = _NAME_RE.match(Path(name).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def list_spill_files(paths_or_dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Final spill files among files and directories (not recursive), sorted by (run, spill).

    ``.partial`` files and files not named like a spill file are skipped when listing a directory; an
    explicitly named file is kept whatever its name (the reader then validates it). A path that does
    not exist raises :class:`SpillFileError`.
    """
    if isinstance(paths_or_dirs, str | Path):
        paths_or_dirs = [paths_or_dirs]
    found: dict[Path, tuple[int, int, str]] = {}
    for item in paths_or_dirs:
        p = Path(item)
        if p.is_dir():
            for child in p.iterdir():
                key = parse_filename(child.name)
                if key is not None and child.is_file():
                    found[child] = (*key, child.name)
        elif p.is_file():
            if p.name.endswith(PARTIAL_SUFFIX):
                continue
            key = parse_filename(p.name) or (1 << 62, 0)
            found[p] = (*key, p.name)
        else:
            raise SpillFileError(f"{p}: no such file or directory")
    return sorted(found, key=lambda q: found[q])


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SOU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


#: HDF5 filter id of blosc (hdf5plugin.BLOSC_ID), the filter of the DAQ's blosc codecs
_BLOSC_FILTER_ID = 32001


class _DirectChunks:
    """The stored chunks of a waveforms dataset chunked as whole events, (c, 110, S), and compressed by
    blosc alone: each chunk a read touches is read with ``os.preadv`` from the file (HDF5's own file
    descriptor, offsets from HDF5's chunk index, taken once) and decoded by blosc straight into the
    caller's rows, or into a scratch chunk for a chunk the range cuts (and the dataset's last, partial
    one). HDF5's chunk cache and the copy out of it are skipped; the bytes are those h5py would return."""

    def __init__(
        self,
        fd: int,
        rows: int,
        n_events: int,
        chunks: list[tuple[int, int, int]],
        row: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        from daq.chunk_codec import decompress_into

        self._decompress = decompress_into
        self.fd = fd
        self.rows = rows  # events per chunk
        self.n_events = n_events
        self.chunks = chunks  # per chunk: (file offset, stored size, filter mask); offset -1: not allocated
        self.scratch = np.empty((rows, *row), dtype)
        self.raw = np.empty(max((c[1] for c in chunks), default=0), np.uint8)

    @classmethod
    def of(cls, h5: Any, ds: Any) -> _DirectChunks | None:
        """The direct reader of ``ds``, or None for anything else than whole-event blosc chunks in a plain
        (sec2, no user block) file: h5py reads those."""
        import h5py

        try:
            from daq.chunk_codec import blosc_available

            if not blosc_available():
                return None
            dcpl = ds.id.get_create_plist()
            if dcpl.get_layout() != h5py.h5d.CHUNKED or ds.ndim != 3:
                return None
            rows, *rest = dcpl.get_chunk()
            if tuple(rest) != ds.shape[1:] or dcpl.get_nfilters() != 1:
                return None
            if dcpl.get_filter(0)[0] != _BLOSC_FILTER_ID:
                return None
            if h5.driver != "sec2" or h5.userblock_size != 0 or ds.dtype.hasobject:
                return None
            fd = h5.id.get_vfd_handle()
            n = ds.shape[0]
            n_chunks = -(-n // rows)
            chunks = [(-1, 0, 0)] * n_chunks
            found = []
            ds.id.chunk_iter(
                lambda si: found.append((si.chunk_offset[0], si.byte_offset, si.size, si.filter_mask))
            )
        except (ImportError, AttributeError, OSError, ValueError, RuntimeError, TypeError):
            return None  # an h5py/HDF5 without chunk_iter, no blosc library, ...: the h5py path
        for first, offset, size, mask in found:
            if first % rows or not 0 <= first // rows < n_chunks:
                return None
            chunks[first // rows] = (int(offset), int(size), int(mask))
        return cls(int(fd), int(rows), int(n), chunks, tuple(ds.shape[1:]), ds.dtype)

    def read(self, out: np.ndarray, start: int) -> bool:
        """Events ``start .. start + len(out) - 1`` into ``out``; False (``out`` undefined) if a chunk of the
        range is not allocated (the fill value: left to h5py)."""
        rows, stop = self.rows, start + out.shape[0]
        for ci in range(start // rows, (stop - 1) // rows + 1):
            c0 = ci * rows
            lo, hi = max(start, c0), min(stop, c0 + rows)
            if lo == c0 and hi == c0 + rows:  # a whole chunk inside the range: decoded in place
                if not self._chunk(ci, out[lo - start : hi - start]):
                    return False
            else:
                if not self._chunk(ci, self.scratch):
                    return False
                out[lo - start : hi - start] = self.scratch[lo - c0 : hi - c0]
        return True

    def _chunk(self, ci: int, dest: np.ndarray) -> bool:
        offset, size, mask = self.chunks[ci]
        if offset < 0:
            return False
        if mask:  # blosc skipped (optional filter): stored as is
            if size != dest.nbytes:
                raise ValueError(f"unfiltered chunk {ci} holds {size} bytes, expected {dest.nbytes}")
            got = os.preadv(self.fd, [dest.reshape(-1).view(np.uint8).data], offset)
        else:
            raw = self.raw[:size]
            got = os.preadv(self.fd, [raw.data], offset)
            if got == size:
                try:
                    self._decompress(raw, dest)
                except ValueError as e:
                    raise ValueError(f"chunk {ci}: {e}") from None
        if got != size:
            raise OSError(f"chunk {ci}: {got} of its {size} bytes read at offset {offset} (truncated file?)")
        return True


class SpillFile:
    """One spill file opened read-only. Use as a context manager (or call :meth:`close`).

    ``sel`` arguments select events like numpy: a slice, an index array or a boolean mask.
    """

    def __init__(self, path: str | Path) -> None:
        import h5py  # h5py is heavy; only readers and the writer need it

        from daq import h5filters

        h5filters.load()  # registers the lz4/zstd/blosc filters used by the writer

        self.path = Path(path)
        self._waveforms_ds: tuple[Any, np.dtype, tuple[int, ...]] | None = None  # read_waveforms_into
        p = self.path
        if p.name.endswith(PARTIAL_SUFFIX):
            raise SpillFileError(f"{p}: partial file (still being written, or left by a crash)")
        if not p.exists():
            raise SpillFileError(f"{p}: no such file")
        if not p.is_file():
            raise SpillFileError(f"{p}: not a regular file")
        try:
            is_h5 = h5py.is_hdf5(p)
        except OSError as e:
            raise SpillFileError(f"{p}: cannot be read ({e})") from None
        if not is_h5:
            raise SpillFileError(f"{p}: not an HDF5 file")
        try:
            self._h5 = h5py.File(p, "r")
        except OSError as e:
            raise SpillFileError(f"{p}: HDF5 file cannot be opened ({e})") from None
        try:
            self._check()
        except BaseException:
            self._h5.close()
            raise

    def _check(self) -> None:
        a = self._h5.attrs
        fmt = _plain(a.get("format"))
        if fmt != FORMAT:
            raise SpillFileError(
                f"{self.path}: not a spill file (format attribute is {fmt!r}, expected {FORMAT!r})"
            )
        version = _plain(a.get("format_version"))
        if version not in SUPPORTED_VERSIONS:
            raise SpillFileError(
                f"{self.path}: format_version {version!r} is not supported (this reader reads "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        missing = [
            k for k in ("events", "reco", "waveforms", "channels", "counters", "losses") if k not in self._h5
        ]
        if missing:
            raise SpillFileError(f"{self.path}: not a complete spill file (missing /{missing[0]})")
        try:
            self._check_layout()
        except (OSError, KeyError, TypeError, ValueError) as e:  # h5py on a damaged object
            raise SpillFileError(f"{self.path}: cannot be read ({type(e).__name__}: {e})") from None

    def _check_layout(self) -> None:
        """The datasets agree with each other (docs/hdf5-format.md): a damaged or hand-edited file fails
        here with its reason, not later as an IndexError or, worse, as events silently misaligned."""
        import h5py

        h, n_ch = self._h5, detector.N_CHANNELS

        def shape(name: str) -> tuple[int, ...]:
            obj = h.get(name)
            if not isinstance(obj, h5py.Dataset):
                raise SpillFileError(f"{self.path}: /{name} is missing or not a dataset")
            return tuple(obj.shape)

        def expect(name: str, want: tuple[int, ...], like: str) -> None:
            got = shape(name)
            if got != want:
                raise SpillFileError(f"{self.path}: /{name} has shape {got}, expected {want} ({like})")

        first = shape("events/event_id")
        if len(first) != 1:
            raise SpillFileError(f"{self.path}: /events/event_id has shape {first}, expected (n_events,)")
        n = first[0]
        for name in EVENT_COLUMNS:
            expect(f"events/{name}", (n,), "one value per event, like /events/event_id")
        w = shape("waveforms")
        if len(w) != 3:
            raise SpillFileError(
                f"{self.path}: /waveforms has shape {w}, expected (n_events, {n_ch}, n_samples)"
            )
        expect("waveforms", (n, n_ch, w[2]), "events x channels x samples")
        for name in RECO_DATASETS:
            if f"reco/{name}" in h:
                expect(f"reco/{name}", (n, n_ch), "events x channels")
        if "neighbours" in h:
            k = shape("neighbours/dt_ns")
            expect("neighbours/count", (n,), "one count per event")
            if len(k) != 2 or k[0] != n:
                raise SpillFileError(f"{self.path}: /neighbours/dt_ns has shape {k}, expected (n_events, K)")
            c = len(h["primitives/channels"]) if "primitives" in h else shape("neighbours/amp")[2]
            expect("neighbours/amp", (n, k[1], c), "events x neighbours x primitive channels")
        if "primitives" in h:
            ch = shape("primitives/channels")
            ids = np.asarray(h["primitives/channels"][()]).ravel()
            if (
                len(ch) != 1
                or np.unique(ids).size != ids.size
                or (ids.size and not 0 <= ids.min() <= ids.max() < n_ch)
            ):
                raise SpillFileError(
                    f"{self.path}: /primitives/channels must list distinct channel ids below {n_ch}"
                )
            c = ch[0]
            expect("primitives/amp", (c, n), "primitive channels x events")
            expect("primitives/t_ns", (n,), "one time per event")

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> SpillFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def __repr__(self) -> str:
        return f"SpillFile({str(self.path)!r}, run={self.run}, spill={self.spill}, n_events={self.n_events})"

    # ------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as plain Python values (JSON texts left as strings)."""
        return {k: _plain(v) for k, v in list(self._h5.attrs.items())}  # list: see _group_attrs

    @property
    def run(self) -> int:
        return int(self._h5.attrs["run"])

    @property
    def spill(self) -> int:
        return int(self._h5.attrs["spill"])

    @property
    def status(self) -> str:
        """``ok``, ``incomplete`` or ``failed``."""
        return str(_plain(self._h5.attrs["status"]))

    @property
    def config(self) -> dict[str, Any]:
        """The full DAQ configuration the spill was recorded with."""
        return self._json_attr("config")

    @property
    def trigger_config(self) -> dict[str, Any]:
        """The trigger configuration (thresholds, prescale, dead time) of the spill."""
        return self._json_attr("trigger")

    @property
    def frontend_info(self) -> dict[str, Any]:
        """The front-end's RUN_START info document (name, version, seed, config), if it sent one."""
        return self._json_attr("frontend_info")

    def _json_attr(self, name: str) -> dict[str, Any]:
        text = _plain(self._h5.attrs.get(name, "{}"))
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise SpillFileError(f"{self.path}: attribute {name!r} is not valid JSON") from None
        return value if isinstance(value, dict) else {}

    def _group_attrs(self, name: str) -> dict[str, int]:
        # read whole first: an h5py attribute iterator left half-way by an exception keeps h5py's global
        # lock in this thread, and every other thread that touches h5py (the replay's main) hangs
        items = list(self._h5[name].attrs.items())
        out: dict[str, int] = {}
        for k, v in items:
            try:
                out[k] = int(v)
            except (TypeError, ValueError, OverflowError):
                raise SpillFileError(
                    f"{self.path}: /{name} attribute {k!r} is not an integer ({v!r})"
                ) from None
        return out

    @property
    def counters(self) -> dict[str, int]:
        """DAQ counters: n_beam (EOT), n_particles, n_slices, triggers_*, n_accepted, n_events_written, ..."""
        return self._group_attrs("counters")

    @property
    def losses(self) -> dict[str, int]:
        """Counts by loss reason (keys ``decode_error.<kind>`` break down ``decode_error``)."""
        return self._group_attrs("losses")

    @property
    def frontend(self) -> dict[str, int]:
        """The front-end's SPILL_END counters (empty if no SPILL_END arrived)."""
        return self._group_attrs("frontend")

    @property
    def channels(self) -> np.ndarray:
        """The channel map stored in the file (dtype :data:`daq.detector.CHANNEL_DTYPE`)."""
        return np.asarray(self._h5["channels"][()])

    @property
    def n_events(self) -> int:
        return int(self._h5["events/event_id"].shape[0])

    @property
    def n_samples(self) -> int:
        return int(self._h5["waveforms"].shape[2])

    @property
    def compression(self) -> str:
        return str(_plain(self._h5.attrs.get("compression", "")))

    # ------------------------------------------------------------ data
    def events(self, fields: Sequence[str] | None = None, sel: Any = slice(None)) -> dict[str, np.ndarray]:
        """Event-table columns (all of :data:`EVENT_COLUMNS` by default), each an (E,) array."""
        names = list(EVENT_COLUMNS) if fields is None else list(fields)
        unknown = [n for n in names if n not in EVENT_COLUMNS]
        if unknown:
            raise KeyError(f"unknown event field {unknown[0]!r}; known: {', '.join(EVENT_COLUMNS)}")
        return {n: self._read(f"events/{n}", sel) for n in names}

    def _read(self, name: str, sel: Any) -> np.ndarray:
        ds = self._h5[name]
        if isinstance(sel, slice):
            return np.asarray(ds[sel])
        idx = np.asarray(sel)
        if idx.dtype == bool:
            if idx.shape[0] != ds.shape[0]:
                raise IndexError(f"boolean selection of length {idx.shape[0]} for {ds.shape[0]} events")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        if idx.size == 0:
            return np.zeros((0, *ds.shape[1:]), ds.dtype)
        # h5py wants increasing unique indices: read the covering range, then pick
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if lo < 0 or hi > ds.shape[0]:
            raise IndexError(f"event index out of range 0..{ds.shape[0] - 1}")
        return np.asarray(ds[lo:hi])[idx - lo]

    def energy(self, sel: Any = slice(None)) -> np.ndarray:
        """Per-channel energy (E, 110) in GeV (0 for channels missing from the event)."""
        return self._read("reco/energy", sel)

    def amplitude(self, sel: Any = slice(None)) -> np.ndarray:
        """Per-channel pulse amplitude above pedestal (E, 110) in ADC counts."""
        return self._read("reco/amplitude", sel)

    def peak_time(self, sel: Any = slice(None)) -> np.ndarray:
        """Per-channel peak time (E, 110) in ns from the start of the readout window."""
        return self._read("reco/peak_time", sel)

    def pileup(self, sel: Any = slice(None)) -> np.ndarray:
        """Per-channel pile-up flag (E, 110) bool: an out-of-time pulse above threshold was fitted and
        removed (version 2; version 1: a second or out-of-time pulse was seen, and kept)."""
        return self._read("reco/pileup", sel).astype(bool)

    def chi2(self, sel: Any = slice(None)) -> np.ndarray | None:
        """Per-channel chi2 per degree of freedom of the pulse fit (E, 110); None for version 1 files."""
        return self._read("reco/chi2", sel) if "reco/chi2" in self._h5 else None

    def n_pulses(self, sel: Any = slice(None)) -> np.ndarray | None:
        """Per-channel number of pulses above threshold (E, 110) uint8, in-time included; None for
        version 1 files."""
        return self._read("reco/n_pulses", sel) if "reco/n_pulses" in self._h5 else None

    def neighbours(self, sel: Any = slice(None)) -> dict[str, np.ndarray] | None:
        """The other particles near each trigger that the pile-up fit used (version 2; None for version 1):
        ``count`` (E,), ``dt_ns`` (E, K) arrival minus trigger time, ``amp`` (E, K, C) primitives (rows as
        ``channels``), padded: event e's are the first count[e] (as ``daq.waveform.Neighbours``)."""
        if "neighbours" not in self._h5:
            return None
        return {
            "count": self._read("neighbours/count", sel),
            "dt_ns": self._read("neighbours/dt_ns", sel),
            "amp": self._read("neighbours/amp", sel),
            "channels": np.asarray(self._h5["primitives/channels"][()]),
        }

    def waveforms(self, sel: Any = slice(None)) -> np.ndarray:
        """Raw samples (E, 110, n_samples) uint16 in ADC counts (0 for channels missing from the event)."""
        return self._read("waveforms", sel)

    def read_waveforms_into(self, out: np.ndarray, start: int = 0) -> None:
        """Read events ``start .. start + len(out) - 1`` of the raw samples into ``out`` (a C-contiguous
        (k, 110, n_samples) uint16 array, e.g. a buffer reused block after block: no allocation).

        Files whose waveform chunks are whole events compressed by blosc alone (the DAQ's blosc codecs)
        are read chunk by chunk (``pread`` of the stored bytes, blosc decoding straight into ``out``'s
        rows, outside the GIL); any other layout or codec goes through h5py. Same bytes either way; a
        damaged chunk raises ``OSError`` or ``ValueError``."""
        if self._waveforms_ds is None:  # h5py's name lookup and properties cost ~0.3 ms per call
            ds = self._h5["waveforms"]
            self._waveforms_ds = (ds.id, ds.dtype, ds.shape)
            self._wf_direct = _DirectChunks.of(self._h5, ds)
        dsid, dtype, shape = self._waveforms_ds
        k = out.shape[0]
        if out.dtype != dtype or out.shape[1:] != shape[1:] or not out.flags.c_contiguous:
            raise ValueError(
                f"{self.path}: waveform buffer {out.dtype}{out.shape} does not fit (k, {shape[1]}, "
                f"{shape[2]}) {dtype}"
            )
        if not 0 <= start <= start + k <= shape[0]:
            raise IndexError(f"{self.path}: events {start}..{start + k - 1} out of range 0..{shape[0] - 1}")
        if not k:
            return
        direct = self._wf_direct
        if direct is not None:
            try:
                if direct.read(out, start):
                    return
            except (OSError, ValueError) as e:
                raise type(e)(f"{self.path}: waveforms of events {start}..{start + k - 1}: {e}") from None
        import h5py

        fspace = dsid.get_space()
        fspace.select_hyperslab((start, 0, 0), (k, shape[1], shape[2]))
        dsid.read(h5py.h5s.create_simple((k, shape[1], shape[2])), fspace, out)

    def primitives(self) -> dict[str, np.ndarray]:
        """Trigger primitives of the read-out particles: ``t_ns`` (E,), ``amp`` (C, E), ``channels`` (C,).

        Random-trigger events (index ``NO_PARTICLE``) have the trigger time and zero amplitudes.
        """
        g = self._h5["primitives"]
        return {
            "t_ns": np.asarray(g["t_ns"][()]),
            "amp": np.asarray(g["amp"][()]),
            "channels": np.asarray(g["channels"][()]),
        }

    def histograms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-spill histograms of the full primitive stream: name -> (counts, edges)."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if "histograms" not in self._h5:
            return out
        for name, g in self._h5["histograms"].items():
            out[name] = (np.asarray(g["counts"][()]), np.asarray(g["edges"][()]))
        return out

    def summary(self) -> dict[str, Any]:
        """The spill summary (same keys as the DAQ's spill-summary JSON, see docs/daq.md; a
        ``daq.summary.SpillSummary`` with ``SpillSummary.from_dict``)."""
        text = _plain(self._h5.attrs.get("summary", "{}"))
        try:
            doc = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise SpillFileError(f"{self.path}: attribute 'summary' is not valid JSON") from None
        doc["file"] = self.path.name
        doc["losses"] = self.losses
        doc["frontend"] = self.frontend
        doc["histograms"] = {
            name: {"edges": edges.tolist(), "counts": counts.tolist()}
            for name, (counts, edges) in self.histograms().items()
        }
        return doc


def channel_names() -> list[str]:
    """Names of all channels in id order (convenience for labelling the (E, 110) arrays)."""
    return [detector.channel_name(i) for i in range(detector.N_CHANNELS)]
